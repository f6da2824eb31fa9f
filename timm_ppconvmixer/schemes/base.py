"""The life cycle every scheme's key shares: secrets drawn from the CSPRNG (or a seed, for
tests), validation that names the bad field, one JSON file format, a salted fingerprint.

A scheme is a subclass of :class:`SchemeKey` that declares its secret fields
(:meth:`SchemeKey.fields`: name, kind, shape) and compiles them into one flat gather index and
one flip mask over the image's units (:meth:`SchemeKey.unit_plan`): bytes for the byte
schemes, 4-bit halves for LE / ELE. :mod:`timm_ppconvmixer.cipher` applies that plan; nothing
else about a scheme is needed to encrypt with it.

Key file format (``version: 1`` for every scheme): one UTF-8 JSON object with ``scheme`` (the
file name of the scheme, e.g. ``"ppconvmixer-le"``; a file without it is a blockwise key),
``version``, ``image_size`` ([H, W]), ``block_size``, ``channels``, the scheme's secret fields
(a permutation as a list of ints, several permutations as a list of lists, a bit mask as a
string of ``0``/``1``, codes as a list of ints), ``salt`` (16 random bytes as hex, secret: it
keeps the fingerprint from confirming guesses of the key) and ``fingerprint`` (checked on
load). The file is secret: written with owner-only permissions (0600), never next to a model,
dataset or card. Only the fingerprint may be published; the scheme name is part of what it
hashes, so two schemes never share a fingerprint, even for equal arrays.

Example:
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> key = generate_key("le", image_size=32, block_size=4, seed=0)
    >>> key.scheme, key.fingerprint.startswith("ppcm1-")
    ('le', True)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import threading
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
import torch

from ..atomic import atomic_write_bytes
from .fields import (
    Field,
    InvalidKeyError,
    as_size,
    check_geometry,
    is_int,
    parse_field,
    validated,
)
from .randomness import SALT_BYTES, KeyRandom

__all__ = ["SchemeKey", "scheme_classes", "scheme_file_names"]

FINGERPRINT_PREFIX = "ppcm1-"
BLOCKWISE_FILE_SCHEME = "ppconvmixer-blockwise"  # what a key file without "scheme" is
T = TypeVar("T")
K = TypeVar("K", bound="SchemeKey")
# the largest key file read (a PE key at 1024x1024 is about 20 MB of JSON); anything larger,
# like a device that never ends, is not a key file
MAX_KEY_FILE_BYTES = 64 * 1024 * 1024
_REGISTRY: dict[str, type[SchemeKey]] = {}  # file scheme name -> key class


def scheme_classes() -> dict[str, type[SchemeKey]]:
    """Every registered key class by its short name (``"blockwise"``, ``"le"``, ...)."""
    return {cls.NAME: cls for cls in _REGISTRY.values()}


def scheme_file_names() -> dict[str, tuple[str, ...]]:
    """Each key file ``scheme`` with the names of its secret fields (the leak guard finds key
    files by them; the names do not depend on the geometry)."""
    return {
        name: tuple(f.name for f in cls.fields((1, 1), 1, 1)) for name, cls in _REGISTRY.items()
    }


class SchemeKey:
    """Base class of every scheme's secret key (see the module docstring for the life cycle).

    Subclasses set ``NAME`` (what users type, e.g. ``"le"``), ``FILE_SCHEME`` (the key file's
    ``scheme``), ``SUMMARY`` (one sentence for cards), ``UNIT_BITS`` (8: the plan moves bytes;
    4: it moves 4-bit halves) and implement :meth:`fields`, :meth:`draw` and
    :meth:`unit_plan`.
    """

    NAME: ClassVar[str]
    FILE_SCHEME: ClassVar[str]
    VERSION: ClassVar[int] = 1
    SUMMARY: ClassVar[str]
    UNIT_BITS: ClassVar[int] = 8
    per_image: ClassVar[bool] = False  # a fresh key per image (nothing stored): pe-per-image

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "FILE_SCHEME" in cls.__dict__:
            _REGISTRY[cls.FILE_SCHEME] = cls

    def __init__(
        self,
        image_size: int | Sequence[int],
        block_size: int,
        channels: int,
        salt: bytes | None = None,
        **secret_values: Sequence[int] | np.ndarray | torch.Tensor,
    ) -> None:
        size = as_size(image_size)
        block_size, channels = int(block_size), int(channels)
        check_geometry(size, block_size, channels)
        self._image_size, self._block_size, self._channels = size, block_size, channels
        fields = self.fields(size, block_size, channels)
        unknown = set(secret_values) - {f.name for f in fields}
        if unknown:
            raise InvalidKeyError(f"{self.NAME} keys have no field(s) {', '.join(sorted(unknown))}")
        self._secrets: dict[str, torch.Tensor] = {}
        for f in fields:
            if f.name not in secret_values:
                raise InvalidKeyError(f"{self.NAME} key lacks field {f.name}")
            self._secrets[f.name] = validated(f, secret_values[f.name], self._geometry_text())
        # A secret salt makes the public fingerprint useless for checking guesses of the key
        # (e.g. a block order read off a trained P, plus a search over the rest).
        # (An empty salt: a key file without a salt; its fingerprint is unsalted.)
        self._salt = secrets.token_bytes(SALT_BYTES) if salt is None else bytes(salt)
        if len(self._salt) not in (0, SALT_BYTES):
            raise InvalidKeyError(f"salt must be {SALT_BYTES} bytes, got {len(self._salt)}")
        self._fingerprint = self._compute_fingerprint()
        self._init_derived()

    # -- what a scheme defines ----------------------------------------------------------------

    @classmethod
    def fields(cls, size: tuple[int, int], block_size: int, channels: int) -> tuple[Field, ...]:
        """The scheme's secret fields for this geometry, in file and fingerprint order."""
        raise NotImplementedError

    @classmethod
    def draw(cls, fields: tuple[Field, ...], rng: KeyRandom) -> dict[str, np.ndarray]:
        """Fresh values for ``fields`` (default: each field drawn in order)."""
        out = {}
        for f in fields:
            if f.kind == "perm":
                rows = int(np.prod(f.shape[:-1]))
                value = rng.permutations(rows, f.shape[-1]) if len(f.shape) > 1 else None
                out[f.name] = rng.permutation(f.shape[0]) if value is None else value
            elif f.kind == "bits":
                out[f.name] = rng.bits(int(np.prod(f.shape))).reshape(f.shape)
            else:
                out[f.name] = rng.integers(f.bound, int(np.prod(f.shape))).reshape(f.shape)
        return out

    def unit_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Encryption as ``(index, flip)`` over the image's units, (C, H, W[, half]) order.

        Encrypted unit ``u`` holds plain unit ``index[u]``, inverted where ``flip[u]``.
        """
        raise NotImplementedError

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def generate(
        cls: type[K],
        image_size: int | Sequence[int],
        block_size: int,
        channels: int = 3,
        seed: int | None = None,
    ) -> K:
        """Draw a new key.

        Without ``seed`` every secret comes from the operating system's CSPRNG; this is the
        only way to make a key for real data. With ``seed`` the key is reproducible from the
        seed, which makes it public: use that for tests and demos only.
        """
        size = as_size(image_size)
        check_geometry(size, int(block_size), int(channels))
        rng = KeyRandom(seed)
        values = cls.draw(cls.fields(size, int(block_size), int(channels)), rng)
        salt = rng.salt() if rng.seeded else None  # unseeded: drawn from the CSPRNG by __init__
        return cls(size, int(block_size), int(channels), salt=salt, **values)

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

    # -- public facts -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """The scheme's short name, as users type it (``"blockwise"``, ``"le"``, ...)."""
        return self.NAME

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images this key encrypts."""
        return self._image_size

    @property
    def block_size(self) -> int:
        """M, the side of a square block (1 for the pixel-wise schemes)."""
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
    def fingerprint(self) -> str:
        """Public, stable identifier: a salted SHA-256 digest of the scheme, geometry and
        secrets. Safe to print and publish; it does not reveal the key."""
        return self._fingerprint

    def secret(self, name: str) -> torch.Tensor:
        """A copy of one secret field (see :meth:`fields`)."""
        return self._secrets[name].clone()

    def secret_items(self) -> list[tuple[Field, np.ndarray]]:
        """Every secret field with its values (for the leak guard; never print them)."""
        fields = self.fields(self._image_size, self._block_size, self._channels)
        return [(f, self._secrets[f.name].numpy().astype(np.int64)) for f in fields]

    def describe(self) -> dict:
        """Public facts about the key (no secrets): safe for logs, configs and model cards."""
        return {
            "scheme": self.FILE_SCHEME,
            "scheme_version": self.VERSION,
            "image_size": list(self._image_size),
            "block_size": self._block_size,
            "channels": self._channels,
            "num_blocks": self.num_blocks,
            "fingerprint": self._fingerprint,
        }

    def _geometry_text(self) -> str:
        h, w = self._image_size
        m = self._block_size
        return f"{self.num_blocks} blocks of {m}x{m} in {h}x{w}, {self._channels} channel(s)"

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256(self._salt)
        header = f"{self.FILE_SCHEME}/v{self.VERSION}/{self._image_size[0]}x{self._image_size[1]}"
        header += f"/M{self._block_size}/C{self._channels}"
        h.update(header.encode())
        for f, values in self.secret_items():
            h.update(values.astype(np.uint8 if f.kind == "bits" else "<i8").tobytes())
        return FINGERPRINT_PREFIX + h.hexdigest()[:32]

    def _identity(self) -> tuple:
        return (
            self.FILE_SCHEME,
            self._image_size,
            self._block_size,
            self._channels,
            *(tuple(v.reshape(-1).tolist()) for v in self._secrets.values()),
        )

    def __eq__(self, other: object) -> bool:
        # Equal when they encrypt alike: the salt only blinds the fingerprint, so two keys with
        # the same secrets and different salts are the same key (with different fingerprints).
        return isinstance(other, SchemeKey) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        h, w = self._image_size
        return (
            f"{type(self).__name__}(image_size=({h}, {w}), block_size={self._block_size}, "
            f"channels={self._channels}, fingerprint='{self._fingerprint}')"
        )

    __str__ = __repr__

    # -- file format --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The key file's content (secret)."""
        data: dict = {
            "scheme": self.FILE_SCHEME,
            "version": self.VERSION,
            "image_size": list(self._image_size),
            "block_size": self._block_size,
            "channels": self._channels,
        }
        for f, values in self.secret_items():
            if f.kind == "bits":
                data[f.name] = "".join("1" if b else "0" for b in values.reshape(-1).tolist())
            elif f.kind == "perm":
                data[f.name] = values.tolist()
            else:
                data[f.name] = values.reshape(-1).tolist()
        if self._salt:
            data["salt"] = self._salt.hex()
        data["fingerprint"] = self._fingerprint
        return json.dumps(data)

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
    def from_json(
        cls: type[K], text: str, source: str = "key", require_fingerprint: bool = True
    ) -> K:
        """Parse and validate a key file's content; ``source`` names it in error messages.

        On :class:`SchemeKey` itself this returns the key of whatever scheme the file holds;
        on a scheme's class (``BlockKey.from_json``) a file of another scheme is refused with
        an error that names the scheme it holds. The ``fingerprint`` field is the file's
        integrity check and is required; ``require_fingerprint=False`` reads a file written
        without one, once, to rewrite it with :meth:`save`.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidKeyError(f"{source}: not a key file (invalid JSON: {e})") from None
        if not isinstance(data, dict):
            raise InvalidKeyError(f"{source}: not a key file (not a JSON object)")
        file_scheme = data.get("scheme", BLOCKWISE_FILE_SCHEME)
        found = _REGISTRY.get(file_scheme) if isinstance(file_scheme, str) else None
        if found is None:
            known = ", ".join(sorted(_REGISTRY))
            raise InvalidKeyError(
                f"{source}: not a timm_ppconvmixer key file (unknown 'scheme' "
                f"{file_scheme!r}; known: {known})"
            )
        if not issubclass(found, cls):
            raise InvalidKeyError(
                f"{source}: holds a {found.NAME!r} key; this needs a {cls.NAME!r} key "
                "(timm_ppconvmixer.load_key reads a key of any scheme)"
            )
        if data.get("version") != found.VERSION:
            raise InvalidKeyError(
                f"{source}: key file version {data.get('version')!r} is not supported "
                f"(this version of timm_ppconvmixer reads version {found.VERSION})"
            )
        try:
            key = found._from_fields(data, source)
        except InvalidKeyError as e:
            raise InvalidKeyError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise InvalidKeyError(f"{source}: malformed key field ({e})") from None
        if "fingerprint" not in data and require_fingerprint:
            raise InvalidKeyError(
                f"{source}: the key file has no 'fingerprint' field, so its content cannot be "
                'checked; if you wrote it yourself, rewrite it once with: python -c "import '
                "pathlib, sys; from timm_ppconvmixer.key import key_from_json as k; "
                "k(pathlib.Path(sys.argv[1]).read_text(), require_fingerprint=False)"
                '.save(sys.argv[2])" OLD.key NEW.key'
            )
        if "fingerprint" in data and data["fingerprint"] != key.fingerprint:
            raise InvalidKeyError(
                f"{source}: fingerprint mismatch (file says {data['fingerprint']}, content gives "
                f"{key.fingerprint}); the file is corrupt or was edited"
            )
        return key  # type: ignore[return-value]

    @classmethod
    def _from_fields(cls, data: Mapping, source: str) -> SchemeKey:
        missing = [k for k in ("image_size", "block_size", "channels") if k not in data]
        if missing:
            raise InvalidKeyError(f"key file lacks field(s) {', '.join(missing)}")
        for name in ("block_size", "channels"):
            if not is_int(data[name]):
                raise InvalidKeyError(f"{name} must be an integer, got {data[name]!r}")
        size = data["image_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
            raise InvalidKeyError(f"image_size must be [H, W] integers, got {size!r}")
        check_geometry(tuple(size), data["block_size"], data["channels"])  # type: ignore[arg-type]
        fields = cls.fields(tuple(size), data["block_size"], data["channels"])  # type: ignore[arg-type]
        missing = [f.name for f in fields if f.name not in data]
        if missing:
            raise InvalidKeyError(f"key file lacks field(s) {', '.join(missing)}")
        values = {f.name: parse_field(f, data[f.name]) for f in fields}
        salt = bytes.fromhex(data.get("salt", ""))  # no salt field: an unsalted fingerprint
        return cls(size, data["block_size"], data["channels"], salt=salt, **values)

    @classmethod
    def load(cls: type[K], path: str | os.PathLike) -> K:
        """Read and validate a key file written by :meth:`save` (see :meth:`from_json`).

        Only a regular file of at most :data:`MAX_KEY_FILE_BYTES` is read (a FIFO or a device
        such as ``/dev/zero`` is refused, never read); a key file that others than its owner
        may read (group or world permission bits, as ssh checks a private key) gets a
        ``UserWarning`` naming the ``chmod`` to run, unless its name ends in ``.PUBLIC.key``
        (the package's published demonstration keys).
        """
        path = Path(path)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"key file {path} does not exist") from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidKeyError(
                f"{path}: not a key file (not a regular file); pass the key file itself"
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise InvalidKeyError(
                f"{path}: not a key file ({info.st_size} bytes; key files are at most "
                f"{MAX_KEY_FILE_BYTES} bytes)"
            )
        if os.name == "posix" and info.st_mode & 0o077 and not path.name.endswith(".PUBLIC.key"):
            warnings.warn(
                f"key file {path} can be read by other users (mode {info.st_mode & 0o777:o}); "
                f"anyone who reads it can decrypt your images: run `chmod 600 {path}`",
                UserWarning,
                stacklevel=2,
            )
        with open(path, "rb") as f:  # bounded: the file may have grown since stat
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise InvalidKeyError(f"{path}: not a key file (over {MAX_KEY_FILE_BYTES} bytes)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKeyError(f"{path}: not a key file (not UTF-8 text)") from None
        return cls.from_json(text, source=str(path))
