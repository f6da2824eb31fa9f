"""Building a run's parts from its configuration: the model, the key, normalisation, timm's
optimiser and schedule, and mixup (block-aligned in the encrypted domain)."""

from __future__ import annotations

import timm
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import distribute_bn

from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.keyed.zoo import is_key_bound

from .config import ConfigError


def build_model(cfg: dict):
    spec = cfg["model"]["pretrained"] or cfg["model"]["name"]
    kwargs = dict(cfg["model"]["kwargs"])
    if cfg["model"]["pretrained"] and is_key_bound(spec) and cfg["data"]["key"]:
        # timm's plain weights, converted under the data's key at load (docs/zoo.md)
        kwargs.setdefault("key", cfg["data"]["key"])
    model = timm.create_model(spec, pretrained=bool(cfg["model"]["pretrained"]), **kwargs)
    if hasattr(model, "set_implicit_penalty"):
        model.set_implicit_penalty(False)  # the loss below adds lambda * L_U explicitly
    return model


def use_channels_last(model) -> None:
    """Run the activations in channels_last from the patch embedding on (a forward hook on the
    stem's convolution): oneDNN's depthwise and pointwise kernels are faster there on CPU, and
    the parameters stay contiguous, so ``save_state`` (safetensors) and exports are unchanged.
    P multiplies channels_last tokens without a layout copy (``AdaptivePermutation``)."""
    import torch

    stem = getattr(model, "stem", None)
    if stem is None or not len(stem):
        raise ConfigError("train.channels_last needs a ConvMixer-style model (stem[0] a conv)")

    def to_channels_last(module, inputs, output):
        return output.contiguous(memory_format=torch.channels_last)

    stem[0].register_forward_hook(to_channels_last)


def norm_stats(cfg: dict, model, channels: int):
    mean = cfg["data"]["mean"] or model.pretrained_cfg.get("mean")
    std = cfg["data"]["std"] or model.pretrained_cfg.get("std")
    if len(mean) != channels:  # e.g. ImageNet statistics for a 1-channel model
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return tuple(mean), tuple(std)


def block_size_of(model) -> int:
    """The key block size M a model is built for: a PPConvMixer's ``patch_size`` (its patch
    embedding is one M x M block per token, paper Sec. III-B), an AdaptNet PyramidNet's
    ``adapt.block_size`` (its adaptation network works on M x M blocks). Not ``stem[0]``: an
    AdaptNet's stem is the PyramidNet's 3x3 convolution, which says nothing about M."""
    for owner in (model, getattr(model, "adapt", None)):
        size = getattr(owner, "patch_size", None) or getattr(owner, "block_size", None)
        if isinstance(size, int):
            return size
    raise ConfigError(
        f"{type(model).__name__} states no key block size (no patch_size, no adapt.block_size); "
        "use a ppconvmixer_* or adaptnet_* model for encrypted images"
    )


def load_key(cfg: dict, model, input_size) -> BlockKey | None:
    if not cfg["data"]["key"]:
        return None
    key = BlockKey.load(cfg["data"]["key"])
    patch = block_size_of(model)
    if (key.channels, *key.image_size) != tuple(input_size) or key.block_size != patch:
        raise ConfigError(
            f"key {key.fingerprint} is for {key.channels}x{key.image_size[0]}x{key.image_size[1]} "
            f"images with block {key.block_size}; the model takes {tuple(input_size)} with patch "
            f"{patch}: they must match"
        )
    return key


def build_optimizer(cfg: dict, model, updates_per_epoch: int):
    """timm's optimiser and per-update schedule from ``cfg["optim"]`` and ``cfg["sched"]``."""
    opt, sch = cfg["optim"], cfg["sched"]
    optimizer = create_optimizer_v2(
        model,
        opt=opt["opt"],
        lr=opt["lr"],
        weight_decay=opt["weight_decay"],
        momentum=opt["momentum"],
        **({"eps": opt["eps"]} if opt["eps"] is not None else {}),
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sch["sched"],
        num_epochs=cfg["train"]["epochs"],
        warmup_epochs=sch["warmup_epochs"],
        min_lr=sch["min_lr"],
        warmup_lr=sch["warmup_lr"],
        updates_per_epoch=updates_per_epoch,
        step_on_epochs=False,
    )
    return optimizer, scheduler


def build_mixup(cfg: dict, model, encrypted_domain: bool):
    """timm's Mixup, or, for CutMix on encrypted images, the block-aligned BlockMixup (a
    pixel box would cut through blocks); ``None`` when neither is asked for."""
    aug = cfg["augment"]
    if aug["mixup"] <= 0 and aug["cutmix"] <= 0:
        return None
    args = dict(
        mixup_alpha=aug["mixup"],
        cutmix_alpha=aug["cutmix"],
        label_smoothing=aug["smoothing"],
        num_classes=model.num_classes,
    )
    if aug["cutmix"] > 0 and encrypted_domain:
        from timm_ppconvmixer.encrypted_augment import BlockMixup

        return BlockMixup(block_size=block_size_of(model), **args)
    return Mixup(**args)


def sync_batchnorm_stats(accelerator, model) -> None:
    """Average BatchNorm running statistics over processes (as timm's train.py does at each
    epoch's end): each process updated them from its own batches."""
    if accelerator.num_processes > 1:
        distribute_bn(model, accelerator.num_processes, reduce=True)
