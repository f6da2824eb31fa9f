"""The ``ppconvmixer_*`` architectures trained from scratch, their cfgs, the entry point every
``ppconvmixer_*`` registration builds through, and the parameter counts of Eq. (3) and Eq. (4)
(paper Sec. III-B, Fig. 1). The model class is
:class:`~timm_ppconvmixer.models.pp_convmixer.PPConvMixer` (re-exported here).

Architectures whose registered tags carry weights bound to a key are registered beside those
weights in :mod:`timm_ppconvmixer.keyed`: the shipped demo and Table I zoo models
(:mod:`~timm_ppconvmixer.keyed.shipped`) and the twins of timm's ImageNet ConvMixers
(:mod:`~timm_ppconvmixer.keyed.zoo`).
"""

from __future__ import annotations

import math

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from torch import nn

from .permutation import AdaptivePermutation
from .pp_convmixer import PPConvMixer

__all__ = [
    "PACKAGE_CFG_FIELDS",
    "PROJECT_LICENSE",
    "KeyBoundError",
    "PPConvMixer",
    "convmixer_num_params",
    "ppconvmixer_num_params",
]

# The licence of the weights this project trains and ships (pyproject.toml); a cfg of weights
# made elsewhere (timm's, converted by the key-bound tags) names theirs instead.
PROJECT_LICENSE = "apache-2.0"
# pretrained_cfg fields the package records beside timm's: ``converted_from`` (timm's plain tag
# whose weights the key-bound loader converted, :mod:`timm_ppconvmixer.keyed.zoo`). timm's
# PretrainedCfg takes no such field, so the entry points take them out of a cfg dict before
# timm reads it (a config.json timm's save_for_hf wrote) and put them back on the model.
PACKAGE_CFG_FIELDS = ("converted_from",)


class KeyBoundError(ValueError):
    """A key-bound tag (:mod:`timm_ppconvmixer.keyed.zoo`) was loaded without a key or with a
    key that does not fit it, or ``key=`` was given to a model that takes none."""


def convmixer_num_params(
    dim: int, depth: int, kernel_size: int, patch_size: int, num_classes: int, in_chans: int = 3
) -> int:
    """Eq. (3) of the paper, with the paper's 3 input channels generalised to ``in_chans``:
    ``h [d (k^2 + h + 6) + C M^2 + n_classes + 3] + n_classes``."""
    h, d, k, m = dim, depth, kernel_size, patch_size
    return h * (d * (k * k + h + 6) + in_chans * m * m + num_classes + 3) + num_classes


def ppconvmixer_num_params(
    dim: int,
    depth: int,
    kernel_size: int,
    patch_size: int,
    num_classes: int,
    img_size: int | tuple[int, int],
    in_chans: int = 3,
) -> int:
    """Eq. (4) of the paper: Eq. (3) plus n^2 for P, n = (H/M)(W/M)."""
    h, w = to_2tuple(img_size)
    n = (h // patch_size) * (w // patch_size)
    return convmixer_num_params(dim, depth, kernel_size, patch_size, num_classes, in_chans) + n * n


def _check_permutation_fits(state_dict: dict, model: PPConvMixer) -> dict:
    """Refuse weights that do not fit the model's P, naming the option that fits them: weights
    trained without P (or with it) for a model with it (or without it), and a P built for
    another input size (P belongs to the key's block grid and cannot be resized like a
    position embedding). A random P is never filled in for weights that have none."""
    perm = model.permutation
    if not isinstance(perm, AdaptivePermutation):
        saved = state_dict.get(f"stem.{len(model.stem)}.weight")
        if model.permutation_index is None and saved is not None and saved.ndim == 2:
            raise ValueError(  # not TypeError: timm retries a filter that raises TypeError
                f"the pretrained weights have a permutation matrix P ({saved.shape[0]}x"
                f"{saved.shape[1]}) but the model was created with permutation=False; drop "
                "permutation=False to load them"
            )
        return state_dict
    prefix = f"stem.{model.permutation_index}."
    saved = state_dict.get(prefix + "weight")
    if saved is None:
        if perm.init == "kaiming":
            raise ValueError(
                f"the pretrained weights have no permutation matrix P ({prefix}weight): they "
                "were trained without P. Create the model with permutation=False to load them "
                "as they are, or with permutation_init='identity' (or a block order) to add a P "
                "that starts from that permutation; a random P is never filled in"
            )
        # plain weights (e.g. timm's convmixer_*) with P started where the caller chose
        own = {prefix + k: v.detach().clone() for k, v in perm.state_dict().items()}
        return {**state_dict, **own}
    if saved.shape != perm.weight.shape:
        n, m = saved.shape[0], model.patch_size
        side = math.isqrt(n)
        trained = f"img_size {side * m}x{side * m}" if side * side == n else f"{n} blocks"
        h, w = model.img_size
        raise ValueError(
            f"the pretrained weights were trained for {trained} (P is {n}x{n}, blocks of "
            f"{m}x{m}), but this model was created with img_size {h}x{w} ({perm.num_tokens} "
            "blocks); P belongs to the key's block grid and cannot be resized: create the model "
            "with the weights' img_size (config.json model_args), or with pretrained=False"
        )
    return state_dict


def _without_package_fields(pretrained_cfg):
    if not isinstance(pretrained_cfg, dict):
        return pretrained_cfg
    return {k: v for k, v in pretrained_cfg.items() if k not in PACKAGE_CFG_FIELDS}


def _resolve_cfg(variant: str, kwargs: dict) -> PretrainedCfg:
    """The cfg timm builds ``variant`` with, from any way timm names one: a tag, a
    ``PretrainedCfg`` or a dict as ``kwargs["pretrained_cfg"]``, and
    ``kwargs["pretrained_cfg_overlay"]``."""
    return resolve_pretrained_cfg(
        variant,
        _without_package_fields(kwargs.get("pretrained_cfg")),
        kwargs.get("pretrained_cfg_overlay"),
    )


def with_cfg_fields(model: nn.Module, **fields) -> nn.Module:
    """``model`` with ``fields`` added to its ``pretrained_cfg`` (and timm's ``default_cfg``
    alias): the package's own fields, which timm's builder does not carry."""
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **fields}
    return model


def _create_ppconvmixer(variant: str, pretrained: bool = False, **kwargs) -> PPConvMixer:
    # timm records img_size / in_chans as model traits, so resolve_model_data_config(model)
    # gives the size the model was built for; the source cfg itself is left as timm keeps it.
    if "key" in kwargs:  # a secret: never let it reach the model, its cfg or its args
        raise KeyBoundError(
            f"{variant}: key= is taken only with pretrained=True by the key-bound tags, which "
            "convert timm's plain weights under your key (timm.list_pretrained('ppconvmixer*'), "
            "e.g. ppconvmixer_768_32.in1k); encrypt the data with the key instead"
        )
    given = kwargs.get("pretrained_cfg")
    package_fields = {}
    if isinstance(given, dict):
        package_fields = {k: given[k] for k in PACKAGE_CFG_FIELDS if k in given}
        kwargs["pretrained_cfg"] = _without_package_fields(given)
    arch = _resolve_cfg(variant, kwargs).architecture
    if pretrained and arch not in (None, variant):
        raise ValueError(
            f"the pretrained_cfg is {arch}'s, not {variant}'s: create {arch} to load its "
            f"weights, or pass one of {variant}'s tags (timm.list_pretrained('{variant}*'))"
        )
    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_cfg(
        PPConvMixer,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        pretrained_filter_fn=_check_permutation_fits,
        **kwargs,
    )
    return with_cfg_fields(model, **package_fields)


def _cfg(input_size=(3, 224, 224), license: str = PROJECT_LICENSE, **kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": input_size,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head",
        "first_conv": "stem.0",
        "license": license,
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "ppconvmixer_512_16": _cfg(pool_size=(14, 14)),
        "ppconvmixer_256_8": _cfg(input_size=(3, 32, 32), pool_size=(8, 8)),
    }
)


def _args(defaults: dict, kwargs: dict) -> dict:
    # As timm's ViTs do (dict(model_args, **kwargs)), callers may override the architecture,
    # e.g. a shallower or narrower variant for small data; the name gives the defaults. The
    # input size comes from the pretrained cfg (fixed_input_size: timm passes img_size).
    return dict(defaults, **kwargs)


@register_model
def ppconvmixer_512_16(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """The paper's model: h=512, depth 16, kernel 9, block/patch 16, 224x224 (Table I)."""
    args = _args(dict(dim=512, depth=16, kernel_size=9, patch_size=16), kwargs)
    return _create_ppconvmixer("ppconvmixer_512_16", pretrained, **args)


@register_model
def ppconvmixer_256_8(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """Small model for CIFAR-size images: h=256, depth 8, kernel 5, block/patch 4, 32x32."""
    args = _args(dict(dim=256, depth=8, kernel_size=5, patch_size=4), kwargs)
    return _create_ppconvmixer("ppconvmixer_256_8", pretrained, **args)
