"""timm-ppconvmixer: privacy-preserving image classification with block-wise encrypted images
and ConvMixer with an adaptive permutation matrix (Qi, MaungMaung and Kiya, 2022).

Importing the package registers the ``ppconvmixer_*`` models with timm.
"""

from .cipher import CipherInputError, decrypt, encrypt
from .key import BlockKey, InvalidKeyError, SchemeKey, generate_key, load_key
from .models import PPConvMixer, convmixer_num_params, ppconvmixer_num_params
from .permutation import AdaptivePermutation, HardPermutation, permutation_penalty

__version__ = "0.1.0"

__all__ = [
    "AdaptivePermutation",
    "BlockKey",
    "CipherInputError",
    "HardPermutation",
    "InvalidKeyError",
    "PPConvMixer",
    "SchemeKey",
    "convmixer_num_params",
    "decrypt",
    "encrypt",
    "generate_key",
    "load_key",
    "permutation_penalty",
    "ppconvmixer_num_params",
    "__version__",
]
