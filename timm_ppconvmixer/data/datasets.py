"""Datasets: the real Fashion-MNIST as a ``datasets.Dataset``, and encrypting ``datasets``
datasets with batched ``map``.

Folder trees (ImageFolder layout) are encrypted by :mod:`timm_ppconvmixer.data.folders`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..cipher import decrypt as decrypt_array
from ..cipher import encrypt as encrypt_array
from ..images import RESIZE_POLICIES, mode_for_channels, prepare_image
from ..key import SchemeKey

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DatasetUnavailableError",
    "encrypt_dataset",
    "encrypt_saved_dataset",
    "fashion_mnist_arrays",
    "load_fashion_mnist",
]

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {"train": "train", "test": "t10k"}


class DatasetUnavailableError(RuntimeError):
    """The data is neither on local disk nor reachable online."""


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        header = struct.unpack(">I", f.read(4))[0]
        if header != magic:
            raise DatasetUnavailableError(f"{path}: not an IDX file (magic {header:#x})")
        ndim = magic & 0xFF
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def fashion_mnist_arrays(split: str = "train", root: Path | None = None):
    """``(images uint8 (N, 28, 28), labels uint8 (N,))`` from the IDX files of the Debian
    package ``dataset-fashion-mnist``."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = root / _FILES[split]
    images = _read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"), 0x803)
    labels = _read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"), 0x801)
    if len(images) != len(labels):
        raise DatasetUnavailableError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _features():
    from datasets import ClassLabel, Features
    from datasets import Image as ImageFeature

    return Features(
        {"image": ImageFeature(), "label": ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )


def _generate(split: str, root: str, limit: int | None) -> Iterator[dict]:
    images, labels = fashion_mnist_arrays(split, Path(root))
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        yield {"image": Image.fromarray(images[i], mode="L"), "label": int(labels[i])}


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, limit: int | None = None
):
    """The real Fashion-MNIST ``split`` as a ``datasets.Dataset`` (``image``: 28x28 ``L``,
    ``label``: ClassLabel with the 10 class names).

    Reads the files the Debian package ``dataset-fashion-mnist`` installs (or ``root``, or
    ``$FASHION_MNIST_DIR``); the arrow cache of ``datasets`` makes later loads instant. When the
    files are missing it falls back to the Hub dataset ``zalando-datasets/fashion_mnist``
    (online only), and otherwise raises :class:`DatasetUnavailableError` saying how to get it.
    ``limit`` keeps the first ``limit`` examples.

    Example:
        >>> ds = load_fashion_mnist("test", limit=100)
        >>> ds[0]["image"].size, ds.features["label"].names[ds[0]["label"]]
        ((28, 28), 'Ankle boot')
    """
    from datasets import Dataset

    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if (root / f"{_FILES.get(split, split)}-images-idx3-ubyte.gz").is_file():
        return Dataset.from_generator(
            _generate,
            features=_features(),
            gen_kwargs={"split": split, "root": str(root), "limit": limit},
        )
    try:
        from datasets import load_dataset

        ds = load_dataset(FASHION_MNIST_HUB_ID, split=split)
    except Exception as e:  # offline, or the Hub refused: one clear message
        raise DatasetUnavailableError(
            f"Fashion-MNIST not found in {root} and the Hub dataset {FASHION_MNIST_HUB_ID} "
            f"could not be loaded ({type(e).__name__}). Install the real files with "
            "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu) or set "
            "FASHION_MNIST_DIR to a folder with the four *-idx?-ubyte.gz files."
        ) from None
    return ds if limit is None else ds.select(range(min(limit, len(ds))))


def _encrypt_batch(batch: dict, key: SchemeKey, column: str, resize: str, decrypt: bool) -> dict:
    images = [prepare_image(img, key, resize) for img in batch[column]]
    stacked = np.stack([np.asarray(img) for img in images])  # (B, H, W) or (B, H, W, C)
    if key.channels == 1:
        stacked = stacked[..., None]
    out = (decrypt_array if decrypt else encrypt_array)(stacked, key, layout="HWC")
    mode = mode_for_channels(key.channels)
    batch[column] = [Image.fromarray(a.squeeze(-1) if key.channels == 1 else a, mode) for a in out]
    return batch


def encrypt_dataset(
    ds,
    key: SchemeKey,
    image_column: str = "image",
    *,
    num_proc: int | None = None,
    batch_size: int = 256,
    resize: str = "shorter-center-crop",
    decrypt: bool = False,
):
    """Encrypt the ``image_column`` of a ``datasets.Dataset`` with ``key`` (batched ``map``).

    Every image is prepared by :func:`timm_ppconvmixer.images.prepare_image` (the key's mode and
    size, by the ``resize`` policy: the same pixels as every other path), then encrypted as one
    batch gather; the result is stored losslessly (``datasets`` encodes new
    ``L``/``RGB`` images as PNG). Other columns and the features are preserved. The key is not
    stored anywhere in the dataset; pass ``decrypt=True`` (owner only) to invert.

    Example:
        >>> enc = encrypt_dataset(load_fashion_mnist("test", limit=8), key)  # doctest: +SKIP
        >>> enc.save_to_disk("fmnist-test-encrypted")  # doctest: +SKIP
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    if image_column not in ds.column_names:
        raise ValueError(f"no column {image_column!r} in the dataset (columns: {ds.column_names})")
    # datasets would fingerprint the map from its arguments, the key included, and store that
    # hash with the shared dataset: derive it from the key's salted fingerprint instead.
    params = (
        f"{getattr(ds, '_fingerprint', '')}/{key.fingerprint}/{image_column}/{resize}/{decrypt}"
    )
    return ds.map(
        _encrypt_batch,
        new_fingerprint=hashlib.sha256(params.encode()).hexdigest()[:16],
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        fn_kwargs={"key": key, "column": image_column, "resize": resize, "decrypt": decrypt},
        features=ds.features,
        desc="decrypting" if decrypt else "encrypting",
    )


def encrypt_saved_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: SchemeKey,
    *,
    image_column: str = "image",
    resize: str = "shorter-center-crop",
    num_proc: int | None = None,
) -> Path:
    """Encrypt a plain dataset saved with ``save_to_disk`` (``Dataset`` or ``DatasetDict``) into
    the ``save_to_disk`` folder ``dst``, with an ``ENCRYPTION.json`` of the key's public facts
    (as ``ppconvmixer encrypt`` writes for image folders). ``dst`` appears complete or not at
    all; if it already holds ``src`` encrypted with ``key``, nothing is redone.

    Example:
        >>> encrypt_saved_dataset("fmnist/", "fmnist-enc/", key)  # doctest: +SKIP
        PosixPath('fmnist-enc')
    """
    import json

    import datasets

    from ..atomic import atomic_folder, atomic_write_bytes
    from .folders.manifest import MANIFEST_NAME

    dst = Path(dst)
    if (dst / MANIFEST_NAME).is_file():
        made_with = json.loads((dst / MANIFEST_NAME).read_text(encoding="utf-8")).get("fingerprint")
        if made_with != key.fingerprint:
            raise FileExistsError(f"{dst} holds data encrypted with key {made_with}; use a new DST")
        return dst
    if dst.exists():
        raise FileExistsError(f"{dst} exists and holds no {MANIFEST_NAME}; use a new DST folder")
    ds = datasets.load_from_disk(str(src))
    kwargs = {"image_column": image_column, "resize": resize, "num_proc": num_proc}
    if isinstance(ds, datasets.DatasetDict):
        enc = datasets.DatasetDict({k: encrypt_dataset(v, key, **kwargs) for k, v in ds.items()})
    else:
        enc = encrypt_dataset(ds, key, **kwargs)
    manifest = {**key.describe(), "format": "datasets", "resize": resize}
    with atomic_folder(dst, mode=0o755) as tmp:
        enc.save_to_disk(str(tmp))
        atomic_write_bytes(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return dst
