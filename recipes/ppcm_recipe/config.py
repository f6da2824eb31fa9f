"""Recipe configuration: a YAML file, defaults for every field, ``a.b=value`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output": "outputs/train",
    "model": {
        "name": "ppconvmixer_256_8",
        # hf-hub:ID / local-dir:PATH to start from, or a key-bound tag such as
        # ppconvmixer_768_32.in1k (converted under data.key at load, docs/zoo.md)
        "pretrained": None,
        "kwargs": {},  # timm.create_model kwargs (num_classes, img_size, in_chans, permutation...)
    },
    "data": {
        # fashion_mnist | imagefolder | hf | hub:OWNER/NAME (an encrypted dataset pushed with
        # push_encrypted_dataset; its card's key fingerprint must be the model's)
        "source": "fashion_mnist",
        "name": None,  # hf: dataset name (online) or a save_to_disk folder; imagefolder: root
        "train_split": "train",
        "val_split": "test",
        "image_column": "image",
        "label_column": "label",
        "encrypted": False,  # True: the data is already encrypted (key-free augmentation only)
        "key": None,  # key file: encrypt plain data on the fly / owner's evaluation
        "train_limit": None,  # use the first N training examples
        "val_limit": None,
        "num_workers": 2,
        # already encrypted data (no augmentation): decode the split once into one uint8 array
        # and cut batches from it (same values as decoding per sample; no loader workers)
        "predecode": False,
        # plain data + key: encrypt in the loader (per sample) or on the training device (the
        # loader yields plain augmented uint8 batches; one gather + XOR per batch; same pixels)
        "encrypt_on": "loader",
        "mean": None,  # default: the model's pretrained_cfg (one value per channel)
        "std": None,
    },
    "augment": {  # plain-domain augmentation, timm.data.create_transform arguments
        "hflip": 0.5,
        "scale": [0.08, 1.0],
        "ratio": [0.75, 1.3333333],
        "color_jitter": 0.4,
        "auto_augment": None,
        "re_prob": 0.0,
        "re_mode": "pixel",
        "interpolation": "bilinear",
        # batch-level, in the encrypted domain (key-free): mixup is exact there
        "mixup": 0.0,
        "cutmix": 0.0,  # block-aligned CutMix when the data is encrypted
        "smoothing": 0.1,
    },
    "optim": {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "eps": None, "momentum": 0.9},
    "sched": {"sched": "cosine", "warmup_epochs": 0, "min_lr": 1e-6, "warmup_lr": 1e-6},
    "train": {
        "epochs": 1,
        "batch_size": 64,  # per process
        "grad_accum": 1,
        "clip_grad": None,
        "mixed_precision": "no",  # no | bf16 | fp16
        "penalty_weight": None,  # lambda of Eq. (1); default: the model's (1e-4)
        "ema": False,
        "ema_decay": 0.999,
        "checkpoint_every": 200,  # optimizer steps
        "keep_checkpoints": 2,
        "log_every": 20,
        "max_steps": None,  # stop early (smoke tests), counted in optimizer steps
        "cpu": False,
        # activations in channels_last after the patch embedding (weights stay contiguous, so
        # checkpoints and exports are unchanged); faster on CPU here (benchmarks/
        # bench_efficiency.py)
        "channels_last": True,
    },
    "eval": {"batch_size": 256, "every_epoch": True},
}


class ConfigError(ValueError):
    """A config file or override is invalid."""


def _merge(base: dict, update: dict, where: str = "") -> dict:
    for k, v in update.items():
        if k not in base:
            raise ConfigError(f"unknown config field {where}{k!r}; known: {sorted(base)}")
        if isinstance(base[k], dict) and k != "kwargs":
            if not isinstance(v, dict):
                raise ConfigError(f"{where}{k} must be a mapping")
            _merge(base[k], v, f"{where}{k}.")
        else:
            base[k] = v
    return base


def _set_dotted(cfg: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like section.field=value")
    path, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; people mean the number
        try:
            value = float(value)
        except ValueError:
            pass
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        if k not in node or not isinstance(node[k], dict):
            raise ConfigError(f"unknown config section {k!r} in override {dotted!r}")
        node = node[k]
    if keys[-1] not in node and node is not cfg["model"]["kwargs"]:
        raise ConfigError(f"unknown config field {path!r} in override {dotted!r}")
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Defaults <- YAML file <- ``section.field=value`` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        _merge(cfg, data)
    for item in overrides:
        _set_dotted(cfg, item)
    if cfg["train"]["mixed_precision"] is False:  # YAML reads a bare `no` as false
        cfg["train"]["mixed_precision"] = "no"
    if cfg["train"]["mixed_precision"] not in ("no", "bf16", "fp16"):
        raise ConfigError("train.mixed_precision must be no, bf16 or fp16")
    if cfg["data"]["encrypt_on"] not in ("loader", "device"):
        raise ConfigError("data.encrypt_on must be loader or device")
    source = str(cfg["data"]["source"])
    if source.startswith("hub:"):
        repo = source[len("hub:") :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ConfigError(f"data.source={source}: write hub:OWNER/NAME (a Hub dataset id)")
        cfg["data"]["encrypted"] = True  # what push_encrypted_dataset pushes is encrypted
    elif source not in ("fashion_mnist", "imagefolder", "hf"):
        raise ConfigError("data.source must be fashion_mnist, imagefolder, hf or hub:OWNER/NAME")
    return cfg
