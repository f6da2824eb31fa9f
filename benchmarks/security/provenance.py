"""What every results JSON of the security runner records about how it was made, and the
atomic writes (a temporary file beside the target, then ``os.replace``: a reader never sees half
a file, a stopped run never leaves one).

``provenance(argv)``: the fields every results file carries (results/README.md): the exact
command line, the git commit of the checkout (and whether its work tree differs from it), the
date (UTC, ISO 8601) and the machine (platform, Python, CPU count, torch threads, torch, timm
and numpy versions).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timm_ppconvmixer.atomic import atomic_write

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line (``sys.argv``; ``argv`` when the runner is called with one, after the
    script's path), commit, date and machine of this run."""
    import numpy as np
    import timm
    import torch

    command = list(sys.argv) if argv is None else [sys.argv[0], *argv]
    status = _git("status", "--porcelain")
    return {
        "command": shlex.join(["python", *command]),
        "argv": command,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "date": datetime.now(timezone.utc).isoformat(),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
        },
        "concurrent": None,  # not observed by the runner: say it when publishing the file
        "source": "benchmarks/security_eval.py",
    }


def stamp(prov: dict[str, Any]) -> dict[str, Any]:
    """What each run records of the invocation that measured it (its ``date`` is its own)."""
    return {"commit": prov["commit"], "dirty": prov["dirty"]}


def write_text(path: Path, text: str) -> None:
    with atomic_write(path, binary=False) as f:
        f.write(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
