"""Publish a run's JSON output as a results file: its figures under ``results/NAME``, stamped
with the provenance every results file carries (results/README.md).

    python scripts/publish_results.py outputs/demo/summary.json demo.json \
        --command "python recipes/demo.py --out outputs/demo" --concurrent "nothing else ran" \
        --keep eval total_time_s train_time_s train_images test_images attack

``--keep`` picks top-level fields of the run's JSON (default: all of it). The provenance is the
benchmarks' own (``benchmarks/security/provenance.py``): the checkout's commit (with a flag when
its work tree differs from it) and this machine, so publish on the machine that ran it; the
date is the run file's modification time.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
# the one provenance every results file carries: the benchmarks' own
from security.provenance import provenance as this_checkout  # noqa: E402
from security.provenance import write_json  # noqa: E402


def provenance(run: Path, command: str, concurrent: str | None) -> dict:
    """The checkout's commit and this machine, for a run that ``command`` made (dated by the
    run file's modification time)."""
    prov = this_checkout()
    del prov["argv"]  # this script's own command line, not the run's
    date = datetime.fromtimestamp(run.stat().st_mtime, timezone.utc)
    return {
        **prov,
        "command": command,
        "date": date.isoformat(timespec="seconds"),
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
    write_json(out, {"provenance": provenance(args.run, args.command, args.concurrent), **figures})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
