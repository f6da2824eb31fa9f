"""Block-wise encryption and decryption of images (paper Sec. III-A, steps 1-5).

The three steps of the scheme (block permutation K1, pixel shuffling K2, negative-positive
transformation K3) compose into one gather and one flip over the whole image: for every
position of the encrypted image, a precomputed flat index says which plain position it comes
from, and a precomputed mask says whether the value is flipped (``v -> 255 - v`` for uint8,
``v -> 1 - v`` for floats in [0, 1]). Both are built once per key, direction and device and
applied to a whole batch at memory speed; there is no loop over blocks or images.

Inputs: torch tensors ``(C, H, W)`` or ``(B, C, H, W)``, uint8 or floating in [0, 1], on any
device (dtype and device are kept); numpy uint8 arrays; PIL images. See :func:`encrypt`.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from .key import BlockKey

__all__ = ["encrypt", "decrypt", "gather_plan", "CipherInputError"]

Layout = Literal["auto", "HWC", "CHW"]
ImageLike = TypeVar("ImageLike", torch.Tensor, np.ndarray, Image.Image)

_PIL_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
_PLAN_CACHE: dict[tuple[str, bool, str], tuple[torch.Tensor, torch.Tensor]] = {}
_PLAN_CACHE_SIZE = 32


class CipherInputError(ValueError):
    """The image does not fit the key (size, channels), or its dtype or values are unsupported."""


def _encryption_plan(key: BlockKey) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat gather index and flip mask over a (C, H, W) image, for encryption.

    Encrypted pixel (c, y, x) lies in block i = (y // M) * (W / M) + x // M at in-block vector
    position j = c*M*M + (y % M)*M + x % M (design.md, section 1). It comes from plain block
    ``block_perm[i]`` at in-block position ``pixel_perm[j]``, and is flipped where ``np_mask[j]``.
    """
    c_, m = key.channels, key.block_size
    h, w = key.image_size
    _, gw = key.grid_size
    c = torch.arange(c_).view(c_, 1, 1)
    y = torch.arange(h).view(1, h, 1)
    x = torch.arange(w).view(1, 1, w)
    block = (y // m) * gw + (x // m)  # (1, H, W) encrypted block index
    pos = c * m * m + (y % m) * m + (x % m)  # (C, H, W) encrypted in-block position
    src_block = key.block_perm[block]
    src_pos = key.pixel_perm[pos]
    src_c = src_pos // (m * m)
    src_y = (src_block // gw) * m + (src_pos % (m * m)) // m
    src_x = (src_block % gw) * m + src_pos % m
    index = (src_c * h + src_y) * w + src_x
    return index.reshape(-1), key.np_mask[pos].reshape(-1)


def gather_plan(key: BlockKey, decrypt: bool = False, device: torch.device | str = "cpu"):
    """``(index, mask)`` such that ``out = flip(x.flatten(-3)[..., index], mask)``.

    For decryption the plan is the inverse gather, with the mask moved to plain positions.
    Cached per key fingerprint, direction and device.
    """
    device = torch.device(device)
    cache_key = (key.fingerprint, decrypt, str(device))
    plan = _PLAN_CACHE.get(cache_key)
    if plan is None:
        index, mask = _encryption_plan(key)
        if decrypt:
            inverse = torch.empty_like(index)
            inverse[index] = torch.arange(index.numel())
            index, mask = inverse, mask[inverse]
        plan = (index.to(device), mask.to(device))
        if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
            _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)))
        _PLAN_CACHE[cache_key] = plan
    return plan


def _check_tensor(x: torch.Tensor, key: BlockKey) -> None:
    expected = (key.channels, *key.image_size)
    if x.dim() not in (3, 4) or tuple(x.shape[-3:]) != expected:
        raise CipherInputError(
            f"expected an image tensor (C, H, W) or (B, C, H, W) with (C, H, W) = {expected} "
            f"for key {key.fingerprint}, got shape {tuple(x.shape)}; resize/crop to the key's "
            "size and convert to its number of channels first"
        )
    if x.dtype == torch.uint8:
        return
    if not x.is_floating_point():
        raise CipherInputError(
            f"unsupported dtype {x.dtype}: use uint8 in [0, 255] or a floating dtype in [0, 1]"
        )
    if x.numel() and (bool((x < 0).any()) or bool((x > 1).any()) or bool(x.isnan().any())):
        raise CipherInputError(
            f"floating images must lie in [0, 1] (got values in [{x.min().item():.4g}, "
            f"{x.max().item():.4g}]); encrypt before normalising, e.g. right after ToTensor"
        )


def _apply_tensor(x: torch.Tensor, key: BlockKey, decrypt: bool) -> torch.Tensor:
    _check_tensor(x, key)
    index, mask = gather_plan(key, decrypt, x.device)
    flat = x.reshape(*x.shape[:-3], -1)
    out = flat.index_select(-1, index)
    if x.dtype == torch.uint8:
        # 255 - v == v XOR 0xFF for uint8: one vectorised XOR with a 0/255 byte mask.
        out.bitwise_xor_(mask.to(torch.uint8) * 255)
    else:
        out = torch.where(mask, 1 - out, out)
    return out.view(x.shape)


def _numpy_layout(a: np.ndarray, key: BlockKey, layout: Layout) -> str:
    c, (h, w) = key.channels, key.image_size
    if a.ndim == 2 and c == 1 and a.shape == (h, w):
        return "HW"
    if layout != "auto":
        return layout
    hwc, chw = a.shape[-3:] == (h, w, c), a.shape[-3:] == (c, h, w)
    if hwc and chw:
        raise CipherInputError(
            f"array shape {a.shape} fits both HWC and CHW for this key; pass layout='HWC' or 'CHW'"
        )
    if not (hwc or chw) or a.ndim not in (3, 4):
        raise CipherInputError(
            f"expected a uint8 array (H, W, C) = {(h, w, c)} or (C, H, W) = {(c, h, w)}, "
            f"optionally with a leading batch axis, got shape {a.shape}"
        )
    return "HWC" if hwc else "CHW"


def _apply_numpy(a: np.ndarray, key: BlockKey, decrypt: bool, layout: Layout) -> np.ndarray:
    if a.dtype != np.uint8:
        raise CipherInputError(f"numpy images must be uint8, got {a.dtype}")
    found = _numpy_layout(a, key, layout)
    a = np.ascontiguousarray(a)
    t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if found == "HW":
        t = t.unsqueeze(0)
    elif found == "HWC":
        t = t.movedim(-1, -3)
    out = _apply_tensor(t.contiguous(), key, decrypt)
    if found == "HW":
        out = out.squeeze(0)
    elif found == "HWC":
        out = out.movedim(-3, -1)
    return out.contiguous().numpy()


def _apply_pil(img: Image.Image, key: BlockKey, decrypt: bool) -> Image.Image:
    mode = _PIL_MODE_FOR_CHANNELS.get(key.channels)
    if img.mode != mode:
        raise CipherInputError(
            f"PIL image mode {img.mode!r} does not match the key's {key.channels} channel(s); "
            f"convert it explicitly first, e.g. image.convert({mode!r}) (no silent conversion: "
            "dropping alpha or a palette changes the data)"
        )
    if img.size != (key.image_size[1], key.image_size[0]):
        raise CipherInputError(
            f"PIL image is {img.size[0]}x{img.size[1]} (WxH) but the key is for "
            f"{key.image_size[1]}x{key.image_size[0]}; resize/crop it first"
        )
    return Image.fromarray(_apply_numpy(np.array(img), key, decrypt, "HWC"))


def _apply(x, key: BlockKey, decrypt: bool, layout: Layout):
    if isinstance(x, torch.Tensor):
        return _apply_tensor(x, key, decrypt)
    if isinstance(x, np.ndarray):
        return _apply_numpy(x, key, decrypt, layout)
    if isinstance(x, Image.Image):
        return _apply_pil(x, key, decrypt)
    raise CipherInputError(
        f"cannot encrypt a {type(x).__name__}: pass a torch.Tensor, a numpy uint8 array or a "
        "PIL image"
    )


def encrypt(x: ImageLike, key: BlockKey, *, layout: Layout = "auto") -> ImageLike:
    """Encrypt an image or a batch with ``key`` (paper Sec. III-A).

    Args:
        x: a torch tensor ``(C, H, W)`` / ``(B, C, H, W)`` (uint8, or floating in [0, 1]; dtype
            and device are kept), a numpy uint8 array, or a PIL image whose mode matches the
            key's channels (``"L"`` for 1, ``"RGB"`` for 3; other modes are refused, convert
            explicitly).
        key: the secret key; ``(H, W)`` and ``C`` must match the image.
        layout: for numpy arrays only. ``"HWC"`` (PIL / OpenCV style, optionally batched
            ``(B, H, W, C)``) or ``"CHW"`` (what timm's ``ToNumpy`` hands the prefetcher loader,
            optionally ``(B, C, H, W)``). ``"auto"`` picks the one whose shape matches the key's
            geometry and refuses when both match. A 2-D ``(H, W)`` array is a 1-channel image.

    Returns:
        The encrypted image, of the same type, shape, dtype (and device) as ``x``.

    Example:
        >>> key = BlockKey.generate(32, 4, seed=0)
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> torch.equal(decrypt(encrypt(x, key), key), x)
        True
    """
    return _apply(x, key, False, layout)


def decrypt(x: ImageLike, key: BlockKey, *, layout: Layout = "auto") -> ImageLike:
    """Invert :func:`encrypt` (same inputs and rules). Exact for uint8."""
    return _apply(x, key, True, layout)
