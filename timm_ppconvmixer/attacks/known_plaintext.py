"""Known-plaintext key recovery from one (or a few) plain/encrypted pairs.

The scheme (docs/design.md section 2 "Encryption") moves values (steps 2, 3) and flips some
(step 4) but never mixes them, so it is a permutation-only cipher with a fixed XOR mask, and
falls to the constraint-intersection attack on permutation-only ciphers (S. Li, C. Li, G. Chen,
N. G. Bourbakis, K.-T. Lo, Signal Processing: Image Communication 23(3), 2008): each known
pair restricts where every encrypted value can have come from, and the restrictions of all
blocks and pairs intersect.

1. ``v`` and ``255 - v`` fold to the same ``min(v, 255 - v)``, so the sorted folded values of a
   block do not depend on K2 or K3: they match an encrypted block to its plain block (K1).
2. For each block matched uniquely, encrypted position ``j`` can only come from plain positions
   ``q`` with the same value (``m = 0``) or the complement (``m = 1``); intersecting over blocks
   and pairs leaves K2 and K3.
3. Blocks with several candidates (identical content, e.g. blank corners) are re-checked
   against the K2/K3 constraints, then any consistent choice is taken (Hungarian method).

What one pair determines: K1 for every block whose content differs from all other blocks; K2
and K3 at every position whose values differ across the uniquely matched blocks (for a
Fashion-MNIST image, most of them); the rest is undetermined by that pair and is reported, but
the estimate decrypts the pair's image exactly regardless.

Example:
    >>> from timm_ppconvmixer import BlockKey, encrypt
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:1, None]
    >>> key = BlockKey.generate(28, 4, 1, seed=0)
    >>> r = known_plaintext_attack(x, encrypt(x, key, layout="CHW"))
    >>> bool((decrypt(encrypt(x, key, layout="CHW"), r.key, layout="CHW") == x).all())
    True
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..cipher import decrypt  # noqa: F401  (used by the doctest)
from ..key import BlockKey
from .result import AttackInputError, AttackResult
from .solvers.blocks import to_blocks

__all__ = ["known_plaintext_attack"]


def _signatures(blocks: np.ndarray) -> list[bytes]:
    folded = np.minimum(blocks, 255 - blocks)
    sig = np.sort(folded, axis=2)  # (N, n, D)
    return [sig[:, i].tobytes() for i in range(sig.shape[1])]


def known_plaintext_attack(plain: np.ndarray, encrypted: np.ndarray, block_size: int | None = None):
    """Key from plain/encrypted pairs, uint8 ``(N, C, H, W)`` each (``N >= 1``).

    ``block_size`` defaults to the smallest that is consistent with the pairs (any larger
    multiple is consistent too: a bigger block is a coarser model); pass it when known.
    """
    if plain.shape != encrypted.shape or plain.dtype != np.uint8 or encrypted.dtype != np.uint8:
        raise AttackInputError(
            f"plain and encrypted must be uint8 arrays of the same shape (N, C, H, W), got "
            f"{plain.dtype} {plain.shape} and {encrypted.dtype} {encrypted.shape}"
        )
    if plain.ndim != 4:
        raise AttackInputError(f"expected (N, C, H, W) pairs, got shape {plain.shape}")
    n_img, c, h, w = plain.shape
    if block_size is None:
        sizes = [m for m in range(1, min(h, w) + 1) if h % m == 0 and w % m == 0]
    else:
        sizes = [int(block_size)]
    for m in sizes:
        result = _attack(plain, encrypted, m)
        if result is not None:
            return result
    raise AttackInputError(
        "the pairs are not related by a block-wise encryption with any block size tried "
        f"({sizes}): check that each encrypted image is the encryption of its plain partner"
    )


def _attack(plain: np.ndarray, encrypted: np.ndarray, m: int) -> AttackResult | None:
    t0 = time.perf_counter()
    n_img, c, h, w = plain.shape
    pb, eb = to_blocks(plain, m), to_blocks(encrypted, m)  # (N, n, D)
    n, d = pb.shape[1:]
    sig_p, sig_e = _signatures(pb), _signatures(eb)
    by_sig: dict[bytes, list[int]] = {}
    for p, s in enumerate(sig_p):
        by_sig.setdefault(s, []).append(p)
    cand = [by_sig.get(s, []) for s in sig_e]
    if any(not c_ for c_ in cand):
        return None
    allowed0 = np.ones((d, d), dtype=bool)  # encrypted j from plain q, not flipped
    allowed1 = np.ones((d, d), dtype=bool)  # ... flipped
    for i, cs in enumerate(cand):
        if len(cs) == 1:
            e, p = eb[:, i, :, None], pb[:, cs[0], None, :]
            allowed0 &= (e == p).all(0)
            allowed1 &= (e == 255 - p).all(0)
    if not (allowed0 | allowed1).any(1).all():
        return None
    # ambiguous blocks: keep the candidates that the position constraints allow
    for i, cs in enumerate(cand):
        if len(cs) > 1:
            keep = []
            for p in cs:
                e, v = eb[:, i, :, None], pb[:, p, None, :]
                ok = ((allowed0 & (e == v).all(0)) | (allowed1 & (e == 255 - v).all(0))).any(1)
                if ok.all():
                    keep.append(p)
            cand[i] = keep or cs
    either = allowed0 | allowed1
    rows, cols = linear_sum_assignment(~either)  # cost 0 where allowed
    if either[rows, cols].sum() < d:
        return None
    pixel_perm = np.empty(d, dtype=np.int64)
    pixel_perm[rows] = cols
    mask = allowed1[np.arange(d), pixel_perm] & ~allowed0[np.arange(d), pixel_perm]
    bmat = np.ones((n, n))
    for i, cs in enumerate(cand):
        bmat[i, cs] = 0.0
    rows, cols = linear_sum_assignment(bmat)
    block_perm = np.empty(n, dtype=np.int64)
    block_perm[rows] = cols
    key = BlockKey((h, w), m, c, block_perm, pixel_perm, mask.astype(np.uint8))
    unique_pos = (either.sum(1) == 1) & ~(allowed0 & allowed1)[np.arange(d), pixel_perm]
    unique_blocks = np.array([len(cs) == 1 for cs in cand])
    ambiguities = []
    if not unique_blocks.all():
        ambiguities.append(
            f"{int((~unique_blocks).sum())} of {n} blocks have twins with the same content in "
            "every pair (e.g. blank): their order is not determined by these pairs"
        )
    if not unique_pos.all():
        ambiguities.append(
            f"{int((~unique_pos).sum())} of {d} positions are not determined (their values "
            "coincide in every uniquely matched block, or v and 255 - v both fit)"
        )
    return AttackResult(
        key=key,
        confidence={
            "K1": float(unique_blocks.mean()),
            "K2": float((either.sum(1) == 1).mean()),
            "K3": float((~(allowed0 & allowed1)[np.arange(d), pixel_perm]).mean()),
        },
        timings={"total": time.perf_counter() - t0},
        ambiguities=ambiguities,
        details={"pairs": n_img, "block_size": m},
        method="known-plaintext",
    )
