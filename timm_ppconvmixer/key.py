"""The secret key of the block-wise encryption: generation, validation, file format, fingerprint.

A key holds the three secrets of the paper's encryption (Sec. III-A, steps 2-4):

* ``block_perm`` (K1), shape ``(n,)``: encrypted block ``i`` holds plain block ``block_perm[i]``;
  blocks are numbered row-major over the ``(H/M) x (W/M)`` block grid.
* ``pixel_perm`` (K2), shape ``(C*M*M,)``, shared by all blocks: each block is flattened in
  ``(C, M, M)`` order and position ``j`` of the encrypted vector holds position ``pixel_perm[j]``
  of the plain vector.
* ``np_mask`` (K3), shape ``(C*M*M,)``, shared by all blocks: where set, the value ``v`` at that
  position of the (shuffled) vector becomes ``255 - v``.

Key file format (``scheme: "ppconvmixer-blockwise"``, ``version: 1``): one UTF-8 JSON object with
the fields ``scheme``, ``version``, ``image_size`` ([H, W]), ``block_size``, ``channels``,
``block_perm`` and ``pixel_perm`` (lists of ints), ``np_mask`` (a string of ``0``/``1``, one
character per position), ``salt`` (16 random bytes as hex, secret: it keeps the fingerprint
from confirming guesses of the key) and ``fingerprint`` (checked on load). The file is secret:
it is written with owner-only permissions (0600) and must never travel with a model, dataset
or card. Only the fingerprint may be published.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .atomic import atomic_write_bytes

__all__ = ["BlockKey", "InvalidKeyError", "SCHEME", "SCHEME_VERSION"]

SCHEME = "ppconvmixer-blockwise"
SCHEME_VERSION = 1
_FINGERPRINT_PREFIX = "ppcm1-"
_SALT_BYTES = 16
T = TypeVar("T")


class InvalidKeyError(ValueError):
    """A key, or a key file, is invalid or does not fit the data it is used with."""


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise InvalidKeyError(f"image_size must be an int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


def _check_geometry(size: tuple[int, int], block_size: int, channels: int) -> None:
    if block_size < 1:
        raise InvalidKeyError(f"block_size must be a positive integer, got {block_size}")
    if channels < 1:
        raise InvalidKeyError(f"channels must be a positive integer, got {channels}")
    h, w = size
    if h < 1 or w < 1 or h % block_size or w % block_size:
        raise InvalidKeyError(
            f"image size {h}x{w} is not a positive multiple of block_size {block_size}; "
            f"resize or crop the images to a multiple of {block_size} first"
        )


def _is_int(value: object) -> bool:
    # JSON gives 4.7 and true for an integer field as readily as 4; int() would accept both.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_permutation(values: np.ndarray, length: int) -> bool:
    return values.shape == (length,) and np.array_equal(np.sort(values), np.arange(length))


class BlockKey:
    """Secret key for block-wise encryption with block permutation, pixel shuffling and
    negative-positive transformation (paper Sec. III-A).

    Example:
        >>> key = BlockKey.generate(image_size=224, block_size=16, seed=0)
        >>> key.num_blocks, key.block_perm.shape, key.pixel_perm.shape
        (196, torch.Size([196]), torch.Size([768]))
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        block_size: int,
        channels: int,
        block_perm: Sequence[int] | np.ndarray | torch.Tensor,
        pixel_perm: Sequence[int] | np.ndarray | torch.Tensor,
        np_mask: Sequence[int] | np.ndarray | torch.Tensor,
        salt: bytes | None = None,
    ) -> None:
        size = _as_size(image_size)
        block_size, channels = int(block_size), int(channels)
        _check_geometry(size, block_size, channels)
        n = (size[0] // block_size) * (size[1] // block_size)
        d = channels * block_size * block_size
        bp = np.asarray(block_perm, dtype=np.int64).reshape(-1)
        pp = np.asarray(pixel_perm, dtype=np.int64).reshape(-1)
        mask = np.asarray(np_mask).reshape(-1)
        if not _is_permutation(bp, n):
            raise InvalidKeyError(
                f"block_perm must be a permutation of 0..{n - 1} ({n} blocks of "
                f"{block_size}x{block_size} in {size[0]}x{size[1]}), got length {bp.size}"
            )
        if not _is_permutation(pp, d):
            raise InvalidKeyError(
                f"pixel_perm must be a permutation of 0..{d - 1} (C*M*M = {channels}*{block_size}"
                f"*{block_size}), got length {pp.size}"
            )
        if mask.shape != (d,) or not np.isin(mask, (0, 1)).all():
            raise InvalidKeyError(f"np_mask must hold {d} values that are 0 or 1, got {mask.size}")
        self._image_size = size
        self._block_size = block_size
        self._channels = channels
        self._block_perm = torch.from_numpy(bp.copy())
        self._pixel_perm = torch.from_numpy(pp.copy())
        self._np_mask = torch.from_numpy(mask.astype(bool))
        # A secret salt makes the public fingerprint useless for checking guesses of the key
        # (e.g. a block order read off a trained P, plus a search over the rest).
        # (An empty salt: a key file written before salting; its fingerprint stays unsalted.)
        self._salt = secrets.token_bytes(_SALT_BYTES) if salt is None else bytes(salt)
        if len(self._salt) not in (0, _SALT_BYTES):
            raise InvalidKeyError(f"salt must be {_SALT_BYTES} bytes, got {len(self._salt)}")
        self._fingerprint = self._compute_fingerprint()
        self._init_derived()

    def _init_derived(self) -> None:
        self._derived: dict = {}
        self._derived_lock = threading.Lock()

    def derived(self, name: Hashable, build: Callable[[], T]) -> T:
        """A value computed from this key once and kept with it (the cipher's gather plans).

        Thread-safe: concurrent callers with the same ``name`` get one shared value. Derived
        values are not pickled and never leave the process.
        """
        with self._derived_lock:
            if name not in self._derived:
                self._derived[name] = build()
            return self._derived[name]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_derived"], state["_derived_lock"]  # a lock cannot be pickled
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_derived()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        image_size: int | Sequence[int],
        block_size: int,
        channels: int = 3,
        seed: int | None = None,
    ) -> BlockKey:
        """Draw a new key.

        Without ``seed`` every secret comes from the operating system's CSPRNG
        (:mod:`secrets`); this is the only way to make a key for real data. With ``seed`` the key
        is reproducible from the seed, which makes it public: use that for tests and demos only.
        """
        size = _as_size(image_size)
        _check_geometry(size, int(block_size), int(channels))
        n = (size[0] // block_size) * (size[1] // block_size)
        d = channels * block_size * block_size
        if seed is None:
            rng = secrets.SystemRandom()
            block_perm = list(range(n))
            pixel_perm = list(range(d))
            rng.shuffle(block_perm)
            rng.shuffle(pixel_perm)
            np_mask = [secrets.randbits(1) for _ in range(d)]
            salt = None  # drawn from the CSPRNG by __init__
        else:
            gen = np.random.Generator(np.random.PCG64(seed))
            block_perm = gen.permutation(n)
            pixel_perm = gen.permutation(d)
            np_mask = gen.integers(0, 2, size=d)
            salt = gen.bytes(_SALT_BYTES)
        return cls(size, block_size, channels, block_perm, pixel_perm, np_mask, salt)

    # -- attributes ---------------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images this key encrypts."""
        return self._image_size

    @property
    def block_size(self) -> int:
        """M, the side of a square block (equal to the model's patch size)."""
        return self._block_size

    @property
    def channels(self) -> int:
        """C, the number of colour channels."""
        return self._channels

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H/M, W/M), the block grid."""
        return self._image_size[0] // self._block_size, self._image_size[1] // self._block_size

    @property
    def num_blocks(self) -> int:
        """n = (H/M)(W/M)."""
        gh, gw = self.grid_size
        return gh * gw

    @property
    def block_perm(self) -> torch.Tensor:
        """K1, int64 (n,): encrypted block i holds plain block ``block_perm[i]``."""
        return self._block_perm.clone()

    @property
    def pixel_perm(self) -> torch.Tensor:
        """K2, int64 (C*M*M,): encrypted position j holds plain position ``pixel_perm[j]``."""
        return self._pixel_perm.clone()

    @property
    def np_mask(self) -> torch.Tensor:
        """K3, bool (C*M*M,): positions whose value v becomes 255 - v."""
        return self._np_mask.clone()

    @property
    def fingerprint(self) -> str:
        """Public, stable identifier: a SHA-256 digest of the scheme, geometry and secrets.

        Safe to print and publish; it does not reveal the key.
        """
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256(self._salt)
        header = f"{SCHEME}/v{SCHEME_VERSION}/{self._image_size[0]}x{self._image_size[1]}"
        header += f"/M{self._block_size}/C{self._channels}"
        h.update(header.encode())
        h.update(self._block_perm.numpy().astype("<i8").tobytes())
        h.update(self._pixel_perm.numpy().astype("<i8").tobytes())
        h.update(self._np_mask.numpy().astype(np.uint8).tobytes())
        return _FINGERPRINT_PREFIX + h.hexdigest()[:32]

    def _secrets(self) -> tuple:
        return (
            self._image_size,
            self._block_size,
            self._channels,
            tuple(self._block_perm.tolist()),
            tuple(self._pixel_perm.tolist()),
            tuple(self._np_mask.tolist()),
        )

    def __eq__(self, other: object) -> bool:
        # Equal when they encrypt alike: the salt only blinds the fingerprint, so two keys with
        # the same secrets and different salts are the same key (with different fingerprints).
        return isinstance(other, BlockKey) and other._secrets() == self._secrets()

    def __hash__(self) -> int:
        return hash(self._secrets())

    def __repr__(self) -> str:
        h, w = self._image_size
        return (
            f"BlockKey(image_size=({h}, {w}), block_size={self._block_size}, "
            f"channels={self._channels}, fingerprint='{self._fingerprint}')"
        )

    __str__ = __repr__

    def describe(self) -> dict:
        """Public facts about the key (no secrets): safe for logs, configs and model cards."""
        return {
            "scheme": SCHEME,
            "scheme_version": SCHEME_VERSION,
            "image_size": list(self._image_size),
            "block_size": self._block_size,
            "channels": self._channels,
            "num_blocks": self.num_blocks,
            "fingerprint": self._fingerprint,
        }

    # -- file format --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The key file's content (secret)."""
        return json.dumps(
            {
                "scheme": SCHEME,
                "version": SCHEME_VERSION,
                "image_size": list(self._image_size),
                "block_size": self._block_size,
                "channels": self._channels,
                "block_perm": self._block_perm.tolist(),
                "pixel_perm": self._pixel_perm.tolist(),
                "np_mask": "".join("1" if b else "0" for b in self._np_mask.tolist()),
                **({"salt": self._salt.hex()} if self._salt else {}),
                "fingerprint": self._fingerprint,
            }
        )

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the key file atomically with owner-only permissions (0600).

        Refuses to replace an existing file unless ``overwrite=True``: losing a key makes every
        model and dataset made with it unusable by its owner.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_bytes(
                path, self.to_json().encode(), mode=0o600, overwrite=overwrite, fsync=True
            )
        except FileExistsError:
            raise FileExistsError(
                f"{path} exists; refusing to overwrite a key file (pass overwrite=True / "
                "--overwrite if you really mean to replace it)"
            ) from None
        return path

    @classmethod
    def from_json(cls, text: str, source: str = "key") -> BlockKey:
        """Parse and validate a key file's content; ``source`` names it in error messages."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidKeyError(f"{source}: not a key file (invalid JSON: {e})") from None
        if not isinstance(data, dict) or data.get("scheme") != SCHEME:
            raise InvalidKeyError(f"{source}: not a {SCHEME} key file (missing or wrong 'scheme')")
        if data.get("version") != SCHEME_VERSION:
            raise InvalidKeyError(
                f"{source}: key file version {data.get('version')!r} is not supported "
                f"(this version of timm_ppconvmixer reads version {SCHEME_VERSION})"
            )
        fields = ("image_size", "block_size", "channels", "block_perm", "pixel_perm", "np_mask")
        missing = [k for k in fields if k not in data]
        if missing:
            raise InvalidKeyError(f"{source}: key file lacks field(s) {', '.join(missing)}")
        for name in ("block_size", "channels"):
            if not _is_int(data[name]):
                raise InvalidKeyError(f"{source}: {name} must be an integer, got {data[name]!r}")
        size = data["image_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise InvalidKeyError(f"{source}: image_size must be [H, W] integers, got {size!r}")
        for name in ("block_perm", "pixel_perm"):
            values = data[name]
            if not isinstance(values, list) or not all(_is_int(v) for v in values):
                raise InvalidKeyError(f"{source}: {name} must be a list of integers")
        mask = data["np_mask"]
        if not isinstance(mask, str) or set(mask) - {"0", "1"}:
            raise InvalidKeyError(f"{source}: np_mask must be a string of 0 and 1 characters")
        try:
            key = cls(
                data["image_size"],
                data["block_size"],
                data["channels"],
                data["block_perm"],
                data["pixel_perm"],
                [int(c) for c in mask],
                bytes.fromhex(data.get("salt", "")),  # no salt: an unsalted early key file
            )
        except InvalidKeyError as e:
            raise InvalidKeyError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise InvalidKeyError(f"{source}: malformed key field ({e})") from None
        if "fingerprint" in data and data["fingerprint"] != key.fingerprint:
            raise InvalidKeyError(
                f"{source}: fingerprint mismatch (file says {data['fingerprint']}, content gives "
                f"{key.fingerprint}); the file is corrupt or was edited"
            )
        return key

    @classmethod
    def load(cls, path: str | os.PathLike) -> BlockKey:
        """Read and validate a key file written by :meth:`save`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"key file {path} does not exist") from None
        except UnicodeDecodeError:
            raise InvalidKeyError(f"{path}: not a key file (not UTF-8 text)") from None
        return cls.from_json(text, source=str(path))
