"""Shared fixtures: real image files on disk (PNG/JPEG written with PIL)."""

from __future__ import annotations

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
