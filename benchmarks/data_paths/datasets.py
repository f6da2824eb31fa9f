"""Encrypting Fashion-MNIST through the ``datasets`` path: throughput and peak memory.

``encrypt_dataset`` (batched ``map``, ``num_proc`` worker processes) on the real train split
(60,000 images) and on its first 10,000, each in a fresh process so that peak RSS belongs to
one run. Memory stays bounded when the peak does not grow with the number of images
(``map`` streams batches through Arrow files on disk). Prints JSON.

Run: ``python benchmarks/bench_data_paths.py dataset-encrypt [--num-proc 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist
limit, num_proc = int(sys.argv[1]), int(sys.argv[2])
ds = load_fashion_mnist("train", limit=limit)
key = BlockKey.generate(28, 4, channels=1, seed=0)
with tempfile.TemporaryDirectory() as cache:
    started = time.perf_counter()
    enc = encrypt_dataset(ds, key, num_proc=num_proc, batch_size=1000)
    enc.save_to_disk(cache + "/enc")
    seconds = time.perf_counter() - started
print(json.dumps({
    "images": len(enc), "num_proc": num_proc, "seconds": round(seconds, 2),
    "images_per_s": round(len(enc) / seconds),
    "parent_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "children_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench_data_paths.py dataset-encrypt", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 60000])
    args = parser.parse_args(argv)
    runs = []
    for n in args.sizes:
        cmd = [sys.executable, "-c", CHILD, str(n), str(args.num_proc)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
