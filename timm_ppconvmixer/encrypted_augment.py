"""Key-free augmentation of already-encrypted images, for whoever trains without the key.

Why some augmentations survive encryption. The encryption (paper Sec. III-A) sends the plain
value at position ``s(p)`` to position ``p`` and there applies ``f_p``, either the identity or
``v -> 1 - v`` (floats in [0, 1]): ``E(x)[p] = f_p(x[s(p)])``. The bijection ``s`` moves whole
blocks (step 2, K1) and positions inside a block (step 3, K2); ``f_p`` is step 4 (K3). The
normalisation that follows, ``(v - mean[c]) / std[c]`` with ``c`` the *encrypted* channel of
``p``, is one more affine map per position. So, with ``N`` the normalisation:

1. **Mixup is exact.** A convex combination commutes with every per-position affine map:
   ``lam * N(E(a)) + (1 - lam) * N(E(b)) == N(E(lam * a + (1 - lam) * b))`` up to float
   rounding, before or after normalisation, for every key. (What does *not* hold is
   ``N(E(x)) == E(N(x))``: step 3 moves values across channels and step 4 flips around 0.5,
   so encryption must come before normalisation.)
2. **Block-aligned CutMix is exact.** Taking whole encrypted blocks ``S`` from ``b`` and the
   rest from ``a`` gives ``E(c)``, where the plain image ``c`` takes the whole plain blocks
   ``block_perm[S]`` from ``b`` and the rest from ``a``: steps 3 and 4 stay inside a block and
   step 2 moves whole blocks. The label weights are the same (the fraction of blocks). In the
   plain domain this is a CutMix whose region is a key-dependent *set of whole blocks* rather
   than a rectangle: a different but valid mix. A region not aligned to the grid instead gives
   plain blocks whose pixels (and channels) are scattered mixes of ``a`` and ``b``.
3. **Block erasing is exact.** Replacing encrypted blocks ``S`` by a fill ``F`` gives
   ``E(c)`` where ``c`` has plain blocks ``block_perm[S]`` replaced by ``T^-1(F)`` (``T`` =
   steps 3-4 on one block). For ``F = 0.5`` everywhere (mid grey), ``T^-1(F) = 0.5``: exactly
   erasing plain blocks with grey. For i.i.d. uniform noise, ``T^-1(F)`` is again i.i.d.
   uniform noise. A uniformly random set of ``k`` encrypted blocks is, through the bijection
   ``block_perm``, a uniformly random set of ``k`` plain blocks, whatever the key: in
   distribution, the same as erasing random whole blocks of the plain image.
4. **Flips are not key-free.** Mirroring an encrypted image moves encrypted block ``(r, c)``
   to ``(r, W/M - 1 - c)`` and mirrors the pixels inside every block. In the plain domain that
   is the block move ``block_perm o mirror o block_perm^-1`` and, inside every block, the
   pixel map ``T^-1 o mirror o T``: both depend on the key, and neither is a flip. Producing
   the encryption of the flipped plain image needs K1, K2 and K3; so do rotations, crops at
   other offsets, rescaling and every photometric transform (they act on scrambled values).

Everything here works on float batches ``(B, C, H, W)``, encrypted, normalised or not, and
never sees a key. ``tests/test_encrypted_augment.py`` checks each claim above against a real
key (test side only); ``docs/encrypted-data.md`` says which of timm's ``train.py`` flags are
safe on encrypted data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from timm.data.mixup import mixup_target

__all__ = [
    "BlockErasing",
    "BlockMixup",
    "block_grid",
    "blocks_to_pixels",
    "cutmix_blocks",
    "erase_blocks",
]

CutMixRegion = Literal["box", "blocks"]
ErasingFill = Literal["gray", "uniform"]


def block_grid(x: torch.Tensor, block_size: int) -> tuple[int, int]:
    """The block grid ``(H/M, W/M)`` of an image ``(C, H, W)`` or batch ``(B, C, H, W)``."""
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if block_size < 1 or h % block_size or w % block_size:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of block_size {block_size}; use the key's "
            "block size (the model's patch size) on images of the key's size"
        )
    return h // block_size, w // block_size


def blocks_to_pixels(block_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Expand a mask over the block grid ``(..., H/M, W/M)`` to pixels ``(..., H, W)``."""
    return block_mask.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)


def cutmix_blocks(
    x: torch.Tensor, partner: torch.Tensor, block_mask: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Take the blocks set in ``block_mask`` ``(B, H/M, W/M)`` from ``partner``, the rest from
    ``x`` (both ``(B, C, H, W)``). Exact in the encrypted domain (module docstring, claim 2)."""
    return torch.where(blocks_to_pixels(block_mask, block_size).unsqueeze(1), partner, x)


def erase_blocks(
    x: torch.Tensor, block_mask: torch.Tensor, fill: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Replace the blocks set in ``block_mask`` ``(B, H/M, W/M)`` by ``fill`` (broadcastable to
    ``x``). Exact in the encrypted domain (module docstring, claim 3)."""
    return torch.where(blocks_to_pixels(block_mask, block_size).unsqueeze(1), fill, x)


def _random_box(grid: tuple[int, int], area: np.ndarray) -> torch.Tensor:
    """Block-aligned boxes covering about ``area`` of each image's grid, placed uniformly
    inside the grid (never clipped, so the area is exactly that of the box)."""
    gh, gw = grid
    side = np.sqrt(np.clip(area, 0.0, 1.0))
    bh, bw = np.rint(gh * side).astype(int), np.rint(gw * side).astype(int)
    top = (np.random.rand(len(area)) * (gh - bh + 1)).astype(int)
    left = (np.random.rand(len(area)) * (gw - bw + 1)).astype(int)
    rows, cols = np.arange(gh)[None, :, None], np.arange(gw)[None, None, :]
    inside_rows = (rows >= top[:, None, None]) & (rows < (top + bh)[:, None, None])
    inside_cols = (cols >= left[:, None, None]) & (cols < (left + bw)[:, None, None])
    return torch.from_numpy(inside_rows & inside_cols)


def _random_block_set(grid: tuple[int, int], count: np.ndarray) -> torch.Tensor:
    """A uniformly random set of ``count[i]`` blocks for each image ``i``."""
    n = grid[0] * grid[1]
    ranks = np.random.rand(len(count), n).argsort(1).argsort(1)
    return torch.from_numpy(ranks < count[:, None]).view(len(count), *grid)


class BlockMixup:
    """timm's ``Mixup`` for encrypted batches: mixup as is, CutMix only on whole blocks.

    Drop-in for ``timm.data.Mixup`` in a training loop: ``x, target = mixup_fn(x, target)``
    with a float batch ``(B, C, H, W)`` (B even; encrypted, before or after normalisation) and
    integer class targets; returns the mixed batch and soft targets (``mixup_target``, label
    smoothing included). Mixup is exact in the encrypted domain and CutMix is exact because its
    region is a union of whole blocks (module docstring, claims 1 and 2). Randomness comes from
    ``np.random``, as in timm, so a training script's seeding applies; ``mixup_enabled`` can be
    switched off by the loop (``--mixup-off-epoch``), as with timm's ``Mixup``.

    Args:
        mixup_alpha: Beta(alpha, alpha) for mixup's lam; mixup is active if > 0.
        cutmix_alpha: Beta(alpha, alpha) for CutMix's lam; CutMix is active if > 0.
        prob: probability of mixing a batch (``mode="batch"``) or an element (``"elem"``).
        switch_prob: probability of CutMix instead of mixup when both are active.
        mode: ``"batch"`` (one lam and region for the batch) or ``"elem"`` (one per element).
        label_smoothing: label smoothing of the soft targets.
        num_classes: number of classes of the targets.
        block_size: the key's block size M (= the model's patch size).
        cutmix_region: ``"box"``, a rectangle of whole blocks (a key-dependent set of plain
            blocks), or ``"blocks"``, a uniformly random set of as many blocks (in the plain
            domain a uniformly random set of blocks for every key). lam is always corrected to
            the exact fraction of blocks kept, since whole blocks quantise the area.

    Example:
        >>> mixup_fn = BlockMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10, block_size=4)
        >>> x, y = mixup_fn(torch.rand(8, 3, 32, 32), torch.arange(8))
        >>> x.shape, y.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]))
    """

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: Literal["batch", "elem"] = "batch",
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        block_size: int = 16,
        cutmix_region: CutMixRegion = "box",
    ) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("one of mixup_alpha and cutmix_alpha must be > 0")
        if mode not in ("batch", "elem"):
            raise ValueError(f"mode must be 'batch' or 'elem', got {mode!r}")
        if cutmix_region not in ("box", "blocks"):
            raise ValueError(f"cutmix_region must be 'box' or 'blocks', got {cutmix_region!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.mix_prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = mode
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes)
        self.block_size = int(block_size)
        self.cutmix_region = cutmix_region
        self.mixup_enabled = True

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(
                f"BlockMixup needs a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}; "
                "mix after the to-tensor step (or in the training loop, like timm's Mixup)"
            )
        if len(x) % 2:
            raise ValueError(
                f"batch size must be even (images mix with the reversed batch), got {len(x)}"
            )
        grid = block_grid(x, self.block_size)
        lam, use_cutmix = self._draw(len(x))
        region = self._region(grid, lam, use_cutmix)
        kept = 1.0 - region.flatten(1).double().mean(1).numpy()
        lam = np.where(use_cutmix, kept, lam)
        partner = x.flip(0)
        weight = torch.as_tensor(np.where(use_cutmix, 1.0, lam), dtype=x.dtype, device=x.device)
        weight = weight.view(-1, 1, 1, 1)
        mixed = x * weight + partner * (1 - weight)  # mixup rows; weight 1 leaves x exact
        mixed = cutmix_blocks(mixed, partner, region.to(x.device), self.block_size)
        lam_t = torch.as_tensor(lam, dtype=torch.float32, device=target.device).unsqueeze(1)
        return mixed, mixup_target(target, self.num_classes, lam_t, self.label_smoothing)

    def _draw(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """lam and whether CutMix is used, per element (``"elem"``) or shared (``"batch"``)."""
        n = batch if self.mode == "elem" else 1
        lam, use_cutmix = np.ones(n), np.zeros(n, dtype=bool)
        if self.mixup_enabled:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = np.random.rand(n) < self.switch_prob
            elif self.cutmix_alpha > 0:
                use_cutmix = np.ones(n, dtype=bool)
            alpha = np.where(use_cutmix, self.cutmix_alpha, self.mixup_alpha)
            drawn = np.random.beta(alpha, alpha)
            applied = np.random.rand(n) < self.mix_prob
            lam, use_cutmix = np.where(applied, drawn, 1.0), use_cutmix & applied
        return np.broadcast_to(lam, batch).copy(), np.broadcast_to(use_cutmix, batch).copy()

    def _region(self, grid: tuple[int, int], lam: np.ndarray, use_cutmix: np.ndarray):
        """Block mask ``(B, H/M, W/M)`` of what comes from the partner (empty for mixup)."""
        area = np.where(use_cutmix, 1.0 - lam, 0.0)
        if self.mode == "batch":  # one region for the whole batch, as timm's batch mode
            area = area[:1]
        if self.cutmix_region == "box":
            region = _random_box(grid, area)
        else:
            region = _random_block_set(grid, np.rint(area * grid[0] * grid[1]).astype(int))
        return region.expand(len(lam), *grid)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mixup_alpha={self.mixup_alpha}, cutmix_alpha="
            f"{self.cutmix_alpha}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
            f"mode={self.mode!r}, label_smoothing={self.label_smoothing}, num_classes="
            f"{self.num_classes}, block_size={self.block_size}, cutmix_region="
            f"{self.cutmix_region!r})"
        )


class BlockErasing:
    """Erase a random set of whole blocks of each encrypted image (per sample), key-free.

    With probability ``prob`` an image gets ``k`` blocks, ``k`` uniform in
    ``1..max(1, floor(max_fraction * n))``, chosen uniformly among its ``n`` blocks, replaced
    by ``fill``: ``"gray"`` (0.5) or ``"uniform"`` (i.i.d. U[0, 1] noise), in pixel units of
    [0, 1]. In the plain domain this is exactly erasing ``k`` whole plain blocks with grey
    (``"gray"``), or with i.i.d. uniform noise (``"uniform"``, equal in distribution), the
    blocks being a uniformly random set whatever the key (module docstring, claim 3). The
    block set is random rather than a rectangle because neighbouring encrypted blocks are not
    neighbours in the plain image.

    Input: a float image ``(C, H, W)`` or batch ``(B, C, H, W)``, in [0, 1], or normalised
    with ``mean``/``std`` given here (the fill is then normalised the same way). Randomness
    comes from torch's generator (seeded per DataLoader worker).

    Example:
        >>> erase = BlockErasing(block_size=4, prob=1.0, max_fraction=0.25)
        >>> erase(torch.rand(3, 32, 32)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        block_size: int,
        prob: float = 0.5,
        max_fraction: float = 0.25,
        fill: ErasingFill = "gray",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
        if fill not in ("gray", "uniform"):
            raise ValueError(f"fill must be 'gray' or 'uniform', got {fill!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (normalised input) or neither")
        self.block_size = int(block_size)
        self.prob = float(prob)
        self.max_fraction = float(max_fraction)
        self.fill = fill
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ValueError(
                f"BlockErasing needs float images, got {x.dtype}; erase after the to-tensor step"
            )
        grid = block_grid(x, self.block_size)
        batch = x.unsqueeze(0) if x.dim() == 3 else x
        blocks = self._draw_blocks(len(batch), grid).to(x.device)
        out = erase_blocks(batch, blocks, self._fill_values(batch), self.block_size)
        return out[0] if x.dim() == 3 else out

    def _draw_blocks(self, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        n = grid[0] * grid[1]
        most = max(1, int(self.max_fraction * n))
        count = torch.randint(1, most + 1, (batch,)) * (torch.rand(batch) < self.prob)
        ranks = torch.rand(batch, n).argsort(1).argsort(1)
        return (ranks < count[:, None]).view(batch, *grid)

    def _fill_values(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fill == "gray":
            value = torch.full((batch.shape[1], 1, 1), 0.5, dtype=batch.dtype, device=batch.device)
        else:
            value = torch.rand(batch.shape, dtype=batch.dtype, device=batch.device)
        if self.mean is None:
            return value
        mean = self.mean.to(batch.device, batch.dtype).view(-1, 1, 1)
        std = self.std.to(batch.device, batch.dtype).view(-1, 1, 1)
        return (value - mean) / std

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(block_size={self.block_size}, prob={self.prob}, "
            f"max_fraction={self.max_fraction}, fill={self.fill!r})"
        )
