"""An extended jigsaw-puzzle solver: pieces of unknown orientation, inversion and channel order,
with edge costs pooled over N images (the attack on EtC's block scrambling).

Chuman, Kurihara and Kiya ("On the security of block scrambling-based EtC systems against
extended jigsaw puzzle solver attacks", IEICE Trans. Inf. & Syst. E101-D(1), 2018) extend the
solvers of Pomeranz et al. (CVPR 2011) and Gallagher (CVPR 2012) to pieces that may also be
inverted and have their colour channels reordered. Here every piece is an encrypted block
*position*, and its transform is shared by all N images, so the costs of
:func:`.oriented_edges.oriented_costs` are sums over images. Steps:

1. **Assembly** (Gallagher's constrained tree, Sec. 4, with the transform group of
   :mod:`.piece_group`): candidate adjacencies ``(a, side, b, relative transform)``, the best
   few per side, sorted by confidence (cost over the best alternative with another piece);
   clusters merge along them, each merge turning the smaller cluster as a whole (positions and
   transforms), refusing overlaps and clusters that do not fit the grid in either orientation.
2. **Fill**: pieces outside the main cluster go one by one to the free cell, transform and
   piece with the lowest mean cost against placed neighbours.
3. **Re-solve and re-orient** (alternating): with every piece turned by its estimate, the block
   order is solved again by the pooled solver of :mod:`.jigsaw` (its refinement, frame prior,
   blank-border handling); then every piece's transform is re-chosen against its neighbours
   (iterated conditional modes) until nothing changes.

Whatever is done to all pieces at once (one dihedral map of the picture, global inversion, one
channel order) leaves every edge cost unchanged: the solution is up to that global element,
which the caller resolves with a prior (:mod:`.priors`).

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer.attacks.solvers.blocks import to_blocks
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:300, None]
    >>> g = PieceGroup(1)
    >>> pieces = to_blocks(x, 4).reshape(300, 49, 1, 4, 4)
    >>> t = np.random.default_rng(0).integers(0, g.size, 49)
    >>> sol = solve_oriented_jigsaw(g.apply_each(pieces, t), (7, 7), g)
    >>> sol.place.shape, sol.transform.shape
    ((49,), (49,))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .blocks import SYMMETRIES, Symmetry
from .jigsaw import solve_jigsaw
from .oriented_edges import oriented_costs
from .piece_group import DIRECTIONS, PieceGroup

__all__ = ["OrientedSolution", "solve_oriented_jigsaw"]

_CANDIDATES = 6  # candidate neighbours kept per piece side for the assembly


@dataclass
class OrientedSolution:
    """``place[i]``: grid cell of piece ``i``; ``transform[i]``: the group element that turns
    piece ``i`` back (up to one global element for all pieces)."""

    place: np.ndarray
    transform: np.ndarray
    cost: float
    confidence: float  # layout edges that are mutual best buddies (from :mod:`.jigsaw`)
    transform_margin: float  # pieces whose transform is strictly best against its neighbours
    blank_pieces: int
    clusters: int
    notes: list[str] = field(default_factory=list)

    def details(self, group: PieceGroup) -> dict[str, int | float]:
        """What an attack result's ``details`` report of the solution (key-free)."""
        return {
            "group_size": group.size,
            "clusters_before_filling": self.clusters,
            "blank_pieces": self.blank_pieces,
            "layout_cost": self.cost,
        }


def _pair_cost(costs, group, q, tq, p, tp, s) -> float:
    """Cost of ``p`` (transform ``tp``) in direction ``s`` of ``q`` (transform ``tq``)."""
    inv = group.inverse[tq]
    s2 = group.direction_map[group.dihedral[inv]][s]
    return float(costs[s2, group.compose(inv, tp), q, p])


def _neighbour_costs(costs, group, q, tq, s, pieces: np.ndarray) -> np.ndarray:
    """``(|G|, len(pieces))``: cost of each piece under each absolute transform in direction
    ``s`` of ``q`` (transform ``tq``)."""
    inv = group.inverse[tq]
    s2 = group.direction_map[group.dihedral[inv]][s]
    rel = group.compose_table[inv]  # absolute t -> relative transform
    return costs[s2, rel[:, None], q, np.asarray(pieces)[None, :]]  # no (|G|, n, n) copy


def _candidate_edges(costs: np.ndarray, group: PieceGroup) -> np.ndarray:
    """Rows ``(buddy, ratio, cost, a, s, b, t)``: ``buddy`` 0 for mutual best buddies (each is
    the other's best match on that side, Pomeranz et al. Sec. 3), ``ratio`` the cost over the
    best alternative with another piece (Gallagher Sec. 4; lower is surer)."""
    _, _, n, _ = costs.shape
    k = min(_CANDIDATES, n - 1)
    flat = costs.transpose(0, 2, 1, 3).reshape(4, n, -1)  # (s, a, t * n + b)
    best_of_side = np.argmin(flat, axis=2)  # (s, a): best (t, b) next to a on side s
    opposite = np.array([2, 3, 0, 1])
    rows = []
    for s in range(4):
        best_t = np.argmin(costs[s], axis=0)  # (n, n): best transform of b next to a
        best = np.take_along_axis(costs[s], best_t[None], 0)[0]
        order = np.argsort(best, axis=1)[:, : max(k, 2)]
        for a in range(n):
            cand = order[a]
            values = best[a, cand]
            scale = 1e-9 + 1e-6 * float(np.median(values))
            second = values[1] if len(values) > 1 else values[0]
            alt = np.where(np.arange(len(cand)) == 0, second, values[0])
            for j in range(min(k, len(cand))):
                b, t = int(cand[j]), int(best_t[a, cand[j]])
                inv = group.inverse[t]
                s_back = group.direction_map[group.dihedral[inv]][opposite[s]]
                tb, bb = divmod(int(best_of_side[s_back, b]), n)
                buddy = j == 0 and bb == a and tb == inv
                ratio = (values[j] + scale) / (alt[j] + scale)
                rows.append((0.0 if buddy else 1.0, ratio, values[j], a, s, b, t))
    return np.array(rows)


def _fits(cells, grid) -> bool:
    ys = [y for y, _ in cells]
    xs = [x for _, x in cells]
    h, w = max(ys) - min(ys) + 1, max(xs) - min(xs) + 1
    gh, gw = grid
    return (h <= gh and w <= gw) or (h <= gw and w <= gh)


def _assemble(edges: np.ndarray, costs: np.ndarray, group: PieceGroup, grid) -> list[dict]:
    """Clusters ``{piece: (y, x, transform)}`` merged along ``edges`` in their order."""
    n = costs.shape[2]
    cluster_of = list(range(n))
    clusters: dict[int, dict[int, tuple[int, int, int]]] = {i: {i: (0, 0, 0)} for i in range(n)}
    merges = 0
    for _, _, _, a, s, b, t in edges:
        a, s, b, t = int(a), int(s), int(b), int(t)
        ca, cb = cluster_of[a], cluster_of[b]
        if ca == cb:
            continue
        ya, xa, ta = clusters[ca][a]
        yb, xb, tb = clusters[cb][b]
        tb_new = group.compose(ta, t)
        dy, dx = group.dihedral_vector[group.dihedral[ta]] @ DIRECTIONS[s]
        # the motion that takes cluster cb into ca's frame: b lands next to a as tb_new
        g = group.compose(tb_new, group.inverse[tb])
        origin, target = (yb, xb), (ya + dy, xa + dx)
        small, large = cb, ca
        if len(clusters[cb]) > len(clusters[ca]):
            g, origin, target, small, large = group.inverse[g], target, origin, ca, cb
        vec = group.dihedral_vector[group.dihedral[g]]
        moved = {}
        for p, (y, x, tp) in clusters[small].items():
            ny, nx = vec @ np.array([y - origin[0], x - origin[1]])
            moved[p] = (int(ny + target[0]), int(nx + target[1]), int(group.compose(g, tp)))
        occupied = {(y, x) for y, x, _ in clusters[large].values()}
        new_cells = {(y, x) for y, x, _ in moved.values()}
        if occupied & new_cells or not _fits(occupied | new_cells, grid):
            continue
        clusters[large].update(moved)
        for p in moved:
            cluster_of[p] = large
        del clusters[small]
        merges += 1
        if merges == n - 1:
            break
    return sorted(clusters.values(), key=len, reverse=True)


def _fill(lay, trans, free, costs, group):
    """Free pieces into empty cells: surest (cell, piece, transform) first."""
    lay, trans, free = lay.copy(), trans.copy(), list(free)
    gh, gw = lay.shape
    while free:
        pieces = np.array(free)
        best = None
        for y, x in np.argwhere(lay < 0):
            total = np.zeros((group.size, len(pieces)))
            count = 0
            for s in range(4):  # neighbour q sits in direction (opposite of s) of the cell
                ny, nx = y - DIRECTIONS[s][0], x - DIRECTIONS[s][1]
                if 0 <= ny < gh and 0 <= nx < gw and lay[ny, nx] >= 0:
                    q = lay[ny, nx]
                    total += _neighbour_costs(costs, group, q, trans[ny, nx], s, pieces)
                    count += 1
            if count == 0:
                continue
            t, k = np.unravel_index(int(np.argmin(total)), total.shape)
            key = (-count, total[t, k] / count)
            if best is None or key < best[0]:
                best = (key, y, x, int(pieces[k]), int(t))
        if best is None:
            y, x = np.argwhere(lay < 0)[0]
            best = (None, y, x, free[0], 0)
        _, y, x, p, t = best
        lay[y, x], trans[y, x] = p, t
        free.remove(p)
    return lay, trans


def _layout_cost(lay, trans, costs, group) -> float:
    gh, gw = lay.shape
    total = 0.0
    for y in range(gh):
        for x in range(gw):
            for s in (0, 1):
                ny, nx = y + DIRECTIONS[s][0], x + DIRECTIONS[s][1]
                if ny < gh and nx < gw:
                    total += _pair_cost(
                        costs, group, lay[y, x], trans[y, x], lay[ny, nx], trans[ny, nx], s
                    )
    return total


def _reorient(lay, trans, costs, group, sweeps: int = 10):
    """Iterated conditional modes over the transforms with the layout fixed; returns the new
    transforms and the share of pieces whose transform is strictly the best."""
    gh, gw = lay.shape
    trans = trans.copy()
    strict = np.zeros(lay.shape, dtype=bool)
    for _ in range(sweeps):
        changed = False
        for y in range(gh):
            for x in range(gw):
                p = lay[y, x]
                total = np.zeros(group.size)
                for s in range(4):
                    ny, nx = y - DIRECTIONS[s][0], x - DIRECTIONS[s][1]
                    if 0 <= ny < gh and 0 <= nx < gw:
                        total += _neighbour_costs(
                            costs, group, lay[ny, nx], trans[ny, nx], s, np.array([p])
                        )[:, 0]
                t = int(np.argmin(total))
                tol = 1e-6 * max(float(total[trans[y, x]]), 1.0)
                strict[y, x] = np.sum(total <= total[t] + tol) == 1
                if total[t] < total[trans[y, x]] - tol:
                    trans[y, x] = t
                    changed = True
        if not changed:
            break
    return trans, float(strict.mean())


def _cell_table(lay, trans, costs, group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cost, best, own)``: ``cost``/``best`` (cells, n) each piece at each cell under its
    best transform, neighbours as they are now; ``own`` (cells,) each cell's present cost."""
    gh, gw = lay.shape
    n = costs.shape[2]
    cost = np.zeros((gh * gw, n))
    best = np.zeros((gh * gw, n), dtype=np.int64)
    everything = np.arange(n)
    own = np.zeros(gh * gw)
    for y in range(gh):
        for x in range(gw):
            total = np.zeros((group.size, n))
            for s in range(4):
                ny, nx = y - DIRECTIONS[s][0], x - DIRECTIONS[s][1]
                if 0 <= ny < gh and 0 <= nx < gw:
                    total += _neighbour_costs(
                        costs, group, lay[ny, nx], trans[ny, nx], s, everything
                    )
            best[y * gw + x] = np.argmin(total, axis=0)
            cost[y * gw + x] = total[best[y * gw + x], everything]
            own[y * gw + x] = total[trans[y, x], lay[y, x]]
    return cost, best, own


def _refine(lay, trans, costs, group, max_iter: int = 40):
    """Swaps of two cells, each piece under its best transform at its new cell, while the
    layout cost falls (candidates from the cell table, each checked exactly)."""
    lay, trans = lay.copy(), trans.copy()
    gh, gw = lay.shape
    value = _layout_cost(lay, trans, costs, group)
    for _ in range(max_iter):
        flat, tflat = lay.reshape(-1), trans.reshape(-1)
        cc, best, own = _cell_table(lay, trans, costs, group)
        swapped = cc[:, flat]  # [c1, c2]: piece of c2 moved to c1
        gain = swapped + swapped.T - own[:, None] - own[None, :]
        cand = np.argwhere(np.triu(gain < -1e-9 * max(value, 1.0), 1))
        improved = False
        for c1, c2 in cand[np.argsort(gain[cand[:, 0], cand[:, 1]])][:10]:
            tl, tt = flat.copy(), tflat.copy()
            tl[c1], tl[c2] = flat[c2], flat[c1]
            tt[c1], tt[c2] = best[c1, flat[c2]], best[c2, flat[c1]]
            trial = _layout_cost(tl.reshape(lay.shape), tt.reshape(lay.shape), costs, group)
            if trial < value - 1e-9 * max(value, 1.0):
                lay, trans, value, improved = (
                    tl.reshape(lay.shape),
                    tt.reshape(lay.shape),
                    trial,
                    True,
                )
                break
        if not improved:
            break
    return lay, trans


def _grid_layout(main: dict, grid, group):
    """The main cluster turned (if needed) to fit the grid, as (cells, transforms) arrays."""
    gh, gw = grid
    ys = np.array([v[0] for v in main.values()])
    xs = np.array([v[1] for v in main.values()])
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    if h > gh or w > gw:  # only fits transposed (non-square grids)
        g = SYMMETRIES.index(Symmetry(True, False, False))
        main = {
            p: (x, y, int(group.compose(group.element(g, 0, 0), t)))
            for p, (y, x, t) in main.items()
        }
    return main


def _solve_from(clusters, pieces, costs, group, grid, rounds):
    """From assembled clusters to a full layout: fill, refine, re-solve with :mod:`.jigsaw`."""
    gh, gw = grid
    n = pieces.shape[1]
    main = _grid_layout(clusters[0], grid, group)
    ys = np.array([v[0] for v in main.values()])
    xs = np.array([v[1] for v in main.values()])
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    rest = [p for c in clusters[1:] for p in c]
    best = None
    # each offset costs a whole fill: with a small main cluster (few images) try the corners
    # and the centre of the offset range only
    oys = sorted({0, (gh - h) // 2, gh - h})
    oxs = sorted({0, (gw - w) // 2, gw - w})
    for oy in oys:
        for ox in oxs:
            lay = np.full(grid, -1, dtype=np.int64)
            trans = np.zeros(grid, dtype=np.int64)
            for p, (y, x, t) in main.items():
                lay[y - ys.min() + oy, x - xs.min() + ox] = p
                trans[y - ys.min() + oy, x - xs.min() + ox] = t
            lay, trans = _fill(lay, trans, rest, costs, group)
            cost = _layout_cost(lay, trans, costs, group)
            if best is None or cost < best[0]:
                best = (cost, lay, trans)
    _, lay, trans = best
    lay, trans = _refine(lay, trans, costs, group)
    trans, margin = _reorient(lay, trans, costs, group)
    transform = np.empty(n, dtype=np.int64)
    sol = None
    for _ in range(rounds):
        transform[lay.reshape(-1)] = trans.reshape(-1)
        sol = solve_jigsaw(group.apply_each(pieces, transform), grid)
        lay = np.empty(n, dtype=np.int64)
        lay[sol.place] = np.arange(n)
        lay = lay.reshape(grid)
        trans, margin = _reorient(lay, transform[lay], costs, group)
        lay, trans = _refine(lay, trans, costs, group)
        trans, margin = _reorient(lay, trans, costs, group)
    return lay, trans, sol, margin, clusters


def solve_oriented_jigsaw(
    pieces: np.ndarray, grid: tuple[int, int], group: PieceGroup, rounds: int = 2
) -> OrientedSolution:
    """Place and orient the ``n`` pieces ``(N, n, C, M, M)`` on the ``grid`` (rows, cols)."""
    gh, gw = grid
    n = pieces.shape[1]
    if n != gh * gw:
        raise ValueError(f"{n} pieces do not fill a {gh}x{gw} grid")
    costs = oriented_costs(pieces, group)
    edges = _candidate_edges(costs, group)
    # two orders of the same candidates (surest ratio first; mutual best buddies first): the
    # greedy assembly is brittle with few images, so both are finished and the cheaper kept
    runs = []
    for keys in ((2, 1), (2, 1, 0)):
        order = np.lexsort(tuple(edges[:, k] for k in keys))
        runs.append(
            _solve_from(
                _assemble(edges[order], costs, group, grid), pieces, costs, group, grid, rounds
            )
        )
    lay, trans, sol, margin, clusters = min(
        runs, key=lambda r: _layout_cost(r[0], r[1], costs, group)
    )
    transform = np.empty(n, dtype=np.int64)
    transform[lay.reshape(-1)] = trans.reshape(-1)
    place = np.empty(n, dtype=np.int64)
    place[lay.reshape(-1)] = np.arange(n)
    notes = list(sol.notes) if sol is not None else []
    return OrientedSolution(
        place,
        transform,
        _layout_cost(lay, trans, costs, group),
        float(sol.confidence) if sol is not None else 0.0,
        margin,
        int(sol.blank_pieces) if sol is not None else 0,
        len(clusters),
        notes,
    )
