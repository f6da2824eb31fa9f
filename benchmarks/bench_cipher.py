"""Encryption speed, printed as JSON ratios measured side by side.

1. ``encrypt`` on a uint8 batch of 224x224 RGB images, block 16, against ``torch.clone`` of the
   same batch (goal: >= 0.5x clone throughput on CPU).
2. The per-image cost ``BlockScramble`` adds to timm's default training transform at 224
   (goal: <= 2 %), like with like: both pipelines get the same timm arguments (timm's training
   defaults, or ``--interpolation``), and the JSON says which interpolation each side used.

Run: ``python benchmarks/bench_cipher.py [--batch 64 --repeats 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import numpy as np
import torch
from _timing import interleaved_medians
from PIL import Image
from timm.data import create_transform as timm_create_transform

from timm_ppconvmixer import BlockKey, encrypt
from timm_ppconvmixer.transforms import create_transform


def bench_batch(batch: int, repeats: int) -> dict:
    key = BlockKey.generate(224, 16, seed=0)
    x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    med = interleaved_medians(
        {"encrypt": lambda: encrypt(x, key), "clone": lambda: x.clone()}, repeats
    )
    return {
        "batch": batch,
        "encrypt_s": med["encrypt"],
        "clone_s": med["clone"],
        "encrypt_images_per_s": batch / med["encrypt"],
        "clone_images_per_s": batch / med["clone"],
        "throughput_ratio_encrypt_over_clone": med["clone"] / med["encrypt"],
        "goal": ">= 0.5",
    }


def _interpolations(tf) -> list[str]:
    return [
        str(getattr(s.interpolation, "value", s.interpolation))
        for s in tf.transforms
        if getattr(s, "interpolation", None) is not None
    ]


def bench_transform(images: int, repeats: int, interpolation: str | None = None) -> dict:
    # a training transform runs in a DataLoader worker, where torch uses one thread (its worker
    # loop sets it): measured the same way, which also keeps idle OpenMP threads' spinning out
    # of the CPU-time figures
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench_transform(images, repeats, interpolation)
    finally:
        torch.set_num_threads(threads)


def _bench_transform(images: int, repeats: int, interpolation: str | None) -> dict:
    key = BlockKey.generate(224, 16, seed=0)
    rng = np.random.default_rng(0)
    photos = [
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize(
            (400, 300), Image.Resampling.BILINEAR
        )
        for _ in range(images)
    ]
    kwargs = {} if interpolation is None else {"interpolation": interpolation}
    plain = timm_create_transform(224, is_training=True, **kwargs)
    ours = create_transform(key, is_training=True, **kwargs)
    if _interpolations(plain) != _interpolations(ours):
        raise AssertionError("the two pipelines resize differently: not like with like")

    def run(tf):
        random.seed(0)  # same random crops and flips for both pipelines (timm's crop: random)
        torch.manual_seed(0)
        for p in photos:
            tf(p)

    med = interleaved_medians(
        {"timm": lambda: run(plain), "with_encryption": lambda: run(ours)}, repeats
    )
    # the same in CPU seconds of this (single-threaded) process, one image at a time in
    # alternation: far less sensitive to other jobs on a shared machine than wall time
    cpu = {"timm": 0.0, "with_encryption": 0.0}
    for i, p in enumerate(photos):

        def one(tf, p=p, i=i):
            random.seed(i)
            torch.manual_seed(i)
            tf(p)

        m = interleaved_medians(
            {"timm": lambda: one(plain), "with_encryption": lambda: one(ours)},
            repeats,
            warmup=1,
            clock=time.process_time,
        )
        for k in cpu:
            cpu[k] += m[k]
    stages = _stage_costs(plain, ours, photos, repeats)
    return {
        "images": images,
        "torch_threads": torch.get_num_threads(),
        "interpolation_timm": _interpolations(plain),
        "interpolation_with_encryption": _interpolations(ours),
        "timm_train_transform_ms_per_image": 1e3 * med["timm"] / images,
        "with_block_scramble_ms_per_image": 1e3 * med["with_encryption"] / images,
        "added_cost_fraction": med["with_encryption"] / med["timm"] - 1,
        "cpu_timm_ms_per_image": 1e3 * cpu["timm"] / images,
        "cpu_with_block_scramble_ms_per_image": 1e3 * cpu["with_encryption"] / images,
        "added_cost_fraction_cpu_time": cpu["with_encryption"] / cpu["timm"] - 1,
        **stages,
        "goal": "<= 0.02",
    }


def _stage_costs(plain, ours, photos, repeats: int) -> dict:
    """CPU microseconds per image of every stage of both pipelines, the two run stage by stage
    on the same image with the same random crop, in alternation image by image, so that the
    stages they share cancel and the machine's drift hits both alike; the added cost is what
    the stages that differ (the key's image mode, ToTensor fused with encryption) add, over
    timm's whole pipeline."""
    totals = {"timm": {}, "with_encryption": {}}
    for r in range(max(1, repeats // 3)):
        for i, p in enumerate(photos):
            for name, tf in (("timm", plain), ("with_encryption", ours)):
                random.seed(i)
                torch.manual_seed(i + r)
                x = p
                for stage in tf.transforms:
                    start = time.process_time()
                    x = stage(x)
                    label = type(stage).__name__
                    totals[name][label] = totals[name].get(label, 0.0) + time.process_time() - start
    count = max(1, repeats // 3) * len(photos)
    per_image = {k: {s: 1e6 * v / count for s, v in t.items()} for k, t in totals.items()}
    timm_total = sum(per_image["timm"].values())
    added = sum(per_image["with_encryption"].values()) - timm_total
    return {
        "stage_us_per_image": per_image,
        "added_cost_fraction_by_stages": added / timm_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--interpolation", default=None, help="passed to both pipelines (default: timm's)"
    )
    parser.add_argument(
        "--transform-only", action="store_true", help="measure only the training transform (2.)"
    )
    args = parser.parse_args()
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "loadavg_1_5_15": os.getloadavg(),
        },
        "torch": torch.__version__,
        "encrypt_vs_clone": None if args.transform_only else bench_batch(args.batch, args.repeats),
        "transform_overhead": bench_transform(
            args.images, max(5, args.repeats // 3), args.interpolation
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
