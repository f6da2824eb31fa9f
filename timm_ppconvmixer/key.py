"""The secret keys: every scheme's key class, and the one loader for any key file.

The life cycle every scheme's key shares (generation, validation, file format, salted
fingerprint) is :class:`~timm_ppconvmixer.schemes.base.SchemeKey`; the schemes themselves
live in :mod:`timm_ppconvmixer.schemes`, one module each. This module is where the rest of
the package imports them from. ``BlockKey`` is the paper's scheme (the default); its key
files (``scheme: "ppconvmixer-blockwise"``, version 1) load as they always did.

``BlockKey.load`` reads blockwise key files only and names the scheme of any other key file
in its error; :func:`load_key` returns the key of whatever scheme a file holds.

Example:
    >>> key = BlockKey.generate(image_size=32, block_size=4, seed=0)
    >>> key.scheme
    'blockwise'
"""

from __future__ import annotations

from .schemes import (
    ENCRYPT_ONLY_SCHEMES,
    SCHEMES,
    PerImagePE,
    SchemeKey,
    generate_key,
    key_from_json,
    load_key,
    per_image_encryption,
    scheme_file_names,
)
from .schemes.blockwise import SCHEME, SCHEME_VERSION, BlockKey
from .schemes.fields import InvalidKeyError

__all__ = [
    "ENCRYPT_ONLY_SCHEMES",
    "SCHEME",
    "SCHEMES",
    "SCHEME_VERSION",
    "BlockKey",
    "InvalidKeyError",
    "PerImagePE",
    "SchemeKey",
    "generate_key",
    "key_from_json",
    "load_key",
    "per_image_encryption",
    "scheme_file_names",
]
