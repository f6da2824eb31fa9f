"""Uploading exported model folders with the real ``huggingface_hub`` client, after the leak
guard has scanned every file again."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..key import BlockKey
from .errors import HubError
from .leak_guard import assert_no_key_material
from .model_folder import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    export,
    first_line,
    transport_errors,
)

__all__ = [
    "folder_listing",
    "push_to_hub",
    "read_metrics_file",
    "recipe_from_file",
    "upload_model_folder",
]

# What the Hub and torch would unpickle: never part of a shared folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


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
        # a model that records no key (plain images) is shared without one; the key scans
        if recorded is not None and recorded != key.fingerprint:
            raise HubError(
                f"{folder / CONFIG_FILE} records key {recorded}, not {key.fingerprint}; pass the "
                "key the model was made for"
            )


def upload_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    key: BlockKey | None = None,
    private: bool = True,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload PPConvMixer model",
    allow_key_derived_weights: bool = False,
    allow_public_stem_leak: bool = False,
    log: Callable[[str], None] | None = print,
) -> str:
    """Upload an exported folder (:func:`export`) with the real ``huggingface_hub`` client,
    after scanning every file with the leak guard again; returns the commit URL.

    The repository is created private unless ``private=False`` (an existing one keeps its
    visibility); ``revision`` names a branch, created from ``main`` if missing. The commit
    makes the repository (at that revision) hold exactly the folder's files, besides the
    ``.gitattributes`` the Hub keeps: files of an earlier push that the folder lacks are
    deleted (``upload_folder(delete_patterns="*")``).

    Example:
        >>> upload_model_folder("out/tiny", "me/tiny", key=key)  # doctest: +SKIP
        'https://huggingface.co/me/tiny/commit/...'
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check_shareable(folder, key)
    findings = assert_no_key_material(
        folder,
        key,
        allow_key_derived_weights=allow_key_derived_weights,
        allow_public_stem_leak=allow_public_stem_leak,
    )
    say = log or (lambda _: None)
    for finding in findings:
        if finding.warning:
            say(str(finding))
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
        # "*" deletes what an earlier push left and this one lacks (.gitattributes is kept)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message, delete_patterns="*")  # fmt: skip
    except transport_errors() as e:
        raise HubError(
            f"upload to {repo_id} failed: {first_line(e)}; check the token (--token, HF_TOKEN or "
            "`hf auth login`), that you may write to that namespace, and the network"
        ) from e
    say(f"done: {info.commit_url}")
    return info.commit_url


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    key: BlockKey | None = None,
    private: bool = True,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload PPConvMixer model",
    metrics: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    license: str | None = None,
    model_name: str | None = None,
    allow_key_derived_weights: bool = False,
    allow_public_stem_leak: bool = False,
    log: Callable[[str], None] | None = print,
) -> str:
    """Export ``model`` to a temporary folder (card and leak guard included) and upload it to
    ``repo_id`` (created private if needed; ``private=False`` publishes it openly) as
    :func:`upload_model_folder` does; returns the commit URL. Pull it back with
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
            allow_public_stem_leak=allow_public_stem_leak,
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
            allow_public_stem_leak=allow_public_stem_leak,
            log=log,
        )


def recipe_from_file(path: str | os.PathLike) -> str:
    """A recipe file as card text: its name and content in a code block."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HubError(f"{path}: no such recipe file") from None
    lang = "yaml" if path.suffix in (".yaml", ".yml") else "text"
    return f"From `{path.name}`:\n\n```{lang}\n{text.rstrip()}\n```"


def read_metrics_file(path: str | os.PathLike) -> dict:
    """A metrics JSON file (``{"top1_key": 0.91, ...}`` or the recipe's final metrics)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HubError(f"{path}: no such metrics file") from None
    except json.JSONDecodeError as e:
        raise HubError(f"{path}: not JSON ({e})") from None
