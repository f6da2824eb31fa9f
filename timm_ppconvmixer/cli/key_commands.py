"""Commands on one key or one item: ``keygen``, ``key-info``, ``encrypt-image``,
``decrypt-image`` and ``convert``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..atomic import atomic_save
from ..cipher import decrypt, encrypt
from ..images import prepare_image
from ..key import SCHEMES, BlockKey, generate_key, load_key
from .common import (
    IMAGE_FORMATS,
    CLIError,
    add_key_source_arguments,
    check_lossless,
    key_from_args,
    open_image,
    parse_floats,
    parse_size,
)

__all__ = ["add_key_parsers"]


def add_key_parsers(sub: argparse._SubParsersAction) -> None:
    """``keygen``, ``key-info``, ``encrypt-image``, ``decrypt-image``, ``convert``."""
    p = sub.add_parser("keygen", help="generate a secret key file (mode 0600)")
    p.add_argument("output", help="path of the key file to write")
    p.add_argument(
        "--scheme",
        choices=SCHEMES,
        default="blockwise",
        help="blockwise (default: the paper's scheme), le, ele, etc or pe; see docs/design.md. "
        "Only blockwise has a security evaluation so far",
    )
    p.add_argument("--image-size", type=parse_size, default=(224, 224), help="224 or HxW")
    p.add_argument(
        "--block-size", type=int, default=None, help="block (= patch) size M (16; pe: 1)"
    )
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
        add_key_source_arguments(p)
        p.add_argument("input")
        p.add_argument("output", help="lossless output file (.png recommended); never INPUT")
        p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
        p.set_defaults(func=lambda a, inv=inverse: _cmd_image(a, inv))
    p = sub.add_parser(
        "convert",
        help="turn a plain ConvMixer into an exactly equivalent encrypted-domain model",
        description="Convert a timm ConvMixer (patch size = the key's block size) into a "
        "PPConvMixer that gives the same logits on images encrypted with KEY. The output folder "
        "(model.safetensors + config.json) loads with timm.create_model('local-dir:OUT'). "
        "Example: ppconvmixer convert --key owner.key --model convmixer_768_32.in1k OUT (key: "
        "224x224, --block-size 7). The converted weights reveal much of the key to anyone "
        "holding the plain model (for timm's models: anyone): keep OUT as private as the key.",
    )
    p.add_argument("--key", required=True, help="key file")
    p.add_argument(
        "--model",
        required=True,
        help="timm model name, local-dir:PATH or hf-hub:ID; a tagged name such as "
        "convmixer_768_32.in1k loads those weights through timm (its cache, HF_HUB_OFFLINE)",
    )
    p.add_argument("--checkpoint", help="weights to load (.safetensors or a timm checkpoint)")
    p.add_argument(
        "--pretrained", action="store_true", help="load an untagged model's default weights"
    )
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--mean", type=parse_floats, help="normalisation mean, e.g. 0.5,0.5,0.5")
    p.add_argument("--std", type=parse_floats, help="normalisation std")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("output", help="folder to write")
    p.set_defaults(func=_cmd_convert)


def _cmd_keygen(args: argparse.Namespace) -> None:
    block_size = args.block_size
    if block_size is None:
        block_size = 1 if args.scheme == "pe" else 16
    key = generate_key(
        args.scheme,
        image_size=args.image_size,
        block_size=block_size,
        channels=args.channels,
        seed=args.seed,
    )
    key.save(args.output, overwrite=args.overwrite)
    print(f"wrote {args.output} (mode 0600): {key}")
    if args.seed is not None:
        print("warning: a seeded key is reproducible by anyone who knows the seed; demos only")


def _cmd_key_info(args: argparse.Namespace) -> None:
    key = load_key(args.key)
    print(json.dumps(key.describe(), indent=2))


def _check_image_output(source: Path, out: Path, overwrite: bool) -> None:
    """Refuse an OUTPUT that would destroy data: the input itself (the resize to the key's size
    cannot be undone), or any existing file unless --overwrite, as keygen and convert."""
    if out.exists() and source.exists() and os.path.samefile(source, out):
        raise CLIError(
            f"{out}: the output is the input; write the result to another file (the input "
            "would be lost)"
        )
    if out.exists() and not overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it, or choose another output")


def _cmd_image(args: argparse.Namespace, inverse: bool) -> None:
    out = Path(args.output)
    _check_image_output(Path(args.input), out, args.overwrite)
    key = key_from_args(args, decrypt=inverse)
    check_lossless(out)
    img = open_image(Path(args.input))
    if inverse:
        if img.size != (key.image_size[1], key.image_size[0]):
            raise CLIError(
                f"{args.input}: encrypted image is {img.width}x{img.height}, the key expects "
                f"{key.image_size[1]}x{key.image_size[0]} (WxH)"
            )
        result = decrypt(img, key)
    else:
        result = encrypt(prepare_image(img, key), key)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, lambda f: result.save(f, format=IMAGE_FORMATS[out.suffix.lower()]))
    print(f"wrote {out}")


def _load_source_model(args: argparse.Namespace):
    import timm
    from timm.models import load_checkpoint

    # a tagged name (convmixer_768_32.in1k), hf-hub: or local-dir: names its weights itself
    pretrained = args.pretrained or (args.checkpoint is None and _names_weights(args.model))
    if args.checkpoint is None and not pretrained:
        raise CLIError(
            "no weights to convert: pass a tagged name (e.g. convmixer_768_32.in1k), "
            "--checkpoint FILE or --pretrained"
        )
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        model = timm.create_model(args.model, pretrained=pretrained, **kwargs)
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


def _names_weights(name: str) -> bool:
    from timm.models import split_model_name_tag

    return name.startswith(("hf-hub:", "local-dir:")) or bool(split_model_name_tag(name)[1])


def _cmd_convert(args: argparse.Namespace) -> None:
    from ..hub import save_model_folder
    from ..keyed.convert import ConversionError, encrypt_model  # scipy: only when converting
    from ..models.registry import with_cfg_fields

    key = BlockKey.load(args.key)
    source = _load_source_model(args)
    try:
        converted = encrypt_model(source, key, mean=args.mean, std=args.std)
    except ConversionError as e:
        raise CLIError(str(e)) from None
    if args.checkpoint is None:
        # published weights (a timm tag, hf-hub:, local-dir:): their stem gives the key back
        # against the public one, so the folder says which weights it converted and the leak
        # guard refuses to share it unless told the user accepts that
        with_cfg_fields(converted, converted_from=args.model)
    out = save_model_folder(converted, args.output, overwrite=args.overwrite)
    print(f"wrote {out} (key {key.fingerprint}); load it with timm.create_model('local-dir:{out}')")
