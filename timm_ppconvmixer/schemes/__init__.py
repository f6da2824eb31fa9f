"""The family of encryption schemes: one key life cycle, one file format, one cipher.

* ``blockwise`` (the default, :mod:`.blockwise`): the paper's scheme; a block order, one pixel
  shuffle and one inversion mask for every block;
* ``le`` (:mod:`.le`): Tanaka 2018; one shuffle and inversion mask of 4-bit halves for every
  block;
* ``ele`` (:mod:`.ele`): Madono et al. 2020; an LE key per block position, plus a block order;
* ``etc`` (:mod:`.etc`): EtC; a block order and, per block position, a rotation, a flip, an
  inversion bit and a channel order;
* ``pe`` (:mod:`.pe`): per pixel position a channel order and inversion bits;
* ``pe-per-image`` (:mod:`.pe`): PE with a fresh key for every image, never stored (encrypt
  only).

Every stored scheme compiles to one gather and one XOR (``SchemeKey.unit_plan``), applied by
:mod:`timm_ppconvmixer.cipher`.

Example:
    >>> from timm_ppconvmixer.schemes import generate_key, load_key
    >>> key = generate_key("etc", image_size=32, block_size=4, seed=0)
    >>> type(key).__name__, key.describe()["scheme"]
    ('EtCKey', 'ppconvmixer-etc')
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .base import SchemeKey, scheme_classes, scheme_file_names
from .blockwise import BlockKey
from .ele import ELEKey
from .etc import EtCKey
from .fields import InvalidKeyError
from .le import LEKey
from .pe import PEKey, PerImagePE

__all__ = [
    "ENCRYPT_ONLY_SCHEMES",
    "PIXEL_WISE",
    "SCHEMES",
    "BlockKey",
    "ELEKey",
    "EtCKey",
    "InvalidKeyError",
    "LEKey",
    "PEKey",
    "PerImagePE",
    "SchemeKey",
    "generate_key",
    "key_from_json",
    "load_key",
    "per_image_encryption",
    "scheme_file_names",
]

SCHEMES = ("blockwise", "le", "ele", "etc", "pe")  # schemes with a key file
ENCRYPT_ONLY_SCHEMES = ("pe-per-image",)  # no key to keep: encrypt only
PIXEL_WISE = ("pe", "pe-per-image")  # block_size is 1


def _scheme_class(scheme: str) -> type[SchemeKey]:
    classes = scheme_classes()
    if scheme not in classes:
        keyless = scheme in ENCRYPT_ONLY_SCHEMES
        hint = " (it has no key: use per_image_encryption)" if keyless else ""
        raise InvalidKeyError(
            f"unknown scheme {scheme!r}{hint}; choose one of {', '.join(SCHEMES)}"
        )
    return classes[scheme]


def generate_key(
    scheme: str = "blockwise",
    *,
    image_size: int | Sequence[int],
    block_size: int | None = None,
    channels: int = 3,
    seed: int | None = None,
) -> SchemeKey:
    """Draw a new key of ``scheme`` (CSPRNG; ``seed`` only for tests and demos).

    ``block_size`` is required for the block schemes; the pixel-wise ``pe`` takes 1 (or
    ``None``).

    Example:
        >>> generate_key("ele", image_size=32, block_size=4, seed=1).scheme
        'ele'
    """
    cls = _scheme_class(scheme)
    if scheme in PIXEL_WISE:
        block_size = 1 if block_size is None else block_size
    if block_size is None:
        raise InvalidKeyError(f"block_size is required for the {scheme} scheme")
    return cls.generate(image_size, block_size, channels, seed=seed)


def per_image_encryption(image_size: int | Sequence[int], channels: int = 3) -> PerImagePE:
    """``pe-per-image``: pass it to ``encrypt`` like a key; every image gets a fresh key."""
    return PerImagePE(image_size, channels)


def load_key(path: str | os.PathLike) -> SchemeKey:
    """Read and validate a key file of any scheme (a file without ``scheme`` is blockwise).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "k.key"
        >>> _ = generate_key("le", image_size=8, block_size=4, seed=0).save(path)
        >>> load_key(path).scheme
        'le'
    """
    return SchemeKey.load(path)


def key_from_json(text: str, source: str = "key", require_fingerprint: bool = True) -> SchemeKey:
    """Parse a key file's content of any scheme (see :meth:`SchemeKey.from_json`)."""
    return SchemeKey.from_json(text, source, require_fingerprint=require_fingerprint)
