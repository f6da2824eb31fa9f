"""K1 recovery: a jigsaw-puzzle solver over the block grid, pooled over every image.

Attacks step 1 of the scheme (docs/design.md section 2 "Encryption"; the paper's Sec. III-A
step 2): one block permutation serves every image, so once K2 and K3 are undone (see
:mod:`.pixel_shuffle`, :mod:`.flip_mask`) each encrypted block position ``i`` is a jigsaw piece
with N pictures on it, and the edge dissimilarity of two pieces is summed over all N images.
That makes the puzzle far easier than the single-image puzzles of the jigsaw literature
(Chuman, Kurihara and Kiya, "On the security of block scrambling-based EtC systems against
extended jigsaw puzzle solver attacks", IEICE Trans. Inf. & Syst. E101-D(1), 2018; Chuman and
Kiya, arXiv:2211.02369 for block-and-pixel shuffling).

* Dissimilarity: prediction-based (D. Pomeranz, M. Shemesh, O. Ben-Shahar, CVPR 2011) in the
  squared form, both ways across the edge: ``||2 a_last - a_prev - b_first||^2 +
  ||2 b_first - b_next - a_last||^2``, pooled over images. Squared errors make the pooled sum
  a few Gram-matrix products, whatever N is.
* Assembly: Kruskal-like merging of clusters along the most *confident* edges first (the
  dissimilarity divided by the best alternative of either piece, as in A. C. Gallagher,
  "Jigsaw puzzles with pieces of unknown orientation", CVPR 2012), refusing merges that
  overlap or outgrow the grid; the remaining pieces fill the free cells greedily, for every
  placement of the main cluster in the frame.
* Refinement: pairwise swaps of cells while the total edge dissimilarity falls.
* Blank borders: rows or columns of blank pieces on the border can move to the opposite side
  without changing any edge (a cyclic-shift ambiguity); they are split evenly (prior: content is
  centred in the frame, true of Fashion-MNIST) and reported.

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer.attacks.solvers.blocks import to_blocks
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:300, None]
    >>> pieces = to_blocks(x, 4).reshape(300, 49, 1, 4, 4)
    >>> order = np.random.default_rng(0).permutation(49)
    >>> sol = solve_jigsaw(pieces[:, order], (7, 7))
    >>> float((sol.place == order).mean()) > 0.9
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .frame import blank_pieces, centre_blank_border, frame_prior

__all__ = ["JigsawSolution", "edge_dissimilarities", "solve_jigsaw"]

_CHUNK_VALUES = 1 << 24  # floats per chunk of images when pooling edge statistics


@dataclass
class JigsawSolution:
    """``place[i]``: grid cell (row-major) of piece ``i``; an estimate of ``block_perm``."""

    place: np.ndarray  # (n,) int64, a permutation
    cost: float  # total edge dissimilarity of the layout
    confidence: float  # share of layout edges that are mutual best buddies
    blank_pieces: int  # pieces with the same constant content in every image
    notes: list[str] = field(default_factory=list)


def edge_dissimilarities(pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, tb)``: ``lr[a, b]`` for piece a left of b, ``tb[a, b]`` for a above b, pooled.

    ``pieces``: ``(N, n, C, M, M)`` (uint8 or float), the pieces of every image in the same
    piece order.
    """
    n_img, n = pieces.shape[:2]
    m = pieces.shape[-1]
    lr = np.zeros((n, n))
    tb = np.zeros((n, n))
    per_image = n * pieces[0, 0].size
    step = max(1, _CHUNK_VALUES // max(per_image, 1))
    for start in range(0, n_img, step):
        chunk = pieces[start : start + step].astype(np.float32)
        lr += _pair_cost(chunk, m)
        tb += _pair_cost(np.swapaxes(chunk, -1, -2), m)
    np.fill_diagonal(lr, np.inf)
    np.fill_diagonal(tb, np.inf)
    return lr, tb


def _pair_cost(x: np.ndarray, m: int) -> np.ndarray:
    """Pooled left-right cost for pieces ``x (N, n, C, M, M)`` (columns are the last axis)."""
    last, first = x[..., -1], x[..., 0]
    if m > 1:
        pred_right = 2 * last - x[..., -2]  # what a predicts for b's first column
        pred_left = 2 * first - x[..., 1]  # what b predicts for a's last column
    else:
        pred_right, pred_left = last, first

    def flat(v: np.ndarray) -> np.ndarray:
        return np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)

    p, e = flat(pred_right), flat(first)  # a's prediction vs b's edge
    q, f = flat(pred_left), flat(last)  # b's prediction vs a's edge
    cost = (p * p).sum(1)[:, None] + (e * e).sum(1)[None, :] - 2.0 * (p @ e.T)
    cost += (q * q).sum(1)[None, :] + (f * f).sum(1)[:, None] - 2.0 * (f @ q.T)
    return np.maximum(cost, 0.0).astype(np.float64)


def _ratios(d: np.ndarray) -> np.ndarray:
    """Gallagher-style confidence: cost over the best alternative of either piece (lower is
    surer); ties between blank pieces give 1."""
    n = d.shape[0]
    eps = 1e-9 + 1e-6 * float(np.median(d[np.isfinite(d)])) if n > 1 else 1e-9
    order_r = np.argsort(d, axis=1)[:, :2]
    order_c = np.argsort(d, axis=0)[:2, :]
    best_r = d[np.arange(n), order_r[:, 0]]
    second_r = d[np.arange(n), order_r[:, 1]] if n > 2 else best_r
    best_c = d[order_c[0], np.arange(n)]
    second_c = d[order_c[1], np.arange(n)] if n > 2 else best_c
    cols = np.arange(n)
    alt_r = np.where(order_r[:, :1] == cols[None, :], second_r[:, None], best_r[:, None])
    alt_c = np.where(order_c[:1, :] == cols[:, None], second_c[None, :], best_c[None, :])
    alt = np.minimum(alt_r, alt_c)
    return (d + eps) / (alt + eps)


def _assemble(lr: np.ndarray, tb: np.ndarray, grid: tuple[int, int]) -> list[dict]:
    """Merge pieces into clusters ``{piece: (row, col)}`` along the surest edges first."""
    n = lr.shape[0]
    gh, gw = grid
    edges = []
    for rel, d in ((0, lr), (1, tb)):
        ratio = _ratios(d)
        a, b = np.nonzero(np.isfinite(d))
        edges.append(np.stack([ratio[a, b], d[a, b], a, b, np.full(a.size, rel)], 1))
    e = np.concatenate(edges)
    e = e[np.lexsort((e[:, 1], e[:, 0]))]
    cluster_of = list(range(n))
    clusters: dict[int, dict[int, tuple[int, int]]] = {i: {i: (0, 0)} for i in range(n)}
    merges = 0
    for _, _, a, b, rel in e:
        a, b = int(a), int(b)
        ca, cb = cluster_of[a], cluster_of[b]
        if ca == cb:
            continue
        pa, pb = clusters[ca][a], clusters[cb][b]
        dy, dx = (0, 1) if rel == 0 else (1, 0)
        oy, ox = pa[0] + dy - pb[0], pa[1] + dx - pb[1]
        occupied = set(clusters[ca].values())
        moved = {p: (y + oy, x + ox) for p, (y, x) in clusters[cb].items()}
        if occupied.intersection(moved.values()):
            continue
        ys = [y for y, _ in occupied] + [y for y, _ in moved.values()]
        xs = [x for _, x in occupied] + [x for _, x in moved.values()]
        if max(ys) - min(ys) >= gh or max(xs) - min(xs) >= gw:
            continue
        if len(clusters[cb]) > len(clusters[ca]):  # move the smaller cluster (cheaper)
            moved = {p: (y - oy, x - ox) for p, (y, x) in clusters[ca].items()}
            ca, cb = cb, ca
        clusters[ca].update(moved)
        for p in moved:
            cluster_of[p] = ca
        del clusters[cb]
        merges += 1
        if merges == n - 1:
            break
    return sorted(clusters.values(), key=len, reverse=True)


def _layout_cost(lay: np.ndarray, lr: np.ndarray, tb: np.ndarray) -> float:
    return float(lr[lay[:, :-1], lay[:, 1:]].sum() + tb[lay[:-1, :], lay[1:, :]].sum())


def _fill(lay: np.ndarray, free: list[int], lr: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Put the ``free`` pieces into the empty cells (-1), surest cell/piece pairs first."""
    lay = lay.copy()
    gh, gw = lay.shape
    free = list(free)
    while free:
        empty = np.argwhere(lay < 0)
        pieces = np.array(free)
        best = None
        for y, x in empty:
            cost = np.zeros(len(pieces))
            count = 0
            if x > 0 and lay[y, x - 1] >= 0:
                cost += lr[lay[y, x - 1], pieces]
                count += 1
            if x < gw - 1 and lay[y, x + 1] >= 0:
                cost += lr[pieces, lay[y, x + 1]]
                count += 1
            if y > 0 and lay[y - 1, x] >= 0:
                cost += tb[lay[y - 1, x], pieces]
                count += 1
            if y < gh - 1 and lay[y + 1, x] >= 0:
                cost += tb[pieces, lay[y + 1, x]]
                count += 1
            if count == 0:
                continue
            k = int(np.argmin(cost))
            key = (-count, cost[k] / count)
            if best is None or key < best[0]:
                best = (key, y, x, int(pieces[k]))
        if best is None:  # nothing placed yet next to any empty cell: start anywhere
            y, x = empty[0]
            best = (None, y, x, free[0])
        _, y, x, p = best
        lay[y, x] = p
        free.remove(p)
    return lay


def _cell_costs(lay: np.ndarray, lr: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """``cc[cell, piece]``: cost of the edges of ``piece`` if it sat at ``cell``, neighbours
    as they are now."""
    gh, gw = lay.shape
    n = lay.size
    lr0 = np.where(np.isfinite(lr), lr, 0.0)
    tb0 = np.where(np.isfinite(tb), tb, 0.0)
    cc = np.zeros((n, lr.shape[0]))
    flat = lay.reshape(-1)
    for cell in range(n):
        y, x = divmod(cell, gw)
        if x > 0:
            cc[cell] += lr0[flat[cell - 1]]
        if x < gw - 1:
            cc[cell] += lr0[:, flat[cell + 1]]
        if y > 0:
            cc[cell] += tb0[flat[cell - gw]]
        if y < gh - 1:
            cc[cell] += tb0[:, flat[cell + gw]]
    return cc


def _refine(lay: np.ndarray, lr: np.ndarray, tb: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Pairwise swaps while the layout cost falls (candidates from the cell-cost table, each
    checked exactly)."""
    lay = lay.copy()
    cost = _layout_cost(lay, lr, tb)
    for _ in range(max_iter):
        flat = lay.reshape(-1)
        cc = _cell_costs(lay, lr, tb)
        own = cc[np.arange(flat.size), flat]
        gain = cc[:, flat] + cc[:, flat].T - own[:, None] - own[None, :]
        cand = np.argwhere(np.triu(gain < -1e-9, 1))
        if cand.size == 0:
            break
        improved = False
        for p, q in cand[np.argsort(gain[cand[:, 0], cand[:, 1]])][:50]:
            trial = flat.copy()
            trial[p], trial[q] = trial[q], trial[p]
            value = _layout_cost(trial.reshape(lay.shape), lr, tb)
            if value < cost - 1e-9:
                lay, cost, improved = trial.reshape(lay.shape), value, True
                break
        if not improved:
            break
    return lay


def solve_jigsaw(pieces: np.ndarray, grid: tuple[int, int]) -> JigsawSolution:
    """Place the ``n`` pieces ``(N, n, C, M, M)`` on the ``grid`` (rows, cols)."""
    gh, gw = grid
    n = pieces.shape[1]
    if n != gh * gw:
        raise ValueError(f"{n} pieces do not fill a {gh}x{gw} grid")
    blank = blank_pieces(pieces)
    if n == 1:
        return JigsawSolution(np.zeros(1, dtype=np.int64), 0.0, 1.0, int(blank.sum()))
    lr, tb = edge_dissimilarities(pieces)
    clusters = _assemble(lr, tb, grid)
    main = clusters[0]
    ys = np.array([y for y, _ in main.values()])
    xs = np.array([x for _, x in main.values()])
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    rest = [p for c in clusters[1:] for p in c]
    best, best_cost = None, np.inf
    for oy in range(gh - h + 1):
        for ox in range(gw - w + 1):
            lay = np.full((gh, gw), -1, dtype=np.int64)
            for p, (y, x) in main.items():
                lay[y - ys.min() + oy, x - xs.min() + ox] = p
            lay = _fill(lay, rest, lr, tb)
            cost = _layout_cost(lay, lr, tb)
            if cost < best_cost:
                best, best_cost = lay, cost
    lay = _refine(best, lr, tb)
    lay, frame_note = frame_prior(lay, pieces, lr, tb)
    lay = _refine(lay, lr, tb)
    lay, notes = centre_blank_border(lay, blank)
    notes += frame_note
    place = np.empty(n, dtype=np.int64)
    place[lay.reshape(-1)] = np.arange(n)
    if len(clusters) > 1:
        notes.append(f"{len(clusters)} clusters before filling ({len(rest)} pieces filled)")
    if blank.sum() > 1:
        notes.append(
            f"{int(blank.sum())} blank pieces are identical in every image: their order cannot "
            "be recovered and does not matter for these images"
        )
    return JigsawSolution(
        place, _layout_cost(lay, lr, tb), _buddies(lay, lr, tb), int(blank.sum()), notes
    )


def _buddies(lay: np.ndarray, lr: np.ndarray, tb: np.ndarray) -> float:
    """Share of layout edges whose two pieces are each other's best match on that side."""
    best_right, best_left = np.argmin(lr, axis=1), np.argmin(lr, axis=0)
    best_down, best_up = np.argmin(tb, axis=1), np.argmin(tb, axis=0)
    a, b = lay[:, :-1].reshape(-1), lay[:, 1:].reshape(-1)
    c, d = lay[:-1, :].reshape(-1), lay[1:, :].reshape(-1)
    ok = np.concatenate(
        [(best_right[a] == b) & (best_left[b] == a), (best_down[c] == d) & (best_up[d] == c)]
    )
    return float(ok.mean()) if ok.size else 1.0
