"""Train and export the demo model that ships with the package (``ppconvmixer_256_8`` at
28x28, one channel, block 4, on Fashion-MNIST encrypted with the PUBLIC demo key).

The data is encrypted once with the demo key (``datasets`` batched map), the provider side is
the accelerate recipe on the encrypted copy (``recipes/configs/demo_fashion_mnist.yaml``), and
the result is exported with the key-free model card into
``timm_ppconvmixer/keyed/pretrained/ppconvmixer_256_8_fmnist.demo`` (the leak guard runs; the demo
key lives next to it, outside the exported folder, because it is public by design).

    python hub/train_demo_model.py [--epochs 1] [--work outputs/demo_model]
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
from timm_ppconvmixer.keyed.pretrained import DEMO_KEY_FILE, DEMO_WEIGHTS, demo_key  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="outputs/demo_model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="recipe overrides (section.field=value)")
    args = parser.parse_args()
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
        dataset="zalando-datasets/fashion_mnist",
        recipe=f"python hub/train_demo_model.py --epochs {args.epochs} "
        "(recipes/configs/demo_fashion_mnist.yaml, data encrypted with the PUBLIC demo key)",
        repo_id="timm-ppconvmixer/ppconvmixer_256_8_fmnist.demo",
        overwrite=True,
    )
    summary = {k: result[k] for k in ("eval", "permutation_recovery", "key_fingerprint", "params")}
    metrics_file = DEMO_WEIGHTS.parent / "fmnist28_demo_metrics.json"
    atomic_write_bytes(metrics_file, (json.dumps(summary, indent=2) + "\n").encode())
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
