"""Model folders: ``model.safetensors`` + ``config.json`` as timm's ``save_for_hf`` writes
them (the owner's private copy), and the shareable export with a key-free card, checked by a
reload through timm and by the leak guard before it appears under its name."""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from ..atomic import atomic_folder, atomic_write_bytes
from ..key import BlockKey
from ..models.permutation import MATRIX_ARGS, PERMUTATION_INITS, AdaptivePermutation
from ..models.registry import PPConvMixer
from .errors import HubError
from .leak_guard import CONVERTED_FROM, assert_no_key_material
from .model_card import IN_MEMORY_CFG_FIELDS, converted_from, model_card, unloaded_tag_fields
from .train_checkpoint import converted_source, is_train_checkpoint, load_train_checkpoint

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "export",
    "load_model",
    "model_args_for_export",
    "save_model_folder",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


def permutation_args(perm: nn.Module | None) -> dict:
    """The P options that change what P computes (``AdaptivePermutation.matrix()``), as
    PPConvMixer keyword arguments, where they differ from the defaults: without them a
    Sinkhorn P would be rebuilt as a dense one and the leak guard could not judge it."""
    if not isinstance(perm, AdaptivePermutation):
        return {}
    defaults = inspect.signature(AdaptivePermutation).parameters
    args = {}
    for model_arg, name in MATRIX_ARGS.items():
        value = getattr(perm, name)
        if value != defaults[name].default:
            args[model_arg] = list(value) if isinstance(value, tuple) else value
    return args


def model_args_for_export(model: nn.Module) -> dict:
    """The constructor arguments timm needs, beyond the architecture name, to rebuild
    ``model`` (recorded in ``config.json``'s ``model_args``)."""
    args = {"in_chans": model.in_chans, "num_classes": model.num_classes}
    if isinstance(model, PPConvMixer):
        # the architecture itself too: a converted model was not built by timm's factory, and
        # a shallower or narrower variant must not rebuild as the registered default
        args.update(
            dim=model.num_features,
            depth=len(model.blocks),
            kernel_size=model.blocks[0][0].fn[0].kernel_size[0],
            patch_size=model.patch_size,
            img_size=list(model.img_size),
            permutation=model.permutation is not None,
        )
        args |= permutation_args(model.permutation)
    if getattr(model, "key_fingerprint", None) is not None:  # PPConvMixer, AdaptNet models
        args["key_fingerprint"] = model.key_fingerprint
    init = (getattr(model, "_model_args", None) or {}).get("permutation_init")
    if init is not None and not (isinstance(init, str) and init in PERMUTATION_INITS):
        # a block order (or its file) given as P's initial value is key material, and the
        # weights overwrite P on every rebuild: record the default init instead
        params = inspect.signature(type(model)).parameters
        args["permutation_init"] = params["permutation_init"].default
    return args


def save_model_folder(
    model: nn.Module, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically.

    The folder is assembled under a temporary name next to ``out_dir`` and renamed into place,
    so an interrupted save leaves nothing half written. No card and no leak guard: this is the
    owner's private copy (use :func:`export` to share).

    Example:
        >>> save_model_folder(model, "outputs/model")  # doctest: +SKIP
    """
    with atomic_folder(out_dir, overwrite) as tmp:
        _write_weights(model, tmp)
    return Path(out_dir)


def _write_weights(model: nn.Module, folder: Path, shared: bool = False) -> None:
    # where a key-bound tag converted a public checkpoint, config.json says which, at its top
    # level (timm's loader ignores it there): the leak guard refuses to share such weights
    source = converted_from(model)
    extra = {CONVERTED_FROM: source} if source else None
    save_for_hf(model, folder, model_config=extra, model_args=model_args_for_export(model),
                safe_serialization=True)  # fmt: skip
    # no in-memory marker timm's PretrainedCfg would refuse on reload; and what is shared
    # states only what the weights are: no key-bound tag on weights trained here
    drop = (*IN_MEMORY_CFG_FIELDS, *(unloaded_tag_fields(model.pretrained_cfg) if shared else ()))
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    if set(drop) & set(config.get("pretrained_cfg", {})):
        config["pretrained_cfg"] = {
            k: v for k, v in config["pretrained_cfg"].items() if k not in drop
        }
        atomic_write_bytes(path, (json.dumps(config, indent=2) + "\n").encode())


def load_model(spec: str | os.PathLike, *, ema: bool = False) -> nn.Module:
    """Load a model to publish from a model folder, a ``local-dir:`` / ``hf-hub:`` spec, or a
    timm ``train.py`` checkpoint (``last.pth.tar``, ``model_best.pth.tar``; ``ema`` takes its
    EMA weights).

    Example:
        >>> model = load_model("outputs/fmnist28/model")  # doctest: +SKIP
        >>> model = load_model("output/train/run/model_best.pth.tar", ema=True)  # doctest: +SKIP
    """
    text = str(spec)
    if is_train_checkpoint(text):
        return load_train_checkpoint(text, ema=ema)
    if ema:
        raise HubError(f"{text}: --ema needs a timm train.py checkpoint (*.pth.tar)")
    if text.startswith(("local-dir:", "hf-hub:")):
        name = text
    elif Path(text).is_dir():
        missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (Path(text) / f).is_file()]
        if missing:
            raise HubError(
                f"{text}: not a model folder (no {' or '.join(missing)}); write one with "
                "timm_ppconvmixer.hub.save_model_folder or `ppconvmixer convert`"
            )
        name = f"local-dir:{Path(text).resolve()}"
    else:
        raise HubError(
            f"{text}: no such model folder; pass a folder holding {WEIGHTS_FILE} + {CONFIG_FILE}, "
            "local-dir:PATH, hf-hub:REPO or a timm train.py checkpoint (*.pth.tar)"
        )
    try:
        model = timm.create_model(name, pretrained=True)
        source = converted_source(name)
    except (RuntimeError, ValueError, *transport_errors()) as e:
        raise HubError(f"cannot load {text}: {first_line(e)}") from e
    if source is not None:  # timm keeps only pretrained_cfg: the conversion goes on with it
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, CONVERTED_FROM: source}
    return model.eval()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_rebuilds(model: nn.Module, folder: Path) -> None:
    """Load ``folder`` back with timm and compare every tensor: what we share must be exactly
    what ``timm.create_model("hf-hub:...", pretrained=True)`` will rebuild."""
    try:
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise HubError(
            f"the exported config.json does not rebuild the model ({first_line(e)}); create "
            "the model with timm.create_model(<registered ppconvmixer_* name>, ...) so timm "
            "records how"
        ) from e
    ours, theirs = model.state_dict(), loaded.state_dict()
    if ours.keys() != theirs.keys():
        raise HubError(
            f"the exported folder rebuilds a model with other parameters "
            f"({sorted(set(ours) ^ set(theirs))[:4]}); a hardened P (HardPermutation) cannot be "
            "exported in timm's format yet: export the model before harden_permutation"
        )
    for name, value in ours.items():
        if not torch.equal(value.detach().cpu(), theirs[name]):
            raise HubError(f"the exported folder rebuilds {name} with other values")


def export(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    key: BlockKey | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    license: str | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
    model_name: str | None = None,
    allow_key_derived_weights: bool = False,
    notes: str | None = None,
    plain_images: bool = False,
    allow_public_stem_leak: bool = False,
) -> Path:
    """Write a shareable model folder: ``model.safetensors``, ``config.json`` (as timm's
    ``save_for_hf`` writes it) and ``README.md`` (:func:`model_card`).

    With ``key``, the leak guard scans every file for that key's secrets, and a model that
    records a key fingerprint must record that key's; a model that records none (trained on
    plain images) is exported with none, and the key only serves the guard. Without ``key`` the
    guard can only find key files, exact permutation matrices and key material in the model
    arguments. Weights a key-bound tag converted from a public checkpoint (fine-tuned or not)
    are refused unless ``allow_public_stem_leak=True``: their stem gives the key back to whoever
    holds that checkpoint (``docs/hub.md``). Everything is written into a temporary folder
    next to ``out_dir`` and renamed into place only after the folder reloads with timm to the
    same tensors and the guard passed.

    Example:
        >>> export(model, "out/tiny", key=key, metrics={"top1_key": 0.91},
        ...        dataset="zalando-datasets/fashion_mnist", repo_id="me/tiny")  # doctest: +SKIP
    """
    if key is not None and getattr(model, "key_fingerprint", None) is None:
        warnings.warn(
            f"the model records no key fingerprint (a model of plain images?): exported "
            f"without one; key {key.fingerprint} only serves the leak guard. Set "
            "model.key_fingerprint if the weights were trained or converted with that key",
            UserWarning,
            stacklevel=2,
        )
        card_key = None
    else:
        card_key = key
    card = model_card(
        model,
        key=card_key,
        metrics=metrics,
        dataset=dataset,
        recipe=recipe,
        license=license,
        repo_id=repo_id,
        model_name=model_name,
        notes=notes,
        plain_images=plain_images,
    )
    with atomic_folder(out_dir, overwrite, mode=0o755) as tmp:  # meant to be shared
        _write_weights(model, tmp, shared=True)
        _check_rebuilds(model, tmp)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")  # inside the staged folder
        assert_no_key_material(tmp, key, allow_key_derived_weights=allow_key_derived_weights,
                               allow_public_stem_leak=allow_public_stem_leak)  # fmt: skip
    return Path(out_dir)


def transport_errors() -> tuple[type[BaseException], ...]:
    """The client's HTTP errors, whichever HTTP library this huggingface_hub uses."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for name, attr in (
        ("httpx2", "HTTPError"),
        ("httpx", "HTTPError"),
        ("requests", "RequestException"),
    ):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, attr):
            errors.append(getattr(module, attr))
    return tuple(errors)
