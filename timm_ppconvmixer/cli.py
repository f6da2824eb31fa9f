"""The ``ppconvmixer`` command: a thin layer over the package's modules.

Every subcommand exits non-zero with one clear ``error:`` line on bad input; keys are never
printed, only their fingerprints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .cipher import CipherInputError, decrypt, encrypt
from .hub import HubError, add_push_parser
from .key import BlockKey, InvalidKeyError

LOSSLESS_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"}


class CLIError(Exception):
    """An error to report as one line, with a non-zero exit status."""


def _parse_size(text: str) -> tuple[int, int]:
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


def _check_lossless(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".webp" or suffix not in LOSSLESS_SUFFIXES:
        raise CLIError(
            f"{path}: output must be a lossless format (.png, .bmp, .tif, .ppm/.pgm); lossy "
            "compression such as JPEG mixes pixels across block borders and breaks decryption"
        )


def save_image_atomic(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` through a temporary file and a rename (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{path}: cannot read image ({e})") from None


def prepare_image(img: Image.Image, key: BlockKey) -> Image.Image:
    """Convert to the key's channels, resize the short side and centre-crop to the key's size."""
    from .transforms import ConvertImageMode

    img = ConvertImageMode({1: "L", 3: "RGB"}[key.channels])(img)
    h, w = key.image_size
    scale = max(h / img.height, w / img.width)
    size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def _cmd_keygen(args: argparse.Namespace) -> None:
    key = BlockKey.generate(args.image_size, args.block_size, args.channels, seed=args.seed)
    key.save(args.output, overwrite=args.overwrite)
    print(f"wrote {args.output} (mode 0600): {key}")
    if args.seed is not None:
        print("warning: a seeded key is reproducible by anyone who knows the seed; demos only")


def _cmd_key_info(args: argparse.Namespace) -> None:
    key = BlockKey.load(args.key)
    print(json.dumps(key.describe(), indent=2))


def _cmd_image(args: argparse.Namespace, inverse: bool) -> None:
    key = BlockKey.load(args.key)
    out = Path(args.output)
    _check_lossless(out)
    img = _open_image(Path(args.input))
    if inverse:
        if img.size != (key.image_size[1], key.image_size[0]):
            raise CLIError(
                f"{args.input}: encrypted image is {img.width}x{img.height}, the key expects "
                f"{key.image_size[1]}x{key.image_size[0]} (WxH)"
            )
        result = decrypt(img, key)
    else:
        result = encrypt(prepare_image(img, key), key)
    save_image_atomic(result, out)
    print(f"wrote {out}")


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def _load_source_model(args: argparse.Namespace):
    import timm
    from timm.models import load_checkpoint

    if args.checkpoint is None and not args.pretrained:
        raise CLIError("no weights to convert: pass --checkpoint FILE or --pretrained")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except RuntimeError as e:  # unknown model name, failed download
        raise CLIError(f"cannot create model {args.model!r}: {e}") from None
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise CLIError(f"{path}: no such checkpoint file")
        try:
            load_checkpoint(model, str(path), strict=True)
        except RuntimeError as e:
            first_line = str(e).splitlines()[0]
            raise CLIError(f"{path}: does not fit {args.model} ({first_line})") from None
    return model.eval()


def _cmd_convert(args: argparse.Namespace) -> None:
    from .convert import ConversionError, encrypt_model
    from .hub import save_model_folder

    key = BlockKey.load(args.key)
    source = _load_source_model(args)
    try:
        converted = encrypt_model(source, key, mean=args.mean, std=args.std)
    except ConversionError as e:
        raise CLIError(str(e)) from None
    out = save_model_folder(converted, args.output, overwrite=args.overwrite)
    print(f"wrote {out} (key {key.fingerprint}); load it with timm.create_model('local-dir:{out}')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppconvmixer",
        description="Privacy-preserving image classification with block-wise encrypted images "
        "and ConvMixer with an adaptive permutation matrix. Keys stay with the data owner; "
        "only their fingerprints are ever printed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="generate a secret key file (mode 0600)")
    p.add_argument("output", help="path of the key file to write")
    p.add_argument("--image-size", type=_parse_size, default=(224, 224), help="224 or HxW")
    p.add_argument("--block-size", type=int, default=16, help="block (= patch) size M")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--seed", type=int, default=None, help="reproducible key (tests/demos only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key file")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("key-info", help="show a key's public facts and fingerprint")
    p.add_argument("key")
    p.set_defaults(func=_cmd_key_info)

    for name, inverse, text in (
        ("encrypt-image", False, "resize/crop an image to the key's size and encrypt it"),
        ("decrypt-image", True, "decrypt an encrypted image (owner only)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--key", required=True, help="key file")
        p.add_argument("input")
        p.add_argument("output", help="lossless output file (.png recommended)")
        p.set_defaults(func=lambda a, inv=inverse: _cmd_image(a, inv))
    p = sub.add_parser(
        "convert",
        help="turn a plain ConvMixer into an exactly equivalent encrypted-domain model",
        description="Convert a timm ConvMixer (patch size = the key's block size) into a "
        "PPConvMixer that gives the same logits on images encrypted with KEY. The output folder "
        "(model.safetensors + config.json) loads with timm.create_model('local-dir:OUT'). The "
        "converted weights reveal much of the key to anyone holding the plain model.",
    )
    p.add_argument("--key", required=True, help="key file")
    p.add_argument("--model", required=True, help="timm model name, local-dir:PATH or hf-hub:ID")
    p.add_argument("--checkpoint", help="weights to load (.safetensors or a timm checkpoint)")
    p.add_argument("--pretrained", action="store_true", help="load the model's own weights")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--mean", type=_parse_floats, help="normalisation mean, e.g. 0.5,0.5,0.5")
    p.add_argument("--std", type=_parse_floats, help="normalisation std")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("output", help="folder to write")
    p.set_defaults(func=_cmd_convert)

    from .folders import add_folder_parsers  # `encrypt` / `decrypt` for folder trees

    add_folder_parsers(sub)
    add_push_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (
        CLIError,
        InvalidKeyError,
        CipherInputError,
        FileExistsError,
        FileNotFoundError,
        HubError,
        OSError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
