"""One LE key from pooled statistics of 4-bit halves: which halves are upper, their inversion
and placement, and the lower half that belongs to each pixel.

Attacks steps 2-4 of LE (Tanaka, ICCE-TW 2018; :mod:`timm_ppconvmixer.schemes.le`): every byte
``v`` of a block becomes the halves ``v >> 4`` and ``v & 15``, the 2*C*M*M halves are shuffled
and some are inverted (``h -> 15 - h``), with one key for all the blocks that share it (all
blocks for LE; all images' blocks at one position for ELE, :mod:`.ele_attack`). The samples
of those blocks give a 2D x 2D correlation matrix, and:

1. **Upper or lower.** An upper half is the coarse picture: it correlates strongly (about 0.9 on
   Fashion-MNIST) with the upper halves of neighbouring pixels; a lower half is mostly noise
   and correlates much less with anything (0.6 on Fashion-MNIST, through its own pixel's
   upper half: blank background is 0 in both halves). The C*M*M halves with the strongest
   correlations (mean of the three largest ``|r|``) are taken as the upper halves.
2. **Upper halves: inversion and placement.** They behave exactly like the bytes of the
   paper's scheme, so the blockwise attack's correlation-sign (:mod:`.flip_mask`) and
   correlation-geometry (:mod:`.pixel_shuffle`) steps apply unchanged (Li et al., Signal
   Processing: Image Communication 23(3), 2008; Chuman and Kiya, arXiv:2211.02369).
3. **Lower halves: pairing and inversion.** Each lower half is paired with the upper half it
   correlates with most (one to one: an assignment problem), and inverted where that
   correlation, with the upper halves' inversions undone, is negative (the halves of one
   pixel rise together). Where the lower halves carry no such correlation (noise-like lower
   bits of photographs) the pairing is a guess, and so is their placement: the attacker's
   picture is then the 4-bit one of the upper halves.

What the statistics cannot decide: a dihedral symmetry of the block's content, the channel
order and a global inversion (as for the paper's scheme, :mod:`.blocks`); the callers decide
them from continuity across blocks or a prior.

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer import encrypt
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> from timm_ppconvmixer.attacks.solvers.blocks import to_blocks
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:300, None]
    >>> key = generate_key("le", image_size=28, block_size=4, channels=1, seed=0)
    >>> h = to_halves(to_blocks(encrypt(x, key, layout="CHW"), 4))
    >>> est = recover_halves(half_stats(h), channels=1, block_size=4)
    >>> truth = key.nibble_perm.numpy() % 2 == 0  # the upper halves
    >>> bool((est.upper == truth).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .flip_mask import PositionStats, position_stats, recover_flip_mask
from .pixel_shuffle import _residual_corr, recover_pixel_perm
from .qap import grid, qap_swaps, slot_objective

_MULTISTART_MAX = 64  # upper halves per key up to which the placement gets random restarts

__all__ = ["HalvesEstimate", "from_halves", "half_stats", "recover_halves", "to_halves"]


def to_halves(blocks: np.ndarray) -> np.ndarray:
    """``(..., D)`` uint8 bytes -> ``(..., 2D)`` halves in (byte, upper/lower) order (LE step 2)."""
    return np.stack([blocks >> 4, blocks & 15], axis=-1).reshape(*blocks.shape[:-1], -1)


def from_halves(halves: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_halves` (values above 15 are not allowed)."""
    h = halves.reshape(*halves.shape[:-1], -1, 2).astype(np.uint8)
    return (h[..., 0] << 4) | h[..., 1]


def half_stats(halves: np.ndarray, max_samples: int | None = 200_000, seed: int = 0):
    """Pooled moments of the halves ``(..., 2D)`` (every leading axis is a sample axis).

    Blocks whose halves are all equal (blank: they say nothing about where halves lie) are
    dropped, unless nothing else is left.
    """
    flat = halves.reshape(-1, 1, halves.shape[-1])
    # scaled by 17 so that flip_mask's 255 - v is the half's 15 - h: its moment code is reused
    return position_stats(flat * np.uint8(17), max_samples, seed, drop_constant=True)


@dataclass
class HalvesEstimate:
    """One LE key estimated up to the block symmetries, the channel order and global inversion.

    ``plain[j]``: the estimated plain half (2 * pixel + 0 upper / 1 lower, pixel in (C, M, M)
    order) at encrypted half ``j``, a permutation of 2D; ``invert[j]``: whether half ``j`` is
    inverted (relative to "no global inversion").
    """

    upper: np.ndarray  # (2D,) bool: encrypted halves judged upper
    plain: np.ndarray  # (2D,) int64
    invert: np.ndarray  # (2D,) bool
    confidence: dict[str, float]


def _multistart(
    stats: PositionStats, slot: np.ndarray, channels: int, m: int, restarts: int, seed: int
) -> np.ndarray:
    """The best of local searches from ``slot`` and from random placements, against a fixed
    template ``exp(-distance)`` (same channel; half weight across channels).

    The statistics of one ELE block position come from N samples of a single place in the
    image, whose correlations need not fall off evenly with distance; the spectral layout of
    :mod:`.pixel_shuffle` then often lands in a poor local optimum (on Fashion-MNIST at
    N = 1,000 about 60 % of the upper halves right), and random restarts of the swap search
    against a fixed, decreasing template find the grid far more often (about 92 %).
    """
    c, y, x = grid(channels, m)
    b = np.exp(-np.hypot(y[:, None] - y[None], x[:, None] - x[None]))
    b *= np.where(c[:, None] == c[None], 1.0, 0.5)
    np.fill_diagonal(b, 0.0)
    rng = np.random.default_rng(seed)
    views = (_residual_corr(stats.cov, np.repeat(np.arange(channels), m * m)), stats.corr)
    best, best_value = slot, -np.inf
    for r in views:
        for start in [slot] + [rng.permutation(len(slot)) for _ in range(restarts)]:
            found = qap_swaps(r, start, b, 100)
            value = slot_objective(r, found, b)
            if value > best_value:
                best, best_value = found, value
    return best


def recover_halves(
    stats: PositionStats, channels: int, block_size: int, *, restarts: int = 20, seed: int = 0
) -> HalvesEstimate:
    """Estimate one LE key (module doc, steps 1-3) from the pooled statistics of its halves."""
    d2 = stats.cov.shape[0]
    d = d2 // 2
    if d2 != 2 * channels * block_size * block_size:
        raise ValueError(f"statistics of {d2} halves do not fit C={channels}, M={block_size}")
    r = stats.corr.copy()
    np.fill_diagonal(r, 0.0)
    top = np.sort(np.abs(r), axis=1)[:, ::-1][:, : min(3, d2 - 1)]
    strength = top.mean(1) if top.size else np.zeros(d2)
    order = np.argsort(-strength, kind="stable")
    uppers, lowers = np.sort(order[:d]), np.sort(order[d:])
    upper = np.zeros(d2, dtype=bool)
    upper[uppers] = True
    sub = PositionStats(stats.mean[uppers], stats.cov[np.ix_(uppers, uppers)], stats.samples)
    flips = recover_flip_mask(stats=sub)
    unflipped = sub.flipped(flips.signs)
    shuffle = recover_pixel_perm(unflipped, channels, block_size, seed=seed)
    if d <= _MULTISTART_MAX:
        shuffle.slot = _multistart(unflipped, shuffle.slot, channels, block_size, restarts, seed)
    # lower halves: paired with the upper half they follow most, inverted where they fall
    signed = r[np.ix_(lowers, uppers)] * flips.signs[None, :].astype(np.float64)
    rows, cols = linear_sum_assignment(-np.abs(signed))
    plain = np.empty(d2, dtype=np.int64)
    invert = np.zeros(d2, dtype=bool)
    plain[uppers] = 2 * shuffle.slot
    invert[uppers] = flips.signs < 0
    plain[lowers[rows]] = 2 * shuffle.slot[cols] + 1
    invert[lowers[rows]] = signed[rows, cols] < 0
    gap = strength[uppers].min() - strength[lowers].max() if d else 0.0
    pair = np.abs(signed[rows, cols])
    return HalvesEstimate(
        upper,
        plain,
        invert,
        {
            "upper_split": float(np.clip(gap / max(strength.max(), 1e-12), 0, 1)),
            "upper_inversion": float(flips.confidence.mean()),
            "upper_placement": float(shuffle.confidence),
            "lower_pairing": float(pair.mean()) if pair.size else 0.0,
        },
    )
