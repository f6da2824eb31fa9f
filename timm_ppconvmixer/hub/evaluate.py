"""The owner's side of the loop: evaluate a trained model with the key (test images encrypted
with it, plain, and encrypted with a fresh wrong key) in one call, and write the numbers into
the model card's ``model-index`` on the Hub (a key-free card, scanned by the leak guard), on the
branch that was evaluated; and compare measured numbers with the ones a card states."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard
from torch import nn

from ..atomic import atomic_write_bytes
from ..cipher import decrypt, encrypt
from ..images import prepare_image
from ..key import SchemeKey
from .dataset_stage import check_encrypted_with
from .errors import HubError
from .fingerprints import (
    FingerprintMismatchError,
    dataset_key_fingerprint,
    model_key_fingerprints,
    parse_dataset_source,
)
from .leak_guard import assert_no_key_material
from .model_card import (
    METRIC_LABELS,
    card_metrics,
    card_text,
    dataset_reference,
    eval_results,
    normalize_metrics,
    results_section,
)
from .model_folder import first_line, load_model, transport_errors

__all__ = [
    "CARD_TOLERANCE",
    "card_branch",
    "compare_with_card",
    "evaluate_plain",
    "evaluate_with_key",
    "push_evaluation",
    "split_revision",
]

# How far a number measured again on a card's whole test split may lie from the card's: the same
# weights on the same images, up to a few predictions that float rounding in another batch size
# may flip (0.2 percentage points: 20 of 10,000 images).
CARD_TOLERANCE = 0.002


def _load_split(dataset: Any, key: SchemeKey, split: str, encrypted: bool | None, token):
    """``(Dataset, encrypted, Hub id or None)`` of what to evaluate on."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split]
    if isinstance(dataset, datasets.Dataset):
        return dataset, bool(encrypted), None
    if not isinstance(dataset, (str, os.PathLike)):
        raise HubError(f"cannot evaluate on a {type(dataset).__name__}; pass a Dataset or a path")
    where, local = parse_dataset_source(str(dataset))
    recorded = dataset_key_fingerprint(str(dataset), token=token)
    if recorded is not None and recorded != key.fingerprint:
        raise FingerprintMismatchError(
            f"{dataset} is encrypted with key {recorded}, not with {key.fingerprint}; pass the "
            "key it was encrypted with"
        )
    encrypted = recorded is not None if encrypted is None else encrypted
    if not local:
        return datasets.load_dataset(where, split=split, token=token), encrypted, where
    from .datasets import load_encrypted_source

    ds = load_encrypted_source(where, key, split=split)[0]
    return ds[split], encrypted, None


def _accuracy(model: nn.Module, images: np.ndarray, labels: torch.Tensor, mean, std) -> int:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    device = next(model.parameters()).device
    with torch.no_grad():
        predicted = model(x.to(device)).argmax(-1).cpu()
    return int((predicted == labels).sum())


def evaluate_plain(
    model: nn.Module,
    dataset: Any,
    *,
    limit: int | None = None,
    batch_size: int = 256,
    image_column: str = "image",
    label_column: str = "label",
) -> dict:
    """Top-1 accuracy of a model of plain images (a plain baseline, no key) on a plain
    ``datasets.Dataset``, in :func:`evaluate_with_key`'s shape (``top1_plain`` only)."""
    from timm.data import resolve_model_data_config

    ds = dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset
    cfg = resolve_model_data_config(model)
    channels, h, w = cfg["input_size"]
    # the resize and colour policy of the key path, at the model's own input size
    geometry = SimpleNamespace(channels=channels, image_size=(h, w))
    model.eval()
    correct = 0
    for start in range(0, len(ds), batch_size):
        rows = ds[start : start + batch_size]
        images = np.stack(
            [
                np.asarray(prepare_image(img, geometry)).reshape(h, w, -1)
                for img in rows[image_column]
            ]
        )
        labels = torch.as_tensor(rows[label_column])
        correct += _accuracy(model, images, labels, cfg["mean"], cfg["std"])
    return {"eval": {"top1_plain": correct / max(len(ds), 1)}, "num_examples": len(ds)}


def evaluate_with_key(
    model_or_hub_id: nn.Module | str,
    dataset: Any,
    key: SchemeKey,
    *,
    split: str = "test",
    encrypted: bool | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    image_column: str = "image",
    label_column: str = "label",
    wrong_key: SchemeKey | None = None,
    token: str | None = None,
) -> dict:
    """Top-1 accuracy of a model on ``dataset``'s ``split``: with the images encrypted with
    ``key`` (``top1_key``), plain (``top1_plain``) and encrypted with ``wrong_key`` (default: a
    fresh key of the same geometry; ``top1_wrong_key``), as fractions in [0, 1].

    ``model_or_hub_id``: a model, ``hf-hub:ID``, ``local-dir:PATH`` or a model folder.
    ``dataset``: a ``Dataset`` / ``DatasetDict``, a folder, or ``hfds/OWNER/NAME`` (an encrypted
    dataset on the Hub, decrypted here with ``key``). Data whose card or ``ENCRYPTION.json``
    records a key is encrypted; other data is plain unless ``encrypted=True``. The result is
    in the shape ``push_evaluation`` and ``export(metrics=...)`` take.

    Example:
        >>> r = evaluate_with_key("hf-hub:me/ppcm-fmnist", "hfds/me/fmnist-enc", key)
        ... # doctest: +SKIP
        >>> r["eval"]  # doctest: +SKIP
        {'top1_key': 0.81, 'top1_plain': 0.1, 'top1_wrong_key': 0.09}
    """
    model = (
        model_or_hub_id if isinstance(model_or_hub_id, nn.Module) else load_model(model_or_hub_id)
    )
    recorded = getattr(model, "key_fingerprint", None)
    if recorded is not None and recorded != key.fingerprint:
        raise FingerprintMismatchError(
            f"the model is for key {recorded}, not for {key.fingerprint}; evaluate it with its key"
        )
    ds, encrypted, hub_id = _load_split(dataset, key, split, encrypted, token)
    ds = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    if encrypted:
        check_encrypted_with(ds, key, image_column, f"split {split}")
    wrong = wrong_key or type(key).generate(key.image_size, key.block_size, key.channels)
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean, std = cfg["mean"], cfg["std"]
    if len(mean) != key.channels:  # e.g. ImageNet statistics for a one-channel model
        mean, std = (sum(mean) / len(mean),) * key.channels, (sum(std) / len(std),) * key.channels
    model.eval()
    correct = {"top1_key": 0, "top1_plain": 0, "top1_wrong_key": 0}
    h, w = key.image_size
    for start in range(0, len(ds), batch_size):
        rows = ds[start : start + batch_size]
        stack = np.stack(
            [
                np.asarray(img if encrypted else prepare_image(img, key)).reshape(h, w, -1)
                for img in rows[image_column]
            ]  # fmt: skip
        )
        plain = decrypt(stack, key, layout="HWC") if encrypted else stack
        labels = torch.as_tensor(rows[label_column])
        for name, images in (
            ("top1_key", encrypt(plain, key, layout="HWC")),
            ("top1_plain", plain),
            ("top1_wrong_key", encrypt(plain, wrong, layout="HWC")),
        ):
            correct[name] += _accuracy(model, images, labels, mean, std)
    n = len(ds)
    return {
        "eval": {name: count / max(n, 1) for name, count in correct.items()},
        "key_fingerprint": key.fingerprint,
        "wrong_key_fingerprint": wrong.fingerprint,
        "num_examples": n,
        "dataset": {"id": hub_id, "split": split} if hub_id else {"split": split},
    }


def _with_results(card: str, metrics: dict, data: dict, name: str | None, repo_id: str) -> str:
    """``card`` with the owner's numbers: its ``model-index`` rebuilt from the metrics'
    ``EvalResult`` list by huggingface_hub, the dataset added, the Results section replaced;
    every other field and section kept."""
    parsed = ModelCard(card)
    meta = parsed.data
    meta.model_name = name or meta.model_name or repo_id.split("/")[-1]
    meta.eval_results = eval_results(metrics, data)
    meta.datasets = sorted({*(meta.datasets or []), data["id"]})
    section = results_section(metrics, data)
    head, found, tail = parsed.text.partition("## Results\n")
    if found:
        rest = tail.split("\n## ", 1)
        body = head + section + ("\n## " + rest[1] if len(rest) == 2 else "")
    else:
        body = parsed.text.rstrip("\n") + "\n\n" + section
    return card_text(meta, body)


def split_revision(model: str) -> tuple[str, str | None]:
    """``(repo_id, revision or None)`` of ``hf-hub:OWNER/NAME[@REVISION]`` (timm's spelling of a
    Hub model at a branch, tag or commit)."""
    if not model.startswith("hf-hub:"):
        raise HubError(f"{model} is not a Hub model: write it hf-hub:OWNER/NAME[@REVISION]")
    repo_id, _, revision = model[len("hf-hub:") :].partition("@")
    return repo_id, revision or None


def card_branch(
    repo_id: str, evaluated: str | None, revision: str | None = None, token: str | None = None
) -> str:
    """The branch an evaluation's card is committed to: ``revision`` if given, else the
    branch that was evaluated (``evaluated``; None is ``main``), as huggingface_hub's
    ``upload_file(revision=...)`` commits to a branch. A tag or a commit cannot take a
    commit: then the caller must name a branch. Checked against the repository's refs before
    anything is evaluated."""
    from huggingface_hub import HfApi

    target = revision or evaluated or "main"
    try:
        branches = {b.name for b in HfApi(token=token).list_repo_refs(repo_id).branches}
    except transport_errors() as e:
        raise HubError(
            f"cannot read the branches of {repo_id}: {first_line(e)}; check the model id, the "
            "token and that you may read the repository"
        ) from e
    name = target.removeprefix("refs/heads/")
    if name in branches:
        return name
    if revision:
        raise HubError(
            f"{repo_id} has no branch {revision!r} (branches: {', '.join(sorted(branches))}); "
            "--revision names the branch the card is committed to"
        )
    raise HubError(
        f"{repo_id}@{evaluated} is not a branch (a tag or a commit), and a card can only be "
        "committed to a branch: pass --revision BRANCH for the branch whose card gets these "
        "numbers"
    )


def push_evaluation(
    repo_id: str,
    results: Mapping[str, Any],
    *,
    key: SchemeKey,
    dataset: str | Mapping[str, Any] | None = None,
    model_name: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Owner's evaluation with the key (model-index)",
) -> str:
    """Write :func:`evaluate_with_key`'s numbers into the model card of Hub model ``repo_id``
    (``model-index`` and the Results section) and push the card back, after the leak guard
    scanned it; returns the commit URL. ``revision``: the branch whose card is read, updated
    and committed to (default ``main``; see :func:`card_branch`). ``dataset``: the Hub dataset
    id the numbers were measured on (default: the one ``results`` names).

    Example:
        >>> push_evaluation("me/ppcm-fmnist", results, key=key, revision="v2")  # doctest: +SKIP
    """
    from huggingface_hub import HfApi, hf_hub_download

    if "@" in repo_id:
        raise HubError(
            f"{repo_id}: pass the repository as OWNER/NAME and the branch as revision= "
            "(split_revision splits timm's hf-hub:OWNER/NAME@REVISION)"
        )
    metrics = normalize_metrics(results, key.fingerprint)
    measured_on = dict(results.get("dataset") or {})
    dataset = dataset or measured_on.get("id")
    if dataset is None:
        raise HubError("the results name no Hub dataset; pass dataset=<Hub dataset id>")
    if isinstance(dataset, str):
        dataset = {"id": dataset, "split": measured_on.get("split", "test")}
    data = dataset_reference(dataset)
    api = HfApi(token=token)
    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        recorded = set(model_key_fingerprints(f"hf-hub:{at}", token=token))
        if recorded - {key.fingerprint}:
            raise FingerprintMismatchError(
                f"{at} records key {', '.join(sorted(recorded))}, not {key.fingerprint}; "
                "these numbers are not for that model"
            )
        card = Path(
            hf_hub_download(repo_id, "README.md", revision=revision, token=token)
        ).read_text("utf-8")
        with tempfile.TemporaryDirectory(prefix="ppconvmixer-card-") as tmp:
            path = atomic_write_bytes(
                Path(tmp) / "README.md",
                _with_results(card, metrics, data, model_name, repo_id).encode(),
            )
            assert_no_key_material(path, key)
            info = api.upload_file(path_or_fileobj=str(path), path_in_repo="README.md",
                                   repo_id=repo_id, revision=revision,
                                   commit_message=commit_message)  # fmt: skip
    except transport_errors() as e:
        raise HubError(
            f"updating the card of {at} failed: {first_line(e)}; check the token and that "
            "you may write to the repository"
        ) from e
    return info.commit_url


def compare_with_card(
    measured: Mapping[str, float], card: str, num_examples: int, full_split: int
) -> list[dict]:
    """Each number a card states (:func:`~.model_card.card_metrics`) beside the one measured
    again: ``{"metric", "label", "card", "measured", "tolerance", "agrees"}``. On the card's
    whole split (``num_examples == full_split``) the tolerance is :data:`CARD_TOLERANCE`; on a
    subset of ``n`` images it adds four binomial standard errors, ``4 sqrt(p (1 - p) / n)``,
    for the subset's own sampling spread. A number the card states but the evaluation did not
    measure disagrees."""
    rows = []
    for name, stated in card_metrics(card).items():
        value = measured.get(name)
        tolerance = CARD_TOLERANCE
        if num_examples < full_split:
            tolerance += 4 * math.sqrt(stated * (1 - stated) / max(num_examples, 1))
        rows.append(
            {
                "metric": name,
                "label": METRIC_LABELS[name],
                "card": stated,
                "measured": value,
                "tolerance": tolerance,
                "agrees": value is not None and abs(value - stated) <= tolerance,
            }
        )
    return rows
