"""Ciphertext-only attack on ELE (Madono, Tanaka, Onishi, Ogawa, AAAI-WS 2020).

ELE (:mod:`timm_ppconvmixer.schemes.ele`) is LE with its own key for every plain block
position, followed by one block permutation for every image. Encrypted block position ``i``
always holds plain block ``block_perm[i]``, encrypted with that plain position's key, so the
key *per encrypted position* is fixed across images: the N images give N samples of each
position's LE key (instead of LE's N*n samples of one key). The attack:

1. per encrypted position, the LE key from the halves' statistics pooled over the N images
   (:mod:`.halves`: upper halves, their inversion and placement, the lower halves' pairing),
   each up to its own block symmetry and inversion;
2. the block order, and each block's symmetry and inversion, by the extended jigsaw solver of
   the EtC attack (:func:`.jigsaw_oriented.solve_oriented_jigsaw`, after Gallagher, CVPR 2012
   and Chuman, Kurihara, Kiya, IEICE Trans. E101-D(1), 2018) over the 16 transforms of
   ``D4 x Z2`` (each position's channel order comes with its estimate), edge costs pooled over
   the N images;
3. the whole image's dihedral symmetry, channel order and global inversion by the prior
   (:mod:`.priors`), as for the paper's scheme.

The key estimate is built the way ELE stores its key: the LE key found at encrypted position
``i`` belongs to the plain position the jigsaw puts that block at,
``nibble_perm[block_perm[i]]``.

Example:
    >>> from timm_ppconvmixer import encrypt
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:50, None]
    >>> key = generate_key("ele", image_size=28, block_size=4, channels=1, seed=0)
    >>> result = recover_ele_key(encrypt(x, key, layout="CHW"), 4)
    >>> result.key.scheme
    'ele'
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...schemes.ele import ELEKey
from ..result import AttackResult
from ..solvers.blocks import (
    SYMMETRIES,
    Symmetry,
    from_blocks,
    symmetry_index_map,
    to_blocks,
    valid_symmetries,
)
from ..solvers.halves import HalvesEstimate, from_halves, half_stats, recover_halves, to_halves
from ..solvers.jigsaw_oriented import solve_oriented_jigsaw
from ..solvers.piece_group import PieceGroup
from ..solvers.priors import GenericPrior, ReferencePrior
from .blockwise import check_encrypted_batch
from .le import _decrypt_halves, _score_parts, blocks_exact, half_key_parts

__all__ = ["recover_ele_key", "score_ele_key"]


def _identity_estimate(c: int, m: int) -> HalvesEstimate:
    """What an attacker without statistics assumes: the halves where they came from."""
    d2 = 2 * c * m * m
    conf = {"upper_split": 0.0, "upper_inversion": 0.0, "upper_placement": 0.0}
    conf["lower_pairing"] = 0.0
    return HalvesEstimate(np.arange(d2) % 2 == 0, np.arange(d2), np.zeros(d2, bool), conf)


def _position_estimate(halves: np.ndarray, c: int, m: int, seed: int) -> HalvesEstimate:
    """One encrypted position's LE key from its N samples ``(N, 2D)``."""
    stats = half_stats(halves[:, None], None, seed)
    if stats.samples < 3 or int((np.diag(stats.cov) > 1e-9).sum()) < 2:
        return _identity_estimate(c, m)  # one image, or a position blank in all but two
    return recover_halves(stats, c, m, seed=seed)


def recover_ele_key(
    encrypted: np.ndarray,
    block_size: int,
    *,
    prior: ReferencePrior | GenericPrior | None = None,
    seed: int = 0,
) -> AttackResult:
    """Estimate the ELE key from N encrypted images ``(N, C, H, W)`` uint8 alone (module doc).

    From one image on it returns a valid key; with few images the per-position statistics are
    thin and the estimate is rough.
    """
    n_img, c, h, w = check_encrypted_batch(encrypted, block_size)
    m = int(block_size)
    grid = (h // m, w // m)
    n = grid[0] * grid[1]
    prior = prior or GenericPrior()
    t0 = time.perf_counter()
    halves = to_halves(to_blocks(encrypted, m))  # (N, n, 2D)
    ests = [_position_estimate(halves[:, i], c, m, seed) for i in range(n)]
    pieces = np.empty((n_img, n, c * m * m), dtype=np.uint8)
    for i, est in enumerate(ests):
        perm, mask = half_key_parts(est, c, m, SYMMETRIES[0], range(c), False)
        pieces[:, i] = from_halves(_decrypt_halves(halves[:, i], perm, mask))
    t1 = time.perf_counter()
    group = PieceGroup(c, channel_orders=False)
    sol = solve_oriented_jigsaw(pieces.reshape(n_img, n, c, m, m), grid, group)
    t2 = time.perf_counter()

    def parts(t: int) -> tuple[Symmetry, bool]:  # a transform's block symmetry and inversion
        return SYMMETRIES[int(group.dihedral[t])], bool(group.inverted[t])

    framed = np.empty_like(pieces)
    for i in range(n):
        g, inv = parts(sol.transform[i])
        perm, mask = half_key_parts(ests[i], c, m, g, range(c), inv)
        framed[:, sol.place[i]] = from_halves(_decrypt_halves(halves[:, i], perm, mask))
    recon = from_blocks(framed, (c, h, w), m)
    choice = prior.choose(recon, grid)
    gmap = symmetry_index_map(choice.symmetry, *grid)
    whole = group.element(SYMMETRIES.index(choice.symmetry), int(choice.invert), 0)
    block_perm = gmap[sol.place]
    d2 = 2 * c * m * m
    nibble_perm = np.empty((n, d2), dtype=np.int64)
    nibble_mask = np.empty((n, d2), dtype=bool)
    for i in range(n):
        g, inv = parts(group.compose(whole, sol.transform[i]))  # the piece's, then the image's
        perm, mask = half_key_parts(ests[i], c, m, g, choice.channel_order, inv)
        nibble_perm[block_perm[i]], nibble_mask[block_perm[i]] = perm, mask
    key = ELEKey((h, w), m, c, block_perm=block_perm, nibble_perm=nibble_perm,
                 nibble_mask=nibble_mask)  # fmt: skip
    t3 = time.perf_counter()
    ambiguities = list(sol.notes) + choice.ambiguity()
    return AttackResult(
        key=key,
        confidence={
            "nibble_mask": float(np.mean([e.confidence["upper_inversion"] for e in ests])),
            "nibble_perm": float(np.mean([e.confidence["upper_placement"] for e in ests])),
            "block_perm": float(sol.confidence),
            "transforms": float(sol.transform_margin),
        },
        timings={"positions": t1 - t0, "jigsaw": t2 - t1, "prior": t3 - t2, "total": t3 - t0},
        ambiguities=ambiguities,
        details={"images": n_img, "blocks_per_image": n, **sol.details(group), **choice.details()},
        method="ciphertext-only (ELE per-position halves + oriented jigsaw)",
        scheme="ele",
    )


def score_ele_key(
    true_key: ELEKey, estimate: ELEKey, plain: np.ndarray | None = None
) -> dict[str, Any]:
    """Shares of the ELE key recovered (JSON-ready, key-free), up to the whole image's
    dihedral symmetry and global inversion (the best element is reported as ``symmetry`` and
    ``inverted``; ``*_exact`` under the identity):

    * ``block_perm``: share of encrypted blocks put at their true plain position (moved by the
      symmetry);
    * ``nibble_perm`` / ``nibble_mask`` and the ``upper_*`` / ``lower_*`` shares as in
      :func:`.le_attack.score_le_key`, over every (encrypted position, half), each position's
      key compared with the true key of the plain block it holds, moved by the symmetry;
    * with ``plain`` images, ``blocks_exact``: share of their blocks that decrypt exactly with
      the estimate (blank blocks count when right whatever their key estimate).
    """
    if (true_key.image_size, true_key.block_size, true_key.channels) != (
        estimate.image_size,
        estimate.block_size,
        estimate.channels,
    ):
        raise ValueError("the estimate's geometry differs from the key's")
    c, m, grid = true_key.channels, true_key.block_size, true_key.grid_size
    bp, ebp = true_key.block_perm.numpy(), estimate.block_perm.numpy()
    tp, tm = true_key.nibble_perm.numpy()[bp], true_key.nibble_mask.numpy()[bp]
    ep, em = estimate.nibble_perm.numpy()[ebp], estimate.nibble_mask.numpy()[ebp]
    best, exact = None, None
    for k, g in enumerate(valid_symmetries(grid, m)):
        gb = symmetry_index_map(g, *grid)
        est_g = HalvesEstimate(tp % 2 == 0, tp.reshape(-1), tm.reshape(-1), {})
        gp, _ = half_key_parts(est_g, c, m, g, range(c), False)
        row = _score_parts(gp.reshape(tp.shape), tm, ep, em)
        row.update(block_perm=float((ebp == gb[bp]).mean()), symmetry=g.name)
        if k == 0:
            exact = row
        if (
            best is None
            or row["block_perm"] + row["nibble_perm"] > best["block_perm"] + best["nibble_perm"]
        ):
            best = row
    out = dict(best)
    out.update({f"{k}_exact": exact[k] for k in ("block_perm", "nibble_perm")})
    out["nibble_mask_exact"] = exact["nibble_mask_exact"]
    if plain is not None:
        out["blocks_exact"] = blocks_exact(true_key, estimate, plain)
    return out
