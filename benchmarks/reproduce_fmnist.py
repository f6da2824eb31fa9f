"""CPU-scale reproduction of the paper's Table I rows on the real Fashion-MNIST.

Two geometries, the same model family, budget and seeds in every row:

* ``28``: native 28x28, block 4 (7x7 block grid); the 9x9 depthwise kernel covers the whole grid;
* ``56``: images upscaled to 56x56, block 4: a 14x14 block grid under a 9x9 kernel, the token
  geometry of the paper (224 / 16 = 14, k = 9).

Rows: plain ConvMixer on plain images; encrypted without P; encrypted with P (Kaiming-uniform and
identity initialisation); the plain model converted with ``encrypt_model`` (no training). For
the encrypted models: accuracy with the correct key, on plain images and with a wrong key, and
how much of the block permutation P recovered. Every row trains with ``recipes/train.py``.

Run (the table of ``docs/reproduction.md``, "The ConvMixer rows on Fashion-MNIST, two
geometries", comes from this command):

    python benchmarks/reproduce_fmnist.py --out outputs/reproduce

Prints the table as JSON and writes ``<out>/results.json`` and ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import timm
import torch

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.keyed.convert import encrypt_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from ppcm_recipe.data import EvalDataset, eval_transform, load_split  # noqa: E402
from ppcm_recipe.evaluate import permutation_recovery, top1  # noqa: E402

GEOMETRIES = {"28": 28, "56": 56}
ROWS = {
    "plain": {"key": False, "model.kwargs.permutation": "false"},
    "encrypted_no_p": {"key": True, "model.kwargs.permutation": "false"},
    "encrypted_p_kaiming": {"key": True, "model.kwargs.permutation_init": "kaiming"},
    "encrypted_p_identity": {"key": True, "model.kwargs.permutation_init": "identity"},
}


def train_row(args, size: int, key_path: Path, row: str, out: Path) -> dict:
    spec = ROWS[row]
    overrides = [
        f"output={out}",
        f"seed={args.seed}",
        f"model.kwargs={{num_classes: 10, in_chans: 1, img_size: {size}, dim: {args.dim}, "
        f"depth: {args.depth}, kernel_size: 9}}",
        f"train.epochs={args.epochs}",
        f"data.train_limit={args.train_limit}",
        f"data.val_limit={args.val_limit}",
        f"data.key={key_path if spec['key'] else 'null'}",
        "eval.every_epoch=false",
    ] + [f"{k}={v}" for k, v in spec.items() if k != "key"]
    config = ROOT / "recipes" / "configs" / "fashion_mnist_28.yaml"
    cmd = [sys.executable, str(ROOT / "recipes" / "train.py"), "--config", str(config), *overrides]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"row {row} at {size} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "final_metrics.json").read_text())
    result["wall_s"] = round(time.time() - started, 1)
    return result


def converted_row(args, size: int, key: BlockKey, plain_dir: Path) -> dict:
    """The plain model turned into an encrypted-domain one, evaluated without training."""
    plain = timm.create_model(f"local-dir:{plain_dir / 'model'}", pretrained=True).eval()
    private = encrypt_model(plain, key).eval()
    cfg = {"data": {"source": "fashion_mnist"}}
    images = load_split(cfg, "test", args.val_limit)
    mean, std = plain.pretrained_cfg["mean"], plain.pretrained_cfg["std"]
    wrong = BlockKey.generate(key.image_size, key.block_size, 1, seed=args.seed + 1)

    def acc(model, k):
        loader = torch.utils.data.DataLoader(
            EvalDataset(images, eval_transform((1, size, size), mean, std, k)), batch_size=500
        )
        return top1(model, loader, "cpu", nullcontext)

    return {
        "eval": {
            "top1_key": acc(private, key),
            "top1_plain": acc(private, None),
            "top1_wrong_key": acc(private, wrong),
            "plain_model_on_plain": acc(plain, None),
        },
        "permutation_recovery": permutation_recovery(private, key),
    }


def markdown(results: dict) -> str:
    lines = [
        "| geometry | row | top-1 correct key (plain row: plain images) | plain images | "
        "wrong key | P recovered | train s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for geom, rows in results["geometries"].items():
        for row, r in rows.items():
            e = r["eval"]
            main = e.get("top1_key", e.get("top1_plain"))
            plain = e.get("top1_plain") if "top1_key" in e else None
            cells = [
                f"{100 * main:.2f}",
                "" if plain is None else f"{100 * plain:.2f}",
                "" if "top1_wrong_key" not in e else f"{100 * e['top1_wrong_key']:.2f}",
                ""
                if r.get("permutation_recovery") is None
                else f"{100 * r['permutation_recovery']['exact']:.1f} % "
                f"({100 * r['permutation_recovery']['up_to_symmetry']:.1f} % up to symmetry)",
                str(r.get("train_time_s", "")),
            ]
            lines.append(f"| {geom} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/reproduce")
    parser.add_argument(
        "--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES)
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=30000)
    parser.add_argument("--val-limit", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args), "geometries": {}}
    started = time.time()
    for geom in args.geometries:
        size = GEOMETRIES[geom]
        key = BlockKey.generate(size, 4, channels=1, seed=1000 + args.seed)  # seeded: an experiment
        key_path = key.save(out / f"experiment_{geom}.key", overwrite=True)
        rows = {}
        for row in ROWS:
            rows[row] = train_row(args, size, key_path, row, out / geom / row)
            print(json.dumps({geom: {row: rows[row]["eval"]}}), flush=True)
        rows["converted_from_plain"] = converted_row(args, size, key, out / geom / "plain")
        results["geometries"][f"{geom}x{geom}, block 4"] = rows
    results["total_wall_s"] = round(time.time() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown(results))
    print(markdown(results))
    print(json.dumps({"total_wall_s": results["total_wall_s"]}))


if __name__ == "__main__":
    main()
