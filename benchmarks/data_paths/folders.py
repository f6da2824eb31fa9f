"""Folder encryption on the real Fashion-MNIST train split: images/s and peak memory, as JSON.

The 60,000 training images of the Debian package ``dataset-fashion-mnist`` are written as PNG
files into a temporary ImageFolder tree (``train/<label>/<index>.png``; not timed), and a tree
holding the first 10,000 of them (hard links). Each tree is then encrypted by
``encrypt_folder`` in a fresh process (so that ``ru_maxrss`` belongs to that run alone), with 2
worker processes, and with 1 (in-process) on the small tree as the side-by-side baseline.
Reported per run: seconds, images/s, the peak RSS of the parent (``RUSAGE_SELF``) and how
much of it the run added, the peak RSS of the workers (``VmHWM`` sampled while they live) and
``RUSAGE_CHILDREN``. Bounded memory shows as equal peaks at 10k and 60k.

File creation dominates on slow disks (about 0.7 ms per new file on the ext4 of our CI VM, 20
us on tmpfs): ``--tmp-root /dev/shm`` measures the same runs without the disk.

Run: ``python benchmarks/bench_data_paths.py folder-encrypt [--sizes 10000 60000 --repeats 3
--tmp-root DIR]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from timm_ppconvmixer.data import fashion_mnist_arrays


def write_tree(root: Path, limit: int, source: Path | None = None) -> Path:
    """Write (or, from ``source``, hard-link) the first ``limit`` training images as PNG."""
    images, labels = fashion_mnist_arrays("train")
    for i in range(min(limit, len(images))):
        rel = Path("train") / f"{labels[i]}" / f"{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            Image.fromarray(images[i], "L").save(root / rel)
        else:
            os.link(source / rel, root / rel)
    return root


class WorkerPeak(threading.Thread):
    """Samples the peak RSS (``VmHWM``) of this process's worker processes while they live.

    ``RUSAGE_CHILDREN`` alone cannot tell the workers' peak: ``import torch`` runs a helper
    process whose RSS (a fork of the importing process) dominates that maximum.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            for proc in multiprocessing.active_children():
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:  # it just ended
                    continue
                hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                self.peak_kib = max(self.peak_kib, int(hwm.split()[1]))


def child(src: str, dst: str, workers: int, size: int, block: int) -> None:
    """One encryption run in this (fresh) process; prints one JSON line."""
    from timm_ppconvmixer import BlockKey
    from timm_ppconvmixer.data.folders import encrypt_folder

    key = BlockKey.generate(size, block, channels=1, seed=0)
    mib = 1024.0  # ru_maxrss and VmHWM are in KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = WorkerPeak()
    sampler.start()
    start = time.perf_counter()
    report = encrypt_folder(src, dst, key, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    sampler.halt.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "images": report.written,
        "workers": workers,
        "seconds": seconds,
        "images_per_s": report.written / seconds,
        "peak_rss_parent_mib": after / mib,
        "parent_growth_during_run_mib": (after - before) / mib,
        "peak_rss_worker_mib": sampler.peak_kib / mib,
        "ru_maxrss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib,
    }
    print(json.dumps(result))


def run_child(src: Path, dst: Path, workers: int, size: int, block: int) -> dict:
    argv = [sys.executable, __file__, "--child", str(src), str(dst), str(workers)]
    argv += [str(size), str(block)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    peaks = ("peak_rss_parent_mib", "parent_growth_during_run_mib", "peak_rss_worker_mib")
    return {
        "images": runs[0]["images"],
        "workers": runs[0]["workers"],
        "repeats": len(runs),
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_images_per_s": statistics.median(r["images_per_s"] for r in runs),
        **{name: max(r[name] for r in runs) for name in peaks},
        "ru_maxrss_children_mib": max(r["ru_maxrss_children_mib"] for r in runs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench_data_paths.py folder-encrypt", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=28, help="key size (28: native)")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument(
        "--tmp-root", default=None, help="where the trees go (default: the system's temp dir)"
    )
    parser.add_argument("--child", nargs=5, metavar=("SRC", "DST", "WORKERS", "SIZE", "BLOCK"))
    args = parser.parse_args(argv)
    if args.child:
        src, dst, workers, size, block = args.child
        child(src, dst, int(workers), int(size), int(block))
        return

    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory(prefix="bench_folders_", dir=args.tmp_root) as tmp:
        tmp_path = Path(tmp)
        largest = write_tree(tmp_path / f"plain{sizes[-1]}", sizes[-1])
        trees = {sizes[-1]: largest}
        for n in sizes[:-1]:
            trees[n] = write_tree(tmp_path / f"plain{n}", n, source=largest)
        configs = [(n, 2) for n in sizes] + [(sizes[0], 1)]
        runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
        for rep in range(args.repeats):  # interleaved, so that machine noise hits all alike
            for n, workers in configs:
                dst = tmp_path / f"enc{n}-w{workers}-r{rep}"
                runs[(n, workers)].append(
                    run_child(trees[n], dst, workers, args.image_size, args.block_size)
                )
        table = [summarise(r) for r in runs.values()]
    small2, small1 = summarise(runs[(sizes[0], 2)]), summarise(runs[(sizes[0], 1)])
    big2 = summarise(runs[(sizes[-1], 2)])
    result = {
        "benchmark": "encrypt_folder on Fashion-MNIST train (PNG in, PNG out)",
        "key": {"image_size": args.image_size, "block_size": args.block_size, "channels": 1},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "trees_in": args.tmp_root or tempfile.gettempdir(),
        "runs": table,
        "speedup_2_workers_over_1": small2["median_images_per_s"] / small1["median_images_per_s"],
        "peak_rss_ratio_largest_over_smallest": {
            "parent": big2["peak_rss_parent_mib"] / small2["peak_rss_parent_mib"],
            "worker": big2["peak_rss_worker_mib"] / small2["peak_rss_worker_mib"],
        },
        "note": "RSS counts the pages shared with the parent after fork (torch, timm: about "
        "700 MiB once imported); ru_maxrss_children is dominated by a helper process that "
        "'import torch' runs, hence the separate sampling of the workers' VmHWM",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
