"""Train and export the demo model that ships with the package (``ppconvmixer_256_8`` at
28x28, one channel, block 4, on Fashion-MNIST encrypted with the PUBLIC demo key).

The data is encrypted once with the demo key (``datasets`` batched map), the provider side is
the accelerate recipe on the encrypted copy (``recipes/configs/demo_fashion_mnist.yaml``), and
the result is exported with the key-free model card into
``timm_ppconvmixer/keyed/pretrained/ppconvmixer_256_8_fmnist.demo`` (the leak guard runs; the demo
key lives next to it, outside the exported folder, because it is public by design).

    python hub/train_demo_model.py [--epochs 1] [--work outputs/demo_model]
    python hub/train_demo_model.py --card-only   # write the shipped card again, no training

The card says that the key is PUBLIC and how to get it (:data:`DEMO_NOTE`); its numbers are the
metrics file's (``fmnist28_demo_metrics.json``), measured again by
``ppconvmixer card-numbers ppconvmixer_256_8_fmnist.demo``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import datasets  # noqa: E402
import timm  # noqa: E402

import timm_ppconvmixer  # noqa: E402,F401
from timm_ppconvmixer import hub  # noqa: E402
from timm_ppconvmixer.atomic import atomic_folder, atomic_write_bytes  # noqa: E402
from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist  # noqa: E402
from timm_ppconvmixer.hub.model_card import card_inputs, model_card  # noqa: E402
from timm_ppconvmixer.keyed.pretrained import DEMO_KEY_FILE, DEMO_WEIGHTS, demo_key  # noqa: E402

REPO_ID = "timm-ppconvmixer/ppconvmixer_256_8_fmnist.demo"
DATASET = {"id": "zalando-datasets/fashion_mnist", "name": "Fashion-MNIST", "split": "test"}
METRICS_FILE = DEMO_WEIGHTS.parent / "fmnist28_demo_metrics.json"
# shown under the card's title: the demo key is public by design, and where it comes from
DEMO_NOTE = (
    "**Demo model, trained under a PUBLIC key.** Its key ships with the `timm_ppconvmixer` "
    "package for demonstration: `timm_ppconvmixer.keyed.pretrained.demo_key()` returns it, and "
    "its file, `timm_ppconvmixer/keyed/pretrained/fmnist28_demo.PUBLIC.key` in the installed "
    "package (`timm_ppconvmixer.keyed.pretrained.DEMO_KEY_FILE`), is the `--key` of any "
    "`ppconvmixer` command. Anyone can decrypt images encrypted with it: it exists to show the "
    "workflow, **never for real data**. For your own data, train under your own secret key "
    "(`ppconvmixer keygen`)."
)


def recipe_text(epochs: int) -> str:
    return (
        f"python hub/train_demo_model.py --epochs {epochs} "
        "(recipes/configs/demo_fashion_mnist.yaml, data encrypted with the PUBLIC demo key)"
    )


def write_card(recipe: str) -> Path:
    """The shipped demo card, from the shipped weights and metrics file (written atomically)."""
    model = timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True).eval()
    card = model_card(
        model,
        key=demo_key(),
        metrics=json.loads(METRICS_FILE.read_text(encoding="utf-8")),
        dataset=DATASET,
        recipe=recipe,
        repo_id=REPO_ID,
        notes=DEMO_NOTE,
    )
    return atomic_write_bytes(DEMO_WEIGHTS / "README.md", card.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="outputs/demo_model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="write the shipped card again from the shipped weights and metrics (no training; "
        "the card's training recipe is kept)",
    )
    parser.add_argument("overrides", nargs="*", help="recipe overrides (section.field=value)")
    args = parser.parse_args()
    if args.card_only:
        shipped = (DEMO_WEIGHTS / "README.md").read_text(encoding="utf-8")
        print(f"wrote {write_card(card_inputs(shipped)['recipe'] or recipe_text(args.epochs))}")
        return
    work = Path(args.work)
    key = demo_key()
    data = work / "encrypted_fashion_mnist"
    if not data.exists():  # written under a temporary name: an interrupted save is not reused
        encrypted = datasets.DatasetDict(
            {s: encrypt_dataset(load_fashion_mnist(s), key) for s in ("train", "test")}
        )
        with atomic_folder(data, overwrite=False) as tmp:
            encrypted.save_to_disk(str(tmp))
    import train as recipe

    result = recipe.main(
        [
            "--config", str(ROOT / "recipes" / "configs" / "demo_fashion_mnist.yaml"),
            f"output={work / 'train'}", f"data.name={data}", f"data.key={DEMO_KEY_FILE}",
            f"train.epochs={args.epochs}", *args.overrides,
        ]
    )  # fmt: skip
    model = timm.create_model(f"local-dir:{result['model_folder']}", pretrained=True)
    hub.export(
        model,
        DEMO_WEIGHTS,
        key=key,
        metrics=result["eval"],
        dataset=DATASET,
        recipe=recipe_text(args.epochs),
        repo_id=REPO_ID,
        notes=DEMO_NOTE,
        overwrite=True,
    )
    summary = {k: result[k] for k in ("eval", "permutation_recovery", "key_fingerprint", "params")}
    atomic_write_bytes(METRICS_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
