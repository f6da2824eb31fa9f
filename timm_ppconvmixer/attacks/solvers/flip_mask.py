"""K3 recovery: the negative-positive flip mask from correlations between block positions.

Attacks step 3 of the scheme (docs/design.md section 2 "Encryption", the paper's Sec. III-A step
4): position ``j`` of every block becomes ``255 - v`` where ``np_mask[j]`` is set. The mask is
the same for all blocks of all images, so every block is a sample of the same D-dimensional
vector. In natural images all pixels of a small block are positively correlated (neighbours
most), so the correlation of encrypted positions ``j, k`` is ``s_j s_k r_jk`` with ``r_jk > 0``
and ``s = +-1`` the unknown flips: the sign pattern of the correlation matrix *is* the mask, up
to complementing all of it (global inversion, ``x -> 255 - x``, resolved later by a prior).

Signs are propagated along a maximum spanning tree of ``|corr|`` (the strongest, most reliable
correlations), compared with the sign pattern of the leading eigenvector (Perron vector of a
positive matrix), and both are refined by single-position flips that raise
``sum_jk corr_jk s_j s_k`` until none does. The best of the two is kept. This is the
correlation attack on permutation/flip ciphers known from the cryptanalysis of permutation-only
image ciphers (S. Li, C. Li, G. Chen, N. G. Bourbakis, K.-T. Lo, "A general quantitative
cryptanalysis of permutation-only multimedia ciphers against plaintext attacks", Signal
Processing: Image Communication 23(3), 2008) applied to the block-wise setting where one key
serves every block (T. Chuman, H. Kiya, "A jigsaw puzzle solver-based attack on block-wise
image encryption for privacy-preserving DNNs", IWAIT 2023, arXiv:2211.02369).

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer import BlockKey, encrypt
    >>> from timm_ppconvmixer.attacks.solvers.blocks import to_blocks
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:200, None]
    >>> key = BlockKey.generate(28, 4, 1, seed=1)
    >>> est = recover_flip_mask(to_blocks(encrypt(x, key, layout="CHW"), 4))
    >>> truth = key.np_mask.numpy()
    >>> bool(((est.mask == truth).all()) or ((est.mask != truth).all()))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

__all__ = ["FlipMaskEstimate", "PositionStats", "position_stats", "recover_flip_mask"]

_CHUNK = 16384  # rows per covariance chunk: bounds the float32 copy of the samples


@dataclass
class PositionStats:
    """First and second moments of the D block positions, pooled over sampled blocks."""

    mean: np.ndarray  # (D,)
    cov: np.ndarray  # (D, D)
    samples: int

    @property
    def corr(self) -> np.ndarray:
        sd = np.sqrt(np.clip(np.diag(self.cov), 0, None))
        ok = sd > 1e-9
        denom = np.outer(np.where(ok, sd, 1.0), np.where(ok, sd, 1.0))
        r = self.cov / denom
        r[~ok, :] = 0.0  # a constant position carries no correlation information
        r[:, ~ok] = 0.0
        return np.clip(r, -1.0, 1.0)

    def flipped(self, signs: np.ndarray) -> PositionStats:
        """The statistics after undoing flips: positions with ``signs == -1`` become 255 - v."""
        s = signs.astype(np.float64)
        mean = np.where(signs < 0, 255.0 - self.mean, self.mean)
        return PositionStats(mean, self.cov * np.outer(s, s), self.samples)


def position_stats(
    blocks: np.ndarray,
    max_samples: int | None = None,
    seed: int = 0,
    drop_constant: bool = False,
) -> PositionStats:
    """Mean and covariance of the block vectors ``blocks (N, n, D)`` (pooled over images and
    blocks: the key is the same for every block).

    ``max_samples`` caps the number of blocks used (a random subset; the cost is
    ``samples * D^2``). ``drop_constant`` skips blocks whose values are all equal after folding
    ``v -> min(v, 255 - v)`` (blank blocks: they say nothing about where positions lie).
    """
    flat = blocks.reshape(-1, blocks.shape[-1])
    rows = np.arange(flat.shape[0])
    if drop_constant:
        folded = np.minimum(flat, 255 - flat)
        rows = rows[folded.min(1) != folded.max(1)]
        if rows.size < 2:  # nothing but blank blocks: keep them rather than nothing
            rows = np.arange(flat.shape[0])
    if max_samples is not None and rows.size > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_samples, replace=False))
    d = flat.shape[1]
    total = np.zeros(d)
    outer = np.zeros((d, d))
    for start in range(0, rows.size, _CHUNK):
        # centring on 127.5 before the float32 product keeps the cancellation in
        # E[xx] - E[x]E[x] small
        chunk = flat[rows[start : start + _CHUNK]].astype(np.float32) - 127.5
        total += chunk.sum(0, dtype=np.float64)
        outer += (chunk.T @ chunk).astype(np.float64)
    n = max(rows.size, 1)
    mu = total / n
    cov = outer / n - np.outer(mu, mu)
    return PositionStats(mu + 127.5, cov, int(rows.size))


@dataclass
class FlipMaskEstimate:
    """Relative flips ``signs`` (+1 / -1, the first tree root fixed to +1) and the mask they give
    under the "no global inversion" choice; ``confidence`` per position in [0, 1]."""

    signs: np.ndarray  # (D,) int8
    confidence: np.ndarray  # (D,) weighted share of correlations consistent with the signs
    method: str

    @property
    def mask(self) -> np.ndarray:
        """Estimated ``np_mask`` up to global inversion (complement it for the other choice)."""
        return self.signs < 0


def _refine(signs: np.ndarray, r: np.ndarray, sweeps: int = 50) -> np.ndarray:
    """Flip single positions while that raises ``s^T r s`` (a local maximum of the energy)."""
    s = signs.astype(np.float64).copy()
    field = r @ s
    for _ in range(sweeps):
        changed = False
        for i in np.argsort(np.abs(field)):  # least supported positions first
            want = 1.0 if field[i] >= 0 else -1.0
            if want != s[i] and field[i] != 0:
                field += r[:, i] * (want - s[i])
                s[i] = want
                changed = True
        if not changed:
            break
    return s.astype(np.int8)


def _leading_eigenvector(r: np.ndarray, iters: int = 300) -> np.ndarray:
    """Power iteration (a full eigendecomposition costs minutes at D = 3072)."""
    v = np.abs(r).sum(1) + 1e-12
    v /= np.linalg.norm(v)
    for _ in range(iters):
        w = r @ v
        norm = np.linalg.norm(w)
        if norm == 0:
            break
        w /= norm
        if w @ v < 0:
            w = -w
        if np.abs(w - v).max() < 1e-10:
            v = w
            break
        v = w
    return v


def recover_flip_mask(
    blocks: np.ndarray | None = None,
    stats: PositionStats | None = None,
    max_samples: int | None = 200_000,
    seed: int = 0,
) -> FlipMaskEstimate:
    """Estimate K3 (up to global inversion) from encrypted blocks ``(N, n, D)`` or their
    :class:`PositionStats`."""
    if stats is None:
        if blocks is None:
            raise ValueError("pass blocks or stats")
        stats = position_stats(blocks, max_samples, seed)
    r = stats.corr.copy()
    np.fill_diagonal(r, 0.0)
    a = np.abs(r)
    d = r.shape[0]
    candidates: dict[str, np.ndarray] = {}
    if d > 1:
        # maximum spanning tree of |r|: minimum spanning tree of 2 - |r| (all weights > 0, so
        # scipy keeps every edge of the dense graph)
        weights = 2.0 - a
        np.fill_diagonal(weights, 0.0)
        tree = minimum_spanning_tree(weights)
        tree = tree + tree.T
        root = int(np.argmax(a.sum(1)))
        order, parent = breadth_first_order(tree, root, directed=False)
        s = np.ones(d, dtype=np.int8)
        for node in order[1:]:
            p = parent[node]
            s[node] = s[p] * (1 if r[p, node] >= 0 else -1)
        candidates["spanning-tree"] = _refine(s, r)
        v = _leading_eigenvector(stats.corr)
        s2 = np.where(v >= 0, 1, -1).astype(np.int8)
        s2 = s2 if s2[root] == 1 else -s2
        candidates["eigenvector"] = _refine(s2, r)
    else:
        candidates["single"] = np.ones(1, dtype=np.int8)
    best = max(candidates, key=lambda k: float(candidates[k] @ r @ candidates[k]))
    s = candidates[best]
    agree = (np.sign(r) * np.outer(s, s)) > 0
    weight = a.sum(1)
    conf = np.where(weight > 0, (a * agree).sum(1) / np.where(weight > 0, weight, 1), 0.0)
    return FlipMaskEstimate(s, conf, best)
