"""One image path: every way into the cipher prepares an image alike (mode, resize, crop).

Real image files of odd sizes and modes go through the four entry points (`ppconvmixer
encrypt-image`, folder encryption, `encrypt_dataset`, timm's eval pipeline from
`create_transform`), which must give identical encrypted pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.cli import main
from timm_ppconvmixer.data import encrypt_dataset
from timm_ppconvmixer.data.folders import encrypt_folder
from timm_ppconvmixer.images import ImagePolicyError, prepare_image, to_key_mode
from timm_ppconvmixer.transforms import create_transform

SIZES = [(60, 45), (61, 33), (224, 225)]  # (W, H)
MODES = ["RGB", "RGBA", "P", "L", "I;16"]


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Photo-like (smooth) content in ``mode``; RGBA has a varying alpha, P a transparent
    palette entry, I;16 values above 255 (which an 8-bit clip would flatten)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 4), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGBA").resize((w, h), Image.Resampling.BILINEAR))
    if mode == "RGBA":
        return Image.fromarray(smooth, "RGBA")
    rgb = Image.fromarray(np.ascontiguousarray(smooth[..., :3]), "RGB")
    if mode == "P":
        img = rgb.quantize(colors=32)
        img.info["transparency"] = 3
        return img
    if mode == "I;16":
        return Image.fromarray(smooth[..., 0].astype(np.uint16) * 257 + 3)  # 16-bit grey
    return rgb.convert(mode)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("plain")
    paths = []
    for i, size in enumerate(SIZES):
        for j, mode in enumerate(MODES):
            path = root / "cls" / f"{mode.replace(';', '')}_{size[0]}x{size[1]}.png"
            path.parent.mkdir(exist_ok=True)
            img = _image(mode, size, seed=10 * i + j)
            img.save(path)
            with Image.open(path) as check:  # the file keeps the mode under test
                assert check.mode == mode or (mode == "I;16" and check.mode.startswith("I"))
            paths.append(path)
    return paths


KEYS = {
    "rgb-square": BlockKey.generate(32, 8, channels=3, seed=1),
    "grey-oblong": BlockKey.generate((24, 40), 8, channels=1, seed=2),
}


def _chw(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@pytest.mark.parametrize("key_name", sorted(KEYS))
def test_four_paths_give_identical_encrypted_pixels(files, key_name, tmp_path):
    key = KEYS[key_name]
    key_file = key.save(tmp_path / "owner.key")

    by_cli = {}
    for path in files:
        out = tmp_path / "cli" / f"{path.stem}.png"
        assert main(["encrypt-image", "--key", str(key_file), str(path), str(out)]) == 0
        by_cli[path.stem] = _chw(np.asarray(Image.open(out)))

    encrypt_folder(files[0].parent.parent, tmp_path / "folder", key, workers=1, progress=False)
    by_folder = {
        p.stem: _chw(np.asarray(Image.open(tmp_path / "folder" / "cls" / f"{p.stem}.png")))
        for p in files
    }

    ds = Dataset.from_dict({"image": [str(p) for p in files]}).cast_column("image", ImageFeature())
    enc = encrypt_dataset(ds, key, batch_size=4)
    by_dataset = {p.stem: _chw(np.asarray(enc[i]["image"])) for i, p in enumerate(files)}

    served = create_transform(key, is_training=False, use_prefetcher=True)
    by_timm = {}
    for path in files:
        with Image.open(path) as img:
            out = served(img)
        assert out.dtype == torch.uint8
        by_timm[path.stem] = out.numpy()

    expected_shape = (key.channels, *key.image_size)
    for path in files:
        name = path.stem
        assert by_cli[name].shape == expected_shape, name
        for other in (by_folder, by_dataset, by_timm):
            assert np.array_equal(by_cli[name], other[name]), name


def test_transparency_is_composited_on_white_everywhere():
    clear = Image.new("RGBA", (8, 8), (10, 200, 30, 0))
    assert to_key_mode(clear, 3).getpixel((0, 0)) == (255, 255, 255)
    assert to_key_mode(clear.convert("LA"), 1).getpixel((0, 0)) == 255
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert to_key_mode(half, 3).getpixel((0, 0)) == (127, 127, 127)


def test_sixteen_bit_grey_keeps_its_high_byte():
    img = Image.fromarray(np.array([[0, 255, 256, 65535]], dtype=np.uint16))
    assert np.asarray(to_key_mode(img, 1)).tolist() == [[0, 0, 1, 255]]


def test_unusable_images_get_one_clear_error():
    key = KEYS["rgb-square"]
    with pytest.raises(ImagePolicyError, match="floating-point"):
        to_key_mode(Image.new("F", (4, 4)), 3)
    with pytest.raises(ImagePolicyError, match="the key needs 32x32"):
        prepare_image(Image.new("RGB", (40, 32)), key, resize="exact")
    with pytest.raises(ImagePolicyError, match="resize must be one of"):
        prepare_image(Image.new("RGB", (40, 32)), key, resize="zoom")
    with pytest.raises(ImagePolicyError, match="no PIL image mode"):
        to_key_mode(Image.new("RGB", (4, 4)), 2)
