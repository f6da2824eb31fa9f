"""EtC, the block scrambling of the colour Encryption-then-Compression system of K. Kurihara,
M. Kikuchi, S. Imaizumi, S. Shiota, H. Kiya ("An encryption-then-compression system for
JPEG/Motion JPEG standard", IEICE Trans. Fundamentals E98-A(11), 2015), as Madono et al.'s
public code ([15], ``etc_encryption.py``) implements it: block scrambling, then per block a
rotation, a flip, a negative-positive inversion and a colour-channel shuffle.

The paper's Table I cites its EtC row as [15], [21]. [15]'s public code, which this module
follows, is Kurihara et al.'s colour EtC; [21] (T. Chuman, W. Sirichotedumrong, H. Kiya,
IEEE TIFS 14(6), 2019) is the grayscale-based EtC, in which the colour components are put
side by side as one grey image before the block steps and no colour channels are shuffled.
That scheme is not implemented here.

Steps, for an 8-bit image of C channels, H x W, blocks of M x M, n = (H/M)(W/M) blocks (every
key below is shared by every image):

1. ``block_perm`` (shape (n,)): encrypted block ``i`` holds plain block ``block_perm[i]``;
2. ``rotation[i]`` in 0..3: the block at position ``i`` is rotated by ``90 * rotation[i]``
   degrees counter-clockwise (``numpy.rot90`` over its (M, M) axes);
3. ``flip[i]`` in 0..2: then not flipped (0), mirrored left-right (1) or upside-down (2);
4. ``np_mask[i]``: where set, every value ``v`` of the block becomes ``255 - v``;
5. ``channel_perm[i]`` (shape (n, C)): channel ``c`` of the encrypted block holds channel
   ``channel_perm[i][c]`` of the block. With one channel this step is the identity (the only
   permutation of one channel), so grey images get steps 1-4 only.

Every step moves or inverts whole values: EtC is lossless and exactly invertible, and
compiles to one gather and one XOR (0xFF) like the other byte schemes; floats in [0, 1] are
inverted as ``1 - v``.

Orientation: the 4 x 3 = 12 (rotation, flip) codes name only the 8 maps of the square's
dihedral group: flip 0 gives the 4 rotations, flips 1 and 2 give the same 4 reflections (an
upside-down flip is a left-right flip turned by 180 degrees). Both codes are drawn uniformly
and independently, so each rotation has probability 1/12 and each reflection 1/6: 2.92 bits
per block (not log2 8 = 3, nor log2 12 = 3.58). With the inversion bit and the channel order
a block's transform carries 2.92 + 1 + log2(C!) bits (3.92 grey, 6.50 colour; log2 16 = 4 and
log2 96 = 6.58 if its 16 or 96 transforms were equally likely). Madono et al.'s code draws
the same way (``random.randint(0, 3)`` and ``random.randint(0, 2)``), with the same 2.92 bits.
``tests/test_schemes_known_answer.py`` counts the maps and their frequencies.

Known answers: under the equivalent key this module reproduces the output of Madono et al.'s
``etc_encryption.py`` exactly (``tests/test_schemes_known_answer.py``; their codes belong to
plain blocks and act before the blocks move, ours to encrypted positions and act after, which
re-indexes the same codes: ours at ``i`` are theirs at ``block_perm[i]``).

Faithfulness notes:

* the ``channel_change`` of Madono et al.'s code (``MADONOKOUKI/Block-wise-Scrambled-Image-
  Recognition``) assigns channels in place, so 5 of its 6 channel codes copy one channel over
  another and its EtC has no inverse (the EtC row of their table was made that way). Here
  ``channel_perm`` is a true permutation: channel code ``p`` of theirs, read from a copy of the
  block, is the channel order it writes;
* their inversion mask has exactly half the blocks set (a balanced list, shuffled); here each
  block's bit is drawn independently.

Example:
    >>> key = EtCKey.generate(image_size=32, block_size=4, seed=0)
    >>> key.rotation.shape, key.channel_perm.shape
    (torch.Size([64]), torch.Size([64, 3]))
"""

from __future__ import annotations

import torch

from .base import SchemeKey
from .fields import Field
from .plan import block_plan

__all__ = ["EtCKey"]


def _spatial_maps(m: int) -> torch.Tensor:
    """(4, 3, M*M): in-block source pixel of each position, per rotation and flip code."""
    grid = torch.arange(m * m).view(m, m)
    maps = []
    for k in range(4):
        turned = torch.rot90(grid, k, dims=(0, 1))
        maps.append([turned, turned.flip(1), turned.flip(0)])  # none, left-right, upside-down
    return torch.stack([torch.stack(row) for row in maps]).view(4, 3, m * m)


class EtCKey(SchemeKey):
    """Secret key of EtC block scrambling: a block order and, per block position, a rotation,
    a flip, an inversion bit and a channel order, shared by every image."""

    NAME = "etc"
    FILE_SCHEME = "ppconvmixer-etc"
    SUMMARY = (
        "EtC (Kurihara et al. 2015): each image is split into {m}x{m} blocks; the "
        "blocks are permuted, then each block position is rotated, flipped, possibly inverted "
        "(v -> 255 - v) and its colour channels reordered, with keys shared by every image."
    )

    @classmethod
    def fields(cls, size: tuple[int, int], block_size: int, channels: int) -> tuple[Field, ...]:
        n = (size[0] // block_size) * (size[1] // block_size)
        return (
            Field("block_perm", "perm", (n,), "block_perm (EtC)"),
            Field("rotation", "codes", (n,), "rotation (EtC)", bound=4),
            Field("flip", "codes", (n,), "flip (EtC)", bound=3),
            Field("np_mask", "bits", (n,), "np_mask (EtC)"),
            Field("channel_perm", "perm", (n, channels), "channel_perm (EtC)"),
        )

    @property
    def block_perm(self) -> torch.Tensor:
        """int64 (n,): encrypted block i holds plain block ``block_perm[i]``."""
        return self.secret("block_perm")

    @property
    def rotation(self) -> torch.Tensor:
        """int64 (n,): quarter turns (counter-clockwise) of the block at each position."""
        return self.secret("rotation")

    @property
    def flip(self) -> torch.Tensor:
        """int64 (n,): 0 none, 1 left-right, 2 upside-down, after the rotation."""
        return self.secret("flip")

    @property
    def np_mask(self) -> torch.Tensor:
        """bool (n,): block positions whose values v become 255 - v."""
        return self.secret("np_mask")

    @property
    def channel_perm(self) -> torch.Tensor:
        """int64 (n, C): channel c of encrypted block i holds channel ``channel_perm[i][c]``."""
        return self.secret("channel_perm")

    def unit_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        m2 = self.block_size**2
        s = self._secrets
        spatial = _spatial_maps(self.block_size)[s["rotation"], s["flip"]]  # (n, M*M)
        src_pos = (s["channel_perm"][:, :, None] * m2 + spatial[:, None, :]).flatten(1)
        flip = s["np_mask"][:, None].expand(-1, src_pos.shape[1])
        return block_plan(self, s["block_perm"], src_pos, flip)
