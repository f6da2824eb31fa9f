"""The model card (``README.md``) of a shared model: its Hub metadata, built by
huggingface_hub's ``ModelCardData`` (``model-index`` from one ``EvalResult`` per measured
top-1 accuracy; the licence of the weights' ``pretrained_cfg``; tags naming the scheme the
images are encrypted with), then this project's prose: the model's results, architecture, where
the weights come from, key facts (only the public fingerprint and scheme), usage, privacy notes
and limitations; and validation of the measured metrics it reports. The metadata holds only Hub
fields: project facts stay in the body.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index
from torch import nn

from ..key import SCHEME, BlockKey
from ..models.permutation import AdaptivePermutation, HardPermutation
from ..models.pyramidnet import ShakePyramidNet
from ..models.registry import PPConvMixer
from .errors import HubError
from .file_scan import permutation_of_matrix

__all__ = [
    "METRIC_LABELS",
    "SCHEME_TAGS",
    "TAGS",
    "card_inputs",
    "card_license",
    "card_metrics",
    "card_text",
    "converted_from",
    "dataset_reference",
    "eval_results",
    "model_card",
    "model_index",
    "normalize_metrics",
    "results_section",
    "unloaded_tag_fields",
]

# every card's first tags; then "privacy-preserving" and the scheme's tags for a model of
# encrypted images (none for a plain baseline), then the architecture family's
TAGS = ["timm", "image-classification"]
ENCRYPTED_TAG = "privacy-preserving"
# the tags of each scheme's images (key file ``scheme`` -> Hub tags): LE, ELE and EtC work on
# blocks as the paper's scheme does; PE works on single pixels (block size 1)
SCHEME_TAGS = {
    "ppconvmixer-blockwise": ["block-wise-encryption"],
    "ppconvmixer-le": ["block-wise-encryption", "learnable-image-encryption"],
    "ppconvmixer-ele": ["block-wise-encryption", "learnable-image-encryption"],
    "ppconvmixer-etc": ["block-wise-encryption", "encryption-then-compression"],
    "ppconvmixer-pe": ["pixel-wise-encryption"],
    "ppconvmixer-pe-per-image": ["pixel-wise-encryption"],
}
# added by the card's architecture family (and "adaptnet" where an AdaptNet is in front)
FAMILY_TAGS = {"convmixer": ["convmixer"], "pyramidnet": ["pyramidnet", "shakedrop"]}
# pretrained_cfg fields a model holds only in memory: timm's PretrainedCfg takes no such field,
# so config.json never carries them (a reload through timm would refuse the config)
IN_MEMORY_CFG_FIELDS = ("converted_from",)
# Top-1 accuracies as recipes/train.py measures them (fractions in [0, 1]), and what each means.
METRIC_LABELS = {
    "top1_key": "test images encrypted with this model's key",
    "top1_encrypted": "test images supplied already encrypted with this model's key",
    "top1_plain": "plain (unencrypted) test images",
    "top1_wrong_key": "test images encrypted with a different key",
}
_NO_RECIPE = "No training recipe was provided with this export."
# the order of the metadata fields, as the shipped cards have them; model-index comes last
FIELD_ORDER = ["library_name", "pipeline_tag", "license", "tags", "datasets"]


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


def dataset_reference(dataset: str | Mapping[str, Any] | None) -> dict | None:
    """``{"id", "name", "split"}`` from a Hub dataset id or a mapping (None stays None)."""
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


def _key_facts(model: nn.Module, key: BlockKey | None) -> dict:
    """The only key facts a card may carry: scheme, version, fingerprint. With ``key`` (of any
    scheme), check that it is the key the model was made for."""
    recorded = getattr(model, "key_fingerprint", None)
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


def _architecture(model: nn.Module) -> dict:
    if not isinstance(model, PPConvMixer):
        return _pyramidnet_architecture(model)
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
        "family": "convmixer",
    }


def _pyramidnet_architecture(model: ShakePyramidNet) -> dict:
    """The facts of a ShakeDrop PyramidNet, with the AdaptNet in front where there is one (the
    Table I baselines: timm_ppconvmixer.models.pyramidnet, .adaptnet_pyramidnet)."""
    adapt = getattr(model, "adapt", None)
    size = tuple(model.pretrained_cfg.get("input_size", (model.in_chans, 0, 0))[1:])
    u = model.permutation if adapt is not None else None
    return {
        "architecture": model.pretrained_cfg.get("architecture", type(model).__name__),
        "adaptnet": None if adapt is None else type(adapt).__name__,
        "patch_size": None if adapt is None else adapt.block_size,
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
        "img_size": tuple(getattr(model, "img_size", size) or size),
        "params": sum(p.numel() for p in model.parameters()),
        "p_params": u.weight.numel() if isinstance(u, AdaptivePermutation) else 0,
        "exact_p": _is_exact_permutation(u),
        "family": "pyramidnet",
    }


def _is_exact_permutation(perm: nn.Module | None) -> bool:
    """Whether P states a block order outright (converted or hardened): a 0/1 permutation
    matrix other than the identity."""
    if isinstance(perm, HardPermutation):
        return not torch.equal(perm.source.cpu(), torch.arange(perm.source.numel()))
    if not isinstance(perm, AdaptivePermutation):
        return False
    order = permutation_of_matrix(perm.weight.detach().cpu())
    return order is not None and not np.array_equal(order, np.arange(len(order)))


def eval_results(metrics: Mapping[str, float], dataset: dict) -> list[EvalResult]:
    """One Hub ``EvalResult`` (``accuracy``) per top-1 accuracy (:func:`normalize_metrics`
    output) measured on ``dataset`` (``{"id", "name", "split"}``)."""
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset["id"],
            dataset_name=dataset["name"],
            dataset_split=dataset["split"],
            metric_type="accuracy",
            metric_value=value,
            metric_name=f"Top-1 accuracy, {METRIC_LABELS[k]}",
        )
        for k, value in metrics.items()
    ]


def model_index(name: str, metrics: Mapping[str, float], dataset: dict) -> list[dict]:
    """The Hub's ``model-index`` of :func:`eval_results`, as huggingface_hub writes it.

    Example:
        >>> data = {"id": "me/d", "name": "d", "split": "test"}
        >>> model_index("tiny", {"top1_key": 0.9}, data)[0]["results"][0]["metrics"][0]["value"]
        0.9
    """
    return eval_results_to_model_index(name, eval_results(metrics, dataset))


def _card_tags(arch: dict, key: dict) -> list[str]:
    """The card's Hub tags: :data:`TAGS`; for encrypted images ``privacy-preserving`` and the
    tags of the key's scheme (:data:`SCHEME_TAGS`); then the architecture family's."""
    scheme = [] if arch["plain_images"] else [ENCRYPTED_TAG, *SCHEME_TAGS.get(key["scheme"], [])]
    adaptnet = ["adaptnet"] if arch.get("adaptnet") else []
    return TAGS + scheme + FAMILY_TAGS[arch["family"]] + adaptnet


def card_license(model: nn.Module, license: str | None = None) -> str:
    """The card's licence: ``license`` if given, else the one the weights' ``pretrained_cfg``
    names (timm's licence for timm's weights converted under a key, e.g. ``mit`` for
    ``convmixer_768_32.in1k``; this project's for its own architectures)."""
    if license:
        return license
    found = (getattr(model, "pretrained_cfg", None) or {}).get("license")
    if not found:
        raise HubError(
            "the model's pretrained_cfg names no license, so the card cannot state one; pass "
            "license=<Hub licence id> (--license), e.g. the licence of the weights you started from"
        )
    return str(found)


def converted_from(model: nn.Module) -> str | None:
    """timm's plain tag whose weights the key-bound loader converted into ``model`` (the
    ``converted_from`` its ``pretrained_cfg`` records), or None: trained here, or loaded
    otherwise."""
    found = (getattr(model, "pretrained_cfg", None) or {}).get("converted_from")
    return str(found) if found else None


def unloaded_tag_fields(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``pretrained_cfg`` fields that describe weights a model does not hold, which a
    shared ``config.json`` must not carry: a key-bound tag (timm's plain weights, converted at
    load) still carries its registered ``tag`` and ``description`` when the architecture was
    created without ``pretrained=True`` and trained instead; only the key-bound loader records
    ``converted_from``."""
    from timm.models import get_pretrained_cfg

    arch, tag = cfg.get("architecture"), cfg.get("tag")
    if not arch or not tag or cfg.get("converted_from"):
        return ()
    registered = get_pretrained_cfg(f"{arch}.{tag}")
    source = str(getattr(registered, "hf_hub_id", None) or "")
    converts = source.startswith("timm/") and source.split("/", 1)[1].split(".")[0] != arch
    if converts and cfg.get("description") == registered.description:
        return ("tag", "description")
    return ()


def _card_data(
    name: str, license: str, metrics: Mapping[str, float], dataset: dict | None, tags: list[str]
) -> ModelCardData:
    """The card's Hub metadata; ``model-index`` comes from the metrics' :func:`eval_results`."""
    measured = bool(metrics)
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=license,
        tags=tags,
        datasets=None if dataset is None else [dataset["id"]],
        model_name=name if measured else None,
        eval_results=eval_results(metrics, dataset) if measured else None,
    )


def results_section(metrics: dict, dataset: dict | None) -> str:
    """The card's ``## Results`` section for validated metrics measured on ``dataset``."""
    if not metrics:
        return (
            "## Results\n\nNo measurements were provided with this export, so this card states "
            "no accuracy.\n"
        )
    rows = "\n".join(f"| {METRIC_LABELS[k]} | {100 * v:.2f} % |" for k, v in metrics.items())
    encrypted = {"top1_key", "top1_encrypted", "top1_wrong_key"} & set(metrics)
    closing = (
        "Images encrypted with a different key, or not encrypted, are expected to be classified "
        "poorly: the model only works in its key's encrypted domain.\n"
        if encrypted
        else ""
    )
    return (
        f"## Results\n\nTop-1 accuracy on the `{dataset['split']}` split of "
        f"[{dataset['name']}](https://huggingface.co/datasets/{dataset['id']}), as measured and "
        f"reported by the publisher:\n\n| evaluated on | top-1 |\n| --- | --- |\n{rows}\n\n"
        + closing
    )


def _recipe_section(recipe: str | Mapping[str, Any] | None) -> str:
    if recipe is None:
        return f"## Training recipe\n\n{_NO_RECIPE}\n"
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


def _is_blockwise(key: dict) -> bool:
    return key["scheme"] == SCHEME


def _usage_section(hub_id: str, key: dict, arch: dict) -> str:
    if arch["plain_images"] or arch["family"] != "convmixer" or not _is_blockwise(key):
        return _generic_usage_section(hub_id, key, arch)
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


def _generic_usage_section(hub_id: str, key: dict, arch: dict) -> str:
    """Usage for any scheme's key (``load_key``), or for plain images (no key)."""
    h, w = arch["img_size"]
    load = f'model = timm.create_model("hf-hub:{hub_id}", pretrained=True).eval()\n'
    if arch["plain_images"]:
        return f"""## Usage

The model classifies **plain** (unencrypted) images: no key.

```python
import timm
import timm_ppconvmixer  # registers the architectures with timm
{load}cfg = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**cfg)  # {h}x{w}, {arch["in_chans"]} channel(s)
```
"""
    check = (
        f'assert key.fingerprint == "{key["fingerprint"]}", "not the key this model needs"\n'
        if key["fingerprint"]
        else ""
    )
    return f"""## Usage

The model only works on images encrypted with its key (scheme `{key["scheme"]}`, fingerprint
below).

```python
import timm
import timm_ppconvmixer  # registers the architectures with timm
from timm_ppconvmixer.schemes import load_key
from timm_ppconvmixer.transforms import create_transform

key = load_key("owner.key")
{check}{load}cfg = timm.data.resolve_data_config(model=model)
transform = create_transform(key, mean=cfg["mean"], std=cfg["std"])  # {h}x{w}, then encrypt
```
"""


def _security_section(key: dict, arch: dict) -> str:
    if arch["plain_images"]:
        return (
            "## Security\n\nThis model classifies plain images: nothing is encrypted, and it "
            "protects nothing. It is the plain baseline of an encrypted-domain comparison.\n"
        )
    if key["fingerprint"] and not _is_blockwise(key):
        return _other_scheme_security_section(key)
    fingerprint = f"`{key['fingerprint']}`" if key["fingerprint"] else "see above"
    warning = ""
    if arch["exact_p"]:
        warning = (
            "\n**Warning:** P in these weights is an exact permutation matrix (a model converted "
            "from plain weights, or a hardened P). It states the key's block order outright.\n"
        )
    return f"""## Security: what the encryption protects, and what it does not

The timm-ppconvmixer project attacks its own encryption (`ppconvmixer attack`; every scheme,
number of images and key is measured in its `docs/security.md`):

* **Not protected: the images against whoever holds many of them.** One pixel shuffle and flip
  mask serve every block and one block order every image, so every image encrypted with one key
  is a sample of the same secret. From as many images as it takes to train a model, the
  project's ciphertext-only attack recovered the key and decrypted the images (Fashion-MNIST
  28x28 with block 4; 224x224 photographs with block 16, for some keys as mirrored copies). One
  plain/encrypted pair gives the pixel shuffle and flips, and all of the block order but
  identical blocks.
* **Not protected: the key against the weights.** A model converted from public plain weights
  (`timm_ppconvmixer.encrypt_model`) gives the exact key to anyone who knows those weights
  (block order from P, shuffle and flips from the patch embedding); a P trained towards a
  permutation states the block order. The key **fingerprint** ({fingerprint}) is safe to
  publish; the **weights are not key-free** in that sense.
* **What it does:** the model runs on transformed inputs. Treat the scheme as an obfuscation;
  share encrypted data and these weights only with parties you could give the plain data.
{warning}* The key file itself never travels with the model: this repository holds only its
  fingerprint, checked by a leak guard before upload.
"""


def _other_scheme_security_section(key: dict) -> str:
    return f"""## Security

The `{key["scheme"]}` scheme is a perceptual encryption, not a standard cipher: treat it as an
obfuscation, and share encrypted data and these weights only with parties you could give the
plain data. The timm-ppconvmixer project attacks every one of its schemes the way the holder of
the encrypted data could (`ppconvmixer attack`; measured per scheme, number of images and key
in its `docs/security.md`). The key **fingerprint** (`{key["fingerprint"]}`) is safe to
publish; the key file itself never travels with the model (a leak guard checks every file
before upload).
"""


def _limitations_section(arch: dict) -> str:
    h, w = arch["img_size"]
    m = arch["patch_size"]
    if arch["family"] != "convmixer" or m is None or arch["plain_images"]:
        return f"""## Limitations

* Inputs must be {h}x{w} with {arch["in_chans"]} channel(s), prepared as the model was trained
  (encrypted with the matching key, or plain for a plain model).
* Encrypted images must be stored losslessly (PNG): JPEG mixes neighbouring pixels and breaks
  the encryption's structure.
"""
    return f"""## Limitations

* Inputs must be {h}x{w} with {arch["in_chans"]} channel(s), encrypted with the matching key.
  Any other key, plain images, or another size give wrong predictions or an error.
* Encrypted images must be stored losslessly (PNG): JPEG mixes pixels across the {m}x{m}
  blocks and breaks the encryption's structure.
* Block-wise scrambling is a perceptual encryption, not a standard cipher: see "Security"
  above for what a ciphertext-only attack recovered.
"""


def model_card(
    model: PPConvMixer,
    *,
    key: BlockKey | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    notes: str | None = None,
    plain_images: bool = False,
) -> str:
    """The model card (``README.md``) of ``model``: Hub metadata (:func:`_card_data`), then
    architecture, key fingerprint, the caller's measurements, usage, recipe, privacy note,
    limitations and citations. It never states a number the caller did not measure, and the
    only fact about the key is its fingerprint and scheme version. ``notes`` (markdown) is
    shown first, under the title (the zoo's "PUBLIC key" warning). ``plain_images``: the
    model classifies unencrypted images (a plain baseline; no key, none recorded). ``license``:
    default the weights' (:func:`card_license`). Models: PPConvMixer, and the ShakeDrop
    PyramidNets with or without AdaptNet (Table I's baselines).

    Example:
        >>> card = model_card(model, key=key, metrics={"top1_key": 0.91},
        ...                   dataset="zalando-datasets/fashion_mnist")  # doctest: +SKIP
    """
    if not isinstance(model, (PPConvMixer, ShakePyramidNet)):
        raise HubError(
            f"model cards are written for PPConvMixer and (AdaptNet) PyramidNet models, got "
            f"{type(model).__name__}; for other timm models use timm.models.push_to_hf_hub"
        )
    facts = _key_facts(model, key)
    if plain_images and (key is not None or facts["fingerprint"]):
        raise HubError(
            f"plain_images=True is for models of plain images, but this one is for key "
            f"{facts['fingerprint']}"
        )
    values = normalize_metrics(metrics, facts["fingerprint"])
    data = dataset_reference(dataset)
    if values and data is None:
        raise HubError("metrics need the dataset they were measured on: pass dataset=<Hub id>")
    arch = {
        **_architecture(model),
        "plain_images": plain_images,
        "converted_from": converted_from(model),
    }
    license = card_license(model, license)
    name = model_name or (repo_id.split("/")[-1] if repo_id else arch["architecture"])
    hub_id = repo_id or f"<namespace>/{name}"
    sections = [
        _overview_section(name, arch, facts, notes),
        results_section(values, data),
        _usage_section(hub_id, facts, arch),
        _recipe_section(recipe),
        _security_section(facts, arch),
        _limitations_section(arch),
        _CITATIONS,
    ]
    return _card(_card_data(name, license, values, data, _card_tags(arch, facts)), sections)


def card_inputs(card: str) -> dict[str, str | None]:
    """The prose a card written by :func:`model_card` was given (``notes``, ``recipe``), read
    back from its text, so the card can be written again by the current code around the same
    words (``python -m hub.publish --refresh-cards``)."""
    body = ModelCard(card).text
    title, found, rest = body.lstrip("\n").partition("\n")
    if not title.startswith("# ") or not found:
        raise HubError("not a card written by timm_ppconvmixer's model_card: no '# name' title")
    notes, found, _ = rest.partition("\nAn image classifier")
    if not found:
        raise HubError("not a card written by timm_ppconvmixer's model_card: no overview")
    _, found, section = body.partition("\n## Training recipe\n\n")
    recipe = section.split("\n## ", 1)[0].strip() if found else None
    return {"notes": notes.strip() or None, "recipe": None if recipe == _NO_RECIPE else recipe}


def card_metrics(card: str) -> dict[str, float]:
    """The top-1 accuracies a card's ``model-index`` states, by :data:`METRIC_LABELS` key
    (parsed by huggingface_hub's ``ModelCard``, as the Hub reads them)."""
    names = {f"Top-1 accuracy, {label}": k for k, label in METRIC_LABELS.items()}
    results = ModelCard(card).data.eval_results or []
    return {names[r.metric_name]: float(r.metric_value) for r in results if r.metric_name in names}


def card_text(meta: ModelCardData, body: str) -> str:
    """``README.md``: ``meta`` as huggingface_hub writes it (fields in :data:`FIELD_ORDER`), then
    ``body`` (the markdown after the closing ``---`` line); read back by ``ModelCard`` as the Hub
    reads it. The one place a model card is written, by the export and by the owner's
    evaluation."""
    return str(ModelCard(f"---\n{meta.to_yaml(original_order=FIELD_ORDER)}\n---\n{body}"))


def _card(meta: ModelCardData, sections: list[str]) -> str:
    return card_text(meta, "\n" + "\n".join(sections))


def _notes(notes: str | None) -> str:
    return "" if not notes else f"\n{notes.strip()}\n"


def _overview_section(name: str, arch: dict, key: dict, notes: str | None = None) -> str:
    if arch["family"] != "convmixer":
        return _pyramidnet_overview(name, arch, key, notes)
    h, w = arch["img_size"]
    gh, gw = arch["grid_size"]
    if arch["p_params"]:
        p_line = f"{arch['p_params']:,} of them in P ({arch['num_blocks']} x {arch['num_blocks']})"
    else:
        p_line = "P is a fixed token permutation" if arch["has_p"] else "no P (ablation)"
    if arch["plain_images"]:
        scheme = fingerprint = "none: this model classifies plain (unencrypted) images"
    elif key["fingerprint"]:
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
    if arch["converted_from"]:
        rows.append(
            (
                "weights",
                f"timm's `{arch['converted_from']}`, converted exactly to the key's encrypted "
                "domain at load (the key-bound tag)",
            )
        )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if arch["plain_images"]:
        domain = "**plain images** (the plain baseline of a privacy-preserving comparison)"
    elif key["fingerprint"] and not _is_blockwise(key):
        domain = f"**images encrypted with the `{key['scheme']}` scheme** (privacy-preserving)"
    else:
        domain = "**block-wise encrypted images** (privacy-preserving image\nclassification)"
    return f"""# {name}
{_notes(notes)}
An image classifier for {domain}: a ConvMixer with an adaptive permutation matrix
P, after Qi, MaungMaung and Kiya, "Privacy-Preserving Image Classification Using ConvMixer with
Adaptive Permutation Matrix" (2022, arXiv:2208.02556), built on timm's ConvMixer (Trockman and
Kolter, "Patches Are All You Need?"). It is used through
[timm](https://github.com/huggingface/pytorch-image-models) with the `timm_ppconvmixer` plugin.

## Model details

| | |
| --- | --- |
{table}
"""


def _pyramidnet_overview(name: str, arch: dict, key: dict, notes: str | None) -> str:
    h, w = arch["img_size"]
    if arch["adaptnet"]:
        what = (
            f"a ShakeDrop PyramidNet with an adaptation network in front (`{arch['adaptnet']}`, "
            f"one per {arch['patch_size']}x{arch['patch_size']} block position), the "
            "baseline of Table I of Qi, MaungMaung and Kiya (2022, arXiv:2208.02556) for EtC "
            "and ELE images (Madono et al. 2020; LE: Tanaka 2018)"
        )
    else:
        what = (
            "a ShakeDrop PyramidNet (Han et al. 2017; Yamada et al. 2019), Table I's plain baseline"
        )
    rows = [
        ("architecture", f"`{arch['architecture']}`"),
        ("parameters", f"{arch['params']:,}"),
        ("classes", str(arch["num_classes"])),
        ("image size", f"{h}x{w}, {arch['in_chans']} channel(s)"),
        ("key scheme", "none (plain images)" if arch["plain_images"] else f"`{key['scheme']}`"),
        ("key fingerprint", f"`{key['fingerprint']}`" if key["fingerprint"] else "not recorded"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# {name}
{_notes(notes)}
An image classifier: {what}, used through
[timm](https://github.com/huggingface/pytorch-image-models) with the `timm_ppconvmixer` plugin.

## Model details

| | |
| --- | --- |
{table}
"""
