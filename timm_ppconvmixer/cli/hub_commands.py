"""Commands that share: ``push`` (a model to the Hub) and ``attack`` (the security evaluation
of encrypted data, as the provider could run it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..hub import load_model, push_to_hub, read_metrics_file, recipe_from_file
from ..key import load_key
from .common import CLIError

__all__ = ["add_attack_parser", "add_push_parser"]


def add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    """``ppconvmixer push``: export with a key-free card, scan, upload."""
    p = subparsers.add_parser(
        "push",
        help="export a model with a key-free card and upload it to the Hugging Face Hub",
        description="Export MODEL (model.safetensors + config.json, a model card with the key's "
        "fingerprint only) and upload it with huggingface_hub. MODEL may be a timm train.py "
        "checkpoint: the model is rebuilt from its arch and args (the optimizer and the training "
        "arguments are not uploaded), with --ema its EMA weights. Every file is scanned for key "
        "material first; pass --key so the scan knows what to look for. Pull it back with "
        "timm.create_model('hf-hub:REPO_ID', pretrained=True) after import timm_ppconvmixer.",
    )
    p.add_argument(
        "model",
        help="model folder (model.safetensors + config.json), local-dir:PATH, hf-hub:ID, or a "
        "timm train.py checkpoint (last.pth.tar, model_best.pth.tar)",
    )
    p.add_argument("repo_id", help="Hub repository, e.g. me/ppconvmixer_256_8.fmnist")
    p.add_argument("--key", help="the owner's key file, for the leak guard (never uploaded)")
    p.add_argument(
        "--ema", action="store_true", help="push a train.py checkpoint's EMA weights (--model-ema)"
    )
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
    key = load_key(args.key) if args.key else None
    metrics = read_metrics_file(args.metrics) if args.metrics else None
    recipe = recipe_from_file(args.recipe) if args.recipe else None
    model = load_model(args.model, ema=args.ema)
    if key is not None and getattr(model, "key_fingerprint", "") is None:
        # a train.py checkpoint records no fingerprint: the owner's key names the domain
        model.key_fingerprint = key.fingerprint
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


def add_attack_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attack",
        help="attack encrypted data the way the provider could, and report what falls",
        description="Recover the key from ENCRYPTED alone (ciphertext-only, with the attack of "
        "the scheme ENCRYPTION.json or the dataset card records: for the paper's blockwise "
        "scheme flip mask and pixel shuffling from correlations between positions, block order "
        "by a jigsaw solver pooled over all images), decrypt with the estimate, and write "
        "REPORT/report.md, result.json, "
        "figures and the recovered key (REPORT/recovered.key, mode 0600; never in the report). "
        "ENCRYPTED is an encrypted image folder (ENCRYPTION.json) or a saved datasets dataset. "
        "With --key (owner only) the report scores the attack against the true key; with "
        "--plain against the plain images. See docs/security.md for what was measured.",
    )
    p.add_argument("encrypted", help="encrypted image folder or saved dataset")
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument("--key", help="the owner's key file, to score the attack (never written)")
    p.add_argument("--plain", help="the plain images, in the same order, to score against")
    p.add_argument(
        "--limit",
        type=int,
        help="attack a seeded random sample of N images (the same N for the same data)",
    )
    p.add_argument(
        "--reference",
        help="public plain images of the same kind for the orientation prior (folder, saved "
        "dataset, or 'fashion-mnist'); default: a data-free prior",
    )
    p.add_argument("--block-size", type=int, help="M, for a dataset without ENCRYPTION.json")
    p.add_argument(
        "--scheme",
        help="the scheme, for a dataset without ENCRYPTION.json or card (default blockwise); "
        "refused when the data record another",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_attack)


def _cmd_attack(args: argparse.Namespace) -> None:
    from ..attacks import AttackInputError, run_attack  # scipy and matplotlib: only here

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
            scheme=args.scheme,
        )
    except AttackInputError as e:
        raise CLIError(str(e)) from None
    print(json.dumps({"images": result["images"], "last_step": result["steps"][-1]}, indent=2))
    kept = result["recovered_key_file"] or "none: the scheme shares no key"
    print(f"wrote {Path(args.out) / 'report.md'} (recovered key: {kept})")
