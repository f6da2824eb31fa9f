"""Exact model conversion: plain ConvMixer -> encrypted-domain PPConvMixer, re-keying, and
hardening a learned P into a permutation.

Why it is exact (docs/design.md section 1, paper Sec. III-B properties 1 and 2). Let z be a
normalised plain patch (C*M*M values in (C, M, M) order, channel c(i) of value i, per-channel
mean m_c and std s_c) and z' the normalised encrypted patch. With pixel shuffling pi (K2) and
the negative-positive flip (K3: sign e_j = -1 and offset f_j = 1 where the mask is set, else
+1 and 0, on pixel values in [0, 1]),

    z'_j = (e_j (s_{c(pi j)} z_{pi j} + m_{c(pi j)}) + f_j - m_{c(j)}) / s_{c(j)}  =  (A z + t)_j,

A a signed, scaled permutation matrix. The stem convolution (one linear map W, b per patch,
stride = kernel = M) therefore gives the same output on z' with W' = W A^-1 and
b' = b - W' t. Block permutation (K1) moves whole tokens: encrypted token i is plain token
``block_perm[i]``; stem activation and BatchNorm act per token, so they commute with it, and
the token mixing P' = P[block_perm] (rows of P taken in the key's block order; P = I for a
model without P) restores the plain model's tokens exactly. Every later layer is unchanged.
"""

from __future__ import annotations

import copy

import torch
from timm.models.convmixer import ConvMixer
from torch import nn

from ..key import BlockKey
from ..models.permutation import AdaptivePermutation
from ..models.registry import PPConvMixer
from .errors import ConversionError

__all__ = [
    "ConversionError",
    "decrypt_model",
    "encrypt_model",
    "rekey_model",
]

_SOURCE_WEIGHT_FIELDS = (
    "url",
    "hf_hub_id",
    "hf_hub_filename",
    "file",
    "state_dict",
    "source",
    "tag",
)


def _patch_embedding(model: nn.Module) -> nn.Conv2d:
    if not isinstance(model, ConvMixer):
        raise ConversionError(
            f"expected a timm ConvMixer or PPConvMixer, got {type(model).__name__}; only "
            "ConvMixer's patch embedding can absorb the block-wise encryption exactly"
        )
    return model.stem[0]


def _check_fit(model: nn.Module, key: BlockKey) -> None:
    if not isinstance(key, BlockKey):
        raise ConversionError(
            f"exact conversion exists for the paper's blockwise scheme only, not for a "
            f"{getattr(key, 'scheme', type(key).__name__)!r} key: its steps are what one patch "
            "embedding and P can absorb (ppconvmixer keygen --scheme blockwise)"
        )
    conv = _patch_embedding(model)
    if conv.kernel_size != (key.block_size,) * 2 or conv.stride != conv.kernel_size:
        raise ConversionError(
            f"the model's patch size is {conv.kernel_size[0]} (stride {conv.stride[0]}) but the "
            f"key's block size is {key.block_size}; they must be equal"
        )
    if conv.in_channels != key.channels:
        raise ConversionError(
            f"the model takes {conv.in_channels} input channel(s), the key has {key.channels}"
        )
    size = getattr(model, "img_size", None)
    if size is not None and tuple(size) != key.image_size:
        raise ConversionError(
            f"the model was built for img_size {size[0]}x{size[1]}, the key is for "
            f"{key.image_size[0]}x{key.image_size[1]}"
        )


def _norm_stats(model: nn.Module, channels: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = cfg.get("mean") if mean is None else mean
    std = cfg.get("std") if std is None else std
    if mean is None or std is None:
        raise ConversionError("the model's pretrained_cfg has no mean/std; pass mean= and std=")
    mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    if mean_t.numel() != channels or std_t.numel() != channels:
        raise ConversionError(
            f"mean/std have {mean_t.numel()}/{std_t.numel()} values but the model takes "
            f"{channels} channel(s); pass mean= and std= with one value per channel"
        )
    if (std_t <= 0).any():
        raise ConversionError(f"std must be positive, got {std_t.tolist()}")
    return mean_t, std_t


def _patch_affine(key: BlockKey, mean: torch.Tensor, std: torch.Tensor):
    """``(pi, scale, t)`` with ``(A z)_j = scale_j * z_{pi j}`` and ``t`` as in the module doc."""
    m2 = key.block_size**2
    pi = key.pixel_perm
    chan = torch.arange(key.channels * m2) // m2
    sign = 1.0 - 2.0 * key.np_mask.double()
    offset = key.np_mask.double()
    scale = sign * std[chan[pi]] / std[chan]
    t = (sign * mean[chan[pi]] + offset - mean[chan]) / std[chan]
    return pi, scale, t


def _map_stem(conv: nn.Conv2d, key: BlockKey, mean, std, to_encrypted: bool) -> None:
    """Rewrite the patch embedding in place: plain -> encrypted domain or back."""
    pi, scale, t = _patch_affine(key, mean, std)
    w = conv.weight.detach().double().reshape(conv.out_channels, -1)
    b = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(conv.out_channels, dtype=torch.float64)
    )
    if to_encrypted:  # W' = W A^-1: column j of W' is column pi(j) of W divided by scale_j
        w_new = w[:, pi] / scale
        b_new = b - w_new @ t
    else:  # W = W' A: column pi(j) of W is column j of W' times scale_j
        w_new = torch.empty_like(w)
        w_new[:, pi] = w * scale
        b_new = b + w @ t
    with torch.no_grad():
        conv.weight.copy_(w_new.reshape(conv.weight.shape).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(b_new.to(conv.weight.dtype))
        else:
            conv.bias.copy_(b_new.to(conv.bias.dtype))


def _rebuild_as_ppconvmixer(model: ConvMixer, key: BlockKey) -> PPConvMixer:
    """A PPConvMixer with P holding ``model``'s weights (P = I if ``model`` has none)."""
    if isinstance(model, PPConvMixer) and isinstance(model.permutation, AdaptivePermutation):
        return copy.deepcopy(model)
    conv = model.stem[0]
    depthwise = model.blocks[0][0].fn[0]
    new = PPConvMixer(
        dim=conv.out_channels,
        depth=len(model.blocks),
        kernel_size=depthwise.kernel_size[0],
        patch_size=conv.kernel_size[0],
        in_chans=conv.in_channels,
        num_classes=model.num_classes,
        global_pool=model.global_pool.pool_type,
        drop_rate=model.head_drop.p,
        act_layer=type(model.stem[1]),
        img_size=key.image_size,
        permutation=True,
        permutation_init="identity",
    )
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or missing != ["stem.3.weight"]:
        raise ConversionError(f"cannot rebuild the model as PPConvMixer: {missing} {unexpected}")
    new.to(conv.weight.device, conv.weight.dtype)
    new.train(model.training)
    new.pretrained_cfg = copy.deepcopy(getattr(model, "pretrained_cfg", {}) or {})
    arch = new.pretrained_cfg.get("architecture")
    if isinstance(arch, str) and arch.startswith("convmixer_"):
        new.pretrained_cfg["architecture"] = "pp" + arch  # the registered twin with P
    return new


def _record(model: PPConvMixer, key: BlockKey | None, mean, std) -> None:
    cfg = dict(model.pretrained_cfg)
    for field in _SOURCE_WEIGHT_FIELDS:  # they name the source model's weights, not these
        cfg.pop(field, None)
    cfg.update(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        input_size=(model.in_chans, *model.img_size),
        fixed_input_size=True,
        crop_pct=1.0,
    )
    model.pretrained_cfg = model.default_cfg = cfg
    model.key_fingerprint = None if key is None else key.fingerprint


def encrypt_model(model: nn.Module, key: BlockKey, *, mean=None, std=None) -> PPConvMixer:
    """Turn a plain-domain ConvMixer into an encrypted-domain PPConvMixer, exactly.

    ``encrypt_model(m, key)(normalise(encrypt(x, key)))`` equals ``m(normalise(x))``: no
    accuracy is lost and no training is needed. Works for any timm ``ConvMixer`` (all
    ``convmixer_*``) and for ``PPConvMixer`` with or without P, whose patch size equals the
    key's block size. ``mean``/``std`` (the normalisation after encryption) default to the
    model's ``pretrained_cfg``. The input model is not modified.

    The returned model's ``pretrained_cfg`` records the mean/std and input size, and its
    ``key_fingerprint`` the key's fingerprint (never the key). Its weights do carry key
    information; see docs/security.md.

    Example:
        >>> import timm
        >>> plain = timm.create_model("convmixer_768_32").eval()
        >>> key = BlockKey.generate(224, 7, seed=0)
        >>> private = encrypt_model(plain, key)
    """
    _check_fit(model, key)
    if getattr(model, "key_fingerprint", None):
        raise ConversionError(
            f"the model already works on images encrypted with key {model.key_fingerprint}; "
            "use rekey_model(model, old_key, new_key) to move it to another key"
        )
    mean_t, std_t = _norm_stats(model, key.channels, mean, std)
    new = _rebuild_as_ppconvmixer(model, key)
    _map_stem(new.stem[0], key, mean_t, std_t, to_encrypted=True)
    perm = new.permutation
    with torch.no_grad():
        perm.weight.copy_(perm.weight[key.block_perm.to(perm.weight.device)])
    _record(new, key, mean_t, std_t)
    return new


def decrypt_model(model: PPConvMixer, key: BlockKey, *, mean=None, std=None) -> PPConvMixer:
    """Inverse of :func:`encrypt_model`: the plain-domain PPConvMixer equivalent to an
    encrypted-domain one (owner only; exact for any P, learned or not)."""
    _check_fit(model, key)
    if not isinstance(model, PPConvMixer) or not isinstance(model.permutation, AdaptivePermutation):
        raise ConversionError("decrypt_model needs a PPConvMixer with a trainable P")
    _check_fingerprint(model, key)
    mean_t, std_t = _norm_stats(model, key.channels, mean, std)
    new = copy.deepcopy(model)
    _map_stem(new.stem[0], key, mean_t, std_t, to_encrypted=False)
    perm = new.permutation
    inverse = torch.argsort(key.block_perm).to(perm.weight.device)
    with torch.no_grad():
        perm.weight.copy_(perm.weight[inverse])
    _record(new, None, mean_t, std_t)
    return new


def _check_fingerprint(model: nn.Module, key: BlockKey) -> None:
    recorded = getattr(model, "key_fingerprint", None)
    if recorded is not None and recorded != key.fingerprint:
        raise ConversionError(
            f"the model was made for key {recorded}, not for key {key.fingerprint}; "
            "pass the key the model was trained or converted with"
        )


def rekey_model(
    model: PPConvMixer, old_key: BlockKey, new_key: BlockKey, *, mean=None, std=None
) -> PPConvMixer:
    """Move an encrypted-domain model from ``old_key`` to ``new_key`` without training.

    Exact for any PPConvMixer with P, including a trained one whose P is not a permutation.
    Refuses a model whose recorded fingerprint is not ``old_key``'s. The input model is not
    modified.
    """
    if (old_key.image_size, old_key.block_size, old_key.channels) != (
        new_key.image_size,
        new_key.block_size,
        new_key.channels,
    ):
        raise ConversionError(
            f"the keys differ in geometry ({old_key!r} vs {new_key!r}); re-keying keeps the "
            "model's input size, block size and channels"
        )
    plain = decrypt_model(model, old_key, mean=mean, std=std)
    return encrypt_model(plain, new_key, mean=mean, std=std)
