"""PE, pixel-wise encryption (the paper's [18]: W. Sirichotedumrong, Y. Kinoshita, H. Kiya,
"Pixel-based image encryption without key management for privacy-preserving deep neural
networks", IEEE Access 7, 2019): per pixel position a colour-channel shuffle and a
negative-positive inversion per channel.

Steps, for an 8-bit image of C channels, H x W (pixel-wise: the "blocks" are single pixels,
``block_size`` is 1), pixels ``p`` numbered row-major:

1. ``channel_perm`` (shape (H*W, C)): channel ``c`` of encrypted pixel ``p`` holds channel
   ``channel_perm[p][c]`` of plain pixel ``p`` (with one channel: the identity, so grey images
   get step 2 only);
2. ``np_mask`` (shape (H*W, C)): where ``np_mask[p][c]`` is set, the shuffled value ``v``
   becomes ``255 - v`` (``1 - v`` for floats in [0, 1]).

Two forms:

* ``pe`` (:class:`PEKey`): one key for every image, stored in a key file like every scheme's.
* ``pe-per-image`` (:class:`PerImagePE`): the form of [18] without key management: a fresh
  key is drawn from the CSPRNG for every image at encryption time and never stored, so the
  images cannot be decrypted, by anyone, by design (decryption refuses). There is no key file;
  its public "fingerprint" names only the form and the geometry.

Faithfulness note: the order of the two steps (shuffle, then invert the shuffled values) is a
choice: inverting first with the mask moved to plain channels is the same map, so every key
of the other order has an equal key here.

Example:
    >>> key = PEKey.generate(image_size=32, block_size=1, seed=0)
    >>> key.channel_perm.shape, key.num_blocks
    (torch.Size([1024, 3]), 1024)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np
import torch

from .base import SchemeKey
from .fields import Field, InvalidKeyError, as_size, check_geometry
from .plan import block_plan
from .randomness import uniform_below

__all__ = ["PEKey", "PerImagePE"]

SUMMARY = "PE: every pixel's colour channels are reordered and some values inverted (v -> 255 - v)."


class PEKey(SchemeKey):
    """Secret key of PE: a channel order and an inversion bit per channel for every pixel
    position, shared by every image."""

    NAME = "pe"
    FILE_SCHEME = "ppconvmixer-pe"
    SUMMARY = SUMMARY

    @classmethod
    def fields(cls, size: tuple[int, int], block_size: int, channels: int) -> tuple[Field, ...]:
        if block_size != 1:
            raise InvalidKeyError(f"pe is pixel-wise: block_size must be 1, got {block_size}")
        n = size[0] * size[1]
        return (
            Field("channel_perm", "perm", (n, channels), "channel_perm (PE)"),
            Field("np_mask", "bits", (n, channels), "np_mask (PE)"),
        )

    @property
    def channel_perm(self) -> torch.Tensor:
        """int64 (H*W, C): channel c of encrypted pixel p holds channel ``channel_perm[p][c]``."""
        return self.secret("channel_perm")

    @property
    def np_mask(self) -> torch.Tensor:
        """bool (H*W, C): (pixel, channel) values v that become 255 - v after the shuffle."""
        return self.secret("np_mask")

    def unit_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._secrets
        return block_plan(self, torch.arange(self.num_blocks), s["channel_perm"], s["np_mask"])


class PerImagePE:
    """PE with a fresh key for every image (``pe-per-image``): encrypt only.

    Not a key: it holds no secret and has no file; :func:`timm_ppconvmixer.encrypt` draws a
    new PE key for every image it encrypts, from the OS CSPRNG, and forgets it.

    Example:
        >>> from timm_ppconvmixer import encrypt
        >>> pe = PerImagePE(image_size=8, channels=1)
        >>> x = torch.full((1, 8, 8), 7, dtype=torch.uint8)
        >>> y = encrypt(x, pe)  # every value kept or inverted, at random
        >>> bool(((y == 7) | (y == 248)).all()), torch.equal(y, encrypt(x, pe))
        (True, False)
    """

    NAME = "pe-per-image"
    FILE_SCHEME = "ppconvmixer-pe-per-image"
    VERSION = 1
    UNIT_BITS = 8
    SUMMARY = SUMMARY
    per_image = True
    block_size = 1

    def __init__(self, image_size: int | Sequence[int], channels: int = 3) -> None:
        self._image_size = as_size(image_size)
        self._channels = int(channels)
        check_geometry(self._image_size, 1, self._channels)
        self._table = torch.tensor(list(itertools.permutations(range(self._channels))))

    scheme = property(lambda self: self.NAME)
    image_size = property(lambda self: self._image_size)
    channels = property(lambda self: self._channels)
    grid_size = property(lambda self: self._image_size)
    num_blocks = property(lambda self: self._image_size[0] * self._image_size[1])

    @property
    def fingerprint(self) -> str:
        """A public name of the form and geometry (there is no key to fingerprint)."""
        h, w = self._image_size
        return f"{self.NAME}-{h}x{w}-c{self._channels}"

    def describe(self) -> dict:
        """Public facts, as a key's :meth:`~.base.SchemeKey.describe` gives them."""
        return {
            "scheme": self.FILE_SCHEME,
            "scheme_version": self.VERSION,
            "image_size": list(self._image_size),
            "block_size": 1,
            "channels": self._channels,
            "num_blocks": self.num_blocks,
            "fingerprint": self.fingerprint,
        }

    def fresh_plans(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` independent encryptions: gather index and flip mask, each (count, C*H*W).

        Drawn at once from the CSPRNG (channel orders as uniform codes into the C! orders,
        bits from random bytes), so a batch costs no python loop over images.
        """
        c, hw = self._channels, self.num_blocks
        codes = torch.from_numpy(uniform_below(len(self._table), count * hw))
        perms = self._table[codes].view(count, hw, c).transpose(1, 2)  # (count, C, HW)
        index = perms * hw + torch.arange(hw)
        bits = np.unpackbits(np.frombuffer(os.urandom((count * c * hw + 7) // 8), np.uint8))
        mask = torch.from_numpy(bits[: count * c * hw].astype(bool)).view(count, c * hw)
        return index.reshape(count, c * hw), mask

    def __repr__(self) -> str:
        h, w = self._image_size
        return f"PerImagePE(image_size=({h}, {w}), channels={self._channels})"
