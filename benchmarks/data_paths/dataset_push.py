"""The cost of checking every row before an encrypted dataset is pushed: the row check's share
of the whole push.

Encrypts the first N Fashion-MNIST training images and the first 1,000 test images with a
seeded benchmark key, then times, side by side in one process, ``check_encrypted_with`` over
every row of both splits and a whole ``push_encrypted_dataset`` of the same already encrypted
data (which includes that check, staging, the leak guard scan and the upload) to the tests'
local Hub double on 127.0.0.1. Medians over ``--repeats`` (each push goes to a new
repository). Prints JSON.

Run: ``python benchmarks/bench_data_paths.py dataset-push [--train 60000] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from local_hub import LocalHub  # noqa: E402  (stdlib only: started before any HF client import)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench_data_paths.py dataset-push", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, LocalHub(Path(tmp) / "hub") as hub:
        for name, value in hub.client_env(home=Path(tmp) / "hf").items():
            import os

            os.environ[name] = value
        import datasets

        from timm_ppconvmixer import BlockKey
        from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist
        from timm_ppconvmixer.hub import push_encrypted_dataset
        from timm_ppconvmixer.hub.dataset_stage import check_encrypted_with

        datasets.disable_progress_bars()
        key = BlockKey.generate(28, 4, channels=1, seed=0)  # a benchmark key: seeded, public
        enc = datasets.DatasetDict(
            {
                "train": encrypt_dataset(load_fashion_mnist("train", limit=args.train), key),
                "test": encrypt_dataset(load_fashion_mnist("test", limit=args.test), key),
            }
        )
        check, push = [], []
        for i in range(args.repeats):
            started = time.perf_counter()
            for split, ds in enc.items():
                check_encrypted_with(ds, key, "image", split, progress=False)
            check.append(time.perf_counter() - started)
            started = time.perf_counter()
            push_encrypted_dataset(enc, f"bench/push-{i}", key=key, log=None)
            push.append(time.perf_counter() - started)
    result = {
        "images": args.train + args.test,
        "check_s": round(statistics.median(check), 2),
        "push_s": round(statistics.median(push), 2),
        "check_share_of_push": round(statistics.median(check) / statistics.median(push), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
