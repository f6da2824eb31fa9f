"""Saving and sharing models in the Hugging Face Hub's timm format.

A model folder holds ``model.safetensors`` (no pickle files) and ``config.json`` exactly as
timm's ``save_for_hf`` writes it, so ``timm.create_model("local-dir:<folder>")`` and
``hf-hub:`` loading work once ``timm_ppconvmixer`` is imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from timm.models import save_for_hf
from torch import nn

from .models import PPConvMixer

__all__ = ["model_args_for_export", "save_model_folder"]


def model_args_for_export(model: nn.Module) -> dict:
    """The constructor arguments timm needs, beyond the architecture name, to rebuild
    ``model`` (recorded in ``config.json``'s ``model_args``)."""
    args = {"in_chans": model.in_chans, "num_classes": model.num_classes}
    if isinstance(model, PPConvMixer):
        args["img_size"] = list(model.img_size)
        if model.permutation is None:
            args["permutation"] = False
        if model.key_fingerprint is not None:
            args["key_fingerprint"] = model.key_fingerprint
    return args


def save_model_folder(
    model: nn.Module, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically.

    The folder is assembled under a temporary name next to ``out_dir`` and renamed into place,
    so an interrupted save leaves nothing half written.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_for_hf(model, tmp, model_args=model_args_for_export(model), safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
