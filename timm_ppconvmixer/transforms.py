"""Encryption as a timm / torchvision transform, and timm's ``create_transform`` around it.

Data flow on the owner's side (``docs/design.md`` section 2b, "Data flow"): image -> timm
augmentation in the plain domain -> resize/crop to the key's size -> encrypt -> normalise ->
model. Encryption must come after every spatial or photometric augmentation (they would break
the block grid or act on scrambled pixels) and before normalisation (the negative-positive
transformation is defined on pixel values, paper Sec. III-A step 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform as timm_create_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybePILToTensor, MaybeToTensor, ToNumpy
from torchvision import transforms as T

from .cipher import decrypt, encrypt, encrypt_hwc_to_chw, hwc_encryptor
from .images import (
    DEFAULT_INTERPOLATION,
    IMAGE_MODES,
    KeyImageMode,
    timm_crop_mode,
)
from .key import SchemeKey

__all__ = [
    "BlockScramble",
    "EncryptToTensor",
    "PlainRandomErasing",
    "create_transform",
]

_TO_TENSOR_STEPS = (MaybeToTensor, MaybePILToTensor, ToNumpy, T.ToTensor, T.PILToTensor)


class BlockScramble:
    """Encrypt (or, for the owner, decrypt) every image that passes through with ``key``.

    Works at either point where timm's pipelines hold a whole image of the final size:

    * after ``ToTensor`` (float in [0, 1], the default non-prefetcher pipeline), before
      ``Normalize``;
    * in prefetcher mode (``use_prefetcher=True``), where the loader receives uint8 ``(C, H, W)``
      tensors (``MaybePILToTensor``) or numpy arrays (``ToNumpy``, older timm) and normalises on
      the device.

    PIL images of the key's size and mode are accepted too. The repr shows the key's
    fingerprint, never the key.
    """

    def __init__(self, key: SchemeKey, decrypt: bool = False) -> None:
        self.key = key
        self.decrypt = decrypt

    def __call__(self, img: Any) -> Any:
        if self.decrypt:
            return decrypt(img, self.key, layout="CHW" if _is_array(img) else "auto")
        return encrypt(img, self.key, layout="CHW" if _is_array(img) else "auto")

    def __repr__(self) -> str:
        mode = ", decrypt=True" if self.decrypt else ""
        return f"{type(self).__name__}(key={self.key.fingerprint}{mode})"


def _is_array(img: Any) -> bool:
    # Arrays inside a timm pipeline come from ToNumpy, which always yields CHW.
    return type(img).__module__ == "numpy"


class EncryptToTensor:
    """``ToTensor`` (or, with ``scale=False``, timm's ``MaybePILToTensor``) fused with encryption.

    A PIL image of the key's size and mode is encrypted by one gather that also performs the
    HWC -> CHW layout change ``ToTensor`` has to make anyway, so encryption adds almost no cost
    to a pipeline. Output: float32 in [0, 1] (``scale=True``) or uint8 (``scale=False``, for
    timm's prefetcher loader). Tensors and arrays that arrive here are converted the ordinary
    way and then encrypted.
    """

    def __init__(self, key: SchemeKey, scale: bool = True) -> None:
        self.key = key
        self.scale = scale
        self._mode = IMAGE_MODES.get(key.channels)  # None: no PIL mode (the cipher's error)
        self._size = (key.image_size[1], key.image_size[0])  # PIL's (W, H)

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, Image.Image):
            if img.mode != self._mode:
                return BlockScramble(self.key)(img)  # raises the cipher's clear mode error
            if img.size == self._size:
                # np.array copies as ToTensor does: a writable array of the key's shape, for
                # the key's prebuilt gather (no checks or look-ups per image: in a loader
                # worker each Python step runs with cold caches)
                run = self.__dict__.get("_run") or self._prebuild()
                out = run(np.array(img))
            else:
                out = encrypt_hwc_to_chw(np.asarray(img), self.key)  # the size error
        else:
            out = encrypt((MaybeToTensor if self.scale else MaybePILToTensor)()(img), self.key)
        if self.scale and out.dtype == torch.uint8:
            return out.float().div_(255)  # what ToTensor does, on the encrypted bytes
        return out

    def _prebuild(self):
        self._run = hwc_encryptor(self.key)
        return self._run

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_run", None)  # a closure over tensors: rebuilt in each loader worker
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key.fingerprint}, scale={self.scale})"


class PlainRandomErasing:
    """timm's ``RandomErasing`` moved to the plain domain: it runs on the [0, 1] image before
    encryption and its random fill is clipped to [0, 1] (timm fills normalised values).

    With ``quantize=True`` the result is rounded to 8-bit levels k / 255, as if the erased image
    were saved: the schemes that shuffle 4-bit halves (LE, ELE) encrypt only 8-bit values.
    """

    def __init__(self, erasing: RandomErasing, quantize: bool = False) -> None:
        self.erasing = erasing
        self.quantize = quantize

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = self.erasing(img).clamp_(0.0, 1.0)
        return out.mul_(255).round_().div_(255) if self.quantize else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.erasing!r})"


def create_transform(
    key: SchemeKey,
    is_training: bool = False,
    resize: str = "shorter-center-crop",
    **timm_kwargs: Any,
) -> T.Compose:
    """``timm.data.create_transform`` with encryption (any scheme's key) in the right place.

    The image is brought to the key's size (``input_size`` is the key's ``(C, H, W)``), augmented
    in the plain domain, converted to a tensor, encrypted, then normalised (or, with
    ``use_prefetcher=True``, handed to the loader as an encrypted uint8 tensor to normalise).
    PIL inputs are first converted to the key's mode by the package's one colour policy
    (:func:`timm_ppconvmixer.images.to_key_mode`). Random erasing (``re_prob``) is moved before
    encryption (see :class:`PlainRandomErasing`).

    For training, timm's defaults hold (``interpolation`` bilinear unless given), so the
    pipeline is timm's plus encryption. For evaluation the resize and crop are exactly those of
    :func:`timm_ppconvmixer.images.prepare_image` (``crop_pct`` 1.0, ``interpolation``
    bicubic, ``resize`` ``shorter-center-crop`` or ``stretch``), so an image encrypted offline
    (``ppconvmixer encrypt``, ``encrypt_dataset``) and the same image served through this
    transform give the same encrypted pixels.

    All other keyword arguments are timm's (``hflip``, ``color_jitter``, ``auto_augment``,
    ``interpolation``, ``mean``, ``std``, ``use_prefetcher``...). ``input_size`` may be given but
    must equal the key's; ``separate`` is not supported.

    Example:
        >>> from timm_ppconvmixer import BlockKey
        >>> key = BlockKey.generate(224, 16, seed=0)
        >>> tf = create_transform(key, is_training=False)
    """
    expected = (key.channels, *key.image_size)
    given = timm_kwargs.pop("input_size", expected)
    if isinstance(given, int):
        given = (key.channels, given, given)
    if tuple(given) != expected:
        raise ValueError(
            f"input_size {tuple(given)} differs from the key's (C, H, W) {expected}; the "
            "transform must produce images of exactly the key's size"
        )
    if timm_kwargs.pop("separate", False):
        raise ValueError("separate=True is not supported: encryption needs the whole pipeline")
    if not is_training:
        # offline encryption's resize (prepare_image); training keeps timm's own default
        # (bilinear), so a pipeline with encryption differs from timm's only by the encryption
        timm_kwargs.setdefault("interpolation", DEFAULT_INTERPOLATION)
        timm_kwargs.setdefault("crop_pct", 1.0)
        # the crop mode comes from the table prepare_image uses (raises on a bad policy)
        timm_kwargs.setdefault("crop_mode", timm_crop_mode(resize))
    if key.channels == 1:
        timm_kwargs.setdefault("mean", (0.5,))
        timm_kwargs.setdefault("std", (0.5,))
    pipeline = timm_create_transform(input_size=expected, is_training=is_training, **timm_kwargs)
    steps = list(pipeline.transforms)
    erasing = [s for s in steps if isinstance(s, RandomErasing)]
    steps = [s for s in steps if not isinstance(s, RandomErasing)]
    at = next((i for i, s in enumerate(steps) if isinstance(s, _TO_TENSOR_STEPS)), None)
    if at is None:
        raise ValueError("timm's pipeline has no to-tensor step to encrypt after")
    if erasing:  # erasing needs the plain tensor: convert, erase, then encrypt
        quantize = key.UNIT_BITS == 4
        erase = [PlainRandomErasing(e, quantize=quantize) for e in erasing]
        steps[at + 1 : at + 1] = [*erase, BlockScramble(key)]
    elif isinstance(steps[at], (MaybeToTensor, MaybePILToTensor)):
        steps[at] = EncryptToTensor(key, scale=isinstance(steps[at], MaybeToTensor))
    else:
        steps.insert(at + 1, BlockScramble(key))
    head = [KeyImageMode(key.channels)] if key.channels in (1, 3) else []
    return T.Compose(head + steps)
