"""Measure the LE and ELE ciphertext-only attacks (issue 18) through the attack registry.

For each scheme, ``--keys`` seeded keys (seeds 1000, 1001, ...), each with its own fresh random
sample of the data, and each N: the key shares of the scheme's scorer, exact images, PSNR,
SSIM and the plain-domain classifier's top-1 on the reconstructions (trained on the public test
split, which is also the attacker's ReferencePrior), plus, for LE, the 4-bit picture of the
upper halves alone (lower halves set to 8). Fashion-MNIST 28x28, block 4; photographs 224x224
RGB, block 16 (``security_eval.photo_crops``; GenericPrior). Prints one JSON line per run and a
JSON summary (means over keys) at the end.

    python benchmarks/security_le_ele.py --schemes le ele --ns 1 10 100 1000 10000 60000
    python benchmarks/security_le_ele.py --schemes le --photos --ns 1 2 3 5 10 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from timm_ppconvmixer import decrypt, encrypt
from timm_ppconvmixer.attacks import GenericPrior, ReferencePrior, score_images
from timm_ppconvmixer.attacks.ciphertext_only.le import upper_only_images
from timm_ppconvmixer.attacks.evaluation.classifier import cached_classifier, top1
from timm_ppconvmixer.attacks.registry import attack_for
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.schemes import generate_key

SCORED = 2000  # image metrics on the first images of each sample


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", nargs="+", default=["le", "ele"])
    ap.add_argument("--ns", nargs="+", type=int, default=[1, 10, 100, 1000, 10000, 60000])
    ap.add_argument("--keys", type=int, default=5)
    ap.add_argument("--photos", action="store_true", help="photographs at 224/16 instead")
    ap.add_argument("--cache", default=".cache/security_le_ele")
    a = ap.parse_args(argv)
    if a.photos:
        sys.path.insert(0, str(Path(__file__).parent))
        from security_eval import photo_crops

        x, y, m, prior, model = photo_crops(max(a.ns) * a.keys, seed=1), None, 16, None, None
        prior = GenericPrior()
    else:
        x, y = fashion_mnist_arrays("train")
        ref, ref_y = fashion_mnist_arrays("test")
        x, ref, m = x[:, None], ref[:, None], 4
        prior = ReferencePrior(ref)
        model = cached_classifier(Path(a.cache) / "classifier_28", ref, ref_y)
    c, h, _ = x.shape[1:]
    rows = []
    for scheme in a.schemes:
        entry = attack_for(scheme)
        for k in range(a.keys):
            key = generate_key(scheme, image_size=h, block_size=m, channels=c, seed=1000 + k)
            order = np.random.default_rng(1000 + k).permutation(len(x))
            for n in a.ns:
                idx = order[:n]
                plain = x[idx]
                enc = encrypt(plain, key, layout="CHW")
                t = time.perf_counter()
                result = entry.recover(enc, m, prior=prior)
                seconds = time.perf_counter() - t
                s = min(n, SCORED)
                rec = decrypt(enc[:s], result.key, layout="CHW")
                row = {"scheme": scheme, "N": n, "key_seed": 1000 + k, "seconds": seconds}
                row.update(entry.score_key(key, result.key, plain[:s]))
                row.update(score_images(rec, plain[:s]))
                if model is not None:
                    row["top1_plain"] = top1(model, plain[:s], y[idx][:s])
                    row["top1_reconstruction"] = top1(model, rec, y[idx][:s])
                if scheme == "le":
                    up = upper_only_images(enc[:s], result.key)
                    row.update({f"upper_{q}": v for q, v in score_images(up, plain[:s]).items()})
                    if model is not None:
                        row["upper_top1"] = top1(model, up, y[idx][:s])
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for r in rows:
        summary.setdefault((r["scheme"], r["N"]), []).append(r)
    out = []
    for (scheme, n), group in summary.items():
        mean = {
            q: float(np.mean([g[q] for g in group]))
            for q, v in group[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and q != "key_seed"
        }
        mean.update(scheme=scheme, N=n, keys=len(group))
        mean["seconds_max"] = float(max(g["seconds"] for g in group))
        out.append(mean)
    print(json.dumps({"summary": out}, indent=1))


if __name__ == "__main__":
    main()
