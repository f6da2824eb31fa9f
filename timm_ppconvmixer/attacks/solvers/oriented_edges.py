"""Edge costs between jigsaw pieces of unknown orientation, inversion and channel order, pooled
over N images.

For EtC every encrypted block position ``i`` carries one transform ``T_i`` (a dihedral map,
an inversion, a channel order; :mod:`.piece_group`) shared by every image, so two positions
``a`` and ``b`` fit side by side under a relative transform exactly when their edges agree in
all N images at once: the cost is a sum over images, as in :mod:`.jigsaw`. The dissimilarity is
the same prediction-based one (Pomeranz, Shemesh, Ben-Shahar, CVPR 2011, in the squared form
of :func:`.jigsaw.edge_dissimilarities`), evaluated for every relative transform, which is the
"extended jigsaw puzzle" of Chuman, Kurihara and Kiya (IEICE Trans. Inf. & Syst. E101-D(1),
2018) with compatibilities pooled over the images.

Two invariances make the table small: the squared prediction error does not change when both
pieces are inverted (``255 - v`` negates every prediction error) or get the same channel order,
so only the *relative* transform matters; and any direction reduces to "b right of a" by
turning the pair as a whole. Inversion enters in closed form (norms and sums), channel orders
through per-channel-pair Gram matrices, so the whole table is ``32 C^2`` Gram products of
``n x (N M)`` edge strips, whatever ``C!`` is.

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer.attacks.solvers.piece_group import PieceGroup
    >>> x = np.random.default_rng(0).integers(0, 255, (3, 4, 1, 4, 4)).astype(np.uint8)
    >>> oriented_costs(x, PieceGroup(1)).shape
    (4, 16, 4, 4)
"""

from __future__ import annotations

import numpy as np

from .blocks import SYMMETRIES, Symmetry, apply_symmetry
from .piece_group import PieceGroup

__all__ = ["oriented_costs"]

_CHUNK_VALUES = 1 << 22  # floats of one edge-strip array per chunk of images
_HFLIP = SYMMETRIES.index(Symmetry(False, False, True))
_TRANSPOSE = SYMMETRIES.index(Symmetry(True, False, False))
_ROT180 = SYMMETRIES.index(Symmetry(False, True, True))


def _frames(group: PieceGroup) -> list[int]:
    """Per direction s, a dihedral map ``g`` with ``g(s) = right``: turning the pair by ``g``
    makes "b in direction s of a" a right-neighbour relation."""
    out = []
    for s in range(4):
        out.append(next(g for g in range(8) if group.direction_map[g][s] == 0))
    return out


def _strips(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and second column of every dihedral view: ``(8, n, C, N*M)`` each."""
    first, second = [], []
    m = x.shape[-1]
    for s in SYMMETRIES:
        y = apply_symmetry(x, s)
        for out, col in ((first, 0), (second, min(1, m - 1))):
            v = y[..., :, col]  # (N, n, C, M)
            out.append(np.moveaxis(v, 0, 2).reshape(v.shape[1], v.shape[2], -1))
    return np.stack(first), np.stack(second)


def oriented_costs(pieces: np.ndarray, group: PieceGroup) -> np.ndarray:
    """``K[s, t, a, b]``: pooled cost of piece ``b`` under transform ``t`` placed in direction
    ``s`` (right, down, left, up) of piece ``a`` left as it is; ``inf`` where ``a == b``.

    ``pieces``: ``(N, n, C, M, M)``, the encrypted pieces of every image in position order.
    """
    n_img, n, c, m, _ = pieces.shape
    frames = _frames(group)
    # combos (g, g∘d): left piece seen through g, right piece through g∘d
    combos = [(g, int(group.dihedral_compose[g, d])) for g in frames for d in range(8)]
    g1 = np.zeros((len(combos), c, c, n, n))
    g2 = np.zeros_like(g1)
    norms = {k: np.zeros((8, n)) for k in ("p", "e", "q", "f")}
    sums = {k: np.zeros((8, n)) for k in ("p", "e", "q", "f")}
    hd = group.dihedral_compose[_HFLIP]  # right strip of view d = left strip of view hflip∘d
    step = max(1, _CHUNK_VALUES // max(8 * n * c * m, 1))
    for start in range(0, n_img, step):
        first, second = _strips(pieces[start : start + step].astype(np.float32))
        if m > 1:
            pred_b = 2 * first - second  # what the right piece predicts for the left one
        else:
            pred_b = first
        e, q = first, pred_b  # right piece: edge, prediction
        f, p = first[hd], pred_b[hd]  # left piece (its right edge): edge, prediction
        for name, arr in (("p", p), ("e", e), ("q", q), ("f", f)):
            norms[name] += (arr.astype(np.float64) ** 2).sum((2, 3))
            sums[name] += arr.sum((2, 3), dtype=np.float64)
        for k, (da, db) in enumerate(combos):
            for ca in range(c):
                for cb in range(c):
                    g1[k, ca, cb] += p[da, :, ca] @ e[db, :, cb].T
                    g2[k, ca, cb] += f[da, :, ca] @ q[db, :, cb].T
    count = float(n_img * c * m)
    big = 255.0**2 * count
    costs = np.empty((4, group.size, n, n), dtype=np.float32)
    for t in range(group.size):
        d, v, order = int(group.dihedral[t]), int(group.inverted[t]), int(group.order[t])
        perm = group.perms[order]
        for s in range(4):
            k = s * 8 + d
            da, db = combos[k]
            cross1 = sum(g1[k, ch, perm[ch]] for ch in range(c))
            cross2 = sum(g2[k, ch, perm[ch]] for ch in range(c))
            if not v:
                value = (norms["p"][da] + norms["f"][da])[:, None]
                value = value + (norms["e"][db] + norms["q"][db])[None, :]
                value = value - 2 * (cross1 + cross2)
            else:
                left = norms["p"][da] - 510 * sums["p"][da] + norms["f"][da] - 510 * sums["f"][da]
                right = norms["e"][db] - 510 * sums["e"][db] + norms["q"][db] - 510 * sums["q"][db]
                value = (left + 2 * big)[:, None] + right[None, :] + 2 * (cross1 + cross2)
            costs[s, t] = np.maximum(value, 0.0)
    idx = np.arange(n)
    costs[:, :, idx, idx] = np.inf
    return costs
