"""The dataset card (``README.md``) of an encrypted dataset on the Hub: metadata built by
huggingface_hub's ``DatasetCardData`` (license, task, tags, size, and the ``configs`` and
``dataset_info`` that ``datasets`` reads) with the key's public facts under the one custom key
``ppconvmixer``, then this project's prose: how the images were encrypted, how to train on
them without the key, which augmentations are safe, and where the scheme's security is
evaluated. The only fact about the key is its fingerprint, scheme and geometry. Cards are read
back with huggingface_hub's own parser, as the Hub reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, RepoCard

from ..key import SchemeKey
from .errors import HubError

__all__ = ["DATASET_TAGS", "dataset_card", "fingerprint_from_card", "read_front_matter"]

DATASET_TAGS = ["privacy-preserving", "block-wise-encryption", "encrypted-images", "timm"]
CARD_BLOCK = "ppconvmixer"  # the card's YAML key holding the key's public facts
# what CARD_BLOCK copies from key.describe() besides the fingerprint: never a secret
PUBLIC_FACTS = ("scheme", "scheme_version", "image_size", "block_size", "channels", "num_blocks")


def read_front_matter(card: str) -> dict:
    """The YAML metadata of a card (``{}`` without front matter).

    Example:
        >>> read_front_matter("---\\nlicense: mit\\n---\\n# x\\n")
        {'license': 'mit'}
    """
    if not card.startswith("---"):
        return {}
    try:
        return RepoCard(card).data.to_dict()
    except yaml.YAMLError as e:
        raise HubError(f"the card's YAML metadata does not parse ({e}); fix README.md") from None
    except ValueError:  # metadata that is not a mapping
        return {}


def fingerprint_from_card(card: str) -> str | None:
    """The key fingerprint an encrypted dataset's card records (``ppconvmixer.key_fingerprint``),
    or None if the card has none (not a dataset pushed by :func:`push_encrypted_dataset`).

    Example:
        >>> fingerprint_from_card("---\\nppconvmixer:\\n  key_fingerprint: ppcm1-ab\\n---\\n")
        'ppcm1-ab'
    """
    block = read_front_matter(card).get(CARD_BLOCK)
    value = block.get("key_fingerprint") if isinstance(block, dict) else None
    return value if isinstance(value, str) and value else None


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "1M<n<10M"


def _card_data(
    key: SchemeKey, splits: Mapping[str, int], options: Mapping[str, Any]
) -> DatasetCardData:
    """The card's Hub metadata, the key's public facts under :data:`CARD_BLOCK`, and the
    ``configs`` / ``dataset_info`` of ``hub_metadata`` (built by ``card_metadata``)."""
    facts = key.describe()
    block = {"encrypted": True, "key_fingerprint": facts["fingerprint"]}
    block |= {k: facts[k] for k in PUBLIC_FACTS}
    block |= {k: options[k] for k in ("resize", "image_column", "label_column")}
    read_by_datasets = {k: options["hub_metadata"].get(k) for k in ("configs", "dataset_info")}
    return DatasetCardData(
        license=options["license"],
        task_categories=["image-classification"],
        tags=DATASET_TAGS,
        pretty_name=options["pretty_name"],
        size_categories=[_size_category(sum(splits.values()))],
        **{CARD_BLOCK: block},
        **read_by_datasets,
    )


def dataset_card(
    key: SchemeKey,
    splits: Mapping[str, int],
    *,
    repo_id: str,
    class_names: list[str] | None = None,
    license: str = "other",
    pretty_name: str | None = None,
    resize: str = "shorter-center-crop",
    image_column: str = "image",
    label_column: str = "label",
    hub_metadata: Mapping[str, Any] | None = None,
) -> str:
    """The card of an encrypted dataset: YAML metadata (``hub_metadata`` carries the
    ``configs`` and ``dataset_info`` that ``datasets`` reads), then the body.

    Example:
        >>> card = dataset_card(key, {"train": 60000, "test": 10000}, repo_id="me/fmnist-enc")
        ... # doctest: +SKIP
    """
    options = {
        "license": license,
        "pretty_name": pretty_name or repo_id.split("/")[-1],
        "resize": resize,
        "image_column": image_column,
        "label_column": label_column,
        "hub_metadata": dict(hub_metadata or {}),
    }
    meta = _card_data(key, splits, options).to_yaml()
    body = _body(key, splits, repo_id, class_names, options)
    return str(DatasetCard(f"---\n{meta}\n---\n\n{body}"))


def _steps(key: SchemeKey, m: int) -> str:
    """What the scheme did to the images, in one paragraph (no secret)."""
    who = (
        "Every image was encrypted with its own fresh key, which nobody kept."
        if key.per_image
        else "One key encrypts every image of this dataset."
    )
    return f"{type(key).SUMMARY.format(m=m)} {who}"


def _security(key: SchemeKey) -> str:
    if key.scheme != "blockwise":
        return (
            f"The `{key.scheme}` scheme has no security evaluation in timm-ppconvmixer yet "
            "(the cross-scheme evaluation is pending); this card claims no protection for it. "
            "Keep the repository private to the parties who need it."
        )
    return """The scheme's security is evaluated in the security evaluation of timm-ppconvmixer
(`docs/security.md` in its repository), which attacks the encryption and reports what falls;
this card claims nothing beyond it. One key encrypts every image here, so whoever holds many
of these images (the provider who trains on them holds them all) holds many samples of the
same secret and can attack the key. Keep the repository private to the parties who need it."""


def _body(key, splits, repo_id, class_names, options) -> str:
    facts = key.describe()
    h, w = facts["image_size"]
    m, n = facts["block_size"], facts["num_blocks"]
    rows = "\n".join(f"| `{name}` | {count:,} |" for name, count in splits.items())
    classes = f"{len(class_names)} classes: {', '.join(class_names)}." if class_names else ""
    classes_flag = f"--num-classes {len(class_names)} " if class_names else ""
    train = "train" if "train" in splits else next(iter(splits))
    val = next((name for name in ("validation", "test") if name in splits), None)
    split_flags = f"--train-split {train} " + (f"--val-split {val} " if val else "--val-split '' ")
    return f"""# {options["pretty_name"]}

Images **encrypted block by block with a secret key** (timm-ppconvmixer), for training
privacy-preserving classifiers (a ConvMixer with an adaptive permutation matrix, after Qi,
MaungMaung and Kiya, arXiv:2208.02556) without the key. The key stays with the data owner;
this repository holds only its public fingerprint. {classes}

## Encryption

| | |
| --- | --- |
| key fingerprint | `{facts["fingerprint"]}` |
| scheme | `{facts["scheme"]}`, version {facts["scheme_version"]} |
| image size | {h}x{w}, {facts["channels"]} channel(s) |
| block size M | {m} ({n} blocks) |
| image preparation | `{options["resize"]}` to {h}x{w} (timm's bicubic eval resize) |
| storage | lossless PNG in sharded parquet (column `{options["image_column"]}`) |

{_steps(key, m)}
Labels (column `{options["label_column"]}`) are not encrypted.

| split | examples |
| --- | --- |
{rows}

## Training on it without the key

A model must record the same key fingerprint; the training run refuses data encrypted with
another key. With timm's own `train.py` (`--device-modules` imports the plugin and its check):

```bash
python train.py --dataset hfds/{repo_id} {split_flags}{classes_flag}\\
    --device-modules timm_ppconvmixer timm_ppconvmixer.hub.train_guard \\
    --model ppconvmixer_256_8 --model-kwargs img_size={h} patch_size={m} \\
    key_fingerprint={facts["fingerprint"]} --input-size {facts["channels"]} {h} {w} \\
    --no-aug --reprob 0 --cutmix 0 --crop-pct 1.0
```

`hfids/{repo_id}` streams the shards instead (bounded memory). With the project's accelerate
recipe: `data.source=hub:{repo_id} model.kwargs.key_fingerprint={facts["fingerprint"]}`.

## Augmentation on encrypted images

Safe (exact on encrypted data, no key needed): **mixup**; **block-aligned CutMix** and
**block erasing** (`timm_ppconvmixer.encrypted_augment`, aligned to the {m}x{m} grid). Not
safe: flips, rotations, crops at other offsets, rescaling, colour jitter, RandAugment, and
timm's CutMix boxes and random erasing, which cut through blocks; they act on scrambled
pixels and break the block structure. With timm's `train.py`: `--no-aug --reprob 0 --cutmix 0
--crop-pct 1.0`; `--mixup` is safe.

## Security

{_security(key)}

## Citation

Z. Qi, A. MaungMaung, H. Kiya, "Privacy-Preserving Image Classification Using ConvMixer with
Adaptive Permutation Matrix", 2022, arXiv:2208.02556.
"""
