"""Resumable checkpoints: the training state, complete ``save_state`` folders renamed into
place, and the refusal to resume under another configuration."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from timm_ppconvmixer.atomic import atomic_write_bytes

from .config import ConfigError


class TrainState:
    """Where training stands; saved and restored with the checkpoints."""

    def __init__(self, key_fingerprint: str | None = None) -> None:
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.key_fingerprint = key_fingerprint  # the encrypted domain the weights belong to

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


# Fields that may change between a run and its resumption without changing the result.
RESUME_MAY_DIFFER = {
    ("data", "num_workers"),
    ("data", "predecode"),  # the same values either way
    ("data", "encrypt_on"),  # the same pixels either way
    ("train", "max_steps"),
    ("eval", "batch_size"),
}


def check_resumable(out: Path, cfg: dict) -> None:
    """Refuse to resume checkpoints written under a different configuration."""
    saved_path = out / "config.yaml"
    if latest_checkpoint(out / "checkpoints") is None or not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    diffs = [
        f"{section}.{field}" if isinstance(cfg[section], dict) else section
        for section in cfg
        for field in (cfg[section] if isinstance(cfg[section], dict) else [None])
        if (section, field) not in RESUME_MAY_DIFFER
        and (saved.get(section, {}).get(field) if field else saved.get(section))
        != (cfg[section][field] if field else cfg[section])
    ]
    if diffs:
        raise ConfigError(
            f"{out} holds checkpoints of a run with a different config ({', '.join(diffs)}); "
            "use another output folder, or delete its checkpoints/ to start over"
        )


def write_config(out: Path, cfg: dict) -> None:
    """The run's configuration, beside its checkpoints (read back by :func:`check_resumable`)."""
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if p.is_dir())
    return done[-1] if done else None


def save_checkpoint(accelerator, folder: Path, step: int, keep: int) -> None:
    """``save_state`` into a temporary folder, then rename: a kill never leaves a partial
    checkpoint that a resume would pick up."""
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in folder.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
