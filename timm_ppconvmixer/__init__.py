"""timm-ppconvmixer: privacy-preserving image classification with block-wise encrypted images
and ConvMixer with an adaptive permutation matrix (Qi, MaungMaung and Kiya, 2022).

Importing the package registers the ``ppconvmixer_*``, ``shakedrop_pyramidnet*`` and
``adaptnet_*`` models with timm, among them the key-bound tags
(``timm.create_model("ppconvmixer_768_32.in1k", pretrained=True, key=KEY)``: timm's ImageNet
weights converted under your key at load, :mod:`.keyed.zoo`).

The public names below are the stable API; the subpackages hold the rest: the networks
(:mod:`.models`), models bound to a key (:mod:`.keyed`), encrypted data (:mod:`.data`), the
Hub (:mod:`.hub`), the attacks (:mod:`.attacks`) and the scheme family (:mod:`.schemes`).
"""

from .cipher import CipherInputError, decrypt, encrypt
from .key import BlockKey, InvalidKeyError, SchemeKey, generate_key, load_key
from .keyed import KEY_BOUND_TAGS, ConversionError, encrypt_model, harden_permutation, rekey_model
from .models import (
    AdaptivePermutation,
    AdaptNet,
    AdaptNetPyramidNet,
    HardPermutation,
    KeyBoundError,
    LEAdaptNet,
    PPConvMixer,
    ShakeDrop,
    ShakePyramidNet,
    adaptnet_num_params,
    adaptnet_pyramidnet_num_params,
    convmixer_num_params,
    permutation_penalty,
    ppconvmixer_num_params,
    pyramidnet_num_params,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptNet",
    "AdaptNetPyramidNet",
    "AdaptivePermutation",
    "BlockKey",
    "CipherInputError",
    "ConversionError",
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
    "encrypt_model",
    "generate_key",
    "harden_permutation",
    "load_key",
    "permutation_penalty",
    "ppconvmixer_num_params",
    "pyramidnet_num_params",
    "rekey_model",
    "__version__",
]
