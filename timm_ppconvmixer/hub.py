"""Sharing models on the Hugging Face Hub: export with a key-free model card, a leak guard
that refuses key material, push and pull.

A model folder holds ``model.safetensors`` (no pickle files), ``config.json`` exactly as timm's
``save_for_hf`` writes it, so ``timm.create_model("local-dir:<folder>")`` and
``timm.create_model("hf-hub:<repo>", pretrained=True)`` work once ``timm_ppconvmixer`` is
imported, and, for sharing, ``README.md``: a model card whose only fact about the key is its
public fingerprint.

Example:
    >>> import timm, timm_ppconvmixer
    >>> from timm_ppconvmixer.hub import export, push_to_hub
    >>> model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3)
    >>> export(model, "out/tiny")  # doctest: +SKIP
    >>> push_to_hub(model, "me/tiny", key=key, metrics={"top1_key": 0.91})  # doctest: +SKIP

The leak guard (:func:`scan_for_key_material`) runs on every file before it is renamed into
place by :func:`export` and again before anything is uploaded. What it detects and what it
cannot is listed in ``docs/hub.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import timm
import torch
import yaml
from timm.models import save_for_hf
from torch import nn

from .key import SCHEME, BlockKey
from .models import PPConvMixer
from .permutation import AdaptivePermutation, HardPermutation

__all__ = [
    "Finding",
    "HubError",
    "KeyMaterialError",
    "METRIC_LABELS",
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
TAGS = ["timm", "image-classification", "privacy-preserving", "block-wise-encryption", "convmixer"]
# Top-1 accuracies as recipes/train.py measures them (fractions in [0, 1]), and what each means.
METRIC_LABELS = {
    "top1_key": "test images encrypted with this model's key",
    "top1_encrypted": "test images supplied already encrypted with this model's key",
    "top1_plain": "plain (unencrypted) test images",
    "top1_wrong_key": "test images encrypted with a different key",
}


class HubError(ValueError):
    """Exporting, checking or uploading a model failed; the message says what to do."""


class KeyMaterialError(HubError):
    """The leak guard found key material in a file about to be shared."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


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


# -- metrics, dataset and the model card --------------------------------------------------------


def normalize_metrics(
    metrics: Mapping[str, Any] | None, fingerprint: str | None = None
) -> dict[str, float]:
    """Validate measured top-1 accuracies (fractions in [0, 1], keys of :data:`METRIC_LABELS`).

    Accepts a ``final_metrics.json`` of ``recipes/train.py`` as is (its ``eval`` mapping), and
    refuses one measured with another key than ``fingerprint``. Numbers are only ever copied.

    Example:
        >>> normalize_metrics({"top1_key": 0.9, "top1_wrong_key": 0.1})
        {'top1_key': 0.9, 'top1_wrong_key': 0.1}
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise HubError(f"metrics must be a mapping such as {{'top1_key': 0.91}}, got {metrics!r}")
    data = dict(metrics)
    if isinstance(data.get("eval"), Mapping):  # recipes/train.py's final_metrics.json
        measured_with = data.get("key_fingerprint")
        if measured_with and fingerprint and measured_with != fingerprint:
            raise HubError(
                f"the metrics were measured with key {measured_with}, the model is for key "
                f"{fingerprint}; pass the metrics of this model's run"
            )
        data = dict(data["eval"])
    unknown = sorted(set(data) - set(METRIC_LABELS))
    if unknown:
        raise HubError(
            f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_LABELS)} "
            "(top-1 accuracies as fractions in [0, 1], as recipes/train.py writes them)"
        )
    out = {}
    for name in METRIC_LABELS:
        if name not in data:
            continue
        value = data[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise HubError(
                f"metric {name} must be a top-1 accuracy as a fraction in [0, 1], got {value!r}"
            )
        out[name] = float(value)
    return out


def _dataset_info(dataset: str | Mapping[str, Any] | None) -> dict | None:
    if dataset is None:
        return None
    if isinstance(dataset, str):
        dataset = {"id": dataset}
    if not isinstance(dataset, Mapping) or not isinstance(dataset.get("id"), str):
        raise HubError(
            "dataset must be a Hub dataset id such as 'zalando-datasets/fashion_mnist', or a "
            f"mapping with 'id' (and optionally 'name', 'split'), got {dataset!r}"
        )
    unknown = sorted(set(dataset) - {"id", "name", "split"})
    if unknown:
        raise HubError(f"unknown dataset field(s) {', '.join(unknown)}; use id, name, split")
    return {
        "id": dataset["id"],
        "name": str(dataset.get("name") or dataset["id"]),
        "split": str(dataset.get("split") or "test"),
    }


def _key_facts(model: PPConvMixer, key: BlockKey | None) -> dict:
    """The only key facts a card may carry: scheme, version, fingerprint. With ``key``, check
    that it is the key the model was made for."""
    recorded = model.key_fingerprint
    if key is None:
        version = re.match(r"ppcm(\d+)-", recorded or "")
        return {
            "scheme": SCHEME,
            "scheme_version": int(version.group(1)) if version else None,
            "fingerprint": recorded,
        }
    if recorded is None:
        raise HubError(
            f"the model records no key fingerprint, so it cannot be checked against key "
            f"{key.fingerprint}; set model.key_fingerprint = key.fingerprint if the weights were "
            "trained or converted with this key"
        )
    if recorded != key.fingerprint:
        raise HubError(
            f"the model was made for key {recorded}, not for key {key.fingerprint}; pass the key "
            "the model was trained or converted with"
        )
    facts = key.describe()
    return {k: facts[k] for k in ("scheme", "scheme_version", "fingerprint")}


def _architecture(model: PPConvMixer) -> dict:
    perm = model.permutation
    n = model.grid_size[0] * model.grid_size[1]
    return {
        "architecture": model.pretrained_cfg.get("architecture", type(model).__name__),
        "dim": model.num_features,
        "depth": len(model.blocks),
        "kernel_size": model.blocks[0][0].fn[0].kernel_size[0],
        "activation": type(model.stem[1]).__name__,
        "patch_size": model.patch_size,
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
        "img_size": tuple(model.img_size),
        "grid_size": tuple(model.grid_size),
        "num_blocks": n,
        "params": sum(p.numel() for p in model.parameters()),
        "p_params": perm.weight.numel() if isinstance(perm, AdaptivePermutation) else 0,
        "has_p": perm is not None,
        "exact_p": _is_exact_permutation(perm),
    }


def _is_exact_permutation(perm: nn.Module | None) -> bool:
    """Whether P states a block order outright (converted or hardened): a 0/1 permutation
    matrix other than the identity."""
    if isinstance(perm, HardPermutation):
        return not torch.equal(perm.source.cpu(), torch.arange(perm.source.numel()))
    if not isinstance(perm, AdaptivePermutation):
        return False
    order = _permutation_of_matrix(perm.weight.detach().cpu())
    return order is not None and not np.array_equal(order, np.arange(len(order)))


def _yaml_front_matter(name: str, license: str, metrics: dict, dataset: dict | None) -> str:
    meta: dict[str, Any] = {
        "library_name": "timm",
        "pipeline_tag": "image-classification",
        "license": license,
        "tags": TAGS,
    }
    if dataset is not None:
        meta["datasets"] = [dataset["id"]]
    if metrics:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {
                            "name": dataset["name"],
                            "type": dataset["id"],
                            "split": dataset["split"],
                        },
                        "metrics": [
                            {
                                "type": "accuracy",
                                "value": value,
                                "name": f"Top-1 accuracy, {METRIC_LABELS[k]}",
                            }
                            for k, value in metrics.items()
                        ],
                    }
                ],
            }
        ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _results_section(metrics: dict, dataset: dict | None) -> str:
    if not metrics:
        return (
            "## Results\n\nNo measurements were provided with this export, so this card states "
            "no accuracy.\n"
        )
    rows = "\n".join(f"| {METRIC_LABELS[k]} | {100 * v:.2f} % |" for k, v in metrics.items())
    return (
        f"## Results\n\nTop-1 accuracy on the `{dataset['split']}` split of "
        f"[{dataset['name']}](https://huggingface.co/datasets/{dataset['id']}), as measured and "
        f"reported by the publisher:\n\n| evaluated on | top-1 |\n| --- | --- |\n{rows}\n\n"
        "Images encrypted with a different key, or not encrypted, are expected to be classified "
        "poorly: the model only works in its key's encrypted domain.\n"
    )


def _recipe_section(recipe: str | Mapping[str, Any] | None) -> str:
    if recipe is None:
        return "## Training recipe\n\nNo training recipe was provided with this export.\n"
    if isinstance(recipe, Mapping):
        body = "```yaml\n" + yaml.safe_dump(dict(recipe), sort_keys=False) + "```"
    else:
        body = str(recipe).strip()
    return f"## Training recipe\n\n{body}\n"


_CITATIONS = """\
## Citation

```bibtex
@article{qi2022privacy,
  title   = {Privacy-Preserving Image Classification Using ConvMixer with Adaptive
             Permutation Matrix},
  author  = {Qi, Zheng and MaungMaung, AprilPyone and Kiya, Hitoshi},
  journal = {arXiv preprint arXiv:2208.02556},
  year    = {2022}
}

@article{trockman2023patches,
  title   = {Patches Are All You Need?},
  author  = {Trockman, Asher and Kolter, J. Zico},
  journal = {Transactions on Machine Learning Research},
  year    = {2023},
  note    = {First presented for ICLR 2022; arXiv:2201.09792}
}
```
"""


def _usage_section(hub_id: str, key: dict, arch: dict) -> str:
    h, w = arch["img_size"]
    check = (
        f'assert key.fingerprint == "{key["fingerprint"]}", "not the key this model needs"\n'
        if key["fingerprint"]
        else ""
    )
    return f"""## Usage

The model only works on images encrypted with its key (fingerprint below). The key stays with
the data owner; encrypt with it on the owner's side, then send the encrypted images.

```python
import timm
import timm_ppconvmixer  # registers the ppconvmixer_* architectures with timm
from PIL import Image
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.transforms import create_transform

key = BlockKey.load("owner.key")  # your secret key file: never upload it
{check}model = timm.create_model("hf-hub:{hub_id}", pretrained=True).eval()
cfg = timm.data.resolve_data_config(model=model)
# resize/crop to {h}x{w}, encrypt with the key, normalise as the model expects
transform = create_transform(key, mean=cfg["mean"], std=cfg["std"])
x = transform(Image.open("image.png")).unsqueeze(0)
probs = model(x).softmax(dim=-1)
print(probs.argmax(dim=-1))
```

Fine-tuning on another label set: `timm.create_model("hf-hub:{hub_id}", pretrained=True,
num_classes=N)` keeps every weight but the classifier. The input size is part of the weights
(P is {arch["num_blocks"]} x {arch["num_blocks"]}): another `img_size` is refused.
"""


def _privacy_section(key: dict, arch: dict) -> str:
    fingerprint = f"`{key['fingerprint']}`" if key["fingerprint"] else "see above"
    warning = ""
    if arch["exact_p"]:
        warning = (
            "\n**Warning:** P in these weights is an exact permutation matrix (a model converted "
            "from plain weights, or a hardened P). It states the key's block order outright.\n"
        )
    return f"""## Privacy: what the encryption protects, and what it does not

* **Protected:** the images. Whoever holds this model and encrypted images, but not the key,
  does not see the plain images; training and inference run on encrypted images only.
* **Not protected: the key against the weights.** The weights carry key information. A model
  converted from public plain weights (`timm_ppconvmixer.convert.encrypt_model`), or trained
  with P, lets anyone who compares it with a plain model recover much of the key: the block
  permutation from P (once P has converged towards a permutation) and the pixel shuffling and
  negative-positive flips from the patch embedding. The key **fingerprint**
  ({fingerprint}) is safe to publish; the **weights are not key-free** in that sense.
  Share a model only where revealing its key's block order is acceptable, and use a fresh key
  for data that must stay private from whoever holds these weights.
{warning}* The key file itself never travels with the model: this repository holds only its
  fingerprint, checked by a leak guard before upload.
"""


def _limitations_section(arch: dict) -> str:
    h, w = arch["img_size"]
    m = arch["patch_size"]
    return f"""## Limitations

* Inputs must be {h}x{w} with {arch["in_chans"]} channel(s), encrypted with the matching key.
  Any other key, plain images, or another size give wrong predictions or an error.
* Encrypted images must be stored losslessly (PNG): JPEG mixes pixels across the {m}x{m}
  blocks and breaks the encryption's structure.
* Block-wise scrambling is a perceptual encryption, not a standard cipher. It hides the visual
  content of each image, but the statistics inside a block survive (only shuffled and
  flipped), and block positions may be partly recovered from many encrypted images by
  jigsaw-puzzle solving.
"""


def model_card(
    model: PPConvMixer,
    *,
    key: BlockKey | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    repo_id: str | None = None,
    model_name: str | None = None,
) -> str:
    """The model card (``README.md``) of ``model``: YAML metadata for the Hub, then
    architecture, key fingerprint, the caller's measurements, usage, recipe, privacy note,
    limitations and citations. It never states a number the caller did not measure, and the
    only fact about the key is its fingerprint and scheme version.

    Example:
        >>> card = model_card(model, key=key, metrics={"top1_key": 0.91},
        ...                   dataset="zalando-datasets/fashion_mnist")  # doctest: +SKIP
    """
    if not isinstance(model, PPConvMixer):
        raise HubError(
            f"model cards are written for PPConvMixer models, got {type(model).__name__}; for "
            "other timm models use timm.models.push_to_hf_hub"
        )
    facts = _key_facts(model, key)
    values = normalize_metrics(metrics, facts["fingerprint"])
    data = _dataset_info(dataset)
    if values and data is None:
        raise HubError("metrics need the dataset they were measured on: pass dataset=<Hub id>")
    arch = _architecture(model)
    name = model_name or (repo_id.split("/")[-1] if repo_id else arch["architecture"])
    hub_id = repo_id or f"<namespace>/{name}"
    return "\n".join(
        [
            _yaml_front_matter(name, license, values, data),
            _overview_section(name, arch, facts),
            _results_section(values, data),
            _usage_section(hub_id, facts, arch),
            _recipe_section(recipe),
            _privacy_section(facts, arch),
            _limitations_section(arch),
            _CITATIONS,
        ]
    )


def _overview_section(name: str, arch: dict, key: dict) -> str:
    h, w = arch["img_size"]
    gh, gw = arch["grid_size"]
    if arch["p_params"]:
        p_line = f"{arch['p_params']:,} of them in P ({arch['num_blocks']} x {arch['num_blocks']})"
    else:
        p_line = "P is a fixed token permutation" if arch["has_p"] else "no P (ablation)"
    if key["fingerprint"]:
        scheme = f"`{key['scheme']}`, version {key['scheme_version']}"
        fingerprint = f"`{key['fingerprint']}`"
    else:
        scheme = fingerprint = "not recorded (the weights do not say which key they need)"
    rows = [
        (
            "architecture",
            f"`{arch['architecture']}` (timm ConvMixer + P after the patch embedding)",
        ),
        ("width h / depth / kernel", f"{arch['dim']} / {arch['depth']} / {arch['kernel_size']}"),
        ("activation", arch["activation"]),
        ("parameters", f"{arch['params']:,} ({p_line})"),
        ("classes", str(arch["num_classes"])),
        ("image size", f"{h}x{w}, {arch['in_chans']} channel(s)"),
        ("block size (= patch size) M", str(arch["patch_size"])),
        ("number of blocks n", f"{arch['num_blocks']} ({gh}x{gw})"),
        ("key scheme", scheme),
        ("key fingerprint", fingerprint),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# {name}

An image classifier for **block-wise encrypted images** (privacy-preserving image
classification): a ConvMixer with an adaptive permutation matrix P, after Qi, MaungMaung and
Kiya, "Privacy-Preserving Image Classification Using ConvMixer with Adaptive Permutation
Matrix" (2022, arXiv:2208.02556), built on timm's ConvMixer (Trockman and Kolter, "Patches Are
All You Need?"). It is used through [timm](https://github.com/huggingface/pytorch-image-models)
with the `timm_ppconvmixer` plugin.

## Model details

| | |
| --- | --- |
{table}
"""


# -- leak guard --------------------------------------------------------------------------------

# Consecutive entries of a permutation that count as a leak (the whole permutation if shorter),
# and of the negative-positive mask: 16 entries of a permutation of n >= 16 values carry at
# least 44 bits, 64 mask bits 64 bits, so a chance match in real weights is out of reach.
PERM_WINDOW = 16
MASK_WINDOW = 64
# A window with less information than this matches by chance somewhere; a secret that small
# (a block permutation of <= 12 blocks, a mask shorter than 32) is brute-forced anyway.
MIN_WINDOW_BITS = 32.0

# Raw numeric encodings the guard reads every non-safetensors file as, at every alignment.
_RAW_INT_VIEWS = (
    ("u1", "uint8"),
    ("<u2", "int16 little-endian"),
    (">u2", "int16 big-endian"),
    ("<u4", "int32 little-endian"),
    (">u4", "int32 big-endian"),
    ("<i8", "int64 little-endian"),
    (">i8", "int64 big-endian"),
)
_RAW_FLOAT_VIEWS = (
    ("<f2", "float16 little-endian"),
    (">f2", "float16 big-endian"),
    ("<f4", "float32 little-endian"),
    (">f4", "float32 big-endian"),
    ("<f8", "float64 little-endian"),
    (">f8", "float64 big-endian"),
    ("<bf16", "bfloat16 little-endian"),
    (">bf16", "bfloat16 big-endian"),
)
# Integers (also as floats such as 3.0) and JSON booleans, not inside words or dotted names.
_NUMBER_RE = re.compile(
    r"(?<!\w)(?<!\d\.)(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|True|False)(?!\w|\.\d)"
)
_WORDISH_RE = re.compile(r"[A-Za-z0-9_]")


@dataclass(frozen=True)
class Finding:
    """Key material found in a file.

    ``key_derived_weights`` marks the one finding an owner may knowingly accept: the model's P
    is exactly the key's block permutation (a converted model, or a hardened P).
    """

    file: str
    what: str
    where: str
    key_derived_weights: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.what} ({self.where})"


@dataclass(frozen=True)
class _Secret:
    """One key sequence and how to recognise ``window`` consecutive entries of it."""

    name: str
    values: np.ndarray
    window: int
    successor: np.ndarray | None = None  # permutations: value -> next value, -2 after the last
    codes: np.ndarray | None = None  # the mask: every window packed into a uint64

    @property
    def is_mask(self) -> bool:
        return self.codes is not None


def _permutation_bits(length: int, window: int) -> float:
    return sum(math.log2(length - i) for i in range(window))


def _permutation_secret(name: str, perm: np.ndarray) -> _Secret | None:
    window = min(PERM_WINDOW, len(perm))
    if _permutation_bits(len(perm), window) < MIN_WINDOW_BITS:
        return None
    # -2, not -1: -1 stands for "not an integer" in the scanned values and must never follow
    successor = np.full(len(perm), -2, dtype=np.int64)
    successor[perm[:-1]] = perm[1:]
    return _Secret(name, perm, window, successor=successor)


def _pack_windows(bits: np.ndarray, window: int) -> np.ndarray:
    """Every ``window``-long run of 0/1 values as one uint64 (bit j = entry j)."""
    bits = bits.astype(np.uint64)
    count = len(bits) - window + 1
    packed = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(window):
        packed |= bits[j : j + count] << np.uint64(j)
    return packed


def _mask_secret(mask: np.ndarray) -> _Secret | None:
    window = min(MASK_WINDOW, len(mask))
    if window < MIN_WINDOW_BITS:
        return None
    codes = _pack_windows(mask, window)
    full = np.uint64((1 << window) - 1) if window < 64 else np.uint64(2**64 - 1)
    codes = codes[(codes != 0) & (codes != full)]  # constant runs are not secret
    if codes.size == 0:
        return None
    return _Secret("np_mask (K3)", mask, window, codes=np.unique(codes))


def _secrets(key: BlockKey) -> list[_Secret]:
    block = key.block_perm.numpy()
    pixel = key.pixel_perm.numpy()
    candidates = [
        _permutation_secret("block_perm (K1)", block),
        _permutation_secret("inverse of block_perm (K1)", np.argsort(block)),
        _permutation_secret("pixel_perm (K2)", pixel),
        _permutation_secret("inverse of pixel_perm (K2)", np.argsort(pixel)),
        _mask_secret(key.np_mask.numpy().astype(np.int64)),
    ]
    secrets, seen = [], set()
    for s in candidates:
        if s is not None and s.values.tobytes() not in seen:  # an involution is its own inverse
            seen.add(s.values.tobytes())
            secrets.append(s)
    return secrets


def _true_runs(flags: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of the maximal runs of True at least ``min_len`` long, end exclusive."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= min_len
    return list(zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))


def _permutation_hits(values: np.ndarray, secret: _Secret) -> list[int]:
    """Start indices of runs of ``values`` that follow the secret's order for a whole window.

    A permutation has each value once, so ``window`` consecutive values match a window of it
    exactly when each value is followed by its successor: one vectorised pass, no hashing.
    """
    if len(values) < secret.window:
        return []
    a, b = values[:-1], values[1:]
    inside = np.flatnonzero((a >= 0) & (a < len(secret.values)))
    follows = np.zeros(len(a), dtype=bool)
    follows[inside] = secret.successor[a[inside]] == b[inside]
    hits = []
    for start, end in _true_runs(follows, secret.window - 1):
        run = values[start : end + 1]
        # an arithmetic progression (0, 1, 2, ...) is not secret even where the key has one
        if np.any(np.diff(run, 2) != 0):
            hits.append(start)
    return hits


def _mask_hits(values: np.ndarray, secret: _Secret) -> list[int]:
    hits = []
    for start, end in _true_runs((values == 0) | (values == 1), secret.window):
        packed = _pack_windows(values[start:end], secret.window)
        found = np.flatnonzero(np.isin(packed, secret.codes))
        if found.size:
            hits.append(start + int(found[0]))
    return hits


def _hits(values: np.ndarray, secret: _Secret) -> list[int]:
    return _mask_hits(values, secret) if secret.is_mask else _permutation_hits(values, secret)


def _what(secret: _Secret) -> str:
    if secret.window == len(secret.values):
        return f"the whole {secret.name}"
    unit = "bits" if secret.is_mask else "values"
    return f"{secret.window}+ consecutive {unit} of {secret.name}"


def _float_to_ints(values: np.ndarray) -> np.ndarray:
    """Integer-valued floats as int64 (5.0 -> 5); anything else -1, which no key holds."""
    values = values.astype(np.float64, copy=False)
    out = np.full(values.shape, -1, dtype=np.int64)
    ok = np.isfinite(values) & (np.abs(values) < 2**53)
    ok[ok] = values[ok] == np.round(values[ok])
    out[ok] = values[ok].astype(np.int64)
    return out


def _scan_values(
    values: np.ndarray, secrets: list[_Secret], file: str, where: Callable[[int], str]
) -> list[Finding]:
    findings = []
    for secret in secrets:
        hits = _hits(values, secret)
        if hits:
            findings.append(Finding(file, _what(secret), where(hits[0])))
    return findings


def _raw_view(data: bytes, dtype: str, offset: int) -> np.ndarray:
    if dtype.endswith("bf16"):  # numpy has no bfloat16: widen the 16 bits to a float32
        halves = np.frombuffer(
            data, dtype=dtype[0] + "u2", offset=offset, count=_count(data, 2, offset)
        )
        return _float_to_ints((halves.astype(np.uint32) << 16).view(np.float32))
    width = np.dtype(dtype).itemsize
    view = np.frombuffer(data, dtype=dtype, offset=offset, count=_count(data, width, offset))
    return _float_to_ints(view) if view.dtype.kind == "f" else view.astype(np.int64)


def _count(data: bytes, width: int, offset: int) -> int:
    return max((len(data) - offset) // width, 0)


def _scan_raw(data: bytes, secrets: list[_Secret], file: str, what: str = "") -> list[Finding]:
    """Read the bytes as integers and floats of every common width, order and alignment."""
    first: dict[str, tuple[int, str]] = {}  # secret -> (byte position, encoding)
    for dtype, label in _RAW_INT_VIEWS + _RAW_FLOAT_VIEWS:
        width = 2 if dtype.endswith("bf16") else np.dtype(dtype).itemsize
        # bytes hold only values below 256: skip permutations that do not fit in them
        usable = [s for s in secrets if width > 1 or s.is_mask or len(s.values) <= 256]
        for offset in range(width):
            if _count(data, width, offset) < 2:
                continue
            values = _raw_view(data, dtype, offset)
            for secret in usable:
                hits = _hits(values, secret)
                # the earliest position names the encoding that was written, not a shifted
                # reading of it (big-endian int16 at byte 4 also reads as little-endian at 5)
                if hits and offset + hits[0] * width < first.get(secret.name, (len(data),))[0]:
                    first[secret.name] = (offset + hits[0] * width, label)
    return [
        Finding(
            file,
            _what(secret),
            f"{what}raw {first[secret.name][1]} values at byte {first[secret.name][0]}",
        )
        for secret in secrets
        if secret.name in first
    ]


def _first_per_secret(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        if f.what not in seen:
            seen.add(f.what)
            out.append(f)
    return out


def _text_sequences(text: str) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Runs of numbers separated only by punctuation or space: ``[3, 1, 4]``, ``3 1 4``,
    ``3;1;4``, ``3.0, 1.0``, ``true, false``. Yields (values, character positions)."""
    values: list[int] = []
    positions: list[int] = []
    last_end = 0
    for m in _NUMBER_RE.finditer(text):
        if values and _WORDISH_RE.search(text, last_end, m.start()):
            yield np.asarray(values, dtype=np.int64), positions
            values, positions = [], []
        token = m.group(1)
        values.append(_token_value(token))
        positions.append(m.start())
        last_end = m.end()
    if values:
        yield np.asarray(values, dtype=np.int64), positions


def _token_value(token: str) -> int:
    if token in ("true", "True"):
        return 1
    if token in ("false", "False"):
        return 0
    number = float(token)
    return int(number) if number.is_integer() and abs(number) < 2**53 else -1


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _scan_text(text: str, secrets: list[_Secret], file: str, what: str = "") -> list[Finding]:
    """Numbers written as text, and the mask as a string of 0 and 1 characters."""
    findings = []
    for values, positions in _text_sequences(text):
        if len(values) < 2:
            continue
        findings += _scan_values(
            values,
            secrets,
            file,
            lambda i, p=positions: f"{what}numbers in text at line {_line(text, p[i])}",
        )
    for secret in (s for s in secrets if s.is_mask):
        for m in re.finditer(f"[01]{{{secret.window},}}", text):
            bits = np.frombuffer(m.group().encode(), dtype=np.uint8).astype(np.int64) - 48
            hits = _mask_hits(bits, secret)
            if hits:
                line = _line(text, m.start() + hits[0])
                findings.append(Finding(file, _what(secret), f"{what}0/1 string at line {line}"))
                break
    return _first_per_secret(findings)


def _scan_key_file(data: bytes, key: BlockKey | None, file: str) -> list[Finding]:
    """A copy of the key file (or of any key file of this scheme, even without ``key``)."""
    if key is not None and key.to_json().encode() in data:
        return [Finding(file, "a copy of the key file", "key.to_json() verbatim")]
    if SCHEME.encode() in data and b'"pixel_perm"' in data and b'"block_perm"' in data:
        return [Finding(file, f"a {SCHEME} key file", "fields scheme, block_perm, pixel_perm")]
    return []


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_safetensors(data: bytes) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(header, tensors) of a safetensors file, or None if ``data`` is not one."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + size])
        tensors = safetensors.torch.load(data)
    except Exception:  # noqa: BLE001 - any parse failure means "not safetensors": scan as raw
        return None
    return (header, tensors) if isinstance(header, dict) else None


def _permutation_of_matrix(t: torch.Tensor) -> np.ndarray | None:
    """For an exact 0/1 permutation matrix, the column of each row's 1; else None."""
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2 or t.is_complex():
        return None
    a = t.detach().cpu().double().numpy()
    if not np.isin(a, (0.0, 1.0)).all():
        return None
    if not ((a.sum(0) == 1).all() and (a.sum(1) == 1).all()):
        return None
    return a.argmax(1)


def _permutation_of_tensor(name: str, t: torch.Tensor) -> np.ndarray | None:
    """The block order a model tensor states outright: P as an exact 0/1 permutation matrix
    (``P[i, order[i]] = 1``), or a hardened P's gather index (``<module>.source``)."""
    if name.endswith(".source") and t.ndim == 1 and not t.is_floating_point():
        source = t.to(torch.int64).numpy()
        if np.array_equal(np.sort(source), np.arange(len(source))):
            return np.argsort(source)  # P[source[j], j] = 1
        return None
    return _permutation_of_matrix(t)


def _scan_permutation_tensor(
    name: str, t: torch.Tensor, key: BlockKey | None, file: str
) -> tuple[bool, list[Finding]]:
    """(is a permutation P, findings). With a key: flag P equal to the key's block order (or
    its inverse). Without one: flag any P that is not the identity, which cannot be checked."""
    order = _permutation_of_tensor(name, t)
    if order is None:
        return False, []
    where = f"safetensors tensor {name!r}"
    if key is not None:
        block = key.block_perm.numpy()
        if len(order) == len(block) and (
            np.array_equal(order, block) or np.array_equal(order, np.argsort(block))
        ):
            what = "the key's block permutation as an exact permutation matrix P"
            return True, [Finding(file, what, where, key_derived_weights=True)]
        return True, []
    if np.array_equal(order, np.arange(len(order))):
        return True, []
    what = "an exact (non-identity) permutation matrix P, possibly the key's block order"
    return True, [Finding(file, what, f"{where}; no key given to check", key_derived_weights=True)]


def _tensor_values(t: torch.Tensor) -> np.ndarray | None:
    if t.is_complex():
        return None
    if t.dtype == torch.bool:
        return t.numpy().astype(np.int64).ravel()
    if t.is_floating_point():
        return _float_to_ints(t.double().numpy().ravel())
    return t.to(torch.int64).numpy().ravel()


def _scan_safetensors(
    header: dict, tensors: dict[str, torch.Tensor], secrets: list[_Secret], key, file: str
) -> list[Finding]:
    """Each tensor at its own dtype (floats holding integers too), byte tensors also as raw
    encodings, the header, and every metadata string."""
    layout = {k: v for k, v in header.items() if k != "__metadata__"}
    findings = _scan_text(json.dumps(layout), secrets, file, "safetensors header: ")
    for k, v in (header.get("__metadata__") or {}).items():
        findings += _scan_text(str(v), secrets, file, f"safetensors metadata {k!r}: ")
        findings += _scan_key_file(str(v).encode(), key, file)
    for name, t in tensors.items():
        is_perm, found = _scan_permutation_tensor(name, t, key, file)
        findings += found
        values = None if is_perm else _tensor_values(t)
        if values is None:
            continue
        where = f"safetensors tensor {name!r} ({str(t.dtype).removeprefix('torch.')})"
        found = _scan_values(values, secrets, file, lambda i, w=where: f"{w} at element {i}")
        if t.element_size() == 1:  # a byte tensor may hold any other encoding
            found += _scan_raw(t.view(torch.uint8).numpy().tobytes(), secrets, file, f"{where}: ")
        findings += _first_per_secret(found)
    return findings


def _scan_file(path: Path, file: str, key: BlockKey | None, secrets: list[_Secret]) -> list:
    data = path.read_bytes()
    findings = _scan_key_file(data, key, file)
    parsed = _read_safetensors(data)
    if parsed is not None:
        return findings + _scan_safetensors(*parsed, secrets, key, file)
    findings += _scan_raw(data, secrets, file)
    text = _utf8(data)
    if text is not None:
        findings += _scan_text(text, secrets, file)
    return findings


def _files_to_scan(paths_or_folder) -> list[tuple[Path, str]]:
    """(path, display name): a folder's files recursively, named relative to it."""
    items = (
        [paths_or_folder]
        if isinstance(paths_or_folder, (str, os.PathLike))
        else list(paths_or_folder)
    )
    files = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file())
            files += [(p, p.relative_to(item).as_posix()) for p in found]
        elif item.is_file():
            files.append((item, item.name))
        else:
            raise HubError(f"nothing to scan at {item}: no such file or folder")
    return files


def scan_for_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike], key: BlockKey | None
) -> list[Finding]:
    """Look for ``key``'s secrets in files: the block and pixel permutations (and their
    inverses) and the negative-positive mask, as JSON or text numbers (any separators or
    brackets), raw integers of 1, 2, 4 or 8 bytes and floats of 2, 4 or 8 bytes (either byte
    order, any alignment), safetensors tensors of any dtype and safetensors metadata, the mask
    as a 0/1 string, and copies of the key file. A leak is ``PERM_WINDOW`` consecutive entries
    (the whole permutation if shorter) or ``MASK_WINDOW`` mask bits; arithmetic progressions
    never count. A model tensor that is exactly the key's block permutation matrix is reported
    with ``key_derived_weights=True``. Without ``key``, only key files and exact permutation
    matrices are found.

    Example:
        >>> findings = scan_for_key_material("out/tiny", key)  # doctest: +SKIP
        >>> [str(f) for f in findings]  # doctest: +SKIP
        ['config.json: 16+ consecutive values of pixel_perm (K2) (numbers in text at line 12)']
    """
    secrets = _secrets(key) if key is not None else []
    findings: list[Finding] = []
    for path, name in _files_to_scan(paths_or_folder):
        findings += _scan_file(path, name, key, secrets)
    return findings


def assert_no_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
    key: BlockKey | None,
    *,
    allow_key_derived_weights: bool = False,
) -> list[Finding]:
    """:func:`scan_for_key_material`, raising :class:`KeyMaterialError` on any finding (but
    the key-derived P an owner accepts with ``allow_key_derived_weights=True``, which is
    returned). The message names each file and what was found in it, on one line.

    Example:
        >>> assert_no_key_material("out/tiny", key)  # doctest: +SKIP
    """
    findings = scan_for_key_material(paths_or_folder, key)
    refused = [f for f in findings if not (allow_key_derived_weights and f.key_derived_weights)]
    if refused:
        raise KeyMaterialError(_refusal_message(refused), refused)
    return findings


def _refusal_message(findings: list[Finding]) -> str:
    shown = "; ".join(str(f) for f in findings[:6])
    more = f"; and {len(findings) - 6} more" if len(findings) > 6 else ""
    if all(f.key_derived_weights for f in findings):
        advice = (
            "the weights state the key's block order (a converted model, or a hardened P): "
            "publishing them reveals that part of the key; pass allow_key_derived_weights=True "
            "(--allow-key-derived-weights) only if you knowingly publish such a model"
        )
    else:
        advice = (
            "remove it from those files: keys, permutations and masks never go into configs, "
            "cards, metadata or extra files (only the fingerprint may)"
        )
    return f"refusing to share: key material found: {shown}{more}; {advice}"


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
