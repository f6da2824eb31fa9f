"""Commands on datasets: ``encrypt`` / ``decrypt`` for image folder trees and saved datasets
(optionally pushed to the Hub), the owner's ``evaluate`` and the provider's ``check-data``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.folders import RESIZE_POLICIES, BadImagesError, FolderError, encrypt_folder
from ..key import load_key
from .common import CLIError, add_key_source_arguments, key_from_args

__all__ = ["add_data_parsers"]


def add_data_parsers(subparsers: argparse._SubParsersAction) -> None:
    """``encrypt``, ``decrypt``, ``evaluate``, ``check-data``."""
    _add_folder_parsers(subparsers)
    _add_dataset_hub_parsers(subparsers)


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
    add_key_source_arguments(p)
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
    key = key_from_args(args, decrypt=args.decrypt)
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
        "model-index on the Hub (key-free, scanned for key material first), committed to the "
        "branch MODEL names (hf-hub:OWNER/NAME@BRANCH; default main) or to --revision BRANCH "
        "(needed when MODEL names a tag or a commit); the branch is checked before evaluating.",
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
    p.add_argument("--revision", help="with --push-card: the branch whose card gets the numbers "
                   "(default: the branch MODEL names, else main)")  # fmt: skip
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
    from ..data.datasets import encrypt_saved_dataset
    from ..hub import push_encrypted_dataset

    src = Path(args.src)
    key = key_from_args(args, decrypt=False)
    if (src / "dataset_dict.json").is_file() or (src / "state.json").is_file():
        workers = args.workers if args.workers > 1 else None
        out = encrypt_saved_dataset(src, args.dst, key, resize=args.resize, num_proc=workers)
        print(f"wrote {out} (key {key.fingerprint})")
    else:
        _cmd_folder(args)
    if args.push_to_hub:
        push_encrypted_dataset(args.dst, args.push_to_hub, key=key,
                               max_shard_size=args.max_shard_size, private=not args.public,
                               license=args.license, token=args.token)  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ..atomic import atomic_write_bytes
    from ..hub import evaluate_with_key, push_evaluation
    from ..hub.evaluate import card_branch, split_revision

    key = load_key(args.key)
    if args.revision and not args.push_card:
        raise CLIError("--revision names the branch --push-card commits to: add --push-card")
    if args.push_card and not args.model.startswith("hf-hub:"):
        raise CLIError("--push-card updates a Hub model card: MODEL must be hf-hub:OWNER/NAME")
    if args.push_card:  # before the evaluation: a card the Hub cannot take wastes none
        repo, evaluated = split_revision(args.model)
        branch = card_branch(repo, evaluated, args.revision, token=args.token)
    results = evaluate_with_key(args.model, args.data, key, split=args.split, limit=args.limit,
                                encrypted=args.encrypted or None, token=args.token)  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        atomic_write_bytes(args.output, (text + "\n").encode())
    if args.push_card:
        url = push_evaluation(repo, results, key=key, dataset=args.dataset_id, revision=branch,
                              token=args.token,
                              commit_message=f"Owner's evaluation of {args.model} with the key "
                              "(model-index)")  # fmt: skip
        print(f"updated the model card on branch {branch}: {url}")


def _cmd_check_data(args: argparse.Namespace) -> None:
    from ..hub import check_key_fingerprints, dataset_key_fingerprint, model_key_fingerprints

    recorded = model_key_fingerprints(args.model) if args.model else []
    recorded += [args.fingerprint] if args.fingerprint else []
    fingerprint = check_key_fingerprints(
        dataset_key_fingerprint(args.data), recorded, args.data, "--fingerprint"
    )
    print(f"ok: {args.data} and the model are for key {fingerprint}")
