"""The one way to prepare an image for a key: colour mode, resize and crop.

Every path that turns an ordinary image into one the cipher can encrypt goes through here:
``ppconvmixer encrypt-image``, folder encryption,
:func:`~timm_ppconvmixer.data.datasets.encrypt_dataset`,
the demo and the evaluation pipeline of :func:`~timm_ppconvmixer.transforms.create_transform`.
So an image encrypted offline and the same image served through timm's pipeline give the same
encrypted pixels (``docs/design.md`` section 2: the key fixes the image size, H and W multiples
of the block size M).

The resize and crop are timm's own evaluation steps (``transforms_imagenet_eval`` with
``crop_pct=1.0``), not a copy of them: ``shorter-center-crop`` is timm's ``center`` crop mode
(resize the shorter side, keep the aspect ratio, crop the centre), ``stretch`` is its
``squash`` mode (resize to exactly H x W).

Colour policy (:func:`to_key_mode`), the same everywhere:

* transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is composited
  onto white, as a viewer shows it on a white page; the alpha channel itself is not encrypted;
* palette images are expanded to their colours;
* 16-bit greyscale (``I;16``, ``I``) keeps its 8 most significant bits (PIL's own ``convert``
  would clip every value above 255 to white);
* then PIL's ``convert`` to ``L`` (ITU-R 601-2 luma) or ``RGB``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_eval
from torchvision import transforms as T

__all__ = [
    "DEFAULT_INTERPOLATION",
    "IMAGE_MODES",
    "RESIZE_POLICIES",
    "ImagePolicyError",
    "KeyImageMode",
    "mode_for_channels",
    "prepare_image",
    "resize_steps",
    "timm_crop_mode",
    "to_key_mode",
]

IMAGE_MODES = {1: "L", 3: "RGB"}
"""PIL mode of the images a key with this many channels encrypts."""

RESIZE_POLICIES = ("shorter-center-crop", "stretch", "exact")
"""How an image is brought to the key's size: ``shorter-center-crop`` resizes the shorter side
and centre-crops, ``stretch`` resizes to exactly H x W (aspect ratio not kept), ``exact``
refuses an image of another size."""

DEFAULT_INTERPOLATION = "bicubic"
"""Resampling filter of every path (timm's ConvMixer configs use bicubic too)."""

_TIMM_CROP_MODE = {"shorter-center-crop": "center", "stretch": "squash"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImagePolicyError(ValueError):
    """An image cannot be brought to the key's mode or size; the message says what to do."""


def mode_for_channels(channels: int) -> str:
    """The PIL mode for ``channels`` (``"L"`` or ``"RGB"``); other counts have none."""
    try:
        return IMAGE_MODES[channels]
    except KeyError:
        raise ImagePolicyError(
            f"a key with {channels} channels has no PIL image mode (only 1 -> 'L' and 3 -> "
            "'RGB'); pass tensors or arrays of shape (C, H, W) instead of PIL images"
        ) from None


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)


def _sixteen_to_eight_bits(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.int64)
    if values.min() < 0 or values.max() > 0xFFFF:
        raise ImagePolicyError(
            f"a mode {img.mode!r} image with values outside 0..65535 is not a 16-bit image; "
            "scale it to 8 bits (0..255) yourself"
        )
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def to_key_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert ``img`` to the mode of a key with ``channels`` channels (policy above).

    Example:
        >>> to_key_mode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), 3).getpixel((0, 0))
        (255, 255, 255)
    """
    mode = mode_for_channels(channels)
    if img.mode == mode:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        img = _flatten_alpha(img)
    elif img.mode in _SIXTEEN_BIT_MODES:
        img = _sixteen_to_eight_bits(img)
    elif img.mode == "F":
        raise ImagePolicyError(
            "a floating-point ('F') image has no fixed value range; scale it to 0..255 and "
            "convert it to 'L' or 'RGB' first"
        )
    return img if img.mode == mode else img.convert(mode)


class KeyImageMode:
    """Transform: :func:`to_key_mode` for PIL images; tensors and arrays pass unchanged."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, img: Any) -> Any:
        return to_key_mode(img, self.channels) if isinstance(img, Image.Image) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


class _RequireSize:
    """The ``exact`` policy: refuse an image that is not already H x W."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if img.size != (w, h):
            raise ImagePolicyError(
                f"image is {img.width}x{img.height}, the key needs {w}x{h} (resize policy "
                "'exact'); use 'shorter-center-crop' or 'stretch', or resize it yourself"
            )
        return img


def timm_crop_mode(resize: str) -> str:
    """timm's ``crop_mode`` for a resize policy (``exact`` has none: it never resizes)."""
    if resize not in _TIMM_CROP_MODE:
        choices = ", ".join(_TIMM_CROP_MODE)
        raise ImagePolicyError(f"resize must be one of {choices} here, got {resize!r}")
    return _TIMM_CROP_MODE[resize]


def resize_steps(
    image_size: tuple[int, int],
    resize: str = "shorter-center-crop",
    interpolation: str = DEFAULT_INTERPOLATION,
    crop_pct: float = 1.0,
) -> list:
    """timm's evaluation resize and crop to ``image_size`` (H, W) for the ``resize`` policy.

    These are the steps ``timm.data.create_transform(is_training=False)`` puts before its
    to-tensor step, taken from timm itself so both paths give the same pixels.
    """
    if resize == "exact":
        return [_RequireSize(tuple(image_size))]
    pipeline = transforms_imagenet_eval(
        img_size=tuple(image_size),
        crop_pct=crop_pct,
        crop_mode=timm_crop_mode(resize),
        interpolation=interpolation,
        use_prefetcher=True,  # no Normalize; the to-tensor step ends the list
    )
    steps = list(pipeline.transforms)
    return steps[: next(i for i, s in enumerate(steps) if not _is_resize_or_crop(s))]


def _is_resize_or_crop(step: Any) -> bool:
    from timm.data.transforms import ResizeKeepRatio

    return isinstance(step, (T.Resize, T.CenterCrop, ResizeKeepRatio))


def prepare_image(
    img: Image.Image,
    key,
    resize: str = "shorter-center-crop",
    interpolation: str = DEFAULT_INTERPOLATION,
) -> Image.Image:
    """Bring a PIL image to ``key``'s mode and size, ready for :func:`~timm_ppconvmixer.encrypt`.

    Args:
        img: any PIL image (modes as in the colour policy above).
        key: a :class:`~timm_ppconvmixer.BlockKey` (or anything with ``channels`` and
            ``image_size``).
        resize: one of :data:`RESIZE_POLICIES`.
        interpolation: timm's name of the resampling filter.

    Example:
        >>> from timm_ppconvmixer import BlockKey
        >>> key = BlockKey.generate(224, 16, seed=0)
        >>> prepare_image(Image.new("RGBA", (60, 45)), key).size
        (224, 224)
    """
    img = to_key_mode(img, key.channels)
    for step in resize_steps(key.image_size, resize, interpolation):
        img = step(img)
    return img
