"""Commands that share: ``push`` (a model to the Hub), ``attack`` (the security evaluation
of encrypted data, as the provider could run it) and ``card-numbers`` (a shipped card's numbers,
measured again with its PUBLIC key)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..hub import load_model, push_to_hub, read_metrics_file, recipe_from_file
from ..key import load_key
from .common import CLIError

__all__ = ["add_attack_parser", "add_card_numbers_parser", "add_push_parser"]


def add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    """``ppconvmixer push``: export with a key-free card, scan, upload."""
    p = subparsers.add_parser(
        "push",
        help="export a model with a key-free card and upload it to the Hugging Face Hub",
        description="Export MODEL (model.safetensors + config.json, a model card with the key's "
        "fingerprint only) and upload it with huggingface_hub. MODEL may be a timm train.py "
        "checkpoint: the model is rebuilt from its arch and args (the optimizer and the training "
        "arguments are not uploaded), with --ema its EMA weights. The card and config.json carry "
        "the fingerprint the model records (none for a model of plain images). Every file is "
        "scanned for key material first; pass --key so the scan knows what to look for. The "
        "repository is private unless --public; after the push it holds exactly the pushed "
        "files (those of an earlier push are deleted). Pull it back with "
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
    p.add_argument("--license", help="the card's licence (default: the one the weights' "
                   "pretrained_cfg names, e.g. mit for timm's ConvMixer weights)")  # fmt: skip
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="public", action="store_false", default=False,
                            help="create the repository as private (the default)")  # fmt: skip
    visibility.add_argument("--public", action="store_true",
                            help="create the repository as public: anyone may download the model; "
                            "an existing repository keeps its visibility")  # fmt: skip
    p.add_argument("--revision", help="branch to push to (created from main if missing)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--commit-message", default="Upload PPConvMixer model")
    p.add_argument(
        "--allow-key-derived-weights",
        action="store_true",
        help="publish a model whose P is exactly the key's block permutation (reveals it)",
    )
    p.add_argument(
        "--allow-public-stem-leak",
        action="store_true",
        help="publish weights a key-bound tag (e.g. ppconvmixer_768_32.in1k) converted from a "
        "public checkpoint, fine-tuned or not: whoever holds that checkpoint reads the key back "
        "from their stem and P",
    )
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> None:
    key = load_key(args.key) if args.key else None
    metrics = read_metrics_file(args.metrics) if args.metrics else None
    recipe = recipe_from_file(args.recipe) if args.recipe else None
    model = load_model(args.model, ema=args.ema)
    push_to_hub(
        model,
        args.repo_id,
        key=key,
        private=not args.public,
        revision=args.revision,
        token=args.token,
        commit_message=args.commit_message,
        metrics=metrics,
        dataset=args.dataset,
        recipe=recipe,
        license=args.license,
        allow_key_derived_weights=args.allow_key_derived_weights,
        allow_public_stem_leak=args.allow_public_stem_leak,
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


def add_card_numbers_parser(subparsers: argparse._SubParsersAction) -> None:
    """``ppconvmixer card-numbers``: a shipped card's numbers, measured again."""
    p = subparsers.add_parser(
        "card-numbers",
        help="measure a shipped model's card numbers again (Fashion-MNIST, its PUBLIC key)",
        description="Load the weights that ship under TAG (timm.create_model(TAG, "
        "pretrained=True), offline), encrypt the Fashion-MNIST test split with the tag's PUBLIC "
        "key (timm_ppconvmixer.keyed.pretrained: demo_key() or zoo_key(scheme)), and measure "
        "top-1 with that key, on plain images and with the fixed wrong key the card was measured "
        "with (a plain model: on plain images only). Prints each number beside the card's and "
        "exits 1 when one lies outside its tolerance: 0.2 percentage points on the whole split, "
        "plus four binomial standard errors on a --limit subset. Fashion-MNIST comes from the "
        "Debian package dataset-fashion-mnist.",
    )
    p.add_argument("tag", help="a shipped tag, e.g. ppconvmixer_128_8_fmnist.zoo_pe")
    p.add_argument("--limit", type=int, help="the first N test images only (a quick check)")
    p.add_argument("--card", help="compare with this README.md instead of the shipped card")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--output", help="also write the numbers and the comparison to this JSON file")
    p.set_defaults(func=_cmd_card_numbers)


def _public_keys() -> dict[str, tuple]:
    """Fingerprint -> (key, the wrong key the card's number was measured with, what it is), for
    every PUBLIC key that ships. The wrong keys are those of the commands that wrote the cards:
    benchmarks/reproduce_table1.py measures a zoo row under generate_key(scheme, seed=2000 +
    seed) (seed 0), recipes/ppcm_recipe/evaluate.py under BlockKey.generate(..., seed=seed + 1)
    with the demo recipe's seed 0."""
    from ..key import BlockKey
    from ..keyed.pretrained import ZOO_SCHEMES, demo_key, generate_zoo_key, zoo_key

    demo = demo_key()
    wrong = BlockKey.generate(demo.image_size, demo.block_size, demo.channels, seed=1)
    keys = {demo.fingerprint: (demo, wrong, "the PUBLIC demo key")}
    for scheme in ZOO_SCHEMES:
        key = zoo_key(scheme)
        wrong = generate_zoo_key(scheme, 2000)
        keys[key.fingerprint] = (key, wrong, f"the PUBLIC {scheme} zoo key")
    return keys


def _cmd_card_numbers(args: argparse.Namespace) -> None:
    import timm

    from ..atomic import atomic_write_bytes
    from ..data import load_fashion_mnist
    from ..hub.evaluate import compare_with_card, evaluate_plain, evaluate_with_key
    from ..keyed.shipped import SHIPPED_WEIGHTS

    if args.tag not in SHIPPED_WEIGHTS:
        raise CLIError(f"{args.tag} is not a shipped tag; shipped: {', '.join(SHIPPED_WEIGHTS)}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be a positive number of images, got {args.limit}")
    card_path = Path(args.card) if args.card else SHIPPED_WEIGHTS[args.tag] / "README.md"
    card = card_path.read_text(encoding="utf-8")
    model = timm.create_model(args.tag, pretrained=True).eval()
    test = load_fashion_mnist("test")
    recorded = getattr(model, "key_fingerprint", None)
    if recorded is None:  # a plain baseline
        what = "plain images, no key"
        results = evaluate_plain(model, test, limit=args.limit, batch_size=args.batch_size)
    else:
        keys = _public_keys()
        if recorded not in keys:
            raise CLIError(f"{args.tag} is for key {recorded}: no PUBLIC key that ships is it")
        key, wrong, name = keys[recorded]
        metrics_file = SHIPPED_WEIGHTS[args.tag] / "metrics.json"
        stated = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        if stated.get("wrong_key_fingerprint") not in (None, wrong.fingerprint):
            raise CLIError(
                f"{metrics_file} was measured with wrong key {stated['wrong_key_fingerprint']}, "
                f"not {wrong.fingerprint}: its wrong-key number cannot be measured again here"
            )
        what = f"key {key.fingerprint} ({name}), wrong key {wrong.fingerprint}"
        results = evaluate_with_key(model, test, key, limit=args.limit, wrong_key=wrong,
                                    batch_size=args.batch_size)  # fmt: skip
    n = results["num_examples"]
    rows = compare_with_card(results["eval"], card, n, len(test))
    print(f"{args.tag}: {n} of the {len(test)} Fashion-MNIST test images; {what}")
    print(f"card: {card_path}")
    width = max(len(r["label"]) for r in rows)
    print(f"{'evaluated on':<{width}}  {'card':>8}  {'measured':>8}  {'tolerance':>9}")
    for r in rows:
        got = "-" if r["measured"] is None else f"{100 * r['measured']:.2f} %"
        print(
            f"{r['label']:<{width}}  {100 * r['card']:6.2f} %  {got:>8}  "
            f"{100 * r['tolerance']:7.2f} pp  {'ok' if r['agrees'] else 'DISAGREES'}"
        )
    if args.output:
        report = {"tag": args.tag, "card": str(card_path), **results, "comparison": rows}
        atomic_write_bytes(args.output, (json.dumps(report, indent=2) + "\n").encode())
    off = [r["label"] for r in rows if not r["agrees"]]
    if not rows:
        raise CLIError(f"{card_path} states no top-1 accuracy to compare with")
    if off:
        raise CLIError(f"the card's numbers are not reproduced: {'; '.join(off)}")
    print(f"all {len(rows)} numbers of the card agree within their tolerance")
