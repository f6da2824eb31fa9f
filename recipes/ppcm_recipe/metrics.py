"""What a run writes as it goes: JSON-lines metrics (cut back on resume) and each process's
weight digest (data-parallel processes that stayed in sync hold identical weights)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from timm_ppconvmixer.atomic import atomic_write_bytes


class MetricsLog:
    """JSON lines, written by the main process; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the kill: nothing after it counts
                break
            if record["step"] <= step:
                keep.append(line + "\n")
        atomic_write_bytes(self.path, "".join(keep).encode())

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def write_sync_record(accelerator, model, out: Path) -> None:
    """Each process records a digest of its weights (``sync/rank<i>.json``): data-parallel
    processes that stayed in sync hold identical weights."""
    digest = hashlib.sha256()
    for name, tensor in accelerator.unwrap_model(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "weights_sha256": digest.hexdigest(),
    }
    path = out / "sync" / f"rank{accelerator.process_index}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record).encode())
