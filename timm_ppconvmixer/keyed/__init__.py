"""Models bound to a key: exact conversion of a plain ConvMixer to a key's encrypted domain and
re-keying (:mod:`.convert`), hardening a learned P into a permutation (:mod:`.harden`), the
key-bound tags that convert timm's ImageNet ConvMixers under your key at load (:mod:`.zoo`), and
the weights that ship with the package under PUBLIC keys (:mod:`.shipped`, :mod:`.pretrained`).

Importing this package registers the key-bound and shipped architectures with timm. Every
model here carries its key's fingerprint, never the key; and its weights give the key back to
anyone who holds the plain checkpoint it was converted from (docs/security.md).

Example:
    >>> import timm
    >>> from timm_ppconvmixer import BlockKey, encrypt_model
    >>> key = BlockKey.generate(image_size=32, block_size=4, seed=0)
    >>> plain = timm.create_model("ppconvmixer_256_8", permutation=False, depth=1)
    >>> encrypted = encrypt_model(plain, key)
    >>> encrypted.key_fingerprint == key.fingerprint
    True
"""

from .convert import decrypt_model, encrypt_model, rekey_model
from .errors import ConversionError
from .harden import HardeningReport, harden_permutation
from .shipped import SHIPPED_WEIGHTS
from .zoo import KEY_BOUND_TAGS, is_key_bound, load_key_bound

__all__ = [
    "KEY_BOUND_TAGS",
    "SHIPPED_WEIGHTS",
    "ConversionError",
    "HardeningReport",
    "decrypt_model",
    "encrypt_model",
    "harden_permutation",
    "is_key_bound",
    "load_key_bound",
    "rekey_model",
]
