"""The transforms an EtC block position may carry, as one finite group acting on jigsaw pieces.

EtC (:mod:`timm_ppconvmixer.schemes.etc`) moves a block, then turns or mirrors it (the 8
dihedral maps of a square: 4 rotation codes x 3 flip codes give 12 codes but only 8 distinct
maps), may invert it (``v -> 255 - v``) and reorders its channels. The three kinds act on
different things (pixel positions, values, channels), so they commute and the transforms of a
piece form the direct product ``D4 x Z2 x S_C`` (16 elements for grey, 96 for colour). An
element is one integer ``t = (d * 2 + v) * C! + c``; composition and inverses are tables built
once by acting on test arrays, so no convention is written out by hand twice.

Conventions: a dihedral map is :class:`~.blocks.Symmetry` applied by
:func:`~.blocks.apply_symmetry` on the last two axes; a channel order ``p`` maps ``x`` to
``x[p]`` (channel ``k`` of the result is channel ``p[k]`` of ``x``); ``compose(a, b)`` is
"``b`` first, then ``a``". A dihedral map of a whole picture moves the displacement between
two pieces by the same map (:attr:`PieceGroup.vector`), which is what lets the solver turn a
cluster of placed pieces as a whole (Gallagher, "Jigsaw puzzles with pieces of unknown
orientation", CVPR 2012, Sec. 3, extended here to reflections, inversion and channel order).

Example:
    >>> g = PieceGroup(3)
    >>> g.size, bool(g.compose(g.inverse[5], 5) == g.identity)
    (96, True)
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from .blocks import SYMMETRIES, apply_symmetry

__all__ = ["DIRECTIONS", "PieceGroup"]

# displacement (dy, dx) from a piece to its neighbour: right, down, left, up
DIRECTIONS = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])


def _dihedral_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(compose, vector)``: ``compose[a, b]`` = index of a∘b, ``vector[d]`` its 2x2 map."""
    probe = np.arange(9).reshape(3, 3)
    images = [apply_symmetry(probe, s).tobytes() for s in SYMMETRIES]
    comp = np.empty((8, 8), dtype=np.int64)
    for a, sa in enumerate(SYMMETRIES):
        for b, sb in enumerate(SYMMETRIES):
            comp[a, b] = images.index(apply_symmetry(apply_symmetry(probe, sb), sa).tobytes())
    vec = np.empty((8, 2, 2), dtype=np.int64)
    for d, s in enumerate(SYMMETRIES):
        for axis, (dy, dx) in enumerate(((1, 0), (0, 1))):
            mark = np.zeros((3, 3), dtype=np.int64)
            mark[1 + dy, 1 + dx] = 1
            y, x = np.argwhere(apply_symmetry(mark, s))[0]
            vec[d, :, axis] = (y - 1, x - 1)
    return comp, vec


class PieceGroup:
    """``D4 x Z2 x S_C`` with composition, inverses and its action on pieces and directions.

    ``channel_orders=False``: the subgroup ``D4 x Z2`` (16 elements whatever ``channels`` is),
    for pieces whose channel order is known, as ELE's per-position estimates leave them.
    """

    def __init__(self, channels: int, channel_orders: bool = True) -> None:
        self.channels = int(channels)
        identity = tuple(range(self.channels))
        self.perms = list(permutations(identity)) if channel_orders else [identity]
        nc = len(self.perms)
        self.num_orders = nc
        self.size = 16 * nc
        self.identity = 0
        d_comp, self.dihedral_vector = _dihedral_tables()
        self.dihedral_compose = d_comp
        self.dihedral_inverse = np.array([int(np.argmax(d_comp[d] == 0)) for d in range(8)])
        index = {p: i for i, p in enumerate(self.perms)}
        # x[q] then [p]: channel k is x[q[p[k]]]
        c_comp = np.array([[index[tuple(q[k] for k in p)] for q in self.perms] for p in self.perms])
        t = np.arange(self.size)
        self.dihedral, self.inverted, self.order = t // (2 * nc), (t // nc) % 2, t % nc
        d, v, c = self.dihedral, self.inverted, self.order
        self.compose_table = self.element(
            d_comp[d[:, None], d[None, :]], v[:, None] ^ v[None, :], c_comp[c[:, None], c[None, :]]
        )
        self.inverse = np.array([int(np.argmax(self.compose_table[a] == 0)) for a in t])
        # direction s seen through dihedral d: index of vector[d] @ DIRECTIONS[s]
        moved = np.einsum("dij,sj->dsi", self.dihedral_vector, DIRECTIONS)
        self.direction_map = np.array(
            [
                [int(np.argmax((DIRECTIONS == moved[dd, s]).all(1))) for s in range(4)]
                for dd in range(8)
            ]
        )

    def element(self, dihedral, inverted, order):
        """The index of ``(dihedral, inverted, order)`` (arrays broadcast)."""
        return (np.asarray(dihedral) * 2 + np.asarray(inverted)) * self.num_orders + np.asarray(
            order
        )

    def compose(self, a, b):
        """``a`` after ``b``."""
        return self.compose_table[a, b]

    def apply(self, pieces: np.ndarray, t: int) -> np.ndarray:
        """Transform ``t`` applied to pieces ``(..., C, M, M)`` (uint8 or float)."""
        out = apply_symmetry(pieces, SYMMETRIES[int(self.dihedral[t])])
        if self.inverted[t]:
            out = (255 - out) if out.dtype == np.uint8 else 255.0 - out
        return np.ascontiguousarray(out[..., list(self.perms[int(self.order[t])]), :, :])

    def apply_each(self, pieces: np.ndarray, transforms: np.ndarray) -> np.ndarray:
        """``(N, n, C, M, M)`` with piece ``i`` transformed by ``transforms[i]``."""
        out = np.empty_like(pieces)
        for i, t in enumerate(transforms):
            out[:, i] = self.apply(pieces[:, i], int(t))
        return out
