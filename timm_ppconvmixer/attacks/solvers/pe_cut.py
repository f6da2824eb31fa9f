"""Which pixels of one PE-encrypted image are bright: an exact minimum cut.

With a fresh PE key per image (``pe-per-image``) an inverted value ``255 - v`` is, seen alone,
as likely as ``v``. Write a plain channel value as ``127.5 + b m`` with ``m = |v - 127.5|``
(the *fold*, which encryption does not change) and ``b = +-1`` its brightness side. For two
neighbouring values with folds ``m_p, m_q`` the smoothness cost ``|x_p - x_q|`` is
``|m_p - m_q|`` when their sides agree and ``m_p + m_q`` when not: the disagreement costs
``2 min(m_p, m_q)`` more, for every pair. Smoothness alone is therefore minimised by putting
every value on one side (the folded image ``min(v, 255 - v)``, or its inverse): no
neighbour-consistency attack can tell a bright region from its inversion, only where the
region's values pass through mid-grey. What decides it is a prior on values (a histogram of
public images of the same kind, and the mean image), as unary terms.

The energy "unary prior + ``2 min(m_p, m_q)`` per disagreeing neighbour pair (and per
disagreeing pair of channels of one pixel: natural colours are near the grey axis)" is
submodular, so a minimum s-t cut finds its exact minimum (D. M. Greig, B. T. Porteous,
A. H. Seheult, "Exact maximum a posteriori estimation for binary images", J. R. Stat. Soc. B
51(2), 1989; Y. Boykov, V. Kolmogorov, "An experimental comparison of min-cut/max-flow
algorithms for energy minimization in vision", IEEE TPAMI 26(9), 2004). All images of a
batch are disjoint parts of one graph, solved by one max-flow call per chunk.

Example:
    >>> import numpy as np
    >>> mag = np.full((1, 1, 4, 4), 100.0)
    >>> dark = np.zeros_like(mag); dark[..., 0, 0] = 50.0  # one pixel's prior wants bright
    >>> bright_sides(mag, dark, np.zeros_like(mag)).all()  # its neighbours follow it
    np.True_
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from .pe_sync import OFFSETS

__all__ = ["bright_sides"]

_SCALE = 4.0  # capacities are integers: costs in quarter grey levels
_NODES_PER_CALL = 400_000  # bounds the total flow of one call below int32


def _shift_index(shape: tuple[int, ...], dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat node indices of the pairs (p, p + (dy, dx)) inside (B, C, H, W) arrays."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    h, w = shape[-2:]
    ys, yq = slice(0, h - dy), slice(dy, h)
    xs, xq = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    return idx[..., ys, xs].reshape(-1), idx[..., yq, xq].reshape(-1)


def bright_sides(
    mag: np.ndarray,
    cost_dark: np.ndarray,
    cost_bright: np.ndarray,
    *,
    channel_weight: float = 0.5,
) -> np.ndarray:
    """The minimum-energy brightness sides (True: bright) of folds ``mag`` (B, C, H, W).

    ``cost_dark`` / ``cost_bright`` (same shape) are each value's unary costs of lying below /
    above mid-grey; pairs of neighbours (:data:`.pe_sync.OFFSETS`, diagonals at half weight)
    and pairs of channels of one pixel (``channel_weight``) pay ``2 min(m_p, m_q)`` where
    their sides differ.
    """
    b = mag.shape[0]
    per = int(np.prod(mag.shape[1:]))
    step = max(1, _NODES_PER_CALL // per)
    out = np.zeros(mag.shape, dtype=bool)
    for s in range(0, b, step):
        sl = slice(s, s + step)
        out[sl] = _cut(mag[sl], cost_dark[sl], cost_bright[sl], channel_weight)
    return out


def _cut(mag, cost_dark, cost_bright, channel_weight) -> np.ndarray:
    shape = mag.shape
    n = mag.size
    src, snk = n, n + 1
    flat = mag.reshape(-1)
    rows, cols, caps = [], [], []
    for dy, dx in OFFSETS:
        p, q = _shift_index(shape, dy, dx)
        w = 2.0 * np.minimum(flat[p], flat[q]) * (0.5 if dy and dx else 1.0)
        rows += [p, q]
        cols += [q, p]
        caps += [w, w]
    c = shape[1]
    idx = np.arange(n).reshape(shape)
    for k in range(c):
        for j in range(k + 1, c):
            p, q = idx[:, k].reshape(-1), idx[:, j].reshape(-1)
            w = 2.0 * channel_weight * np.minimum(flat[p], flat[q])
            rows += [p, q]
            cols += [q, p]
            caps += [w, w]
    # source side = dark: p -> sink is cut (paid) when p stays dark, source -> p when bright
    d = (cost_dark - cost_bright).reshape(-1)
    nodes = np.arange(n)
    rows += [nodes[d > 0], np.full(int((d < 0).sum()), src)]
    cols += [np.full(int((d > 0).sum()), snk), nodes[d < 0]]
    caps += [d[d > 0], -d[d < 0]]
    r, cl = np.concatenate(rows), np.concatenate(cols)
    cap = np.rint(np.concatenate(caps) * _SCALE).astype(np.int64)
    keep = cap > 0
    graph = csr_matrix((cap[keep].astype(np.int32), (r[keep], cl[keep])), shape=(n + 2, n + 2))
    graph.sum_duplicates()
    flow = maximum_flow(graph, src, snk, method="dinic").flow
    residual = (graph - flow).tocsr()
    residual.data = np.where(residual.data > 0, 1, 0).astype(np.int32)
    residual.eliminate_zeros()
    dark = np.zeros(n + 2, dtype=bool)
    dark[breadth_first_order(residual, src, directed=True, return_predecessors=False)] = True
    return ~dark[:n].reshape(shape)
