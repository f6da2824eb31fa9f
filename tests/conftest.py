"""Shared fixtures: real image files on disk (PNG/JPEG written with PIL)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image


def write_image_folder(root, classes=("cat", "dog"), per_class=4, size=(40, 52), seed=0):
    """An ImageFolder tree of real PNG files with smooth random content."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (size[0] // 4 + 1, size[1] // 4 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            img.save(root / c / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


# -- an independent look for key material (not the package's leak guard) ----------------------


def _windows(seq: np.ndarray, width: int = 16) -> Iterator[np.ndarray]:
    n = min(width, len(seq))
    for start in range(len(seq) - n + 1):
        w = seq[start : start + n]
        if len(set(np.diff(w).tolist())) > 1:  # arithmetic runs (0, 1, 2, ...) prove nothing
            yield w


def key_encodings(key) -> dict[str, set[bytes]]:
    """Every secret field of a key of any scheme (``key.secret_items()``): 0/1 masks as 0/1
    strings and bytes, other fields (permutations and their inverses, rotation or channel codes)
    as text with common separators and as little-endian integers and floats; and the key file.
    Search text with :func:`holds_key_material`, which also looks with all whitespace removed
    (indented JSON)."""
    found: dict[str, set[bytes]] = {"key file": {key.to_json().encode()}}
    for field, values in key.secret_items():
        v = np.asarray(values).astype(np.int64)
        if v.max() <= 1:
            bits = v.reshape(-1).astype(np.uint8)
            mask = "".join(map(str, bits.tolist()))
            # as a 0/1 string from 16 bits (a 28/4 grey key has 16); as bytes only where long
            # enough not to occur by chance in binary files (a byte per bit from 32, packed
            # from 64)
            forms = {mask.encode(), ",".join(mask).encode()} if len(bits) >= 16 else set()
            forms |= {bits.tobytes()} if len(bits) >= 32 else set()
            forms |= {np.packbits(bits).tobytes()} if len(bits) >= 64 else set()
            found[field.name] = forms
            continue
        rows = v.reshape(-1, v.shape[-1])
        seqs = [(field.name, v.reshape(-1))]
        if all(np.array_equal(np.sort(r), np.arange(len(r))) for r in rows):  # permutations
            seqs.append((f"{field.name} inverse", np.argsort(rows, axis=1).reshape(-1)))
        for label, seq in seqs:
            forms = found.setdefault(label, set())
            for w in _windows(seq):
                for sep in (", ", ",", " ", ";", "\n", "\n- ", "-"):  # "-": YAML lists, stripped
                    forms.add(sep.join(map(str, w.tolist())).encode())
                dtypes = ["<u2", "<u4", "<u8", "<f4", "<f8"] + (["u1"] if w.max() < 256 else [])
                forms.update(w.astype(dt).tobytes() for dt in dtypes)
    return found


def holds_key_material(data: bytes, key) -> list[str]:
    """Which of :func:`key_encodings` occur in ``data``, as it is or with every whitespace
    character removed (so JSON written with any indent is searched too)."""
    views = (data, re.sub(rb"\s+", b"", data))
    return sorted(
        label
        for label, forms in key_encodings(key).items()
        if any(form in view for form in forms for view in views)
    )


@pytest.fixture(scope="module")
def fmnist():
    """Real Fashion-MNIST (the Debian package): ``(train (60000, 1, 28, 28) uint8, train
    labels, test (10000, 1, 28, 28) uint8)``; the attacks' data (train) and public prior (test)."""
    from timm_ppconvmixer.data import DatasetUnavailableError, fashion_mnist_arrays

    try:
        train, labels = fashion_mnist_arrays("train")
        test, _ = fashion_mnist_arrays("test")
    except DatasetUnavailableError as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(f"Fashion-MNIST not installed ({e}); apt-get install dataset-fashion-mnist")
    return train[:, None], labels, test[:, None]
