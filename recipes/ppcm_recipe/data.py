"""Data for the recipe: sources, transforms, deterministic per-sample augmentation, and a
batch order that depends only on (seed, epoch), so a resumed run sees exactly the data an
uninterrupted one would."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset
from timm.data import create_transform as timm_create_transform
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from timm_ppconvmixer import BlockKey, decrypt
from timm_ppconvmixer.data import load_fashion_mnist
from timm_ppconvmixer.images import to_key_mode
from timm_ppconvmixer.transforms import create_transform


class LabeledImages:
    """A uniform view of the sources: ``len``, ``get(i) -> (PIL image, label)``, classes."""

    def __init__(self, source, image_column="image", label_column="label", limit=None):
        self.source = source
        self.image_column, self.label_column = image_column, label_column
        n = len(source)
        self.length = n if limit is None else min(int(limit), n)
        if isinstance(source, ImageDataset):
            self.class_names = list(source.reader.class_to_idx)
        else:
            feature = source.features[label_column]
            self.class_names = list(getattr(feature, "names", [])) or None

    def __len__(self) -> int:
        return self.length

    def get(self, i: int) -> tuple[Image.Image, int]:
        if isinstance(self.source, ImageDataset):
            img, label = self.source[i]
            return img, int(label)
        row = self.source[i]
        return row[self.image_column], int(row[self.label_column])


def load_hub_split(cfg: dict, split: str):
    """A split of the encrypted Hub dataset ``data.source=hub:OWNER/NAME``, after checking that
    its card records the key the model records (``model.kwargs.key_fingerprint``, the
    pretrained model's ``config.json``, or ``data.key``): a mismatch is refused."""
    import datasets

    from timm_ppconvmixer.hub import (
        check_key_fingerprints,
        dataset_key_fingerprint,
        model_key_fingerprints,
    )

    source = cfg["data"]["source"]
    model = cfg["model"]
    recorded = model_key_fingerprints(model["pretrained"], model_kwargs=model["kwargs"])
    if cfg["data"]["key"]:
        recorded.append(BlockKey.load(cfg["data"]["key"]).fingerprint)
    fingerprint = dataset_key_fingerprint(source)
    check_key_fingerprints(fingerprint, recorded, source, "model.kwargs.key_fingerprint")
    return datasets.load_dataset(source[len("hub:") :], split=split)


def data_fingerprint(cfg: dict, key: BlockKey | None) -> str | None:
    """The key the training data is encrypted with: ``data.key``'s, or, for a ``hub:`` source
    (the provider's side, no key), the fingerprint its dataset card records."""
    if key is not None:
        return key.fingerprint
    source = str(cfg["data"]["source"])
    if source.startswith("hub:"):
        from timm_ppconvmixer.hub import dataset_key_fingerprint

        return dataset_key_fingerprint(source)
    return None


def load_split(cfg: dict, split: str, limit) -> LabeledImages:
    data = cfg["data"]
    if str(data["source"]).startswith("hub:"):
        ds = load_hub_split(cfg, split)
        return LabeledImages(ds, data["image_column"], data["label_column"], limit)
    if data["source"] == "fashion_mnist":
        return LabeledImages(load_fashion_mnist(split), limit=limit)
    if data["source"] == "imagefolder":
        root = Path(data["name"]) / split
        if not root.is_dir():
            raise FileNotFoundError(f"image folder split {root} does not exist")
        return LabeledImages(ImageDataset(str(root)), limit=limit)
    import datasets

    name = data["name"]
    if name and Path(name).exists():
        ds = datasets.load_from_disk(name)
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    else:
        ds = datasets.load_dataset(name, split=split)
    return LabeledImages(ds, data["image_column"], data["label_column"], limit)


def _sample_seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SeededTransformDataset(Dataset):
    """Applies ``transform`` with RNGs seeded from (seed, epoch, index): the augmentation of a
    sample does not depend on which worker loads it or on what was loaded before, which makes
    resumed runs bit-identical to uninterrupted ones."""

    def __init__(self, images: LabeledImages, transform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img, label = self.images.get(i)
        s = _sample_seed(self.seed, self.epoch, i)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        return self.transform(img), label


class EpochBatchSampler(Sampler):
    """Batches of a permutation drawn from (seed, epoch), this process's share of them, from
    batch ``start`` on. Incomplete batches are dropped so every process takes the same number
    of steps."""

    def __init__(
        self, n, batch_size, seed, epoch, world=1, rank=0, start=0, shuffle=True, multiple_of=1
    ):
        order = torch.arange(n)
        if shuffle:
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(_sample_seed(seed, epoch))
            )
        per_step = batch_size * world
        steps = steps_per_epoch(n, batch_size, world, multiple_of)
        self.batches = [
            order[
                s * per_step + rank * batch_size : s * per_step + (rank + 1) * batch_size
            ].tolist()
            for s in range(start, steps)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def steps_per_epoch(n: int, batch_size: int, world: int, grad_accum: int = 1) -> int:
    """Full batches per process, rounded down to whole optimizer steps: leftover
    micro-batches would carry gradients into the next epoch (and past a checkpoint)."""
    return n // (batch_size * world) // grad_accum * grad_accum


class DecryptedView:
    """Plain images recovered from an encrypted source with the owner's key (evaluation)."""

    def __init__(self, images: LabeledImages, key: BlockKey) -> None:
        self.images, self.key = images, key
        self.class_names = images.class_names

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int):
        img, label = self.images.get(i)
        return decrypt(to_key_mode(img, self.key.channels), self.key), label


class EvalDataset(Dataset):
    def __init__(self, images, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img, label = self.images.get(i)
        return self.transform(img), label


class PredecodedImages:
    """An already encrypted split decoded once into one uint8 array ``(N, C, H, W)``: a batch is
    one index and one normalise, with the ops ``ToTensor`` + ``Normalize`` perform (so the same
    float values as :func:`encrypted_transform` per sample), and no loader workers competing
    with the training threads for the cores."""

    def __init__(self, images: LabeledImages, input_size, mean, std, chunk: int = 1000) -> None:
        from timm_ppconvmixer.images import KeyImageMode

        check = encrypted_transform(input_size, mean, std).transforms[1]
        to_mode = KeyImageMode(input_size[0])
        n = len(images)
        self.arrays = np.empty((n, *input_size), dtype=np.uint8)
        self.labels = np.empty(n, dtype=np.int64)
        source = images.source
        batched = hasattr(source, "select") and not isinstance(source, ImageDataset)
        for start in range(0, n, chunk if batched else 1):
            stop = min(start + (chunk if batched else 1), n)
            if batched:  # one arrow read per chunk, not one per row
                rows = source[start:stop]
                pairs = zip(rows[images.image_column], rows[images.label_column], strict=True)
            else:
                pairs = [images.get(start)]
            for i, (img, label) in enumerate(pairs, start):
                a = np.asarray(check(to_mode(img)))
                self.arrays[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
                self.labels[i] = int(label)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.epoch = 0  # the loop sets it; the batches do not depend on it

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.arrays[indices]).to(torch.float32).div(255)
        return x.sub_(self.mean).div_(self.std), torch.from_numpy(self.labels[indices])

    def batches(self, batch_sampler):
        return (self.batch(indices) for indices in batch_sampler)


class DeviceEncrypt:
    """``data.encrypt_on: device``: the loader yields plain augmented uint8 batches (timm's
    prefetcher layout) and this encrypts and normalises them on the training device, with the
    ops the loader-side pipeline performs per image (gather + XOR, ``/ 255``, ``Normalize``):
    the same pixels, the same values."""

    def __init__(self, key: BlockKey, mean, std) -> None:
        self.key = key
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from timm_ppconvmixer import encrypt

        x = encrypt(x, self.key).to(torch.float32).div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


def train_transform(cfg: dict, key: BlockKey | None, input_size, mean, std):
    """Plain data + key: timm augmentation in the plain domain, then encryption (in the loader,
    or with ``data.encrypt_on: device`` by :class:`DeviceEncrypt` after it). Encrypted
    data: no spatial or photometric augmentation (it would break the block grid)."""
    if cfg["data"]["encrypted"]:
        return encrypted_transform(input_size, mean, std)  # key-free: to tensor, normalise
    aug = cfg["augment"]
    if cfg["data"]["encrypt_on"] == "device" and key is not None and aug["re_prob"] > 0:
        from .config import ConfigError

        raise ConfigError(
            "data.encrypt_on=device hands uint8 batches to the device; random erasing "
            "(augment.re_prob) needs float images before encryption: use encrypt_on=loader"
        )
    timm_args = dict(
        is_training=True,
        hflip=aug["hflip"],
        scale=tuple(aug["scale"]),
        ratio=tuple(aug["ratio"]),
        color_jitter=aug["color_jitter"],
        auto_augment=aug["auto_augment"],
        re_prob=aug["re_prob"],
        re_mode=aug["re_mode"],
        interpolation=aug["interpolation"],
        mean=mean,
        std=std,
    )
    if key is not None and cfg["data"]["encrypt_on"] == "device":
        from timm_ppconvmixer.images import KeyImageMode

        # what create_transform(key, use_prefetcher=True) runs, without the encryption
        plain = timm_create_transform(input_size, use_prefetcher=True, **timm_args)
        head = [KeyImageMode(key.channels)] if key.channels in (1, 3) else []
        return T.Compose([*head, *plain.transforms])
    if key is not None:
        return create_transform(key, **timm_args)
    return timm_create_transform(input_size, **timm_args)


def encrypted_transform(input_size, mean, std):
    """Already encrypted images: no resizing (it would mix blocks), to tensor, normalise."""
    from timm_ppconvmixer.images import KeyImageMode

    def check_size(img):
        if img.size != (input_size[2], input_size[1]):
            raise ValueError(
                f"encrypted image is {img.size[0]}x{img.size[1]} (WxH), the model takes "
                f"{input_size[2]}x{input_size[1]}; encrypt the data at the model's size"
            )
        return img

    return T.Compose(
        [
            KeyImageMode(input_size[0]),
            T.Lambda(check_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(input_size, mean, std, key: BlockKey | None = None):
    """Resize/centre-crop to the model's size, encrypt with ``key`` if given, normalise."""
    if key is not None:
        return create_transform(key, is_training=False, mean=mean, std=std)
    # the plain baseline: the same resize and crop as every encrypted path, without encryption
    from timm_ppconvmixer.images import DEFAULT_INTERPOLATION, KeyImageMode

    tf = timm_create_transform(
        input_size,
        is_training=False,
        crop_pct=1.0,
        mean=mean,
        std=std,
        interpolation=DEFAULT_INTERPOLATION,
    )
    tf.transforms.insert(0, KeyImageMode(input_size[0]))
    return tf
