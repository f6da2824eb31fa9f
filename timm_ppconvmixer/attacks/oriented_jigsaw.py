"""A jigsaw of pieces of unknown orientation and inversion, pooled over the N images.

Used by the ELE attack (:mod:`.ele_attack`): each encrypted block position has its own LE key,
so the in-block statistics of a position fix its content only up to a dihedral symmetry of the
block and an inversion (``v -> 255 - v``) of its own, 16 variants per piece. As in Gallagher's
solver for pieces of unknown orientation (A. C. Gallagher, CVPR 2012) and its extension to
inverted pieces for EtC images (T. Chuman, K. Kurihara, H. Kiya, IEICE Trans. Inf. & Syst.
E101-D(1), 2018), the variants are decided from edge compatibility, here pooled over every
image that shares the key:

1. the prediction-based edge dissimilarity (:func:`.jigsaw.edge_dissimilarities`) between
   every variant of every piece, all 16n variants at once;
2. for every pair of pieces, the relative variant (and side) that joins them best, weighted by
   how much better it is than either piece's best alternative (Gallagher's ratio); a minimum
   spanning tree of those weights propagates one common frame to every piece (and a second
   tree, of the pair costs themselves, gives a second start; the final layout with the lower
   edge cost wins);
3. the pooled jigsaw solver (:func:`.jigsaw.solve_jigsaw`) places the re-oriented pieces; each
   piece then takes the variant that best fits its placed neighbours and the solver runs
   again, while that changes anything (a few rounds).

The whole puzzle keeps the ambiguity of a global symmetry and inversion (decided by the
caller's prior, :mod:`.priors`).

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer.attacks.blocks import to_blocks
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:300, None]
    >>> pieces = to_blocks(x, 4).reshape(300, 49, 1, 4, 4)
    >>> variants = np.random.default_rng(0).integers(0, 16, 49)
    >>> scrambled = np.stack([apply_variant(pieces[:, i], v) for i, v in enumerate(variants)], 1)
    >>> sol = solve_oriented_jigsaw(scrambled, (7, 7))
    >>> relative = [compose(v, inverse(variants[0])) for v in sol.variants]  # a common frame
    >>> len(relative)
    49
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from .blocks import SYMMETRIES, Symmetry, symmetry_index_map
from .jigsaw import edge_dissimilarities, solve_jigsaw

__all__ = [
    "OrientedSolution",
    "VARIANTS",
    "apply_variant",
    "compose",
    "inverse",
    "solve_oriented_jigsaw",
    "variant_parts",
]

VARIANTS = 2 * len(SYMMETRIES)  # variant v: symmetry SYMMETRIES[v % 8], inverted if v >= 8
_MAX_IMAGES = 2000  # images pooled for the 16n x 16n variant dissimilarities


def variant_parts(v: int) -> tuple[Symmetry, bool]:
    """The (block symmetry, inversion) of variant ``v``."""
    return SYMMETRIES[int(v) % 8], int(v) >= 8


def _maps(m: int) -> np.ndarray:
    return np.stack([symmetry_index_map(g, m, m) for g in SYMMETRIES])


def _table(m: int = 3) -> np.ndarray:
    """``table[a, b]``: the symmetry of "``b`` first, then ``a``" (index maps compose)."""
    maps = _maps(m)
    lookup = {tuple(mp): i for i, mp in enumerate(maps)}
    return np.array([[lookup[tuple(maps[a][maps[b]])] for b in range(8)] for a in range(8)])


_COMPOSE = _table()


def compose(a: int, b: int) -> int:
    """The variant of "``b`` first, then ``a``"."""
    return int(_COMPOSE[a % 8, b % 8] + 8 * ((a >= 8) ^ (b >= 8)))


def inverse(a: int) -> int:
    """The variant that undoes ``a``."""
    g = next(i for i in range(8) if _COMPOSE[a % 8, i] == 0)
    return int(g + 8 * (a >= 8))


def apply_variant(piece: np.ndarray, v: int) -> np.ndarray:
    """Variant ``v`` of pieces ``(..., C, M, M)`` (uint8): the content moved by its symmetry
    (cell ``p`` to ``map[p]``), then inverted if ``v >= 8``."""
    m = piece.shape[-1]
    g, inv = variant_parts(v)
    flat = piece.reshape(*piece.shape[:-2], m * m)
    out = np.empty_like(flat)
    out[..., symmetry_index_map(g, m, m)] = flat
    out = out.reshape(piece.shape)
    return 255 - out if inv else out


@dataclass
class OrientedSolution:
    """``place[i]``: grid cell of piece ``i``; ``variants[i]``: its variant in the common frame."""

    place: np.ndarray
    variants: np.ndarray
    confidence: float
    rounds: int
    notes: list[str] = field(default_factory=list)


def _relative(lr: np.ndarray, tb: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Per pair (p, q): the variant of q (p as it is) that joins them best on any side, and the
    Gallagher-style weight (cost over the best alternative of p and of q; lower is surer), and
    the cost itself."""
    v = VARIANTS
    lr4 = lr.reshape(n, v, n, v)[:, 0]  # p (variant 0) left of q (variant w): (n, n, v)
    rl4 = lr.reshape(n, v, n, v)[:, :, :, 0].transpose(2, 0, 1)  # q^w left of p: (p, q, w)
    tb4 = tb.reshape(n, v, n, v)[:, 0]
    bt4 = tb.reshape(n, v, n, v)[:, :, :, 0].transpose(2, 0, 1)
    cost = np.minimum(np.minimum(lr4, rl4), np.minimum(tb4, bt4))  # (p, q, w)
    best_w = cost.argmin(2)
    best = cost.min(2)
    np.fill_diagonal(best, np.inf)
    finite = best[np.isfinite(best)]
    eps = 1e-9 + 1e-6 * float(np.median(finite)) if finite.size else 1e-9
    # best alternative partner of each piece (its second-best pair, when the first is q)
    part = np.sort(best, axis=1)[:, :2]
    alt_p = np.where(best <= part[:, :1], part[:, 1:2], part[:, :1])
    alt = np.minimum(alt_p, alt_p.T)
    return best_w, (best + eps) / (alt + eps), best


def _propagate(best_w: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Variants in one frame along the minimum spanning tree of the pair weights."""
    n = weight.shape[0]
    w = np.where(np.isfinite(weight), weight, 1e6) + 1e-6  # all edges present and positive
    np.fill_diagonal(w, 0.0)
    tree = minimum_spanning_tree(w)
    tree = tree + tree.T
    order, parent = breadth_first_order(tree, 0, directed=False)
    var = np.zeros(n, dtype=np.int64)
    for node in order[1:]:
        p = parent[node]
        var[node] = compose(var[p], best_w[p, node])
    return var


def _reorient(lay: np.ndarray, var: np.ndarray, lr: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Each piece's variant that best fits its placed neighbours (their variants as they are)."""
    v = VARIANTS
    gh, gw = lay.shape
    new = var.copy()
    for y in range(gh):
        for x in range(gw):
            p = lay[y, x]
            cost = np.zeros(v)
            rows = p * v + np.arange(v)
            if x > 0:
                q = lay[y, x - 1]
                cost += lr[q * v + var[q], rows]
            if x < gw - 1:
                q = lay[y, x + 1]
                cost += lr[rows, q * v + var[q]]
            if y > 0:
                q = lay[y - 1, x]
                cost += tb[q * v + var[q], rows]
            if y < gh - 1:
                q = lay[y + 1, x]
                cost += tb[rows, q * v + var[q]]
            new[p] = int(np.argmin(cost))
    return new


def _variant_cost(lay: np.ndarray, var: np.ndarray, lr: np.ndarray, tb: np.ndarray) -> float:
    """Edge cost of a layout (cell -> piece) with the pieces in their variants."""
    node = lay * VARIANTS + var[lay]
    return float(lr[node[:, :-1], node[:, 1:]].sum() + tb[node[:-1, :], node[1:, :]].sum())


def _rounds(pieces, grid, var, lr, tb, rounds):
    """Solve, re-orient each piece to its placed neighbours, solve again, while that changes
    anything; ``(solution, variants, rounds done, edge cost)``."""
    n = pieces.shape[1]
    done, sol = 0, None
    while done < rounds:
        done += 1
        framed = np.stack([apply_variant(pieces[:, i], var[i]) for i in range(n)], 1)
        sol = solve_jigsaw(framed, grid)
        lay = np.empty(n, dtype=np.int64)
        lay[sol.place] = np.arange(n)
        new = _reorient(lay.reshape(grid), var, lr, tb)
        if np.array_equal(new, var):
            break
        var = new
    lay = np.empty(n, dtype=np.int64)
    lay[sol.place] = np.arange(n)
    return sol, var, done, _variant_cost(lay.reshape(grid), var, lr, tb)


def solve_oriented_jigsaw(
    pieces: np.ndarray, grid: tuple[int, int], *, rounds: int = 4, seed: int = 0
) -> OrientedSolution:
    """Place and orient ``n`` pieces ``(N, n, C, M, M)`` uint8 on ``grid`` (module doc)."""
    n_img, n = pieces.shape[:2]
    sample = np.sort(np.random.default_rng(seed).permutation(n_img)[:_MAX_IMAGES])
    sub = pieces[sample]
    every = np.stack([apply_variant(sub, v) for v in range(VARIANTS)], 2)  # (N', n, 16, C, M, M)
    lr, tb = edge_dissimilarities(every.reshape(len(sample), n * VARIANTS, *pieces.shape[2:]))
    for a in range(n):  # a piece never borders itself, in any variant
        block = slice(a * VARIANTS, (a + 1) * VARIANTS)
        lr[block, block] = np.inf
        tb[block, block] = np.inf
    best_w, weight, cost = _relative(lr, tb, n)
    # two frames to start from: the tree of the surest pairs (Gallagher's ratio) and the tree
    # of the cheapest pairs; the final layout with the lower edge cost wins (one wrong tree
    # edge turns a whole subtree, and the two trees rarely share the same wrong edge)
    scale = float(np.median(cost[np.isfinite(cost)])) if np.isfinite(cost).any() else 1.0
    best = None
    for w in (weight, cost / max(scale, 1e-12)):
        found = _rounds(pieces, grid, _propagate(best_w, w), lr, tb, rounds)
        if best is None or found[3] < best[3]:
            best = found
    sol, var, done, _ = best
    notes = list(sol.notes)
    return OrientedSolution(sol.place, var, sol.confidence, done, notes)
