"""Quadratic assignment used by the K2 attack (:mod:`.pixel_shuffle`).

Placing the D shuffled positions on the (C, M, M) grid is a Koopmans-Beckmann quadratic
assignment problem ``max sum_jk corr_jk T[rel(slot_j, slot_k)]``, where the template ``T`` is the
mean correlation per channel pair and displacement (docs/design.md section 2 "Encryption",
step 3 undone). Local search by pairwise swaps, all swap gains from one matrix product.

Example:
    >>> import numpy as np
    >>> r = np.eye(4)
    >>> slot_objective(r, np.arange(4), np.zeros((4, 4)))
    0.0
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit", "grid", "qap_swaps", "slot_objective", "template"]


def grid(channels: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.arange(channels * m * m)
    return s // (m * m), (s % (m * m)) // m, s % m


def _relation_index(channels: int, m: int) -> np.ndarray:
    """``rel[p, q]``: flat index of (channel p, channel q, dy + m - 1, dx + m - 1)."""
    c, y, x = grid(channels, m)
    w = 2 * m - 1
    dy = y[None, :] - y[:, None] + m - 1
    dx = x[None, :] - x[:, None] + m - 1
    return ((c[:, None] * channels + c[None, :]) * w + dy) * w + dx


def template(r: np.ndarray, slot: np.ndarray, channels: int, m: int) -> np.ndarray:
    """Mean correlation per relation under the placement ``slot``, symmetrised over D4."""
    rel_full = _relation_index(channels, m)
    rel = rel_full[np.ix_(slot, slot)]
    off = ~np.eye(len(slot), dtype=bool)
    w = 2 * m - 1
    size = channels * channels * w * w
    sums = np.bincount(rel[off], weights=r[off], minlength=size)
    counts = np.bincount(rel[off], minlength=size).astype(np.float64)
    sums = sums.reshape(channels, channels, w, w)
    counts = counts.reshape(channels, channels, w, w)
    # natural images are (nearly) mirror- and rotation-symmetric in their correlations, and the
    # placement is only defined up to those symmetries anyway: pooling the bins removes noise
    variants_s = [sums, sums[:, :, ::-1, :], sums[:, :, :, ::-1], sums[:, :, ::-1, ::-1]]
    variants_c = [counts, counts[:, :, ::-1, :], counts[:, :, :, ::-1], counts[:, :, ::-1, ::-1]]
    variants_s += [v.transpose(0, 1, 3, 2) for v in variants_s]
    variants_c += [v.transpose(0, 1, 3, 2) for v in variants_c]
    s_tot, c_tot = sum(variants_s), sum(variants_c)
    t = np.where(c_tot > 0, s_tot / np.maximum(c_tot, 1), 0.0)
    b = t.reshape(-1)[rel_full]
    np.fill_diagonal(b, 0.0)
    return b


def slot_objective(r: np.ndarray, slot: np.ndarray, b: np.ndarray) -> float:
    """``sum_jk r_jk B[slot_j, slot_k]`` (``B`` has a zero diagonal, so ``r``'s is ignored)."""
    return float(np.einsum("ij,ij->", r, b[np.ix_(slot, slot)]))


def qap_swaps(r: np.ndarray, slot: np.ndarray, b: np.ndarray, max_iter: int) -> np.ndarray:
    """Local search over pairwise swaps of slots, maximising :func:`slot_objective`.

    For symmetric F, G with zero diagonals the gain of swapping items a and b is
    ``2 [(FG)_ab + (FG)_ba - (FG)_aa - (FG)_bb + 2 F_ab G_ab]``, so one matrix product gives
    the gains of all D^2 swaps; a batch of disjoint improving swaps is applied per product.
    """
    f = r.astype(np.float32).copy()
    np.fill_diagonal(f, 0.0)
    b = b.astype(np.float32)
    slot = slot.copy()
    current = slot_objective(f, slot, b)
    for _ in range(max_iter):
        g = b[np.ix_(slot, slot)]
        fg = f @ g
        d = np.diag(fg)
        gain = 2.0 * (fg + fg.T - d[:, None] - d[None, :] + 2.0 * f * g)
        np.fill_diagonal(gain, 0.0)
        gain = np.triu(gain, 1)
        if gain.max() <= 1e-6 * max(abs(current), 1.0):
            break
        ii, jj = np.nonzero(gain > 0)
        order = np.argsort(-gain[ii, jj])
        used = np.zeros(len(slot), dtype=bool)
        batch = []
        for k in order[: 4 * len(slot)]:
            a, c = ii[k], jj[k]
            if not used[a] and not used[c]:
                used[a] = used[c] = True
                batch.append((a, c))
        trial = slot.copy()
        for a, c in batch:
            trial[a], trial[c] = trial[c], trial[a]
        value = slot_objective(f, trial, b)
        if value <= current:  # interacting swaps: fall back to the single best one
            a, c = batch[0]
            trial = slot.copy()
            trial[a], trial[c] = trial[c], trial[a]
            value = slot_objective(f, trial, b)
            if value <= current:
                break
        slot, current = trial, value
    return slot


def fit(r: np.ndarray, slot: np.ndarray, channels: int, m: int) -> float:
    """Pearson correlation between the correlations and the template under ``slot``."""
    b = template(r, slot, channels, m)[np.ix_(slot, slot)]
    off = ~np.eye(len(slot), dtype=bool)
    x, y = r[off], b[off]
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])
