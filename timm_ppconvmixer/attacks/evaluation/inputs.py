"""Loading what an attacker (or the owner scoring an attack) holds: encrypted image folders
written by ``ppconvmixer encrypt`` (PNGs in class folders, ``ENCRYPTION.json`` at the root) and
``datasets`` datasets saved with ``save_to_disk`` (an ``image`` column), as uint8 batches.

Every problem with the input raises :class:`~.result.AttackInputError` saying what was wrong
and what to do.

Example:
    >>> load_images("/nonexistent")
    Traceback (most recent call last):
    ...
    timm_ppconvmixer.attacks.result.AttackInputError: /nonexistent does not exist
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...images import ImagePolicyError, to_key_mode
from ...schemes.base import BLOCKWISE_FILE_SCHEME
from ..result import AttackInputError

__all__ = ["MANIFEST", "Batch", "load_images", "scheme_of"]

MANIFEST = "ENCRYPTION.json"  # written by ppconvmixer encrypt (folders module)
# the dataset card's YAML block of public facts (hub.dataset_card.CARD_BLOCK; attacks and hub are
# independent layers, so the name is repeated here and tested equal in tests/test_attacks.py)
CARD_BLOCK = "ppconvmixer"
_EXTENSIONS = {".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".jpg", ".jpeg", ".webp"}


@dataclass
class Batch:
    """Images ``(N, C, H, W)`` uint8, labels (or None), names and the source's public facts."""

    images: np.ndarray
    labels: np.ndarray | None
    names: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)


def _subset(total: int, limit: int) -> list[int]:
    """A seeded random subset, in source order: the first ``limit`` files of a tree sorted by
    class would be one or two classes, not a sample of what the provider holds. The same
    ``(total, limit)`` gives the same indices, so plain and encrypted trees stay aligned."""
    return sorted(np.random.default_rng(0).choice(total, limit, replace=False).tolist())


def _is_dataset(path: Path) -> bool:
    return any((path / f).exists() for f in ("state.json", "dataset_dict.json"))


def _stack(arrays: list[np.ndarray], names: list[str], source: Path) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(n for a, n in zip(arrays, names, strict=True) if a.shape != first)
        raise AttackInputError(
            f"{source}: images of mixed sizes ({names[0]} is {first[1]}x{first[0]}, {odd} is "
            "not); one key encrypts one size: attack each size (each key) separately"
        )
    return np.stack(arrays)


def _as_chw(img: Image.Image, channels: int | None, name: str) -> np.ndarray:
    if channels is not None:
        try:  # the package's one colour policy (timm_ppconvmixer.images)
            img = to_key_mode(img, channels)
        except ImagePolicyError as e:
            raise AttackInputError(f"{name}: {e}") from None
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise AttackInputError(f"{name}: not an 8-bit image ({a.dtype})")
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _load_folder(root: Path, limit: int | None, channels: int | None) -> Batch:
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in _EXTENSIONS and not p.name.startswith(".")
    )  # fmt: skip
    if limit is not None and limit < len(files):
        files = [files[i] for i in _subset(len(files), limit)]
    if not files:
        raise AttackInputError(f"{root}: no images found (expected PNG files in class folders)")
    names = [str(p.relative_to(root)) for p in files]
    arrays = []
    for p, name in zip(files, names, strict=True):
        try:
            with Image.open(p) as img:
                arrays.append(_as_chw(img, channels, name))
        except (OSError, SyntaxError, ValueError) as e:
            if isinstance(e, AttackInputError):
                raise
            raise AttackInputError(f"{root / name}: unreadable image ({e})") from None
    classes = sorted({Path(n).parts[0] for n in names if len(Path(n).parts) > 1})
    labels = None
    if classes and all(len(Path(n).parts) > 1 for n in names):
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[Path(n).parts[0]] for n in names])
    return Batch(_stack(arrays, names, root), labels, names)


def _load_dataset(root: Path, limit: int | None, channels: int | None) -> Batch:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(root))
    if isinstance(ds, DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    if "image" not in ds.column_names:
        raise AttackInputError(
            f"{root}: the dataset has no 'image' column (columns: {ds.column_names})"
        )
    if limit is not None and limit < len(ds):
        ds = ds.select(_subset(len(ds), limit))
    names = [f"#{i}" for i in range(len(ds))]
    arrays = [_as_chw(img, channels, n) for img, n in zip(ds["image"], names, strict=True)]
    if not arrays:
        raise AttackInputError(f"{root}: the dataset is empty")
    labels = np.array(ds["label"]) if "label" in ds.column_names else None
    return Batch(_stack(arrays, names, root), labels, names)


def _record(root: Path) -> dict[str, Any]:
    """The data's public record of how it was encrypted: ``ENCRYPTION.json``, else the
    ``ppconvmixer`` block of a dataset card (``README.md``, as pushed to the Hub); ``{}``."""
    if (root / MANIFEST).is_file():
        try:
            return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AttackInputError(f"{root / MANIFEST} is unreadable ({e})") from None
    if (root / "README.md").is_file():
        from huggingface_hub import DatasetCard

        try:
            data = DatasetCard.load(root / "README.md").data.to_dict()
        except (OSError, ValueError) as e:
            raise AttackInputError(f"{root / 'README.md'}: unreadable dataset card ({e})") from None
        block = data.get(CARD_BLOCK)
        if isinstance(block, dict) and block.get("encrypted"):
            return dict(block)
    return {}


def scheme_of(batch: Batch, scheme: str | None = None) -> str:
    """The scheme the data were encrypted with, by its short name (``"blockwise"``, ``"le"``,
    ...), from the data's own record; ``scheme`` is what the caller says, for data without a
    record (default there: the paper's blockwise scheme) and checked against a record."""
    recorded = batch.manifest.get("scheme")
    if recorded is None:
        return (scheme or BLOCKWISE_FILE_SCHEME).removeprefix("ppconvmixer-")
    recorded = str(recorded).removeprefix("ppconvmixer-")
    if scheme is not None and scheme.removeprefix("ppconvmixer-") != recorded:
        # the scheme is read from the data's record, never taken from a guess
        raise AttackInputError(
            f"the data record the {recorded!r} scheme, not {scheme!r}: drop --scheme, or pass "
            "the data it was meant for"
        )
    return recorded


def load_images(source: str | Path, limit: int | None = None, *, encrypted: bool = True) -> Batch:
    """Load an encrypted (or, with ``encrypted=False``, plain) folder or saved dataset;
    ``limit`` keeps a seeded random subset of that many images."""
    root = Path(source)
    if not root.exists():
        raise AttackInputError(f"{root} does not exist")
    if limit is not None and limit < 1:
        raise AttackInputError(f"--limit must be a positive number of images, got {limit}")
    manifest = _record(root)
    if encrypted and not manifest and not _is_dataset(root):
        raise AttackInputError(
            f"{root} is not encrypted data: no {MANIFEST} (written by 'ppconvmixer encrypt') "
            "and not a saved datasets dataset; pass the encrypted folder, not the plain one"
        )
    channels = manifest.get("channels")
    if root.is_dir() and _is_dataset(root):
        batch = _load_dataset(root, limit, channels)
    elif root.is_dir():
        batch = _load_folder(root, limit, channels)
    else:
        raise AttackInputError(f"{root} is not a folder of images or a saved dataset")
    batch.manifest = manifest
    size = manifest.get("image_size")
    if size and list(batch.images.shape[-2:]) != list(size):
        raise AttackInputError(
            f"{root}: images are {batch.images.shape[-2]}x{batch.images.shape[-1]} but "
            f"{MANIFEST} says {size[0]}x{size[1]}; the folder was altered after encryption"
        )
    return batch
