"""Publish a run's JSON output as a results file: its figures under ``results/NAME``, stamped
with the provenance every results file carries (results/README.md).

    python scripts/publish_results.py outputs/demo/summary.json demo.json \
        --command "python recipes/demo.py --out outputs/demo" --concurrent "nothing else ran" \
        --keep eval total_time_s train_time_s train_images test_images attack

``--keep`` picks top-level fields of the run's JSON (default: all of it). The commit is the
checkout's (with a flag when its work tree differs from it), the date the run file's
modification time, the machine this one: publish on the machine that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def machine() -> dict:
    """This machine: CPU cores, torch's thread count, platform, Python and torch versions."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def provenance(run: Path, command: str, concurrent: str | None) -> dict:
    date = datetime.fromtimestamp(run.stat().st_mtime, timezone.utc)
    return {
        "command": command,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": date.isoformat(timespec="seconds"),
        "machine": machine(),
        "concurrent": concurrent,
        "source": f"{run} (published with scripts/publish_results.py)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the JSON the run wrote")
    parser.add_argument("name", help="the results file to write, e.g. demo.json")
    parser.add_argument("--command", required=True, help="the exact command that made RUN")
    parser.add_argument("--concurrent", default=None, help="what else ran, if anything")
    parser.add_argument("--keep", nargs="*", default=None, help="top-level fields to publish")
    parser.add_argument("--into", type=Path, default=ROOT / "results", help="results folder")
    args = parser.parse_args(argv)
    if not args.run.is_file():
        print(f"error: {args.run} does not exist; run the command first", file=sys.stderr)
        return 1
    figures = json.loads(args.run.read_text())
    if args.keep is not None:
        missing = [k for k in args.keep if k not in figures]
        if missing:
            print(f"error: {args.run} has no field {', '.join(missing)}", file=sys.stderr)
            return 1
        figures = {k: figures[k] for k in args.keep}
    out = args.into / args.name
    tmp = out.with_name(f".{out.name}.tmp")
    data = {"provenance": provenance(args.run, args.command, args.concurrent), **figures}
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
