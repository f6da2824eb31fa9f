"""Reproduce the paper's Fig. 4: parameters against image size, ELE (Eq. 2) vs ours (Eq. 4).

Curves, for block size M = 16 and 10 classes, image sizes 32 to 1024:

* ELE_same: Eq. (2) with the adaptation network's hidden size fixed at h = 512;
* ELE_different: Eq. (2) with h growing with the image side, h = 512 * S / 224 (one way to keep
  the per-pixel width of the representation; the paper does not give its exact rule);
* ELE's classifier is the ShakeDrop network of Table I (28.49M parameters, independent of the
  image size because it is fully convolutional);
* ours: Eq. (4), ConvMixer h=512, d=16, k=9 plus P, checked against ``timm.create_model``.

It also reports the share of P in our model's parameters and multiply-adds per image, which
grows as (H/M)^4. Prints JSON and writes ``docs/fig4_params.png``.

Run: ``python benchmarks/params.py``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import timm  # noqa: E402

from timm_ppconvmixer import convmixer_num_params, ppconvmixer_num_params  # noqa: E402

SIZES = [32, 64, 128, 224, 256, 384, 512, 640, 768, 896, 1024]
H, D, K, M, CLASSES = 512, 16, 9, 16, 10
SHAKEDROP_PARAMS = 28_490_000  # Table I, "Plain ShakeDrop" (approximate, 28.49M)


def ele_num_params(size: int, hidden: int, block: int = M) -> int:
    """Eq. (2): n (3 h M^2 + 2 h) + n^2 + N_classifier."""
    n = (size // block) ** 2
    return n * (3 * hidden * block * block + 2 * hidden) + n * n + SHAKEDROP_PARAMS


def ours_macs(size: int) -> tuple[int, int]:
    """Multiply-adds per image of ConvMixer(h, d, k, M) with P, and of P alone."""
    n = (size // M) ** 2
    stem = n * H * 3 * M * M
    blocks = D * n * H * (K * K + H)
    p = H * n * n
    return stem + blocks + H * CLASSES + p, p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/fig4_params.png")
    args = parser.parse_args()
    rows = []
    for s in SIZES:
        ours = ppconvmixer_num_params(H, D, K, M, CLASSES, s)
        model = timm.create_model(
            "ppconvmixer_512_16", num_classes=CLASSES, img_size=s, device="meta"
        )
        measured = sum(p.numel() for p in model.parameters())
        if measured != ours:
            raise SystemExit(f"Eq. (4) gives {ours} at {s}x{s} but the model has {measured}")
        macs, p_macs = ours_macs(s)
        n = (s // M) ** 2
        rows.append(
            {
                "image_size": s,
                "num_blocks": n,
                "ele_same": ele_num_params(s, H),
                "ele_different": ele_num_params(s, round(H * s / 224)),
                "ours": ours,
                "ours_without_p": convmixer_num_params(H, D, K, M, CLASSES),
                "ours_checked_with_create_model": True,
                "p_share_of_params": n * n / ours,
                "p_share_of_macs": p_macs / macs,
            }
        )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [r["image_size"] for r in rows]
    for name, label in (
        ("ele_same", "ELE, same h (Eq. 2)"),
        ("ele_different", "ELE, h grows with size (Eq. 2)"),
        ("ours", "ConvMixer + P (Eq. 4)"),
    ):
        ax1.plot(sizes, [r[name] / 1e6 for r in rows], marker="o", label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("image size (pixels per side), block size 16")
    ax1.set_ylabel("parameters (millions, log scale)")
    ax1.set_title("Parameters vs image size (paper Fig. 4)")
    ax1.legend()
    ax2.plot(sizes, [100 * r["p_share_of_params"] for r in rows], marker="o", label="parameters")
    ax2.plot(sizes, [100 * r["p_share_of_macs"] for r in rows], marker="s", label="multiply-adds")
    ax2.set_xlabel("image size (pixels per side), block size 16")
    ax2.set_ylabel("share of P (%)")
    ax2.set_title("Share of P grows as (H/M)^4")
    ax2.legend()
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(json.dumps({"figure": str(out), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
