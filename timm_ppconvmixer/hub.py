"""Sharing models on the Hugging Face Hub: save and export model folders, push and pull.

A model folder holds ``model.safetensors`` (no pickle files), ``config.json`` exactly as timm's
``save_for_hf`` writes it, so ``timm.create_model("local-dir:<folder>")`` and
``timm.create_model("hf-hub:<repo>", pretrained=True)`` work once ``timm_ppconvmixer`` is
imported, and, for sharing, ``README.md``: a model card whose only fact about the key is its
public fingerprint (built by :mod:`timm_ppconvmixer.model_card`).

Example:
    >>> import timm, timm_ppconvmixer
    >>> from timm_ppconvmixer.hub import export, push_to_hub
    >>> model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3)
    >>> export(model, "out/tiny")  # doctest: +SKIP
    >>> push_to_hub(model, "me/tiny", key=key, metrics={"top1_key": 0.91})  # doctest: +SKIP

The leak guard (:func:`scan_for_key_material`, in :mod:`timm_ppconvmixer.leak_guard`) runs on
every file before it is renamed into place by :func:`export` and again before anything is
uploaded. What it detects and what it cannot is listed in ``docs/hub.md``. The guard's and the
card's public names are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from .key import BlockKey
from .leak_guard import (
    MASK_WINDOW,
    MIN_WINDOW_BITS,
    PERM_WINDOW,
    Finding,
    HubError,
    KeyMaterialError,
    assert_no_key_material,
    scan_for_key_material,
)
from .model_card import METRIC_LABELS, TAGS, model_card, normalize_metrics
from .models import PPConvMixer

__all__ = [
    "Finding",
    "HubError",
    "KeyMaterialError",
    "MASK_WINDOW",
    "METRIC_LABELS",
    "MIN_WINDOW_BITS",
    "PERM_WINDOW",
    "TAGS",
    "add_push_parser",
    "assert_no_key_material",
    "cli_push",
    "export",
    "folder_listing",
    "load_model",
    "model_args_for_export",
    "model_card",
    "normalize_metrics",
    "push_to_hub",
    "recipe_from_file",
    "save_model_folder",
    "scan_for_key_material",
    "upload_model_folder",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
# What the Hub and torch would unpickle: never part of a shared folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


# -- model folders -----------------------------------------------------------------------------


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def _staged_folder(
    out_dir: str | os.PathLike, overwrite: bool, mode: int | None = None
) -> Iterator[Path]:
    """Yield a temporary folder next to ``out_dir``; rename it into place only if the block
    finishes without error, so an interrupted or refused export leaves nothing half written.
    The folder keeps mkdtemp's owner-only mode unless ``mode`` is given."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        if out.exists():
            os.replace(out, old)  # keep the old folder until the new one is in place
        os.replace(tmp, out)
        if old.exists():
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():  # put the previous folder back
            os.replace(old, out)
        raise


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
    with _staged_folder(out_dir, overwrite) as tmp:
        _write_weights(model, tmp)
    return Path(out_dir)


def _write_weights(model: nn.Module, folder: Path) -> None:
    save_for_hf(model, folder, model_args=model_args_for_export(model), safe_serialization=True)


def load_model(spec: str | os.PathLike) -> nn.Module:
    """Load a model to publish from a model folder or a ``local-dir:`` / ``hf-hub:`` spec.

    Example:
        >>> model = load_model("outputs/fmnist28/model")  # doctest: +SKIP
    """
    text = str(spec)
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
            "local-dir:PATH or hf-hub:REPO"
        )
    try:
        model = timm.create_model(name, pretrained=True)
    except (RuntimeError, ValueError, *_transport_errors()) as e:
        raise HubError(f"cannot load {text}: {_first_line(e)}") from e
    return model.eval()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_rebuilds(model: nn.Module, folder: Path) -> None:
    """Load ``folder`` back with timm and compare every tensor: what we share must be exactly
    what ``timm.create_model("hf-hub:...", pretrained=True)`` will rebuild."""
    try:
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise HubError(
            f"the exported config.json does not rebuild the model ({_first_line(e)}); create "
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


# -- export ------------------------------------------------------------------------------------


def export(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    key: BlockKey | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
    repo_id: str | None = None,
    model_name: str | None = None,
    allow_key_derived_weights: bool = False,
) -> Path:
    """Write a shareable model folder: ``model.safetensors``, ``config.json`` (as timm's
    ``save_for_hf`` writes it) and ``README.md`` (:func:`model_card`).

    With ``key``, the model's recorded fingerprint must be the key's, and the leak guard
    scans every file for that key's secrets; without it the guard can only find key files and
    exact permutation matrices. Everything is written into a temporary folder next to
    ``out_dir`` and renamed into place only after the folder reloads with timm to the same
    tensors and the guard passed.

    Example:
        >>> export(model, "out/tiny", key=key, metrics={"top1_key": 0.91},
        ...        dataset="zalando-datasets/fashion_mnist", repo_id="me/tiny")  # doctest: +SKIP
    """
    card = model_card(
        model,
        key=key,
        metrics=metrics,
        dataset=dataset,
        recipe=recipe,
        license=license,
        repo_id=repo_id,
        model_name=model_name,
    )
    with _staged_folder(out_dir, overwrite, mode=0o755) as tmp:  # meant to be shared
        _write_weights(model, tmp)
        _check_rebuilds(model, tmp)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        assert_no_key_material(tmp, key, allow_key_derived_weights=allow_key_derived_weights)
    return Path(out_dir)


# -- push --------------------------------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
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


def _human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def folder_listing(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every file that an upload of ``folder`` sends."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [(p.relative_to(root).as_posix(), p.stat().st_size) for p in files]


def _check_shareable(folder: Path, key: BlockKey | None) -> None:
    names = {name for name, _ in folder_listing(folder)}
    missing = {WEIGHTS_FILE, CONFIG_FILE, CARD_FILE} - names
    if missing:
        raise HubError(
            f"{folder} lacks {', '.join(sorted(missing))}; write it with "
            "timm_ppconvmixer.hub.export"
        )
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise HubError(
            f"{folder} holds pickle files ({', '.join(pickles)}): share safetensors only"
        )
    if key is not None:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        recorded = (config.get("model_args") or {}).get("key_fingerprint")
        if recorded != key.fingerprint:
            raise HubError(
                f"{folder / CONFIG_FILE} records key {recorded}, not {key.fingerprint}; pass the "
                "key the model was made for"
            )


def upload_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    key: BlockKey | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload PPConvMixer model",
    allow_key_derived_weights: bool = False,
    log: Callable[[str], None] | None = print,
) -> str:
    """Upload an exported folder (:func:`export`) with the real ``huggingface_hub`` client,
    after scanning every file with the leak guard again; returns the commit URL.

    Example:
        >>> upload_model_folder("out/tiny", "me/tiny", key=key)  # doctest: +SKIP
        'https://huggingface.co/me/tiny/commit/...'
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check_shareable(folder, key)
    assert_no_key_material(folder, key, allow_key_derived_weights=allow_key_derived_weights)
    say = log or (lambda _: None)
    if key is None:
        say("warning: no key given: the leak guard only looked for key files and exact P")
    listing = folder_listing(folder)
    say(f"uploading {len(listing)} files to {repo_id}" + (f" ({revision})" if revision else ""))
    for name, size in listing:
        say(f"  {name:<24} {_human_size(size):>10}")
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message
        )
    except _transport_errors() as e:
        raise HubError(
            f"upload to {repo_id} failed: {_first_line(e)}; check the token (--token, HF_TOKEN or "
            "`hf auth login`), that you may write to that namespace, and the network"
        ) from e
    say(f"done: {info.commit_url}")
    return info.commit_url


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    key: BlockKey | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload PPConvMixer model",
    metrics: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    allow_key_derived_weights: bool = False,
    log: Callable[[str], None] | None = print,
) -> str:
    """Export ``model`` to a temporary folder (card and leak guard included) and upload it to
    ``repo_id`` (created if needed); returns the commit URL. Pull it back with
    ``timm.create_model("hf-hub:<repo_id>", pretrained=True)`` after ``import timm_ppconvmixer``.

    Example:
        >>> push_to_hub(model, "me/tiny", key=key, metrics={"top1_key": 0.91},
        ...             dataset="zalando-datasets/fashion_mnist")  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="ppconvmixer-push-") as tmp:
        folder = export(
            model,
            Path(tmp) / "model",
            key=key,
            metrics=metrics,
            dataset=dataset,
            recipe=recipe,
            license=license,
            repo_id=repo_id,
            model_name=model_name,
            allow_key_derived_weights=allow_key_derived_weights,
        )
        return upload_model_folder(
            folder,
            repo_id,
            key=key,
            private=private,
            revision=revision,
            token=token,
            commit_message=commit_message,
            allow_key_derived_weights=allow_key_derived_weights,
            log=log,
        )


# -- command line ------------------------------------------------------------------------------


def recipe_from_file(path: str | os.PathLike) -> str:
    """A recipe file as card text: its name and content in a code block."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HubError(f"{path}: no such recipe file") from None
    lang = "yaml" if path.suffix in (".yaml", ".yml") else "text"
    return f"From `{path.name}`:\n\n```{lang}\n{text.rstrip()}\n```"


def _read_metrics_file(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HubError(f"{path}: no such metrics file") from None
    except json.JSONDecodeError as e:
        raise HubError(f"{path}: not JSON ({e})") from None


def add_push_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``push`` to a CLI's subcommands (``ppconvmixer push``); runs :func:`cli_push`.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers(dest="command")
        >>> _ = add_push_parser(sub)
    """
    p = subparsers.add_parser(
        "push",
        help="export a model with a key-free card and upload it to the Hugging Face Hub",
        description="Export MODEL (model.safetensors + config.json, a model card with the key's "
        "fingerprint only) and upload it with huggingface_hub. Every file is scanned for key "
        "material first; pass --key so the scan knows what to look for. Pull it back with "
        "timm.create_model('hf-hub:REPO_ID', pretrained=True) after import timm_ppconvmixer.",
    )
    p.add_argument(
        "model", help="model folder (model.safetensors + config.json), local-dir:PATH or hf-hub:ID"
    )
    p.add_argument("repo_id", help="Hub repository, e.g. me/ppconvmixer_256_8.fmnist")
    p.add_argument("--key", help="the owner's key file, for the leak guard (never uploaded)")
    p.add_argument("--metrics", help="JSON: {'top1_key': 0.91, ...} or recipes' final_metrics.json")
    p.add_argument("--dataset", help="Hub dataset id the metrics were measured on")
    p.add_argument("--recipe", help="training recipe file to show in the card (e.g. YAML config)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (created if missing)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--commit-message", default="Upload PPConvMixer model")
    p.add_argument(
        "--allow-key-derived-weights",
        action="store_true",
        help="publish a model whose P is exactly the key's block permutation (reveals it)",
    )
    p.set_defaults(func=cli_push)
    return p


def cli_push(args: argparse.Namespace) -> None:
    """``ppconvmixer push``: load, export, scan and upload; prints the commit URL. Raises
    :class:`HubError` (a ``ValueError``) with one clear line on any problem."""
    key = BlockKey.load(args.key) if args.key else None
    metrics = _read_metrics_file(args.metrics) if args.metrics else None
    recipe = recipe_from_file(args.recipe) if args.recipe else None
    model = load_model(args.model)
    push_to_hub(
        model,
        args.repo_id,
        key=key,
        private=args.private,
        revision=args.revision,
        token=args.token,
        commit_message=args.commit_message,
        metrics=metrics,
        dataset=args.dataset,
        recipe=recipe,
        license=args.license,
        allow_key_derived_weights=args.allow_key_derived_weights,
    )
