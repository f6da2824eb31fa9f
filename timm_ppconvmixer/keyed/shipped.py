"""The architectures whose weights ship inside the package, registered with their tags.

``ppconvmixer_256_8_fmnist.demo`` is the demo model and ``ppconvmixer_128_8_fmnist.zoo_*`` are
the ConvMixers of the Table I reproduction: each was trained on Fashion-MNIST encrypted with a
PUBLIC key (:mod:`.pretrained`), or on plain images (``zoo_plain``), and loads offline through
its cfg's ``file``::

    model = timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True)

A loaded model records the fingerprint its export wrote (``model.key_fingerprint``), never a
key. Without ``pretrained=True`` both names build random models as every ``ppconvmixer_*``
does (:mod:`timm_ppconvmixer.models.registry`).
"""

from __future__ import annotations

import json

from timm.models import generate_default_cfgs, register_model

from ..models.registry import PPConvMixer, _args, _cfg, _create_ppconvmixer, _resolve_cfg
from .pretrained import DEMO_WEIGHTS, SHIPPED_ZOO

__all__ = ["SHIPPED_WEIGHTS"]

# tag -> its folder in the package (model.safetensors, config.json, README.md)
SHIPPED_WEIGHTS = {"ppconvmixer_256_8_fmnist.demo": DEMO_WEIGHTS, **SHIPPED_ZOO}

# The Table I zoo (benchmarks/reproduce_table1.py --zoo DIR --ship): tag -> the architecture
# options its weights were trained with beyond the name's defaults (timm's cfgs carry no model
# arguments, so the entry point adds them), and what the tag's images are.
_ZOO_TAGS = {  # the P tag first: timm makes an architecture's first tag its default
    "zoo_blockwise_p": ({}, "blockwise-encrypted with the PUBLIC zoo key, with P"),
    "zoo_blockwise_no_p": (
        {"permutation": False},
        "blockwise-encrypted with the PUBLIC zoo key, without P",
    ),
    "zoo_pe": ({"permutation": False}, "PE-encrypted with the PUBLIC zoo key, without P"),
    "zoo_plain": ({"permutation": False}, "plain images, without P"),
}


def _fmnist_cfg(tag: str, description: str) -> dict:
    return _cfg(
        file=str(SHIPPED_WEIGHTS[tag] / "model.safetensors"),
        input_size=(1, 28, 28),
        pool_size=(7, 7),
        num_classes=10,
        mean=(0.5,),
        std=(0.5,),
        description=description,
    )


default_cfgs = generate_default_cfgs(
    {
        # Fashion-MNIST 28x28, 1 channel, block 4, encrypted with the PUBLIC demo key
        # (timm_ppconvmixer.keyed.pretrained.demo_key()); trained by hub/train_demo_model.py.
        # Its own architecture name: timm makes an architecture's first tag with weights its
        # default, which would turn ppconvmixer_256_8 itself into a 1-channel 28x28 model.
        "ppconvmixer_256_8_fmnist.demo": _fmnist_cfg(
            "ppconvmixer_256_8_fmnist.demo",
            "Fashion-MNIST demo model; images encrypted with the public demo key",
        ),
        **{
            f"ppconvmixer_128_8_fmnist.{tag}": _fmnist_cfg(
                f"ppconvmixer_128_8_fmnist.{tag}",
                f"Table I zoo (Fashion-MNIST): {text}; never use the zoo keys for real data",
            )
            for tag, (_, text) in _ZOO_TAGS.items()
        },
    }
)


def _create_shipped(variant: str, pretrained: bool, **kwargs) -> PPConvMixer:
    model = _create_ppconvmixer(variant, pretrained, **kwargs)
    folder = SHIPPED_WEIGHTS.get(f"{variant}.{model.pretrained_cfg.get('tag')}")
    loaded = str(model.pretrained_cfg.get("file")) if pretrained else None
    if folder is not None and loaded == str(folder / "model.safetensors"):
        # the weights' domain: the fingerprint their export recorded (never the key)
        config = json.loads((folder / "config.json").read_text())
        model.key_fingerprint = config.get("model_args", {}).get("key_fingerprint")
    return model


@register_model
def ppconvmixer_256_8_fmnist(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """ppconvmixer_256_8 for Fashion-MNIST: 28x28, one channel, block 4 (7x7 blocks), 10
    classes; the ``.demo`` tag holds the shipped demo weights."""
    args = _args(dict(dim=256, depth=8, kernel_size=5, patch_size=4), kwargs)
    return _create_shipped("ppconvmixer_256_8_fmnist", pretrained, **args)


@register_model
def ppconvmixer_128_8_fmnist(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """The Table I reproduction's ConvMixer (benchmarks/reproduce_table1.py): h=128, depth 8,
    kernel 5, block/patch 4, Fashion-MNIST 28x28x1, 10 classes. The ``.zoo_*`` tags hold its
    shipped weights (``_ZOO_TAGS``: with P on blockwise images under the PUBLIC zoo key,
    without P on blockwise, PE and plain images)."""
    # the tag however timm names it (a tag, a PretrainedCfg, a dict, with an overlay): its
    # weights' architecture follows it, and weights without P never meet a random P
    tag = _resolve_cfg("ppconvmixer_128_8_fmnist", kwargs).tag
    tag_args = _ZOO_TAGS[tag][0] if tag in _ZOO_TAGS else {}
    defaults = dict(dim=128, depth=8, kernel_size=5, patch_size=4, num_classes=10, **tag_args)
    return _create_shipped("ppconvmixer_128_8_fmnist", pretrained, **_args(defaults, kwargs))
