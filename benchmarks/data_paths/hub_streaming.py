"""Training from the Hub with timm's train.py: peak memory of streaming (``hfids/``) against
the map-style reader (``hfds/``) at two dataset sizes.

The owner side pushes encrypted Fashion-MNIST training subsets (the first N images, and the
first 1,000 test images as the validation split) with ``push_encrypted_dataset`` to the local
Hub double of the tests (``tests/local_hub.py``, in this process, on 127.0.0.1). Then, for
each size and reader, timm's unmodified ``train.py`` (``$TIMM_TRAIN_PY`` or ``--train-py``)
trains a small ppconvmixer_256_8_fmnist (h=32, depth 2) for one epoch in a fresh process with
a fresh HF_HOME and no loader workers, so the peak RSS (``wait4``) is that run's alone. Memory
is bounded when the streaming peak does not grow with the number of images. Prints JSON.

Run: ``python benchmarks/bench_data_paths.py hub-streaming [--sizes 6000 60000]
[--readers hfids hfds]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from local_hub import LocalHub  # noqa: E402  (stdlib only: started before any HF client import)

TRAIN_ARGS = (
    "--train-split train --val-split test --device-modules timm_ppconvmixer "
    "timm_ppconvmixer.hub.train_guard --model ppconvmixer_256_8_fmnist --model-kwargs dim=32 "
    "depth=2 key_fingerprint={fp} --num-classes 10 --input-size 1 28 28 --device cpu "
    "--no-prefetcher --workers 0 --epochs 1 --batch-size 64 --validation-batch-size 256 "
    "--opt adamw --lr 2e-3 --no-aug --reprob 0 --mixup 0 --cutmix 0 --crop-pct 1.0 "
    "--experiment run --checkpoint-hist 1"
)


def push(sizes: list[int], test: int) -> tuple[str, dict[int, float]]:
    import datasets

    from timm_ppconvmixer import BlockKey
    from timm_ppconvmixer.data import load_fashion_mnist
    from timm_ppconvmixer.hub import push_encrypted_dataset

    datasets.disable_progress_bars()
    key = BlockKey.generate(28, 4, channels=1, seed=0)  # a benchmark key: seeded, public
    seconds = {}
    for n in sizes:
        plain = datasets.DatasetDict({"train": load_fashion_mnist("train", limit=n),
                                      "test": load_fashion_mnist("test", limit=test)})  # fmt: skip
        started = time.perf_counter()
        push_encrypted_dataset(plain, f"bench/fmnist-{n}", key=key, encrypt=True,
                               max_shard_size="4MB", log=None)  # fmt: skip
        seconds[n] = round(time.perf_counter() - started, 1)
    return key.fingerprint, seconds


# A small launcher between this (large) process and train.py: Linux carries a process's peak
# RSS across fork and exec, so train.py started from here would report this process's peak.
LAUNCH = (
    "import pathlib, resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "pathlib.Path(sys.argv[1]).write_text(str(rss)); sys.exit(rc)"
)


def train(train_py: str, dataset: str, fingerprint: str, env: dict, out: Path) -> dict:
    cmd = [sys.executable, train_py, "--dataset", dataset, "--output", str(out),
           *TRAIN_ARGS.format(fp=fingerprint).split()]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    started = time.perf_counter()
    rss = out.parent / f"{out.name}.maxrss-kib"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", LAUNCH, str(rss), *cmd], env=env,
                              stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed: {log.read_text()[-3000:]}")
    summary = (out / "run" / "summary.csv").read_text().splitlines()
    row = dict(zip(summary[0].split(","), summary[-1].split(","), strict=True))
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(int(rss.read_text()) / 1024),
        "eval_top1": round(float(row["eval_top1"]), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench_data_paths.py hub-streaming", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 60000])
    parser.add_argument("--test", type=int, default=1000, help="validation images")
    parser.add_argument("--readers", nargs="+", default=["hfids", "hfds"])
    parser.add_argument("--train-py", default=os.environ.get("TIMM_TRAIN_PY"))
    args = parser.parse_args(argv)
    if not args.train_py or not Path(args.train_py).is_file():
        raise SystemExit("pass --train-py or set TIMM_TRAIN_PY to timm's train.py")
    with tempfile.TemporaryDirectory() as tmp, LocalHub(Path(tmp) / "hub") as hub:
        os.environ.update(hub.client_env(home=Path(tmp) / "owner"))  # before the clients load
        fingerprint, push_seconds = push(args.sizes, args.test)
        runs = []
        for n in args.sizes:
            for reader in args.readers:
                home = Path(tmp) / f"{reader}-{n}"
                env = {**os.environ, **hub.client_env(home=home)}
                result = train(args.train_py, f"{reader}/bench/fmnist-{n}", fingerprint, env,
                               home / "out")  # fmt: skip
                runs.append({"reader": reader, "train_images": n, **result})
    print(json.dumps({
        "push_seconds": push_seconds, "runs": runs, "cpus": os.cpu_count(),
        "note": "one epoch, h=32 depth-2 model, batch 64, no loader workers",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
