"""Ciphertext-only attack on EtC block scrambling, and the owner's scorer of its key estimate.

EtC (:mod:`timm_ppconvmixer.schemes.etc`) gives every block position one block of the image
turned or mirrored, maybe inverted, with its channels reordered, and uses the *same* key for
every image. Each encrypted position is therefore one jigsaw piece with N pictures on it whose
transform is unknown but shared: the extended jigsaw-puzzle attack of Chuman, Kurihara and Kiya
(IEICE Trans. Inf. & Syst. E101-D(1), 2018), here with edge costs pooled over the N images
(:mod:`.jigsaw_oriented`). Steps:

1. solve the puzzle over positions, orientations (8 dihedral maps), inversion and channel
   order together (:func:`.jigsaw_oriented.solve_oriented_jigsaw`): the data fix everything up
   to one element applied to the whole picture;
2. pick that element with a stated prior (:mod:`.priors`; default :class:`GenericPrior`:
   images darker than mid-grey, R >= G >= B, for colour a brighter top): global inversion,
   the channel order and, as far as the prior knows, the dihedral map of the picture;
3. write the estimate as an :class:`~timm_ppconvmixer.schemes.EtCKey`: rotation and flip codes
   for each position's dihedral map (12 codes name 8 maps; any code of the map is as good),
   inversion bits and channel orders, and the block order.

Example:
    >>> from timm_ppconvmixer import encrypt, decrypt
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:200, None]
    >>> key = generate_key("etc", image_size=28, block_size=4, channels=1, seed=0)
    >>> result = recover_etc_key(encrypt(x, key, layout="CHW"), 4)
    >>> score_etc_key(key, result.key)["block_perm"] > 0.5
    True
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...cipher import decrypt, encrypt
from ...schemes.etc import EtCKey
from ..result import AttackResult
from ..solvers.blocks import (
    SYMMETRIES,
    apply_symmetry,
    from_blocks,
    symmetry_index_map,
    to_blocks,
    valid_symmetries,
)
from ..solvers.jigsaw_oriented import solve_oriented_jigsaw
from ..solvers.piece_group import PieceGroup
from ..solvers.priors import GenericPrior, ReferencePrior
from .blockwise import check_encrypted_batch

__all__ = ["recover_etc_key", "score_etc_key"]


def _code_tables() -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """``dihedral_of[rotation, flip]`` (index into SYMMETRIES) and one code per map."""
    probe = np.arange(16).reshape(4, 4)
    images = [apply_symmetry(probe, s).tobytes() for s in SYMMETRIES]
    table = np.empty((4, 3), dtype=np.int64)
    code_of: dict[int, tuple[int, int]] = {}
    for r in range(4):
        turned = np.rot90(probe, r, axes=(0, 1))
        for f, view in enumerate((turned, turned[:, ::-1], turned[::-1, :])):
            d = images.index(np.ascontiguousarray(view).tobytes())
            table[r, f] = d
            code_of.setdefault(d, (r, f))
    return table, code_of


_DIHEDRAL_OF, _CODE_OF = _code_tables()


def _undo_transforms(key: EtCKey, group: PieceGroup) -> np.ndarray:
    """Per encrypted position, the group element that turns its block back to the plain one."""
    index = {p: i for i, p in enumerate(group.perms)}
    d = _DIHEDRAL_OF[key.rotation.numpy(), key.flip.numpy()]
    order = np.array([index[tuple(p)] for p in key.channel_perm.numpy().tolist()])
    enc = group.element(d, key.np_mask.numpy().astype(np.int64), order)
    return group.inverse[enc]


def _key_from(size, m, c, block_perm, undo, group) -> EtCKey:
    enc = group.inverse[undo]
    codes = np.array([_CODE_OF[int(d)] for d in group.dihedral[enc]])
    return EtCKey(
        size,
        m,
        c,
        block_perm=block_perm,
        rotation=codes[:, 0],
        flip=codes[:, 1],
        np_mask=group.inverted[enc].astype(np.uint8),
        channel_perm=np.array([group.perms[int(o)] for o in group.order[enc]]),
    )


def recover_etc_key(
    encrypted: np.ndarray,
    block_size: int,
    *,
    prior: ReferencePrior | GenericPrior | None = None,
    seed: int = 0,
) -> AttackResult:
    """Estimate an EtC key from N images encrypted with it (any N >= 1).

    Args:
        encrypted: uint8 ``(N, C, H, W)``, all encrypted with the same EtC key.
        block_size: M (public: in ENCRYPTION.json).
        prior: how to choose the global inversion / channel order / dihedral map the data cannot
            decide (:mod:`.priors`); default :class:`GenericPrior`.
        seed: unused (the solver is deterministic); kept for the registry's signature.

    Returns:
        An :class:`AttackResult` whose ``key`` is an :class:`EtCKey` that
        ``timm_ppconvmixer.decrypt`` accepts.
    """
    del seed
    n_img, c, h, w = check_encrypted_batch(encrypted, block_size)
    m = int(block_size)
    grid = (h // m, w // m)
    n = grid[0] * grid[1]
    prior = prior or GenericPrior()
    group = PieceGroup(c)
    t0 = time.perf_counter()
    pieces = to_blocks(encrypted, m).reshape(n_img, n, c, m, m)
    sol = solve_oriented_jigsaw(pieces, grid, group)
    t_solve = time.perf_counter() - t0
    t = time.perf_counter()
    canonical = group.apply_each(pieces, sol.transform)
    rec = np.empty_like(canonical)
    rec[:, sol.place] = canonical
    recon = from_blocks(rec.reshape(n_img, n, -1), (c, h, w), m)
    choice = prior.choose(recon, grid)
    orders = {p: i for i, p in enumerate(group.perms)}
    glob = group.element(
        SYMMETRIES.index(choice.symmetry), int(choice.invert), orders[tuple(choice.channel_order)]
    )
    undo = group.compose(glob, sol.transform)
    block_perm = symmetry_index_map(choice.symmetry, *grid)[sol.place]
    key = _key_from((h, w), m, c, block_perm, undo, group)
    timings = {"solve": t_solve, "prior": time.perf_counter() - t}
    timings["total"] = time.perf_counter() - t0
    ambiguities = list(sol.notes)
    ambiguities.append(
        "one transform of the whole picture (a dihedral map, global inversion, the channel "
        f"order) leaves every edge cost unchanged; chosen by the {choice.prior} prior"
    )
    ambiguities += choice.ambiguity()
    if sol.blank_pieces > 1:
        ambiguities.append(
            f"{sol.blank_pieces} positions are constant in every image: their orientation and "
            "channel order cannot be recovered and do not matter for these images"
        )
    return AttackResult(
        key=key,
        confidence={"block_perm": sol.confidence, "transforms": sol.transform_margin},
        timings=timings,
        ambiguities=ambiguities,
        details={"images": n_img, "blocks_per_image": n, **sol.details(group), **choice.details()},
        method="extended-jigsaw",
        scheme="etc",
    )


def score_etc_key(
    true_key: EtCKey, estimate: EtCKey, plain: np.ndarray | None = None
) -> dict[str, Any]:
    """Shares of the key parts recovered, up to the global element no attacker can decide.

    ``block_perm``: positions holding the right block; ``orientation``: positions with the right
    dihedral map (compared as maps: 12 codes name 8 maps); ``inversion``; ``channel_order``.
    The best row over every global element (a dihedral symmetry of the image grid, global
    inversion, a channel order applied to every image) is reported with that element;
    ``*_exact`` are the shares with no global element. With ``plain`` (N, C, H, W) uint8,
    ``blocks_content`` is the share of block cells decrypted right in every image (constant
    blocks count whatever their orientation).
    """
    geo = (true_key.image_size, true_key.block_size, true_key.channels)
    if geo != (estimate.image_size, estimate.block_size, estimate.channels):
        raise ValueError("the estimate's geometry differs from the key's")
    grid, c = true_key.grid_size, true_key.channels
    group = PieceGroup(c)
    true_undo, est_undo = _undo_transforms(true_key, group), _undo_transforms(estimate, group)
    bp, ebp = true_key.block_perm.numpy(), estimate.block_perm.numpy()
    parts = ("block_perm", "orientation", "inversion", "channel_order")
    best, exact = None, None
    for sym in valid_symmetries(grid, true_key.block_size):
        gmap = symmetry_index_map(sym, *grid)
        k1 = float((ebp == gmap[bp]).mean())
        for inv in (0, 1):
            for order in range(group.num_orders):
                h = group.element(SYMMETRIES.index(sym), inv, order)
                alt = group.compose(h, true_undo)
                row = {
                    "block_perm": k1,
                    "orientation": float((group.dihedral[est_undo] == group.dihedral[alt]).mean()),
                    "inversion": float((group.inverted[est_undo] == group.inverted[alt]).mean()),
                    "channel_order": float((group.order[est_undo] == group.order[alt]).mean()),
                    "symmetry": sym.name,
                    "inverted": bool(inv),
                    "channel_order_global": list(group.perms[order]),
                }
                if h == group.identity:
                    exact = row
                if best is None or sum(row[p] for p in parts) > sum(best[p] for p in parts):
                    best = row
    out: dict[str, Any] = dict(best)
    out.update({f"{p}_exact": exact[p] for p in parts})
    if plain is not None:
        m = true_key.block_size
        rec = decrypt(encrypt(plain, true_key, layout="CHW"), estimate, layout="CHW")
        same = (to_blocks(rec, m) == to_blocks(plain, m)).all(axis=(0, 2))
        out["blocks_content"] = float(same.mean())
    return out
