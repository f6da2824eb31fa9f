"""Ciphertext-only attack on LE (Tanaka, "Learnable image encryption", ICCE-TW 2018).

LE (:mod:`timm_ppconvmixer.schemes.le`) shuffles and inverts the 2*C*M*M 4-bit halves of a
block with one key for every block of every image and leaves the blocks in place. So every
block of every image is a sample of the same 2D-dimensional vector, and N images give N*n
samples of one unknown permutation and mask, many more than the paper's scheme gives for its
K2/K3 (the same attack, on twice as many positions):

1. the halves' key from the pooled statistics (:mod:`.halves`): upper halves by their strong
   correlations, their inversions and placement by the blockwise attack's correlation steps,
   the lower halves paired with their pixel's upper half;
2. the block content's dihedral symmetry, which the in-block statistics cannot see: since the
   blocks stay in place, only the true orientation makes the picture continuous across block
   borders (the pooled squared difference of the upper halves across every border is minimal);
3. the channel order and global inversion by the prior (:mod:`.priors`), as for the paper's
   scheme.

:func:`score_le_key` scores an estimate against the true key, and :func:`upper_only_key`
gives the attacker's 4-bit picture (the upper halves, lower halves set to 8).

Example:
    >>> from timm_ppconvmixer import decrypt, encrypt
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:300, None]
    >>> key = generate_key("le", image_size=28, block_size=4, channels=1, seed=0)
    >>> result = recover_le_key(encrypt(x, key, layout="CHW"), 4)
    >>> score_le_key(key, result.key)["upper_placed"]
    1.0
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ...cipher import decrypt, encrypt
from ...schemes.le import LEKey
from ..result import AttackResult
from ..solvers.blocks import SYMMETRIES, Symmetry, from_blocks, position_map, to_blocks
from ..solvers.halves import HalvesEstimate, from_halves, half_stats, recover_halves, to_halves
from ..solvers.priors import GenericPrior, ReferencePrior
from .blockwise import check_encrypted_batch

__all__ = ["blocks_exact", "half_key_parts", "recover_le_key", "score_le_key", "upper_only_images"]

_BORDER_IMAGES = 2000  # images used to judge continuity across block borders


def half_key_parts(
    est: HalvesEstimate, channels: int, m: int, g: Symmetry, channel_order, invert: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(nibble_perm, nibble_mask)`` of the estimate after the symmetry ``g`` of the block
    content, the channel order (candidate channel c = estimate's ``channel_order[c]``) and
    global inversion."""
    pix, half = est.plain // 2, est.plain % 2
    moved = position_map(g, channels, m)[pix]
    m2 = m * m
    chan_inv = np.argsort(np.asarray(channel_order))
    pix = chan_inv[moved // m2] * m2 + moved % m2
    return 2 * pix + half, est.invert ^ bool(invert)


def _decrypt_halves(halves: np.ndarray, perm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Plain halves from encrypted halves ``(..., 2D)`` under a (perm, mask) estimate."""
    out = np.empty_like(halves)
    out[..., perm] = halves ^ (mask.astype(np.uint8) * 15)
    return out


def _border_cost(upper_img: np.ndarray, m: int) -> float:
    """Pooled squared difference across block borders of ``(N, C, H, W)`` 4-bit pictures."""
    x = upper_img.astype(np.float32)
    cols = x[..., :, m - 1 : -1 : m] - x[..., :, m::m]
    rows = x[..., m - 1 : -1 : m, :] - x[..., m::m, :]
    return float((cols**2).sum() + (rows**2).sum())


def _orient(halves, est, chw, m, sample) -> tuple[Symmetry, dict[str, float]]:
    """The block symmetry that makes the upper halves continuous across block borders."""
    c = chw[0]
    costs = {}
    for g in SYMMETRIES:
        perm, mask = half_key_parts(est, c, m, g, tuple(range(c)), False)
        plain = _decrypt_halves(halves[sample], perm, mask)
        costs[g] = _border_cost(from_blocks(plain[..., 0::2], chw, m), m)
    best = min(costs, key=costs.get)
    return best, {g.name: v for g, v in costs.items()}


def _neighbour_mean(x: np.ndarray) -> np.ndarray:
    """Mean of the 4 neighbours of every pixel of ``(N, C, H, W)`` (edges replicated)."""
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4


def _smooth_lowers(halves, est, g, chw, m, rounds: int = 2):
    """Re-pair the lower halves by the smoothness of the 8-bit picture (module doc, step 4).

    With the upper halves placed, the neighbours of pixel ``p`` predict its 8-bit value, so
    ``t_p = mean(neighbours) - 16 u_p`` predicts its lower half; each encrypted lower half is
    assigned to the pixel whose ``t`` it correlates with most (inverted where negatively),
    twice (the second time with the neighbours' lower halves from the first). Kept only where
    these correlations are stronger, on average over the pairs, than those of the pairing with
    the upper halves (:mod:`.halves`), the better cue where blank background dominates
    (Fashion-MNIST: 0.63 against less; photographs: 0.17 against more). The smoothest picture
    is no criterion: re-pairing by this cue makes any picture smoother than the true one.
    Returns the estimate in the orientation ``g`` and which pairing was kept.
    """
    c = chw[0]
    perm, mask = half_key_parts(est, c, m, g, tuple(range(c)), False)
    framed = HalvesEstimate(est.upper, perm, mask, est.confidence)
    lower_pos = np.nonzero(perm % 2 == 1)[0]  # encrypted halves placed as lower halves
    enc_lower = halves[..., lower_pos].reshape(-1, len(lower_pos)).astype(np.float64)
    plain = _decrypt_halves(halves, perm, mask)
    upper = from_blocks(plain[..., 0::2], chw, m).astype(np.float64)
    best = (est.confidence["lower_pairing"], framed, "correlation with the upper halves")
    cand_perm, cand_mask = perm.copy(), mask.copy()
    guess = 16 * upper + 7.5
    for _ in range(rounds):
        target = to_blocks(_neighbour_mean(guess) - 16 * upper, m).reshape(enc_lower.shape)
        r = _corr(enc_lower, target)
        rows, cols = linear_sum_assignment(-np.abs(r))
        cand_perm[lower_pos[rows]] = 2 * cols + 1
        cand_mask[lower_pos[rows]] = r[rows, cols] < 0
        cand = from_blocks(from_halves(_decrypt_halves(halves, cand_perm, cand_mask)), chw, m)
        guess = cand.astype(np.float64)
        strength = float(np.abs(r[rows, cols]).mean())
        if strength > best[0]:
            kept = HalvesEstimate(est.upper, cand_perm.copy(), cand_mask.copy(), est.confidence)
            best = (strength, kept, "smoothness of the 8-bit picture")
    return best[1], best[2]


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation matrix between the columns of ``a`` and of ``b`` (constant columns: 0)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    sa, sb = np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0))
    r = (a.T @ b) / np.outer(np.where(sa > 0, sa, 1), np.where(sb > 0, sb, 1))
    return np.where(np.outer(sa > 0, sb > 0), r, 0.0)


def recover_le_key(
    encrypted: np.ndarray,
    block_size: int,
    *,
    prior: ReferencePrior | GenericPrior | None = None,
    max_samples: int | None = 200_000,
    seed: int = 0,
) -> AttackResult:
    """Estimate the LE key from N encrypted images ``(N, C, H, W)`` uint8 alone (module doc).

    Works from one image on (its n blocks are the samples); ``max_samples`` caps the blocks
    used for the statistics.
    """
    n_img, c, h, w = check_encrypted_batch(encrypted, block_size, block_order=False)
    m = int(block_size)
    grid = (h // m, w // m)
    prior = prior or GenericPrior()
    t0 = time.perf_counter()
    halves = to_halves(to_blocks(encrypted, m))  # (N, n, 2D)
    stats = half_stats(halves, max_samples, seed)
    est = recover_halves(stats, c, m, seed=seed)
    t1 = time.perf_counter()
    sample = np.random.default_rng(seed).permutation(n_img)[:_BORDER_IMAGES]
    chosen, border = _orient(halves, est, (c, h, w), m, np.sort(sample))
    est, lowers = _smooth_lowers(halves[np.sort(sample)], est, chosen, (c, h, w), m)
    g = SYMMETRIES[0]  # the estimate is now in the chosen orientation
    t2 = time.perf_counter()
    perm, mask = half_key_parts(est, c, m, g, tuple(range(c)), False)
    recon = from_blocks(from_halves(_decrypt_halves(halves[sample], perm, mask)), (c, h, w), m)
    choice = prior.choose(recon, grid)
    perm, mask = half_key_parts(est, c, m, g, choice.channel_order, choice.invert)
    key = LEKey((h, w), m, c, nibble_perm=perm, nibble_mask=mask)
    t3 = time.perf_counter()
    ranked = sorted(border.values())
    # LE moves no blocks: of the prior's choices only these two are the key's
    ambiguities = choice.ambiguity(only=("global inversion", "channel order"))
    return AttackResult(
        key=key,
        confidence={
            "nibble_mask": est.confidence["upper_inversion"],
            "nibble_perm": est.confidence["upper_placement"],
            "upper_split": est.confidence["upper_split"],
            "lower_pairing": est.confidence["lower_pairing"],
            # how much better the chosen block orientation joins the blocks than the next one
            "orientation": float(1 - ranked[0] / ranked[1])
            if len(ranked) > 1 and ranked[1]
            else 0.0,
        },
        timings={"halves": t1 - t0, "orientation": t2 - t1, "prior": t3 - t2, "total": t3 - t0},
        ambiguities=ambiguities,
        details={
            "images": n_img,
            "blocks_per_image": grid[0] * grid[1],
            "statistics_samples": stats.samples,
            "chosen_block_symmetry": chosen.name,
            "lower_halves_by": lowers,
            "prior": choice.prior,
            "inverted": bool(choice.invert),
        },
        method="ciphertext-only (LE halves)",
        scheme="le",
    )


def upper_only_images(encrypted: np.ndarray, estimate: LEKey) -> np.ndarray:
    """The attacker's 4-bit picture: the halves the estimate places as upper halves, with every
    lower half set to 8 (the middle of its range), ``(N, C, H, W)`` uint8."""
    m = estimate.block_size
    c, (h, w) = estimate.channels, estimate.image_size
    perm, mask = estimate.nibble_perm.numpy(), estimate.nibble_mask.numpy()
    plain = _decrypt_halves(to_halves(to_blocks(encrypted, m)), perm, mask)
    plain[..., 1::2] = 8
    return from_blocks(from_halves(plain), (c, h, w), m)


def score_le_key(
    true_key: LEKey, estimate: LEKey, plain: np.ndarray | None = None
) -> dict[str, Any]:
    """Shares of the LE key recovered (JSON-ready, key-free).

    * ``upper_found``: share of the encrypted upper halves the estimate places as upper halves;
    * ``upper_placed`` / ``lower_placed``: share of upper / lower encrypted halves placed at
      their true plain half;
    * ``upper_inversion`` / ``lower_inversion``: share of upper / lower halves whose inversion
      bit is right, up to global inversion (the better of the two, reported in ``inverted``);
    * ``nibble_perm`` / ``nibble_mask``: the same over all 2D halves; ``*_exact`` without
      global inversion. No block symmetry is left to forgive: LE keeps blocks in place, so the
      orientation is decided by the data (continuity across blocks);
    * with ``plain`` images, ``blocks_exact``: share of their blocks that decrypt exactly.
    """
    if (true_key.image_size, true_key.block_size, true_key.channels) != (
        estimate.image_size,
        estimate.block_size,
        estimate.channels,
    ):
        raise ValueError("the estimate's geometry differs from the key's")
    tp, tm = true_key.nibble_perm.numpy(), true_key.nibble_mask.numpy()
    ep, em = estimate.nibble_perm.numpy(), estimate.nibble_mask.numpy()
    out = _score_parts(tp, tm, ep, em)
    if plain is not None:
        out["blocks_exact"] = blocks_exact(true_key, estimate, plain)
    return out


def blocks_exact(true_key, estimate, plain: np.ndarray) -> float:
    """Share of the blocks of ``plain`` (N, C, H, W) that decrypt exactly under ``estimate``
    after encryption with ``true_key`` (any block scheme)."""
    m = true_key.block_size
    rec = decrypt(encrypt(plain, true_key, layout="CHW"), estimate, layout="CHW")
    return float((to_blocks(rec, m) == to_blocks(plain, m)).all(axis=2).mean())


def _score_parts(tp, tm, ep, em) -> dict[str, Any]:
    up = tp % 2 == 0
    placed = ep == tp
    best = None
    for inv in (False, True):
        right = em == (tm ^ inv)
        row = {
            "upper_found": float((ep[up] % 2 == 0).mean()),
            "upper_placed": float(placed[up].mean()),
            "lower_placed": float(placed[~up].mean()),
            "upper_inversion": float(right[up].mean()),
            "lower_inversion": float(right[~up].mean()),
            "nibble_perm": float(placed.mean()),
            "nibble_mask": float(right.mean()),
            "inverted": inv,
        }
        if not inv:
            exact = row["nibble_mask"]
        if best is None or row["nibble_mask"] > best["nibble_mask"]:
            best = row
    best["nibble_mask_exact"] = exact
    return best
