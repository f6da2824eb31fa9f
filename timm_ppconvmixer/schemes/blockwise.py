"""The paper's scheme ("blockwise", the default): block scrambling, pixel shuffling and
negative-positive transformation with one key for every block (Qi, MaungMaung, Kiya 2022,
Sec. III-A, steps 1-5).

Steps, for an 8-bit image of C channels, H x W, blocks of M x M (H, W multiples of M):

1. split it into n = (H/M)(W/M) blocks, numbered row-major over the block grid;
2. ``block_perm`` (K1, shape (n,)): encrypted block ``i`` holds plain block ``block_perm[i]``;
3. ``pixel_perm`` (K2, shape (C*M*M,), shared by all blocks): each block is flattened in
   (C, M, M) order and position ``j`` of the encrypted vector holds position ``pixel_perm[j]``
   of the plain vector;
4. ``np_mask`` (K3, shape (C*M*M,), shared by all blocks): where set, the value ``v`` at that
   position of the shuffled vector becomes ``255 - v``;
5. put the blocks back together.

Faithfulness: as in the paper. A key file without a ``scheme`` field is a file of this scheme
(``"ppconvmixer-blockwise"``, version 1) and loads with the same fingerprint.

Example:
    >>> key = BlockKey.generate(image_size=224, block_size=16, seed=0)
    >>> key.num_blocks, key.block_perm.shape, key.pixel_perm.shape
    (196, torch.Size([196]), torch.Size([768]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import BLOCKWISE_FILE_SCHEME, SchemeKey
from .fields import Field
from .plan import block_plan

__all__ = ["SCHEME", "SCHEME_VERSION", "BlockKey"]

SCHEME = BLOCKWISE_FILE_SCHEME
SCHEME_VERSION = 1


class BlockKey(SchemeKey):
    """Secret key for block-wise encryption with block permutation, pixel shuffling and
    negative-positive transformation (paper Sec. III-A).

    Example:
        >>> key = BlockKey.generate(image_size=32, block_size=4, seed=0)
        >>> key.scheme, key.num_blocks
        ('blockwise', 64)
    """

    NAME = "blockwise"
    FILE_SCHEME = SCHEME
    VERSION = SCHEME_VERSION
    SUMMARY = (
        "Each image is split into {m}x{m} blocks; the blocks are permuted, the pixels inside "
        "every block are shuffled and some are inverted (v -> 255 - v)."
    )

    def __init__(
        self,
        image_size: int | Sequence[int],
        block_size: int,
        channels: int,
        block_perm: Sequence[int] | np.ndarray | torch.Tensor,
        pixel_perm: Sequence[int] | np.ndarray | torch.Tensor,
        np_mask: Sequence[int] | np.ndarray | torch.Tensor,
        salt: bytes | None = None,
    ) -> None:
        super().__init__(
            image_size,
            block_size,
            channels,
            salt=salt,
            block_perm=block_perm,
            pixel_perm=pixel_perm,
            np_mask=np_mask,
        )

    @classmethod
    def fields(cls, size: tuple[int, int], block_size: int, channels: int) -> tuple[Field, ...]:
        n = (size[0] // block_size) * (size[1] // block_size)
        d = channels * block_size * block_size
        return (
            Field("block_perm", "perm", (n,), "block_perm (K1)"),
            Field("pixel_perm", "perm", (d,), "pixel_perm (K2)"),
            Field("np_mask", "bits", (d,), "np_mask (K3)"),
        )

    @property
    def block_perm(self) -> torch.Tensor:
        """K1, int64 (n,): encrypted block i holds plain block ``block_perm[i]``."""
        return self.secret("block_perm")

    @property
    def pixel_perm(self) -> torch.Tensor:
        """K2, int64 (C*M*M,): encrypted position j holds plain position ``pixel_perm[j]``."""
        return self.secret("pixel_perm")

    @property
    def np_mask(self) -> torch.Tensor:
        """K3, bool (C*M*M,): positions whose value v becomes 255 - v."""
        return self.secret("np_mask")

    def unit_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-4 as one gather and one flip (see :func:`~.plan.block_plan`)."""
        n, d = self.num_blocks, self._secrets["pixel_perm"].numel()
        return block_plan(
            self,
            self._secrets["block_perm"],
            self._secrets["pixel_perm"].expand(n, d),
            self._secrets["np_mask"].expand(n, d),
        )
