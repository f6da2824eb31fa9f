"""Pushing an encrypted dataset to the Hub as a dataset repository: sharded parquet in the
layout ``datasets``' ``push_to_hub`` writes, and a key-free dataset card
(:mod:`.dataset_card`) with the ``configs`` / ``dataset_info`` metadata ``datasets`` reads.

Every row of every image column is checked to decrypt with the key, then everything is staged
in a local folder: the shards, decoded views of them and the card are scanned by the leak
guard, and that folder itself is uploaded in one commit with ``huggingface_hub``'s
``create_commit``, so the bytes that travel are the bytes that were scanned (checked again
after the push: the Hub's shards are compared byte for byte, sha256, with the staged ones). A
second push of the same data sends nothing and makes no commit (``huggingface_hub`` drops
files the repository already holds), and an interrupted push resumes: LFS shards already
uploaded are not sent again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..data.datasets import encrypt_dataset
from ..data.folders.manifest import MANIFEST_NAME
from ..key import SchemeKey
from .dataset_card import dataset_card
from .dataset_stage import (
    card_metadata,
    check_encrypted_with,
    commit_operations,
    num_shards,
    stage_split,
    verify_uploaded,
)
from .errors import HubError
from .leak_guard import assert_no_key_material
from .model_folder import first_line, transport_errors

__all__ = ["load_encrypted_source", "push_encrypted_dataset"]

_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes


def _read_manifest(folder: Path, key: SchemeKey) -> dict:
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    if manifest.get("fingerprint") != key.fingerprint:
        raise HubError(
            f"{folder} holds images encrypted with key {manifest.get('fingerprint')}, not with "
            f"{key.fingerprint}; pass the key it was encrypted with"
        )
    return manifest


def load_encrypted_source(
    source: Any,
    key: SchemeKey,
    *,
    encrypt: bool = False,
    split: str = "train",
    image_column: str = "image",
    resize: str = "shorter-center-crop",
    num_proc: int | None = None,
) -> tuple[Any, str]:
    """``(DatasetDict, resize policy)`` from a ``Dataset`` (one ``split``), a ``DatasetDict``,
    a ``save_to_disk`` folder or an encrypted image folder tree (``ENCRYPTION.json``, made by
    ``ppconvmixer encrypt``). With ``encrypt=True`` the images are plain and are encrypted
    here (:func:`timm_ppconvmixer.data.datasets.encrypt_dataset`).

    Example:
        >>> dd, resize = load_encrypted_source("fmnist-enc/", key)  # doctest: +SKIP
    """
    import datasets

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise HubError(f"{folder}: no such folder")
        if (folder / MANIFEST_NAME).is_file():
            if encrypt:
                raise HubError(f"{folder} is already encrypted ({MANIFEST_NAME}); drop encrypt")
            resize = _read_manifest(folder, key).get("resize", resize)
        if any((folder / m).is_file() for m in _SAVED_MARKERS):
            source = datasets.load_from_disk(str(folder))
        elif (folder / MANIFEST_NAME).is_file():
            source = datasets.load_dataset("imagefolder", data_dir=str(folder))
        else:
            raise HubError(
                f"{folder}: neither an encrypted image folder ({MANIFEST_NAME}) nor a dataset "
                "saved with save_to_disk; encrypt image folders with `ppconvmixer encrypt` first"
            )
    if isinstance(source, datasets.Dataset):
        source = datasets.DatasetDict({split: source})
    if not isinstance(source, datasets.DatasetDict):
        raise HubError(
            f"cannot push a {type(source).__name__}: pass a datasets Dataset or DatasetDict, a "
            "save_to_disk folder, or an encrypted image folder"
        )
    if encrypt:
        source = datasets.DatasetDict(
            {
                name: encrypt_dataset(ds, key, image_column, resize=resize, num_proc=num_proc)
                for name, ds in source.items()
            }  # fmt: skip
        )
    return source, resize


def _class_names(dd, label_column: str) -> list[str] | None:
    feature = next(iter(dd.values())).features.get(label_column)
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _check_columns(dd, image_column: str, label_column: str) -> None:
    for name, ds in dd.items():
        missing = [c for c in (image_column, label_column) if c not in ds.column_names]
        if missing:
            raise HubError(
                f"split {name} has no column {', '.join(missing)} (columns: {ds.column_names}); "
                "pass image_column= / label_column="
            )


def push_encrypted_dataset(
    ds_or_path: Any,
    repo_id: str,
    *,
    key: SchemeKey,
    encrypt: bool = False,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    resize: str = "shorter-center-crop",
    max_shard_size: int | str = "500MB",
    private: bool = True,
    revision: str | None = None,
    token: str | None = None,
    license: str = "other",
    pretty_name: str | None = None,
    commit_message: str = "Upload encrypted dataset",
    num_proc: int | None = None,
    log: Callable[[str], None] | None = print,
) -> str:
    """Push an encrypted dataset to the Hub dataset repository ``repo_id``; returns its URL.

    ``ds_or_path``: a ``Dataset`` (pushed as ``split``), a ``DatasetDict``, a ``save_to_disk``
    folder or an encrypted image folder. The images must be encrypted with ``key`` (checked:
    size, mode, and that they decrypt to natural images), or plain with ``encrypt=True``. The
    key itself never leaves: it is needed for the checks, the leak guard and the card's
    fingerprint. Shards of at most ``max_shard_size``; the repository is created private
    unless ``private=False`` (an existing repository keeps its visibility). ``revision`` names
    the branch to push to, created from ``main`` if missing (as ``HfApi.upload_folder`` and
    ``datasets``' ``push_to_hub(revision=...)`` do); read it back with
    ``datasets.load_dataset(repo_id, revision=...)``, its fingerprint with
    :func:`~.fingerprints.dataset_key_fingerprint` ``(..., revision=...)``.

    Example:
        >>> from timm_ppconvmixer.data import load_fashion_mnist
        >>> plain = load_fashion_mnist("train", limit=1000)  # doctest: +SKIP
        >>> push_encrypted_dataset(plain, "me/fmnist-enc", key=key, encrypt=True)  # doctest: +SKIP
        'https://huggingface.co/datasets/me/fmnist-enc'
    """
    from huggingface_hub import HfApi

    say = log or (lambda _: None)
    dd, resize = load_encrypted_source(ds_or_path, key, encrypt=encrypt, split=split,
                                       image_column=image_column, resize=resize,
                                       num_proc=num_proc)  # fmt: skip
    _check_columns(dd, image_column, label_column)
    checked = sum(
        check_encrypted_with(ds, key, image_column, f"split {name}", progress=log is not None)
        for name, ds in dd.items()
    )
    shards = {name: num_shards(ds, max_shard_size) for name, ds in dd.items()}
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ppconvmixer-dataset-") as tmp:
        stage, views = Path(tmp) / "repo", Path(tmp) / "views"
        staged: dict[str, str] = {}
        for name, ds in dd.items():
            staged |= stage_split(ds, name, shards[name], stage, views)
        assert_no_key_material([stage, views], key)  # before anything is sent
        try:
            repo_id = api.create_repo(repo_id, repo_type="dataset", private=private,
                                      exist_ok=True).repo_id  # fmt: skip
            if revision not in (None, "main"):  # as upload_folder's users expect: made if missing
                api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
            card = dataset_card(
                key,
                {name: len(ds) for name, ds in dd.items()},
                repo_id=repo_id,
                class_names=_class_names(dd, label_column),
                license=license,
                pretty_name=pretty_name,
                resize=resize,
                image_column=image_column,
                label_column=label_column,
                hub_metadata=card_metadata(dd, staged, stage),
            )
            # the commit below uploads the staged folder as it is: the scanned shards and
            # this scanned card, byte for byte
            assert_no_key_material(atomic_write_bytes(stage / "README.md", card.encode()), key)
            branch = f" ({revision})" if revision else ""
            say(f"pushing {checked} images encrypted with key {key.fingerprint} to {repo_id}"
                f"{branch}: {len(staged)} shards and the card, checked and scanned")  # fmt: skip
            operations = commit_operations(api, repo_id, stage, revision=revision)
            api.create_commit(repo_id, operations, commit_message=commit_message,
                              repo_type="dataset", revision=revision)  # fmt: skip
            verify_uploaded(api, repo_id, staged, revision=revision)
        except transport_errors() as e:
            raise HubError(
                f"pushing the dataset to {repo_id} failed: {first_line(e)}; check the token "
                "(HF_TOKEN or `hf auth login`), write access and the network, then push again "
                "(shards already uploaded are not sent twice)"
            ) from e
    url = f"{api.endpoint}/datasets/{repo_id}" + (f"/tree/{revision}" if revision else "")
    say(f"done: {url}")
    return url
