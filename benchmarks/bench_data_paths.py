"""Data paths: encrypting, checking, pushing and streaming encrypted images, as JSON.

One command per path, each a module of ``benchmarks/data_paths/`` with its own options
(``--help`` after the command lists them):

* ``dataset-encrypt``: ``encrypt_dataset`` (batched ``map``) on Fashion-MNIST, throughput and
  peak memory (:mod:`data_paths.datasets`);
* ``folder-encrypt``: ``encrypt_folder`` on Fashion-MNIST as a PNG tree, 1 and 2 workers,
  images/s and peak memory (:mod:`data_paths.folders`);
* ``dataset-push``: the every-row check's share of a whole encrypted-dataset push to a local
  Hub server (:mod:`data_paths.dataset_push`);
* ``hub-streaming``: timm's ``train.py`` reading an encrypted dataset from a local Hub server,
  streaming against map-style, peak memory (:mod:`data_paths.hub_streaming`).

Run: ``python benchmarks/bench_data_paths.py COMMAND [options]``
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMANDS = {
    "dataset-encrypt": "data_paths.datasets",
    "folder-encrypt": "data_paths.folders",
    "dataset-push": "data_paths.dataset_push",
    "hub-streaming": "data_paths.hub_streaming",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        raise SystemExit(f"usage: bench_data_paths.py COMMAND [options]; COMMAND is one of {names}")
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
