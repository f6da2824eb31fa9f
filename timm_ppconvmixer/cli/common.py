"""What every ``ppconvmixer`` command shares: the one-line error, argument parsers, image I/O."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_FORMATS",
    "CLIError",
    "check_lossless",
    "open_image",
    "parse_floats",
    "parse_size",
]

# Lossless formats an encrypted image may be written in, by file suffix.
IMAGE_FORMATS = {
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".ppm": "PPM",
    ".pgm": "PPM",
}


class CLIError(Exception):
    """An error to report as one line, with a non-zero exit status."""


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 224 or 256x192)") from None
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 224 or HxW)")
    return size  # type: ignore[return-value]


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def check_lossless(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise CLIError(
            f"{path}: output must be a lossless format (.png, .bmp, .tif, .ppm/.pgm); lossy "
            "compression such as JPEG mixes pixels across block borders and breaks decryption"
        )


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{path}: cannot read image ({e})") from None
