"""ELE, extended learnable image encryption (K. Madono, M. Tanaka, M. Onishi, T. Ogawa,
"Block-wise scrambled image recognition using adaptation network", AAAI-WS 2020; the paper's
[15]): LE with a different key for every block position, then block scrambling.

Steps, for an 8-bit image of C channels, H x W, blocks of M x M, n = (H/M)(W/M) blocks:

1. split it into blocks and every value into 4-bit halves, as LE (:mod:`.le`, steps 1-2);
2. plain block ``k`` is encrypted by LE with its own key: ``nibble_perm[k]`` and
   ``nibble_mask[k]`` (shape (n, 2*C*M*M) each; "multiple keys"): encrypted half ``j`` holds
   plain half ``nibble_perm[k][j]``, and becomes ``15 - h`` where ``nibble_mask[k][j]``;
3. block scrambling, one ``block_perm`` (shape (n,)) for every image: encrypted block ``i``
   holds the LE-encrypted plain block ``block_perm[i]``;
4. merge the halves back into bytes.

The keys of step 2 belong to plain block positions: they are applied before the blocks move.
Like LE, the cipher works on halves; floats must be exact multiples of 1/255.

Known answers: under the equivalent key this module reproduces Madono et al.'s public code
(``Blockwise_scramble.py``, one key file per plain block position, then
``Block_location_shuffle.py``) exactly on a 32x32 colour image
(``tests/test_schemes_known_answer.py``); that code is written for 32x32 images of 4x4 blocks.

Faithfulness note: as for LE, the inversion masks are drawn independently of the
permutations (Madono et al.'s public code derives them from the permutation, :mod:`.le`).

Example:
    >>> key = ELEKey.generate(image_size=32, block_size=4, seed=0)
    >>> key.nibble_perm.shape, key.block_perm.shape
    (torch.Size([64, 96]), torch.Size([64]))
"""

from __future__ import annotations

import torch

from .base import SchemeKey
from .fields import Field
from .plan import block_plan

__all__ = ["ELEKey"]


class ELEKey(SchemeKey):
    """Secret key of ELE (Madono et al. 2020): an LE key per block position and one block
    permutation, shared by every image."""

    NAME = "ele"
    FILE_SCHEME = "ppconvmixer-ele"
    UNIT_BITS = 4
    SUMMARY = (
        "ELE (Madono et al. 2020): each image is split into {m}x{m} blocks, every byte into two "
        "4-bit halves; the halves inside every block are shuffled and some are inverted with a "
        "key of that block's position, then the blocks are permuted."
    )

    @classmethod
    def fields(cls, size: tuple[int, int], block_size: int, channels: int) -> tuple[Field, ...]:
        n = (size[0] // block_size) * (size[1] // block_size)
        d2 = 2 * channels * block_size * block_size
        return (
            Field("block_perm", "perm", (n,), "block_perm (ELE)"),
            Field("nibble_perm", "perm", (n, d2), "nibble_perm (ELE)"),
            Field("nibble_mask", "bits", (n, d2), "nibble_mask (ELE)"),
        )

    @property
    def block_perm(self) -> torch.Tensor:
        """int64 (n,): encrypted block i holds plain block ``block_perm[i]``."""
        return self.secret("block_perm")

    @property
    def nibble_perm(self) -> torch.Tensor:
        """int64 (n, 2*C*M*M): the halves' shuffle of each plain block position."""
        return self.secret("nibble_perm")

    @property
    def nibble_mask(self) -> torch.Tensor:
        """bool (n, 2*C*M*M): the halves' inversion mask of each plain block position."""
        return self.secret("nibble_mask")

    def unit_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        src = self._secrets["block_perm"]
        # encrypted block i is plain block src[i], encrypted with the key of its plain position
        return block_plan(
            self, src, self._secrets["nibble_perm"][src], self._secrets["nibble_mask"][src]
        )
