"""K2 recovery: where each shuffled position sits in the (C, M, M) block.

Attacks step 2 of the scheme (docs/design.md section 2 "Encryption"; the paper's Sec. III-A step
3): one pixel-shuffling permutation serves every block of every image, so the D = C*M*M positions
can be placed from their pooled correlations, as in correlation attacks on permutation-only
image ciphers (Li et al., Signal Processing: Image Communication 23(3), 2008) and in Chuman and
Kiya's attack on block-and-pixel shuffling (arXiv:2211.02369). After K3 is undone (see
:mod:`.flip_mask`), nearby pixels correlate most, and the values of one pixel's channels
correlate with each other.

Steps:

1. channels (C > 1): spectral clustering of the positions into C groups of M*M (balanced by an
   assignment problem), since positions of one channel correlate more with each other: of
   the colour left after removing each block's mean, and of the k-nearest-neighbour graph of
   the raw correlations (Ng, Jordan, Weiss, NIPS 2001), whichever cuts fewer of that graph's
   edges (from a few images colour is too weak; docs/security_few_images.md); then the
   channels' relative inversion, which K3 may get wrong for anti-correlated colours, from
   the texture they share (:func:`_channel_signs`);
2. each channel: a Laplacian eigenmap of the k-nearest-neighbour graph of its correlations gives
   two coordinates (the first cosine modes of the M x M grid); the in-plane rotation is searched
   and positions are assigned to the grid (Hungarian method), from two graphs (k = 4, 8) and
   two views of the correlations, keeping the refined placement that fits best;
3. channels are aligned (the dihedral symmetry of each channel chosen to maximise same-pixel
   correlation);
4. local refinement: a quadratic assignment problem ``max sum_jk corr_jk T[rel(slot_j, slot_k)]``
   whose template ``T`` (mean correlation per channel pair and displacement, symmetrised over
   the square's symmetries) is re-estimated from the current placement (EM-like), solved by
   batches of improving pairwise swaps with the exact swap gains computed for all pairs at once.

The result is determined up to the 8 dihedral symmetries of the block (only resolvable by an
image prior, since the whole image can be transformed the same way; see :mod:`.blocks`) and up
to the order of the channels (resolved by a prior in :mod:`.priors`).

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer import BlockKey, encrypt
    >>> from timm_ppconvmixer.attacks.solvers.blocks import to_blocks
    >>> from timm_ppconvmixer.attacks.solvers.flip_mask import position_stats, recover_flip_mask
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:500, None]
    >>> key = BlockKey.generate(28, 4, 1, seed=1)
    >>> b = to_blocks(encrypt(x, key, layout="CHW"), 4)
    >>> signs = recover_flip_mask(b).signs
    >>> est = recover_pixel_perm(position_stats(b, drop_constant=True).flipped(signs), 1, 4)
    >>> est.slot.shape
    (16,)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.linalg import eigsh

from .blocks import SYMMETRIES, symmetry_index_map
from .flip_mask import PositionStats
from .qap import fit as _fit
from .qap import grid as _grid
from .qap import qap_swaps as _qap_swaps
from .qap import slot_objective
from .qap import template as _template

__all__ = ["PixelPermEstimate", "recover_pixel_perm", "slot_objective"]


@dataclass
class PixelPermEstimate:
    """``slot[j]``: the estimated plain in-block position (c*M*M + y*M + x) of encrypted position
    ``j``, i.e. an estimate of ``pixel_perm`` up to a block symmetry and the channel order."""

    slot: np.ndarray  # (D,) int64, a permutation
    confidence: float  # share of positions whose best same-channel partner is a grid neighbour
    objective: float
    rounds: int
    # positions whose K3 sign estimate the channel analysis complemented (see
    # :func:`_channel_signs`): undo them too before using ``slot``
    flipped: np.ndarray | None = None


def _spectral(a: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading non-trivial coordinates of a Laplacian eigenmap of affinity ``a``.

    ``L v = lambda Deg v`` is solved through ``Deg^-1/2 A Deg^-1/2`` (dense up to D = 600);
    larger sparse graphs use shift-invert Lanczos near 0, since the small Laplacian eigenvalues
    of a grid are close together and plain Lanczos needs thousands of products.
    """
    n = a.shape[0]
    deg = a.sum(1)
    deg = np.where(deg > 0, deg, 1.0)
    k = min(k, n - 1)
    if n <= 600 or (a > 0).mean() > 0.1:
        inv_sqrt = 1.0 / np.sqrt(deg)
        s = inv_sqrt[:, None] * a * inv_sqrt[None, :]
        if n <= 600:
            vals, vecs = np.linalg.eigh(s)
        else:
            vals, vecs = eigsh(s, k=k + 1, which="LA", v0=np.full(n, 1.0 / np.sqrt(n)))
        order = np.argsort(-vals)[: k + 1]
        return vecs[:, order[1:]] * inv_sqrt[:, None]
    adj = sparse.csr_matrix(a)
    lap = sparse.diags(deg) - adj
    vals, vecs = eigsh(
        lap.tocsc(), k=k + 1, M=sparse.diags(deg).tocsc(), sigma=-1e-6, which="LM",
        v0=np.full(n, 1.0 / np.sqrt(n)),
    )  # fmt: skip
    order = np.argsort(vals)[: k + 1]
    return vecs[:, order[1:]]


def _knn_affinity(r: np.ndarray, k: int) -> np.ndarray:
    n = r.shape[0]
    r = r.copy()
    np.fill_diagonal(r, -np.inf)
    k = max(1, min(k, n - 1))
    nearest = np.argpartition(-r, k - 1, axis=1)[:, :k]
    a = np.zeros_like(r)
    a[np.repeat(np.arange(n), k), nearest.reshape(-1)] = 1.0
    return np.maximum(a, a.T)


def _residual_corr(cov: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Correlations after removing each block's mean over every group of positions.

    The block mean (brightness, colour) dominates raw correlations: removing it over all
    positions makes channels stand out (colour varies by channel), and removing it per channel
    makes correlations fall off faster with distance (sharper placement).
    """
    # (I - P) cov (I - P) with P the per-group averaging, in O(D^2) instead of two D^3 products
    _, labels = np.unique(groups, return_inverse=True)
    avg = np.zeros((cov.shape[0], labels.max() + 1))
    avg[np.arange(len(labels)), labels] = 1.0
    avg /= avg.sum(0, keepdims=True)
    col = cov @ avg  # (D, G): mean covariance of j with group g
    both = avg.T @ col  # (G, G)
    res = cov - col[:, labels] - col[:, labels].T + both[np.ix_(labels, labels)]
    sd = np.sqrt(np.clip(np.diag(res), 0, None))
    ok = sd > 1e-9
    r = res / np.outer(np.where(ok, sd, 1.0), np.where(ok, sd, 1.0))
    r[~ok, :] = 0.0
    r[:, ~ok] = 0.0
    return np.clip(r, -1.0, 1.0)


def _ideal_eigenmap(m: int) -> np.ndarray:
    """Laplacian eigenmap of an ideal M x M grid: the first cosine modes, standardised."""
    gy, gx = np.divmod(np.arange(m * m), m)
    ideal = np.stack([np.cos(np.pi * (gx + 0.5) / m), np.cos(np.pi * (gy + 0.5) / m)], 1)
    return (ideal - ideal.mean(0)) / ideal.std(0)


def _layout_channel(
    r: np.ndarray, m: int, angles: int = 45, finalists: int = 3, neighbours: int = 4
) -> np.ndarray:
    """Grid cell (y*M + x) for each of the M*M positions of one channel, from correlations.

    The two leading Laplacian-eigenmap coordinates of the k-nearest-neighbour graph are matched
    to those of an ideal grid (cosines), over in-plane rotations in [0, pi/2) (the other
    rotations and the reflections are symmetries of the grid, i.e. of the answer); the best
    rotations by a cheap nearest-point cost get an exact assignment (Hungarian method).
    """
    if m == 1:
        return np.zeros(1, dtype=np.int64)
    coords = _spectral(_knn_affinity(r, neighbours if m > 2 else 2), 2)
    coords = (coords - coords.mean(0)) / np.maximum(coords.std(0), 1e-12)
    ideal = _ideal_eigenmap(m)
    rotated = []
    for theta in np.linspace(0, np.pi / 2, angles, endpoint=False):
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        c2 = coords @ rot.T
        d2 = (c2**2).sum(1)[:, None] + (ideal**2).sum(1)[None, :] - 2.0 * (c2 @ ideal.T)
        rotated.append((d2.min(1).sum() + d2.min(0).sum(), theta))
    rotated.sort(key=lambda item: item[0])
    best, best_cost = None, np.inf
    for _, theta in rotated[:finalists]:
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        c2 = coords @ rot.T
        d2 = ((c2[:, None, :] - ideal[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(d2)
        cost = d2[rows, cols].sum()
        if cost < best_cost:
            best, best_cost = cols.astype(np.int64), cost
    return best


def _channel_groups(
    r: np.ndarray, channels: int, m: int, seed: int, affinity: bool = False
) -> np.ndarray:
    """Channel label of each position: balanced spectral clustering into C groups of M*M.

    ``r``: correlations (the affinity is their positive part, squared), or with ``affinity``
    an affinity matrix as it is (e.g. a k-nearest-neighbour graph)."""
    d = r.shape[0]
    size = m * m
    a = r.copy() if affinity else np.clip(r, 0, None) ** 2
    np.fill_diagonal(a, 0.0)
    emb = _cluster_embedding(a, channels) if affinity else _spectral(a, channels)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    # farthest-point start, Lloyd iterations, then one balanced assignment (C groups of M*M)
    rng = np.random.default_rng(seed)
    centers = [emb[rng.integers(d)]]
    for _ in range(1, channels):
        dist = np.min([((emb - c) ** 2).sum(1) for c in centers], axis=0)
        centers.append(emb[int(np.argmax(dist))])
    centers = np.stack(centers)
    for _ in range(50):
        labels = (((emb[:, None, :] - centers[None]) ** 2).sum(-1)).argmin(1)
        new = np.stack(
            [
                emb[labels == c].mean(0) if (labels == c).any() else centers[c]
                for c in range(channels)
            ]
        )
        if np.allclose(new, centers):
            break
        centers = new
    cost = ((emb[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # (D, C)
    rows, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))
    labels = np.empty(d, dtype=np.int64)
    labels[rows] = cols // size
    return labels


def _cluster_embedding(a: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading eigenvectors of ``Deg^-1/2 A Deg^-1/2`` (trivial one included), as in
    Ng, Jordan and Weiss's spectral clustering (NIPS 2001): a graph of ``k`` (nearly)
    disconnected parts spans them (the Laplacian path above, which drops the trivial mode,
    mixed such parts on sparse graphs)."""
    deg = a.sum(1)
    inv_sqrt = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    s = inv_sqrt[:, None] * a * inv_sqrt[None, :]
    if s.shape[0] <= 1024:
        vals, vecs = np.linalg.eigh(s)
    else:
        vals, vecs = eigsh(s, k=k, which="LA", v0=np.full(s.shape[0], 1.0))
    return vecs[:, np.argsort(-vals)[:k]] * inv_sqrt[:, None]


def _cut(a: np.ndarray, labels: np.ndarray) -> float:
    """Share of the affinity ``a`` between positions of different groups."""
    return float(a[labels[:, None] != labels[None, :]].sum() / max(a.sum(), 1e-12))


def _refine(r: np.ndarray, slot: np.ndarray, channels: int, m: int, rounds: int, iters: int):
    """EM-like: template from the placement, then swaps; until the placement is stable."""
    for done in range(1, rounds + 1):
        b = _template(r, slot, channels, m)
        new = _qap_swaps(r, slot, b, iters)
        if np.array_equal(new, slot):
            return slot, done
        slot = new
    return slot, rounds


def _place(
    stats: PositionStats, labels: np.ndarray, channels: int, m: int, em_rounds: int, iters: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """Lay out every channel of a grouping, align the channels, refine jointly."""
    m2 = m * m
    d = len(labels)
    max_swap_iter = iters
    r = _residual_corr(stats.cov, labels)
    raw = stats.corr
    slot = np.empty(d, dtype=np.int64)
    members = [np.nonzero(labels == c)[0] for c in range(channels)]
    rounds = 0
    for c, idx in enumerate(members):
        # two views of the same data: per-channel residual correlations fall off faster with
        # distance, raw ones are less noisy on sparse data (blank backgrounds); keep the
        # placement that fits both best. From few images the eigenmap of one neighbour graph
        # can fold (a local optimum the swaps do not leave: 2 % placed for one channel of 10
        # photographs at 224/16, 99 % from the 8-neighbour graph), so two graphs start it
        subs = [r[np.ix_(idx, idx)], raw[np.ix_(idx, idx)]]
        best, best_fit = None, -np.inf
        for sub, nb in ((sub, nb) for nb in (4, 8) for sub in subs):
            start = _layout_channel(sub, m, neighbours=nb)
            cells, k = _refine(sub, start, 1, m, em_rounds, max_swap_iter)
            rounds = max(rounds, k)
            fit = sum(_fit(view, cells, 1, m) for view in subs)
            if fit > best_fit:
                best, best_fit = cells, fit
        slot[idx] = c * m2 + best
    # align channels to channel 0: the symmetry that puts one pixel's values together
    item0 = np.empty(m2, dtype=np.int64)
    item0[slot[members[0]]] = members[0]
    for c in range(1, channels):
        idx = members[c]
        options = [symmetry_index_map(g, m, m)[slot[idx] - c * m2] for g in SYMMETRIES]
        best = max(options, key=lambda cells: r[idx, item0[cells]].sum())
        slot[idx] = c * m2 + best
    if channels > 1:  # joint pass: lets positions move between channels and pixels
        slot, k = _refine(r, slot, channels, m, 2, max(10, max_swap_iter // 4))
        rounds = max(rounds, k)
    return slot, rounds, r


def recover_pixel_perm(
    stats: PositionStats,
    channels: int,
    block_size: int,
    *,
    em_rounds: int = 4,
    max_swap_iter: int = 100,
    seed: int = 0,
) -> PixelPermEstimate:
    """Estimate K2 (up to a block symmetry and the channel order) from the pooled statistics of
    blocks whose flips were already undone (``PositionStats.flipped``)."""
    m = block_size
    m2 = m * m
    d = stats.cov.shape[0]
    if m2 > 512:  # each swap pass costs D^3: keep large blocks (32x32) to minutes, not hours
        em_rounds, max_swap_iter = min(em_rounds, 2), min(max_swap_iter, 30)
    if d != channels * m2:
        raise ValueError(f"statistics of {d} positions do not fit C={channels}, M={m}")
    if channels > 1:
        labels = _channel_groups(_residual_corr(stats.cov, np.zeros(d)), channels, m, seed)
        # few images: the colour left after removing each block's mean is too weak to separate
        # channels (2 photographs at 224/16: 67 % of positions in the right channel), while
        # every position's nearest neighbours by raw correlation lie in its own channel; the
        # balanced spectral cut of that k-nearest-neighbour graph separates them (100 % there).
        # Keep the grouping that cuts fewer of the graph's edges.
        knn = _knn_affinity(stats.corr, 4)
        for k in (4, 8):  # a sparser graph separates more often, a denser one is less noisy
            alt = _channel_groups(_knn_affinity(stats.corr, k), channels, m, seed, affinity=True)
            if _cut(knn, alt) < _cut(knn, labels):
                labels = alt
    else:
        labels = np.zeros(d, dtype=np.int64)
    flipped = _channel_signs(stats.cov, labels, channels) < 0
    if flipped.any():
        stats = stats.flipped(np.where(flipped, -1, 1))
    slot, rounds, r = _place(stats, labels, channels, m, em_rounds, max_swap_iter)
    objective = slot_objective(r, slot, _template(r, slot, channels, m))
    return PixelPermEstimate(slot, _confidence(r, slot, channels, m), objective, rounds, flipped)


def _channel_signs(cov: np.ndarray, labels: np.ndarray, channels: int) -> np.ndarray:
    """+1/-1 per position: whether its channel is inverted relative to channel 0.

    K3 from correlation signs (:mod:`.flip_mask`) fixes the flips of one channel relative to
    another by the sign of their cross-channel correlations, and a few photographs can have
    anti-correlated channels (a yellow flower on green leaves: blue against green, -0.8 over
    the pixels of 2 such crops), which complements a whole channel. Texture is shared by the
    channels whatever the colours: with each block's mean removed per channel, a position's
    strongest cross-channel partner (the same pixel) mostly correlates positively. Per pair of
    channels, ``w`` is the mean of those strongest partners' correlations; the relative signs
    maximise ``sum w_cd s_c s_d`` over every pair (one weak pair, e.g. blue against red, is
    outvoted by the other two).
    """
    signs = np.ones(len(labels), dtype=np.int8)
    if channels < 2:
        return signs
    r = _residual_corr(cov, labels)
    members = [np.nonzero(labels == c)[0] for c in range(channels)]
    w = np.zeros((channels, channels))
    for c in range(channels):
        for e in range(c + 1, channels):
            cross = r[np.ix_(members[c], members[e])]
            strongest = cross[np.arange(len(members[c])), np.abs(cross).argmax(1)]
            w[c, e] = w[e, c] = strongest.mean()
    best = max(
        (np.array((1,) + rest) for rest in product((1, -1), repeat=channels - 1)),
        key=lambda s: float(s @ w @ s),
    )
    for c in range(1, channels):
        if best[c] < 0:
            signs[members[c]] = -1
    return signs


def _confidence(r: np.ndarray, slot: np.ndarray, channels: int, m: int) -> float:
    if m == 1:
        return 1.0
    c, y, x = _grid(channels, m)
    cs, ys, xs = c[slot], y[slot], x[slot]
    same = cs[:, None] == cs[None, :]
    rr = np.where(same, r, -np.inf)
    np.fill_diagonal(rr, -np.inf)
    best = np.argmax(rr, axis=1)
    dist = np.abs(ys - ys[best]) + np.abs(xs - xs[best])
    return float((dist == 1).mean())
