"""Compiling a block scheme's steps into one gather index and one flip mask over units.

Example:
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> index, flip = generate_key("le", image_size=8, block_size=4, seed=0).unit_plan()
    >>> index.shape, flip.dtype  # 2 units (4-bit halves) per byte of a (3, 8, 8) image
    (torch.Size([384]), torch.bool)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .base import SchemeKey

__all__ = ["block_plan"]


def block_plan(
    key: SchemeKey,
    src_block: torch.Tensor,
    src_pos: torch.Tensor,
    flip: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compile a block scheme into one flat gather index and one flip mask over units.

    A unit is a byte (``UNIT_BITS == 8``) or a 4-bit half (``UNIT_BITS == 4``: byte ``p``
    of the flat (C, H, W) image is units ``2p`` (upper half) and ``2p + 1`` (lower half)).
    Encrypted unit at in-block position ``j`` of encrypted block ``i`` (blocks row-major over
    the grid; a block's units in (C, M, M[, half]) order) holds the unit at in-block position
    ``src_pos[i, j]`` of plain block ``src_block[i]``, inverted where ``flip[i, j]``.
    ``src_pos`` and ``flip`` may be expanded views, (n, D) with D the units per block.
    """
    c_, m = key.channels, key.block_size
    h, w = key.image_size
    _, gw = key.grid_size
    u_ = 8 // key.UNIT_BITS
    c = torch.arange(c_).view(c_, 1, 1, 1)
    y = torch.arange(h).view(1, h, 1, 1)
    x = torch.arange(w).view(1, 1, w, 1)
    u = torch.arange(u_).view(1, 1, 1, u_)
    pos = (c * m * m + (y % m) * m + x % m) * u_ + u  # (C, H, W, U) encrypted in-block unit
    block = ((y // m) * gw + x // m).expand_as(pos)  # encrypted block index
    src_b = src_block[block]
    src_u = src_pos[block, pos]
    src_v, src_half = src_u // u_, src_u % u_
    src_c = src_v // (m * m)
    src_y = (src_b // gw) * m + (src_v % (m * m)) // m
    src_x = (src_b % gw) * m + src_v % m
    index = ((src_c * h + src_y) * w + src_x) * u_ + src_half
    return index.reshape(-1), flip[block, pos].reshape(-1)
