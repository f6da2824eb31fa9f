"""LE, learnable image encryption (Tanaka, "Learnable image encryption", ICCE-TW 2018; the
paper's [14]): 4-bit halves shuffled and inverted with one key for every block.

Steps, for an 8-bit image of C channels, H x W, blocks of M x M:

1. split it into n = (H/M)(W/M) blocks (no block scrambling: every block stays in place);
2. split every 8-bit value ``v`` into its upper and lower 4-bit halves ``v >> 4`` and
   ``v & 15``: a block becomes a vector of 2*C*M*M halves, in (C, M, M, half) order (the upper
   half of a value first);
3. ``nibble_perm`` (shape (2*C*M*M,), one key for every block of every image): position ``j``
   of the encrypted vector holds position ``nibble_perm[j]`` of the plain vector;
4. ``nibble_mask`` (shape (2*C*M*M,), one key for every block): where set, the half ``h`` at
   that position of the shuffled vector becomes ``15 - h`` (``h XOR 0xF``);
5. merge the halves back into bytes (upper, lower): the encrypted image is an ordinary
   C-channel 8-bit image.

The cipher compiles steps 2-5 into one gather over halves and one XOR with 0x0F. Floating
inputs in [0, 1] are accepted only when they are exact multiples of 1/255 (what ``ToTensor``
makes from 8-bit images): they are converted to uint8 exactly, encrypted, and converted back.

Known answers: under the equivalent key this module reproduces Tanaka's ``BlockScramble``
exactly, as Madono et al.'s public code (``MADONOKOUKI/Block-wise-Scrambled-Image-
Recognition``, ``learnable_encryption.py``; the same class as Tanaka's ``mastnk/ICCE-TW2018``)
runs it, on 32x32 and 8x8 colour and 8x8 grey images (``tests/test_schemes_known_answer.py``,
whose docstring gives the translation of their key into ``nibble_perm`` and ``nibble_mask``).

Faithfulness note: that code derives the inverted halves from the shuffling permutation (its
key ``k`` is a permutation of the 2*C*M*M halves, in its own order; half ``i`` of the result
is inverted where exactly one of ``k[i]`` and ``k[k[i]]`` exceeds C*M*M), so its keys are
the permutations alone; here the mask is drawn independently of the permutation, from the CSPRNG.
Every key of that code is a key here.

Example:
    >>> key = LEKey.generate(image_size=32, block_size=4, seed=0)
    >>> key.nibble_perm.shape, key.scheme
    (torch.Size([96]), 'le')
"""

from __future__ import annotations

import torch

from .base import SchemeKey
from .fields import Field
from .plan import block_plan

__all__ = ["LEKey"]


class LEKey(SchemeKey):
    """Secret key of LE (Tanaka 2018): one shuffle and one inversion mask of the 2*C*M*M
    4-bit halves of a block, shared by every block of every image."""

    NAME = "le"
    FILE_SCHEME = "ppconvmixer-le"
    UNIT_BITS = 4
    SUMMARY = (
        "LE (Tanaka 2018): each image is split into {m}x{m} blocks, every byte into two 4-bit "
        "halves; the halves inside every block are shuffled and some are inverted "
        "(h -> 15 - h), with one key for every block. Blocks stay in place."
    )

    @classmethod
    def fields(cls, size: tuple[int, int], block_size: int, channels: int) -> tuple[Field, ...]:
        d2 = 2 * channels * block_size * block_size
        return (
            Field("nibble_perm", "perm", (d2,), "nibble_perm (LE)"),
            Field("nibble_mask", "bits", (d2,), "nibble_mask (LE)"),
        )

    @property
    def nibble_perm(self) -> torch.Tensor:
        """int64 (2*C*M*M,): encrypted half j of a block holds plain half ``nibble_perm[j]``."""
        return self.secret("nibble_perm")

    @property
    def nibble_mask(self) -> torch.Tensor:
        """bool (2*C*M*M,): halves h (after shuffling) that become 15 - h."""
        return self.secret("nibble_mask")

    def unit_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, d2 = self.num_blocks, self._secrets["nibble_perm"].numel()
        return block_plan(
            self,
            torch.arange(n),
            self._secrets["nibble_perm"].expand(n, d2),
            self._secrets["nibble_mask"].expand(n, d2),
        )
