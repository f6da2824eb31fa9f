"""The recipe's speed levers give the same numbers as the pipelines they replace:
encryption on the training device, the pre-decoded encrypted split, channels_last activations
(P's layout-free product). Real data: the Fashion-MNIST files, real PNG folders."""

import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import write_image_folder
from torch.utils.data import DataLoader

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from ppcm_recipe.build import use_channels_last  # noqa: E402
from ppcm_recipe.config import ConfigError, load_config  # noqa: E402
from ppcm_recipe.data import (  # noqa: E402
    DeviceEncrypt,
    EpochBatchSampler,
    PredecodedImages,
    SeededTransformDataset,
    encrypted_transform,
    load_split,
    train_transform,
)

FMNIST = ROOT / "recipes" / "configs" / "fashion_mnist_28.yaml"


def _batches(cfg, key, input_size, mean, std, n_batches=2, batch=32):
    images = load_split(cfg, "train", batch * n_batches)
    ds = SeededTransformDataset(images, train_transform(cfg, key, input_size, mean, std), 0)
    ds.epoch = 1
    sampler = EpochBatchSampler(len(ds), batch, seed=0, epoch=1)
    return list(DataLoader(ds, batch_sampler=sampler, num_workers=0))


def _loader_vs_device(cfg_path, overrides, key, input_size, mean, std):
    on_loader = load_config(cfg_path, [*overrides, "data.encrypt_on=loader"])
    on_device = load_config(cfg_path, [*overrides, "data.encrypt_on=device"])
    encrypt = DeviceEncrypt(key, mean, std)
    loader = _batches(on_loader, key, input_size, mean, std)
    plain = _batches(on_device, key, input_size, mean, std)
    for (xa, ya), (xb, yb) in zip(loader, plain, strict=True):
        assert xb.dtype == torch.uint8  # the loader hands plain bytes over
        assert torch.equal(ya, yb)
        assert torch.equal(xa, encrypt(xb)), "device encryption differs from the loader's"


def test_device_encryption_gives_the_loaders_batches_fashion_mnist():
    key = BlockKey.generate(28, 4, channels=1, seed=3)
    _loader_vs_device(FMNIST, [], key, (1, 28, 28), (0.5,), (0.5,))


def test_device_encryption_gives_the_loaders_batches_rgb_folder(tmp_path):
    write_image_folder(tmp_path / "train", per_class=32, size=(45, 60))
    key = BlockKey.generate(32, 8, seed=4)
    overrides = [
        "data.source=imagefolder",
        f"data.name={tmp_path}",
        "augment.color_jitter=0.4",
    ]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    _loader_vs_device(None, overrides, key, (3, 32, 32), mean, std)


def test_device_encryption_refuses_random_erasing():
    cfg = load_config(FMNIST, ["data.encrypt_on=device", "augment.re_prob=0.25"])
    key = BlockKey.generate(28, 4, channels=1, seed=3)
    with pytest.raises(ConfigError, match="re_prob"):
        train_transform(cfg, key, (1, 28, 28), (0.5,), (0.5,))
    with pytest.raises(ConfigError, match="encrypt_on"):
        load_config(FMNIST, ["data.encrypt_on=gpu"])


def test_predecoded_split_gives_the_per_sample_values(tmp_path):
    """The demo's path: the encrypted dataset saved with save_to_disk (PNG in arrow), decoded
    once into one array; every batch equals the per-sample transform's, collated."""
    key = BlockKey.generate(28, 4, channels=1, seed=6)
    encrypt_dataset(load_fashion_mnist("train", limit=300), key).save_to_disk(tmp_path / "enc")
    source = ["data.source=hf", f"data.name={tmp_path / 'enc'}", "data.encrypted=true"]
    cfg = load_config(None, source)
    images = load_split(cfg, "train", None)
    mean, std = (0.5,), (0.5,)
    pre = PredecodedImages(images, (1, 28, 28), mean, std, chunk=128)  # chunks cut the split
    per_sample = SeededTransformDataset(images, encrypted_transform((1, 28, 28), mean, std), 0)
    assert len(pre) == len(per_sample) == 300
    sampler = EpochBatchSampler(300, 64, seed=0, epoch=0)
    loader = DataLoader(per_sample, batch_sampler=sampler, num_workers=0)
    for (xa, ya), (xb, yb) in zip(loader, pre.batches(sampler), strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_channels_last_keeps_outputs_and_contiguous_weights():
    torch.manual_seed(0)
    model = timm.create_model("ppconvmixer_256_8_fmnist", num_classes=10, dim=32, depth=2)
    x = torch.randn(4, 1, 28, 28)
    ref = model(x)
    perm = model.permutation
    tokens = torch.randn(2, 32, 7, 7)
    # P on channels_last tokens: exactly the NCHW product, and the result stays channels_last
    out = perm(tokens.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.allclose(out, perm(tokens), atol=1e-6, rtol=0)
    # and the same gradients, for P and for the tokens (the channels_last path is its own bmm)
    grads = []
    for t in (tokens, tokens.contiguous(memory_format=torch.channels_last)):
        t = t.clone().requires_grad_()
        perm.weight.grad = None
        (perm(t) * torch.arange(t.numel()).view_as(t).sin()).sum().backward()
        grads.append((perm.weight.grad.clone(), t.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5, rtol=0)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6, rtol=0)
    use_channels_last(model)
    seen = []
    model.stem[-1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    got = model(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    got.sum().backward()
    assert all(t.is_contiguous() for t in model.state_dict().values())  # safetensors needs it


def test_timm_prefetcher_encrypting_on_device_gives_the_workers_batches(tmp_path):
    """recipes/timm_device_encrypt.py: timm's own create_loader (prefetcher, as train.py calls
    it) on plain files, encrypted after the transfer, equals encryption in the dataset's
    transform; timm's PrefetchLoader normalises both."""
    import random

    from timm.data import ImageDataset
    from timm.data import create_loader as timm_create_loader
    from timm_device_encrypt import encrypting_create_loader

    from timm_ppconvmixer.transforms import create_transform

    write_image_folder(tmp_path / "plain", per_class=12, size=(45, 60))
    key = BlockKey.generate(32, 8, seed=9)
    args = dict(input_size=(3, 32, 32), batch_size=8, is_training=True, use_prefetcher=True,
                device=torch.device("cpu"), num_workers=0, color_jitter=0.4)  # fmt: skip

    def batches(loader):
        random.seed(0), torch.manual_seed(0)
        return [(x.clone(), y.clone()) for x, y in loader]

    on_device = encrypting_create_loader(key)(ImageDataset(str(tmp_path / "plain")), **args)
    in_workers = timm_create_loader(ImageDataset(str(tmp_path / "plain")), **args)
    in_workers.dataset.transform = create_transform(key, is_training=True, use_prefetcher=True)
    got, expected = batches(on_device), batches(in_workers)
    assert len(got) == 3
    for (xa, ya), (xb, yb) in zip(got, expected, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
