"""timm-ppconvmixer: privacy-preserving image classification with block-wise encrypted images
and ConvMixer with an adaptive permutation matrix (Qi, MaungMaung and Kiya, 2022).

Importing the package registers the ``ppconvmixer_*``, ``shakedrop_pyramidnet*`` and
``adaptnet_*`` models with timm, among them the key-bound tags
(``timm.create_model("ppconvmixer_768_32.in1k", pretrained=True, key=KEY)``: timm's ImageNet
weights converted under your key at load, :mod:`.zoo`).
"""

from .cipher import CipherInputError, decrypt, encrypt
from .key import BlockKey, InvalidKeyError, SchemeKey, generate_key, load_key
from .keyed.zoo import KEY_BOUND_TAGS
from .models.adaptnet import AdaptNet, LEAdaptNet, adaptnet_num_params
from .models.adaptnet_pyramidnet import AdaptNetPyramidNet, adaptnet_pyramidnet_num_params
from .models.permutation import AdaptivePermutation, HardPermutation, permutation_penalty
from .models.pyramidnet import ShakeDrop, ShakePyramidNet, pyramidnet_num_params
from .models.registry import (
    KeyBoundError,
    PPConvMixer,
    convmixer_num_params,
    ppconvmixer_num_params,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptNet",
    "AdaptNetPyramidNet",
    "AdaptivePermutation",
    "BlockKey",
    "CipherInputError",
    "HardPermutation",
    "InvalidKeyError",
    "KEY_BOUND_TAGS",
    "KeyBoundError",
    "LEAdaptNet",
    "PPConvMixer",
    "SchemeKey",
    "ShakeDrop",
    "ShakePyramidNet",
    "adaptnet_num_params",
    "adaptnet_pyramidnet_num_params",
    "convmixer_num_params",
    "decrypt",
    "encrypt",
    "generate_key",
    "load_key",
    "permutation_penalty",
    "ppconvmixer_num_params",
    "pyramidnet_num_params",
    "__version__",
]
