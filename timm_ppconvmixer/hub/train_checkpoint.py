"""Models from timm ``train.py`` checkpoints (``last.pth.tar``, ``model_best.pth.tar``,
``checkpoint-N.pth.tar``), so that ``ppconvmixer push`` takes them as it takes model folders.

timm's ``CheckpointSaver`` writes ``{"arch": args.model, "args": argparse.Namespace,
"state_dict": ..., "state_dict_ema": ... (with --model-ema), "optimizer": ..., "epoch": ...}``.
The model is rebuilt the way ``train.py`` built it (``arch``, ``--num-classes``, ``--in-chans`` /
``--input-size``, ``--gp``, ``--model-kwargs``) without pretrained weights, and the chosen state
dict is loaded strictly. Only the model travels on: the optimizer, the training arguments (data
paths, the key file's path in ``--model-kwargs key=...``) never reach the export.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import timm
import torch
from timm.models import clean_state_dict
from torch import nn

from .errors import HubError

__all__ = ["CHECKPOINT_SUFFIXES", "is_train_checkpoint", "load_train_checkpoint"]

CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")
# train.py options that are not architecture: never passed to the rebuilt model
_NOT_MODEL_ARGS = ("key",)


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


def load_train_checkpoint(path: str | os.PathLike, *, ema: bool = False) -> nn.Module:
    """Rebuild the model of a timm ``train.py`` checkpoint, with its EMA weights if ``ema``.

    A checkpoint does not record the key's fingerprint; :func:`~.transfer.push_to_hub` and
    ``ppconvmixer push --key`` take it from the owner's key.

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
    return model.eval()
