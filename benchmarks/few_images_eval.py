"""The few-images regime of the ciphertext-only attack (issue 18): PSNR/SSIM at small N.

For photographs at the paper's geometry (224x224 RGB, block 16; ``security_eval.photo_crops``)
at N = 2, 3, 5, 10 and for Fashion-MNIST 28/4 at N = 1, 2, 3, 5, 10 (and 100, the regression
check), ``keys`` seeded keys per N, each with a fresh seeded random sample of the images:
``recover_key`` as a provider would run it, then the attacker's reconstruction scored against
the plain images strictly (``scoring.score_images``) and up to the one global symmetry,
inversion and channel order that fit best (what no ciphertext-only attacker can resolve
without a prior; docs/security.md "Scoring"), key parts up to symmetry (``score_key``) and,
for Fashion-MNIST, the plain-domain classifier's top-1 on the reconstructions
(``attacks.classifier``).

    python benchmarks/few_images_eval.py --out outputs/few_images [--only photo] [--keys 5]

Writes ``OUT/few_images_runs.json`` (one row per key and N) and prints a markdown table
(median (worst) over keys). docs/security_few_images.md reports the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import permutations
from pathlib import Path

import numpy as np
import torch

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.attacks import (
    GenericPrior,
    ReferencePrior,
    recover_key,
    score_images,
    score_key,
)
from timm_ppconvmixer.attacks.evaluation.scoring import psnr
from timm_ppconvmixer.attacks.solvers.blocks import apply_symmetry, valid_symmetries
from timm_ppconvmixer.data import fashion_mnist_arrays

sys.path.insert(0, str(Path(__file__).parent))
from security_eval import photo_crops  # noqa: E402


def up_to_symmetry(rec: np.ndarray, plain: np.ndarray, grid: tuple[int, int]) -> dict:
    """Image scores after the one global symmetry, channel order and inversion that fits best
    (chosen by PSNR; the ones no ciphertext-only attacker can resolve without a prior)."""
    best, best_psnr = None, -np.inf
    for g in valid_symmetries(grid, 1):
        moved = np.ascontiguousarray(apply_symmetry(rec, g))
        for order in permutations(range(rec.shape[1])):
            for inv in (False, True):
                cand = moved[:, list(order)]
                cand = 255 - cand if inv else cand
                value = float(psnr(cand, plain).mean())
                if value > best_psnr:
                    best, best_psnr = cand, value
    return {f"{k}_sym": v for k, v in score_images(best, plain).items()}


def run(setting: str, ns: list[int], keys: int, cache: Path) -> list[dict]:
    rows = []
    model = None
    if setting == "photo":
        m, c, h = 16, 3, 224
        prior = GenericPrior()
    else:
        m, c, h = 4, 1, 28
        train, labels = fashion_mnist_arrays("train")
        test, test_labels = fashion_mnist_arrays("test")
        train, test = train[:, None], test[:, None]
        prior = ReferencePrior(test)
        from timm_ppconvmixer.attacks.evaluation.classifier import cached_classifier, top1

        model = cached_classifier(cache / "classifier_28", test, test_labels)
    for seed in range(keys):
        key = BlockKey.generate(h, m, c, seed=1000 + seed)
        if setting == "photo":
            pool = photo_crops(max(ns), seed=5000 + seed)
            pool_y = None
        else:
            idx = np.random.default_rng(5000 + seed).permutation(len(train))[: max(ns)]
            pool, pool_y = train[idx], labels[idx]
        for n in ns:
            plain = pool[:n]
            enc = encrypt(plain, key, layout="CHW")
            t = time.perf_counter()
            result = recover_key(enc, m, prior=prior)
            seconds = time.perf_counter() - t
            rec = decrypt(enc, result.key, layout="CHW")
            sk = score_key(key, result.key)
            row = {"setting": setting, "N": n, "key_seed": 1000 + seed, "seconds": seconds}
            row.update({p: sk[p] for p in ("K1", "K2", "K3")})
            row.update(score_images(rec, plain))
            row.update(up_to_symmetry(rec, plain, (h // m, h // m)))
            row["mode"] = result.details.get("mode", "exact")
            if model is not None:
                row["top1_plain"] = top1(model, plain, pool_y[:n])
                row["top1_reconstruction"] = top1(model, rec, pool_y[:n])
            rows.append(row)
            print(
                f"{setting} key {seed} N={n}: K1 {row['K1']:.3f} K2 {row['K2']:.3f} "
                f"K3 {row['K3']:.3f} PSNR {row['psnr']:.1f} SSIM {row['ssim']:.3f} "
                f"(sym {row['psnr_sym']:.1f} / {row['ssim_sym']:.3f}) {row['mode']} "
                f"({seconds:.1f} s)",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    fields = ["K1", "K2", "K3", "psnr", "ssim", "psnr_sym", "ssim_sym", "top1_reconstruction"]
    lines = [
        "| setting | N | keys | K1 % | K2 % | K3 % | PSNR dB | SSIM | PSNR sym | SSIM sym "
        "| top-1 rec. % | time s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in dict.fromkeys(r["setting"] for r in rows):
        for n in dict.fromkeys(r["N"] for r in rows if r["setting"] == s):
            rs = [r for r in rows if r["setting"] == s and r["N"] == n]
            cells = []
            for f in fields:
                if f not in rs[0]:
                    cells.append("-")
                    continue
                v = np.array([r[f] for r in rs])
                pct = f in ("K1", "K2", "K3", "top1_reconstruction")
                fmt = "{:.1f} ({:.1f})" if pct or f.startswith("psnr") else "{:.3f} ({:.3f})"
                scale = 100 if pct else 1
                cells.append(fmt.format(scale * np.median(v), scale * v.min()))
            t = np.array([r["seconds"] for r in rs])
            lines.append(
                f"| {s} | {n} | {len(rs)} | " + " | ".join(cells) + f" | {np.median(t):.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/few_images")
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--only", nargs="*", default=["photo", "fmnist"])
    p.add_argument("--photo-ns", type=int, nargs="*", default=[2, 3, 5, 10])
    p.add_argument("--fmnist-ns", type=int, nargs="*", default=[1, 2, 3, 5, 10, 100])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in args.only:
        ns = args.photo_ns if setting == "photo" else args.fmnist_ns
        rows += run(setting, ns, args.keys, out)
        (out / "few_images_runs.json").write_text(json.dumps(rows, indent=1))
    md = table(rows)
    (out / "few_images.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
