"""Inference speed of a hardened P (index gather) against no P and the dense n x n P.

``ppconvmixer_512_16`` (224x224, 10 classes), eval mode, no grad, same batch, timed in
alternation (medians). The hardened model comes from ``harden_permutation`` on a model whose P
is a permutation plus small noise, as after training with the penalty. Goal: hardened at least
as fast as ``permutation=False`` (ratio <= 1, within noise).

Run: ``python benchmarks/bench_harden.py [--batch 16 --repeats 10]``
"""

from __future__ import annotations

import argparse
import json

import timm
import torch
from _timing import interleaved_medians

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer.keyed.harden import harden_permutation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = timm.create_model("ppconvmixer_512_16", num_classes=10).eval().to(args.device)
    with torch.no_grad():
        w = dense.permutation.weight
        w.copy_(torch.eye(w.shape[0])[torch.randperm(w.shape[0])] + 0.01 * torch.randn(w.shape))
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    hardened, report = harden_permutation(dense, x)
    no_p = timm.create_model("ppconvmixer_512_16", num_classes=10, permutation=False)
    no_p = no_p.eval().to(args.device)

    def forward(model):
        def run():
            with torch.no_grad():
                model(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        return run

    med = interleaved_medians(
        {"hardened": forward(hardened), "no_p": forward(no_p), "dense_p": forward(dense)},
        args.repeats,
    )
    print(
        json.dumps(
            {
                "model": "ppconvmixer_512_16",
                "device": args.device,
                "batch": args.batch,
                "forward_s": med,
                "hardened_over_no_p": med["hardened"] / med["no_p"],
                "dense_p_over_no_p": med["dense_p"] / med["no_p"],
                "hardening_report": report.as_dict(),
                "goal": "hardened_over_no_p <= 1 (within noise)",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
