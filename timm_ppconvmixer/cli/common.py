"""What every ``ppconvmixer`` command shares: the one-line error, argument parsers, image I/O."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..key import ENCRYPT_ONLY_SCHEMES, per_image_encryption
from ..key import load_key as _load_key

__all__ = [
    "IMAGE_FORMATS",
    "CLIError",
    "add_key_source_arguments",
    "key_from_args",
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


def add_key_source_arguments(p: argparse.ArgumentParser) -> None:
    """``--key FILE`` (any scheme), or ``--scheme pe-per-image`` with its geometry."""
    p.add_argument("--key", help="key file, of any scheme (see 'ppconvmixer keygen --scheme')")
    p.add_argument(
        "--scheme",
        choices=ENCRYPT_ONLY_SCHEMES,
        help="pe-per-image: encrypt with a fresh key per image that nobody keeps (no --key; "
        "the images cannot be decrypted, by design); size from --image-size, --channels",
    )
    p.add_argument("--image-size", type=parse_size, help="with --scheme pe-per-image: 224 or HxW")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3), help="with --scheme")


def key_from_args(args: argparse.Namespace, decrypt: bool):
    """The key a command encrypts or decrypts with: a key file, or pe-per-image."""
    if args.scheme is None:
        if args.key is None:
            raise CLIError("pass --key FILE (or --scheme pe-per-image to encrypt without a key)")
        return _load_key(args.key)
    if decrypt:
        raise CLIError(
            f"{args.scheme} cannot be decrypted, by design: every image was encrypted with a "
            "fresh key that was never stored"
        )
    if args.key is not None:
        raise CLIError(f"--scheme {args.scheme} uses no key file: drop --key")
    if args.image_size is None:
        raise CLIError(f"--scheme {args.scheme} needs --image-size (e.g. 224 or 256x192)")
    return per_image_encryption(args.image_size, args.channels)
