"""Models from timm ``train.py`` checkpoints (``last.pth.tar``, ``model_best.pth.tar``,
``checkpoint-N.pth.tar``), so that ``ppconvmixer push`` takes them as it takes model folders.

timm's ``CheckpointSaver`` writes ``{"arch": args.model, "args": argparse.Namespace,
"state_dict": ..., "state_dict_ema": ... (with --model-ema), "optimizer": ..., "epoch": ...}``.
The model is rebuilt the way ``train.py`` built it (``arch``, ``--num-classes``, ``--in-chans`` /
``--input-size``, ``--gp``, ``--model-kwargs``) without pretrained weights, and the chosen state
dict is loaded strictly. Only the model travels on: the optimizer, the training arguments (data
paths, the key file's path in ``--model-kwargs key=...``, a block order given as
``permutation_init``) never reach the export. What the checkpoint says of the key does: the
fingerprint of ``--model-kwargs key_fingerprint=...`` or of the key file ``key=`` names, and
that the run started from a key-bound tag's conversion of a public checkpoint
(``--pretrained``), which the leak guard refuses to share unless the owner accepts it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import timm
import torch
from timm.models import clean_state_dict, get_pretrained_cfg
from torch import nn

from ..key import InvalidKeyError, load_key
from .errors import HubError
from .leak_guard import CONVERTED_FROM

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "converted_source",
    "is_train_checkpoint",
    "load_train_checkpoint",
]

CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")
# train.py options that are not architecture, never passed to the rebuilt model: the key (its
# fingerprint is taken instead), and P's initial value, which the state dict overwrites and
# which, as a block order, is key material that must not reach config.json
_NOT_MODEL_ARGS = ("key", "permutation_init")


def is_train_checkpoint(path: str | os.PathLike) -> bool:
    """A file named as timm's ``train.py`` names its checkpoints (``*.pth.tar``, ``*.pth``)."""
    p = Path(path)
    return p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES)


def _read(path: Path) -> dict:
    # weights_only, with argparse.Namespace allowed: train.py pickles its args, and nothing
    # else in a checkpoint needs code to run on load
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise HubError(f"{path}: not a timm train.py checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise HubError(f"{path}: not a timm train.py checkpoint (no 'state_dict')")
    return ckpt


def _model_kwargs(args: argparse.Namespace | None) -> dict:
    if args is None:
        return {}
    in_chans = getattr(args, "in_chans", None)
    input_size = getattr(args, "input_size", None)
    if in_chans is None and input_size:
        in_chans = input_size[0]
    extra = {k: v for k, v in (getattr(args, "model_kwargs", None) or {}).items()}
    kwargs = dict(
        in_chans=in_chans,
        num_classes=getattr(args, "num_classes", None),
        global_pool=getattr(args, "gp", None),
        **{k: v for k, v in extra.items() if k not in _NOT_MODEL_ARGS},
    )
    return {k: v for k, v in kwargs.items() if v is not None}


def converted_source(spec: str) -> str | None:
    """The public checkpoint a key-bound tag converted into the weights of ``spec``: for a tag
    (``ppconvmixer_768_32.in1k``, or its architecture, whose default tag it is) timm's plain tag
    its pretrained cfg loads; for a model folder, ``local-dir:`` or ``hf-hub:`` name, the one
    its ``config.json`` records. None for anything else. Reads timm's registry and config
    files only, never weights.

    Example:
        >>> converted_source("ppconvmixer_768_32.in1k")  # doctest: +SKIP
        'convmixer_768_32.in1k'
    """
    if spec.startswith(("hf-hub:", "local-dir:")) or Path(spec).is_dir():
        config = _config(spec)
        return str(config[CONVERTED_FROM]) if config.get(CONVERTED_FROM) else None
    try:
        cfg = get_pretrained_cfg(spec)
    except RuntimeError:  # a tag the architecture does not have: timm refuses it on rebuild
        return None
    source = str(getattr(cfg, "hf_hub_id", None) or "")
    plain = source.removeprefix("timm/")
    # a key-bound tag loads timm's weights of another (plain) architecture and converts them
    converts = source.startswith("timm/") and plain.split(".")[0] != spec.split(".")[0]
    return plain if converts else None


def _config(spec: str) -> dict:
    if spec.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        repo, _, rev = spec[len("hf-hub:") :].partition("@")
        try:  # timm fetched it already to build the model: from the cache
            path = Path(hf_hub_download(repo, "config.json", revision=rev or None))
        except EntryNotFoundError:
            return {}
        except (HfHubHTTPError, OSError) as e:
            raise HubError(f"cannot read config.json of {repo}: {str(e).splitlines()[0]}") from e
    else:
        path = Path(spec.removeprefix("local-dir:")) / "config.json"
        if not path.is_file():
            return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    return config if isinstance(config, dict) else {}


def _key_fingerprint(path: Path, args: argparse.Namespace | None) -> str | None:
    """The fingerprint of the key the run was for: ``--model-kwargs key_fingerprint=...``, or
    the key file of ``key=...`` (read here for its fingerprint only), else None."""
    kwargs = getattr(args, "model_kwargs", None) or {}
    if kwargs.get("key_fingerprint"):
        return str(kwargs["key_fingerprint"])
    if not kwargs.get("key"):
        return None
    try:
        return load_key(kwargs["key"]).fingerprint
    except (OSError, InvalidKeyError) as e:
        raise HubError(
            f"{path}: the run was trained with --model-kwargs key=FILE, and that key file does "
            f"not load here ({type(e).__name__}); the model is bound to that key: push it where "
            "the key file is, so its fingerprint is recorded"
        ) from None


def load_train_checkpoint(path: str | os.PathLike, *, ema: bool = False) -> nn.Module:
    """Rebuild the model of a timm ``train.py`` checkpoint, with its EMA weights if ``ema``.

    The model records the key fingerprint the run recorded (``--model-kwargs
    key_fingerprint=...``, or the fingerprint of the key file of ``key=...``), and none where
    the run recorded none (a model of plain images). A run that started from a key-bound tag
    (``--pretrained`` with ``ppconvmixer_768_32.in1k``, or a converted model folder) keeps
    ``converted_from`` in its ``pretrained_cfg``, so that the leak guard knows.

    Example:
        >>> best = "output/train/run/model_best.pth.tar"
        >>> model = load_train_checkpoint(best, ema=True)  # doctest: +SKIP
    """
    path = Path(path)
    ckpt = _read(path)
    args = ckpt.get("args")
    arch = ckpt.get("arch") or getattr(args, "model", None)
    if not isinstance(arch, str):
        raise HubError(f"{path}: the checkpoint names no model ('arch' or args.model)")
    which = "state_dict_ema" if ema else "state_dict"
    state = ckpt.get(which)
    if state is None:
        raise HubError(
            f"{path}: no EMA weights in this checkpoint (train with --model-ema), or push "
            "without --ema"
        )
    try:
        model = timm.create_model(arch, pretrained=False, **_model_kwargs(args))
        model.load_state_dict(clean_state_dict(state), strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{path}: cannot rebuild {arch} from the checkpoint's args ({first})") from e
    fingerprint = _key_fingerprint(path, args)
    if fingerprint is not None:
        model.key_fingerprint = fingerprint
    # --pretrained: the run started from the weights arch names (a key-bound tag converts a
    # public checkpoint at load; a converted folder records it)
    source = converted_source(arch) if getattr(args, "pretrained", False) else None
    if source is not None:
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, CONVERTED_FROM: source}
    return model.eval()
