"""The ``ppconvmixer`` command: a thin layer over the package's modules.

Every subcommand exits non-zero with one clear ``error:`` line on bad input; keys are never
printed, only their fingerprints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .atomic import atomic_save
from .cipher import CipherInputError, decrypt, encrypt
from .folders import RESIZE_POLICIES, BadImagesError, FolderError, encrypt_folder
from .hub import HubError, load_model, push_to_hub, read_metrics_file, recipe_from_file
from .images import ImagePolicyError, prepare_image
from .key import BlockKey, InvalidKeyError

# Lossless formats an encrypted image may be written in, by file suffix.
_FORMATS = {
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".ppm": "PPM",
    ".pgm": "PPM",
}


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
    if path.suffix.lower() not in _FORMATS:
        raise CLIError(
            f"{path}: output must be a lossless format (.png, .bmp, .tif, .ppm/.pgm); lossy "
            "compression such as JPEG mixes pixels across block borders and breaks decryption"
        )


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{path}: cannot read image ({e})") from None


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
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, lambda f: result.save(f, format=_FORMATS[out.suffix.lower()]))
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
    from .convert import ConversionError, encrypt_model  # scipy: only when converting
    from .hub import save_model_folder

    key = BlockKey.load(args.key)
    source = _load_source_model(args)
    try:
        converted = encrypt_model(source, key, mean=args.mean, std=args.std)
    except ConversionError as e:
        raise CLIError(str(e)) from None
    out = save_model_folder(converted, args.output, overwrite=args.overwrite)
    print(f"wrote {out} (key {key.fingerprint}); load it with timm.create_model('local-dir:{out}')")


def _add_folder_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``encrypt`` and ``decrypt`` subcommands to the ``ppconvmixer`` command."""
    p = subparsers.add_parser(
        "encrypt",
        help="encrypt an image folder tree (ImageFolder layout) into PNG files",
        description="Encrypt every image below SRC into the same relative tree below DST, as "
        "PNG (class/x.jpg -> class/x.png): converted to the key's channels, resized to the "
        "key's size, encrypted. Runs in parallel; an interrupted run resumes where it stopped "
        "when run again. DST gets ENCRYPTION.json with the key's fingerprint, never the key. "
        "Unreadable images fail the run after all others are written, unless --skip-bad.",
    )
    _add_common_arguments(p)
    p.add_argument(
        "--resize",
        choices=RESIZE_POLICIES,
        default=RESIZE_POLICIES[0],
        help="shorter-center-crop (default): resize the shorter side, crop the centre; "
        "stretch: resize to exactly the key's size; exact: refuse images of another size",
    )
    p.add_argument("--format", default="png", help="output format; only png (lossless)")
    p.set_defaults(func=_cmd_folder, decrypt=False)

    p = subparsers.add_parser(
        "decrypt",
        help="decrypt an encrypted folder tree (owner only)",
        description="Decrypt every image below SRC (as written by 'ppconvmixer encrypt') into "
        "the same relative tree below DST, as PNG. Images must have the key's size.",
    )
    _add_common_arguments(p)
    p.set_defaults(func=_cmd_folder, decrypt=True, resize=RESIZE_POLICIES[0], format="png")


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="key file")
    p.add_argument("src", help="input folder tree")
    p.add_argument("dst", help="output folder (created; resumed if an earlier run stopped)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument(
        "--skip-bad", action="store_true", help="list unreadable images instead of failing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_folder(args: argparse.Namespace) -> None:
    """Handler of ``ppconvmixer encrypt`` / ``decrypt``: prints the report as JSON.

    Errors end as one ``CLIError`` line (after one line per bad image on stderr).
    """
    key = BlockKey.load(args.key)
    try:
        report = encrypt_folder(
            args.src,
            args.dst,
            key,
            workers=args.workers,
            resize=args.resize,
            skip_bad=args.skip_bad,
            decrypt=args.decrypt,
            progress=not args.no_progress,
            output_format=args.format,
        )
    except BadImagesError as e:
        for bad in e.report.bad:
            print(f"bad image: {bad.path}: {bad.reason}", file=sys.stderr)
        raise CLIError(str(e)) from None
    except FolderError as e:
        raise CLIError(str(e)) from None
    except KeyboardInterrupt:
        raise CLIError(
            "interrupted; every finished file is kept: run the same command again to resume"
        ) from None
    print(json.dumps(report.to_dict(), indent=2))


def _add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    """``ppconvmixer push``: export with a key-free card, scan, upload."""
    p = subparsers.add_parser(
        "push",
        help="export a model with a key-free card and upload it to the Hugging Face Hub",
        description="Export MODEL (model.safetensors + config.json, a model card with the key's "
        "fingerprint only) and upload it with huggingface_hub. Every file is scanned for key "
        "material first; pass --key so the scan knows what to look for. Pull it back with "
        "timm.create_model('hf-hub:REPO_ID', pretrained=True) after import timm_ppconvmixer.",
    )
    p.add_argument(
        "model", help="model folder (model.safetensors + config.json), local-dir:PATH or hf-hub:ID"
    )
    p.add_argument("repo_id", help="Hub repository, e.g. me/ppconvmixer_256_8.fmnist")
    p.add_argument("--key", help="the owner's key file, for the leak guard (never uploaded)")
    p.add_argument("--metrics", help="JSON: {'top1_key': 0.91, ...} or recipes' final_metrics.json")
    p.add_argument("--dataset", help="Hub dataset id the metrics were measured on")
    p.add_argument("--recipe", help="training recipe file to show in the card (e.g. YAML config)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (created if missing)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--commit-message", default="Upload PPConvMixer model")
    p.add_argument(
        "--allow-key-derived-weights",
        action="store_true",
        help="publish a model whose P is exactly the key's block permutation (reveals it)",
    )
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> None:
    key = BlockKey.load(args.key) if args.key else None
    metrics = read_metrics_file(args.metrics) if args.metrics else None
    recipe = recipe_from_file(args.recipe) if args.recipe else None
    model = load_model(args.model)
    push_to_hub(
        model,
        args.repo_id,
        key=key,
        private=args.private,
        revision=args.revision,
        token=args.token,
        commit_message=args.commit_message,
        metrics=metrics,
        dataset=args.dataset,
        recipe=recipe,
        license=args.license,
        allow_key_derived_weights=args.allow_key_derived_weights,
    )


def _add_dataset_hub_parsers(subparsers: argparse._SubParsersAction) -> None:
    """``encrypt ... --push-to-hub``, ``evaluate`` (owner) and ``check-data`` (provider)."""
    p = subparsers.choices["encrypt"]
    p.description += (
        " SRC may also be a plain dataset saved with datasets' save_to_disk: DST is then the "
        "encrypted save_to_disk copy. --push-to-hub then pushes DST to a Hub dataset repository "
        "(sharded parquet and a key-free card; every file is scanned for key material first; "
        "pushing again sends nothing new)."
    )
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="push DST as a Hub dataset")
    p.add_argument("--max-shard-size", default="500MB", help="parquet shard size (default 500MB)")
    p.add_argument("--public", action="store_true", help="create the repository public")
    p.add_argument("--license", default="other", help="license for the dataset card")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.set_defaults(func=_cmd_encrypt)

    p = subparsers.add_parser(
        "evaluate",
        help="owner: top-1 of a model with the key, on plain images and with a wrong key",
        description="Evaluate MODEL on DATA three ways: images encrypted with KEY, plain images, "
        "and images encrypted with a fresh wrong key. Prints JSON (top-1 as fractions). DATA is "
        "hfds/OWNER/NAME (an encrypted Hub dataset: decrypted with the key), a save_to_disk "
        "folder or an encrypted folder. --push-card writes the numbers into the model card's "
        "model-index on the Hub (key-free, scanned for key material first).",
    )
    p.add_argument("model", help="hf-hub:ID, local-dir:PATH or a model folder")
    p.add_argument("data", help="hfds/OWNER/NAME, hub:OWNER/NAME or a folder")
    p.add_argument("--key", required=True, help="the owner's key file (never uploaded)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="evaluate the first N examples only")
    p.add_argument("--encrypted", action="store_true", help="DATA is encrypted (default: plain "
                   "unless its card or ENCRYPTION.json records a key)")  # fmt: skip
    p.add_argument("--output", help="also write the results to this JSON file")
    p.add_argument("--push-card", action="store_true", help="update MODEL's card (hf-hub: only)")
    p.add_argument("--dataset-id", help="Hub dataset id for the card (default: DATA's)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser(
        "check-data",
        help="provider: check that DATA and a model are for the same key before training",
        description="Exit 0 if DATA (hfds/OWNER/NAME or an encrypted folder) records the key "
        "fingerprint MODEL records (or --fingerprint); else one error line. timm's train.py "
        "runs the same check itself with --device-modules timm_ppconvmixer.hub.train_guard.",
    )
    p.add_argument("data", help="hfds/OWNER/NAME, hub:OWNER/NAME or a folder")
    p.add_argument("--model", help="hf-hub:ID, local-dir:PATH or a model folder")
    p.add_argument("--fingerprint", help="the key fingerprint the model will record")
    p.set_defaults(func=_cmd_check_data)


def _cmd_encrypt(args: argparse.Namespace) -> None:
    from .data import encrypt_saved_dataset
    from .hub import push_encrypted_dataset

    src = Path(args.src)
    if (src / "dataset_dict.json").is_file() or (src / "state.json").is_file():
        key = BlockKey.load(args.key)
        workers = args.workers if args.workers > 1 else None
        out = encrypt_saved_dataset(src, args.dst, key, resize=args.resize, num_proc=workers)
        print(f"wrote {out} (key {key.fingerprint})")
    else:
        _cmd_folder(args)
    if args.push_to_hub:
        push_encrypted_dataset(args.dst, args.push_to_hub, key=BlockKey.load(args.key),
                               max_shard_size=args.max_shard_size, private=not args.public,
                               license=args.license, token=args.token)  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .atomic import atomic_write_bytes
    from .hub import evaluate_with_key, push_evaluation

    key = BlockKey.load(args.key)
    if args.push_card and not args.model.startswith("hf-hub:"):
        raise CLIError("--push-card updates a Hub model card: MODEL must be hf-hub:OWNER/NAME")
    results = evaluate_with_key(args.model, args.data, key, split=args.split, limit=args.limit,
                                encrypted=args.encrypted or None, token=args.token)  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        atomic_write_bytes(args.output, (text + "\n").encode())
    if args.push_card:
        repo = args.model[len("hf-hub:") :]
        url = push_evaluation(repo, results, key=key, dataset=args.dataset_id, token=args.token)
        print(f"updated the model card: {url}")


def _cmd_check_data(args: argparse.Namespace) -> None:
    from .hub import check_key_fingerprints, dataset_key_fingerprint, model_key_fingerprints

    recorded = model_key_fingerprints(args.model) if args.model else []
    recorded += [args.fingerprint] if args.fingerprint else []
    fingerprint = check_key_fingerprints(
        dataset_key_fingerprint(args.data), recorded, args.data, "--fingerprint"
    )
    print(f"ok: {args.data} and the model are for key {fingerprint}")


def _add_attack_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attack",
        help="attack encrypted data the way the provider could, and report what falls",
        description="Recover the key from ENCRYPTED alone (ciphertext-only: flip mask and pixel "
        "shuffling from correlations between positions, block order by a jigsaw solver pooled "
        "over all images), decrypt with the estimate, and write REPORT/report.md, result.json, "
        "figures and the recovered key (REPORT/recovered.key, mode 0600; never in the report). "
        "ENCRYPTED is an encrypted image folder (ENCRYPTION.json) or a saved datasets dataset. "
        "With --key (owner only) the report scores the attack against the true key; with "
        "--plain against the plain images. See docs/security.md for what was measured.",
    )
    p.add_argument("encrypted", help="encrypted image folder or saved dataset")
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument("--key", help="the owner's key file, to score the attack (never written)")
    p.add_argument("--plain", help="the plain images, in the same order, to score against")
    p.add_argument("--limit", type=int, help="attack only the first N images")
    p.add_argument(
        "--reference",
        help="public plain images of the same kind for the orientation prior (folder, saved "
        "dataset, or 'fashion-mnist'); default: a data-free prior",
    )
    p.add_argument("--block-size", type=int, help="M, for a dataset without ENCRYPTION.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_attack)


def _cmd_attack(args: argparse.Namespace) -> None:
    from .attacks import AttackInputError, run_attack  # scipy and matplotlib: only here

    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be a positive number of images, got {args.limit}")
    try:
        result = run_attack(
            args.encrypted,
            args.out,
            key=args.key,
            plain=args.plain,
            limit=args.limit,
            progress=not args.no_progress,
            reference=args.reference,
            block_size=args.block_size,
        )
    except AttackInputError as e:
        raise CLIError(str(e)) from None
    print(json.dumps({"images": result["images"], "last_step": result["steps"][-1]}, indent=2))
    print(f"wrote {Path(args.out) / 'report.md'} (recovered key: {result['recovered_key_file']})")


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

    _add_folder_parsers(sub)
    _add_push_parser(sub)
    _add_dataset_hub_parsers(sub)
    _add_attack_parser(sub)
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
        ImagePolicyError,
        OSError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
