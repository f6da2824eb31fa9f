"""Key-bound pretrained tags: timm's ImageNet ConvMixers as encrypted-domain models under the
user's own key, converted on the user's machine at load.

Encrypted-domain weights are only useful under one key, and exact conversion
(:func:`~timm_ppconvmixer.keyed.convert.encrypt_model`) turns every plain ConvMixer into an
encrypted-domain model for any key. So each of timm's pretrained ConvMixers has a twin tag::

    key = BlockKey.load("owner.key")             # 224x224, block 7 (block 14 for _p14), RGB
    model = timm.create_model("ppconvmixer_768_32.in1k", pretrained=True, key=key)
    # == encrypt_model(timm.create_model("convmixer_768_32.in1k", pretrained=True), key)

The plain weights come through timm's own loader (``hf-hub:timm/...``: its cache,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``cache_dir``, ``pretrained_cfg_overlay=dict(file=...)``);
nothing key-derived is downloaded or uploaded. The key (a
:class:`~timm_ppconvmixer.key.BlockKey` or a key file path) is used once and dropped: the model
records only ``key_fingerprint``, and the key never enters ``pretrained_cfg``, the recorded
model arguments (``config.json``) or a message. The converted weights do reveal the key to
anyone holding the public plain weights (docs/security.md, "Threat model").

This module also registers the three architectures (``ppconvmixer_768_32``,
``ppconvmixer_1024_20_ks9_p14``, ``ppconvmixer_1536_20``): without ``pretrained=True`` they
build random models exactly as before, with any ``ppconvmixer_*`` option, and need no key.
"""

from __future__ import annotations

import inspect
import os

from timm.layers import to_2tuple
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
)
from timm.models._features import FeatureGetterNet
from timm.models.convmixer import ConvMixer
from torch import nn

from ..key import BlockKey
from ..models.registry import (
    KeyBoundError,
    PPConvMixer,
    _args,
    _cfg,
    _create_ppconvmixer,
    _resolve_cfg,
    with_cfg_fields,
)

__all__ = [
    "KEY_BOUND_TAGS",
    "KeyBoundError",
    "KeyBoundFeatures",
    "is_key_bound",
    "load_key_bound",
]

# key-bound tag -> timm's plain tag whose weights it converts
KEY_BOUND_TAGS = {
    "ppconvmixer_768_32.in1k": "convmixer_768_32.in1k",
    "ppconvmixer_1024_20_ks9_p14.in1k": "convmixer_1024_20_ks9_p14.in1k",
    "ppconvmixer_1536_20.in1k": "convmixer_1536_20.in1k",
}

# Sources of a *saved* model's config (timm's local-dir: and hf-hub: loaders set them): such a
# folder holds weights already in its key's domain, even if its config kept the tag's name.
_SAVED_SOURCES = ("local-dir", "hf-hub")
# Where a plain checkpoint comes from: forwarded to timm's loader for the plain model.
_SOURCE_FIELDS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")
# PPConvMixer's own options (P, input grid, fingerprint): the plain ConvMixer takes none of them.
_PP_ONLY = set(inspect.signature(PPConvMixer.__init__).parameters) - set(
    inspect.signature(ConvMixer.__init__).parameters
)
# timm's features_only options (build_model_with_cfg): they shape the returned model, not the
# plain one the weights are converted from
_FEATURE_ARGS = ("features_only", "out_indices", "feature_cls")
# what a key-bound tag shares with timm's cfg of the weights it converts: the same preparation
# of the plain image before encryption (timm.data.resolve_data_config gives the same), the same
# head and stem names, the licence of the weights
_PLAIN_CFG_FIELDS = (
    "num_classes",
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "first_conv",
    "classifier",
    "license",
)


class KeyBoundFeatures(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` (timm's feature wrapper for ConvMixer) around a key-bound
    model: timm's ``create_model`` records the caller's keywords on the model it returns, and
    this wrapper, like :class:`PPConvMixer`, never keeps ``key``."""

    _model_args = PPConvMixer._model_args


def _keygen_hint(size: tuple[int, int], block: int, channels: int) -> str:
    extra = "" if channels == 3 else f" --channels {channels}"
    return (
        f"a key for {size[0]}x{size[1]} images with blocks of {block} and {channels} "
        f"channel(s); generate one with `ppconvmixer keygen KEY --image-size {size[0]} "
        f"--block-size {block}{extra}` and keep it secret"
    )


def _tag_cfg(plain_tag: str, pool_size: tuple[int, int]) -> dict:
    plain = get_pretrained_cfg(plain_tag)
    return _cfg(
        pool_size=pool_size,
        hf_hub_id=plain.hf_hub_id,  # the plain weights', read by timm's loader
        description=f"timm's plain {plain_tag} weights (hf_hub_id {plain.hf_hub_id}: not "
        "encrypted, not key-bound), converted exactly to your key's encrypted domain at load; "
        "pass key=, nothing key-derived is downloaded",
        **{f: getattr(plain, f) for f in _PLAIN_CFG_FIELDS},
    )


# Only the key-bound tags: as for timm's convmixer_*, an architecture's tag with weights is its
# default, and an untagged entry would list random weights in timm.list_pretrained().
default_cfgs = generate_default_cfgs(
    {
        "ppconvmixer_768_32.in1k": _tag_cfg("convmixer_768_32.in1k", (32, 32)),
        "ppconvmixer_1024_20_ks9_p14.in1k": _tag_cfg("convmixer_1024_20_ks9_p14.in1k", (16, 16)),
        "ppconvmixer_1536_20.in1k": _tag_cfg("convmixer_1536_20.in1k", (32, 32)),
    }
)


def is_key_bound(name: str) -> bool:
    """Whether ``name`` (``arch.tag``) is a key-bound tag (``KEY_BOUND_TAGS``)."""
    return name in KEY_BOUND_TAGS


def _resolve_key(key, tag: str, size: tuple[int, int], block: int, channels: int) -> BlockKey:
    if key is None:
        raise KeyBoundError(
            f"{tag} converts timm's plain {KEY_BOUND_TAGS[tag]} weights to your key's encrypted "
            f"domain at load: pass key=BlockKey.load(KEY) or key=KEY (a key file path), "
            f"{_keygen_hint(size, block, channels)}"
        )
    if not isinstance(key, BlockKey):
        if not isinstance(key, (str, os.PathLike)):
            raise KeyBoundError(
                f"{tag}: key= takes a BlockKey or a key file path, not {type(key).__name__}"
            )
        key = BlockKey.load(key)
    if (key.image_size, key.block_size, key.channels) != (size, block, channels):
        h, w = key.image_size
        raise KeyBoundError(
            f"{tag} needs {_keygen_hint(size, block, channels)}; key {key.fingerprint} is for "
            f"{h}x{w} images with blocks of {key.block_size} and {key.channels} channel(s)"
        )
    return key


def load_key_bound(
    variant: str, defaults: dict, key, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs
) -> PPConvMixer | KeyBoundFeatures:
    """The key-bound model: timm's plain weights (timm's loader), converted under ``key``.

    ``kwargs`` are model options as for the untagged architecture (``num_classes``,
    ``penalty_weight``, a shallower ``depth`` for a matching checkpoint, ``features_only``,
    ...): the plain model takes the ConvMixer ones, the returned PPConvMixer all of them. Its
    ``pretrained_cfg`` is the tag's (resolved as timm does, with ``pretrained_cfg_overlay``),
    with the key's input size and ``converted_from``: timm's plain tag whose weights it holds.

    With ``features_only=True`` it is timm's feature model (``KeyBoundFeatures``, as timm's
    ``FeatureGetterNet`` for ConvMixer, same ``out_indices``): the converted P puts the tokens
    back in the plain block order inside the stem, so every block's output on encrypted images
    equals the plain feature model's on the plain images (tests/test_zoo_conventions.py).
    """
    from .convert import encrypt_model  # the conversion identity, docs/design.md section 1

    cfg = _resolve_cfg(
        variant, dict(pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    )
    tag = f"{variant}.{cfg.tag}"
    args = _args(defaults, kwargs)
    features = {k: args.pop(k) for k in _FEATURE_ARGS if k in args}
    size = to_2tuple(args.get("img_size") or cfg.input_size[1:])
    key = _resolve_key(key, tag, size, args["patch_size"], args.get("in_chans", 3))
    if args.get("permutation", True) is False or args.get("permutation_param", "dense") != "dense":
        raise KeyBoundError(f"{tag}: the converted block order needs the dense P (the default)")
    if features.get("features_only") and features.get("feature_cls", "getter") != "getter":
        raise KeyBoundError(
            f"{tag}: features_only gives timm's feature getter, as for timm's ConvMixer; leave "
            "out feature_cls (or pass feature_cls='getter')"
        )
    plain_arch, plain_name = KEY_BOUND_TAGS[tag].split(".", 1)
    source = {f: getattr(cfg, f) for f in _SOURCE_FIELDS if getattr(cfg, f)}
    if "num_classes" in (pretrained_cfg_overlay or {}):  # train.py's -1: a new head, as timm's
        source["num_classes"] = pretrained_cfg_overlay["num_classes"]
    plain = build_model_with_cfg(  # what timm's convmixer_* entry points do, our options kept out
        ConvMixer,
        plain_arch,
        True,
        pretrained_cfg=plain_name,
        pretrained_cfg_overlay=source,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **{k: v for k, v in args.items() if k not in _PP_ONLY and k != "img_size"},
    )
    converted = encrypt_model(plain, key)  # from here on only the key's fingerprint goes on
    domain = {f: converted.pretrained_cfg[f] for f in ("input_size", "mean", "std")}
    args["key_fingerprint"] = converted.key_fingerprint
    if features.get("features_only"):
        features["feature_cls"] = KeyBoundFeatures
    # timm's builder and loader once more, from the converted weights in memory: features_only,
    # out_indices, a new head and P's checks as for any timm model
    model = _create_ppconvmixer(
        variant,
        True,
        pretrained_cfg={**cfg.to_dict(), **domain},
        pretrained_cfg_overlay=dict(state_dict=converted.state_dict()),
        **args,
        **features,
    )
    # the cfg keeps no copy of the weights; converted_from is the non-secret marker of a
    # key-bound load, read by model cards and the leak guard (the wrapper's and its model's)
    for module in (model, getattr(model, "model", None)):
        if module is not None:
            kept = {k: v for k, v in module.pretrained_cfg.items() if k != "state_dict"}
            module.pretrained_cfg = kept
            with_cfg_fields(module, converted_from=KEY_BOUND_TAGS[tag])
    # timm's create_model adds the caller's keywords (never key=: PPConvMixer and
    # KeyBoundFeatures drop it), and timm's own save_for_hf then writes the fingerprint into
    # config.json's model_args
    model._model_args = {"key_fingerprint": converted.key_fingerprint}
    model.train(plain.training)
    return model


def _entry(variant: str, defaults: dict, pretrained: bool, kwargs: dict) -> PPConvMixer:
    cfg = _resolve_cfg(variant, kwargs)
    if pretrained and is_key_bound(f"{variant}.{cfg.tag}") and cfg.source not in _SAVED_SOURCES:
        key = kwargs.pop("key", None)
        return load_key_bound(variant, defaults, key, **kwargs)
    return _create_ppconvmixer(variant, pretrained, **_args(defaults, kwargs))


@register_model
def ppconvmixer_768_32(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """timm's convmixer_768_32 (ReLU, kernel 7, patch 7) with P; 224x224. ``.in1k``: timm's
    ImageNet weights converted under ``key=`` (block 7)."""
    defaults = dict(dim=768, depth=32, kernel_size=7, patch_size=7, act_layer=nn.ReLU)
    return _entry("ppconvmixer_768_32", defaults, pretrained, kwargs)


@register_model
def ppconvmixer_1024_20_ks9_p14(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """timm's convmixer_1024_20_ks9_p14 with P; 224x224. ``.in1k``: timm's ImageNet weights
    converted under ``key=`` (block 14)."""
    defaults = dict(dim=1024, depth=20, kernel_size=9, patch_size=14)
    return _entry("ppconvmixer_1024_20_ks9_p14", defaults, pretrained, kwargs)


@register_model
def ppconvmixer_1536_20(pretrained: bool = False, **kwargs) -> PPConvMixer:
    """timm's convmixer_1536_20 with P; 224x224. ``.in1k``: timm's ImageNet weights converted
    under ``key=`` (block 7)."""
    defaults = dict(dim=1536, depth=20, kernel_size=9, patch_size=7)
    return _entry("ppconvmixer_1536_20", defaults, pretrained, kwargs)
