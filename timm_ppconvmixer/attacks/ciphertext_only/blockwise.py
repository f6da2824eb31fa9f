"""Ciphertext-only key recovery: K3, then K2, then K1, then a prior for the symmetries.

The whole attack on the scheme of docs/design.md section 2 "Encryption" (the paper's Sec.
III-A), for N images encrypted with one key: :mod:`.flip_mask` (step 4, K3) from correlation
signs, :mod:`.pixel_shuffle` (step 3, K2) from correlation geometry, :mod:`.jigsaw` (step 2,
K1) from edge compatibility pooled over the N images, and :mod:`.priors` for what the data
cannot decide (a dihedral symmetry, the channel order, global inversion). Literature: Chuman
and Kiya's jigsaw-puzzle-solver attacks on block scrambling (IEICE Trans. Inf. & Syst. E101-D(1),
2018; arXiv:2211.02369) and Li et al.'s cryptanalysis of permutation-only ciphers (Signal
Processing: Image Communication 23(3), 2008); docs/security.md compares the numbers.

Example:
    >>> from timm_ppconvmixer import BlockKey, encrypt, decrypt
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:1000, None]
    >>> key = BlockKey.generate(28, 4, 1, seed=3)
    >>> result = recover_key(encrypt(x, key, layout="CHW"), 4)
    >>> recovered = decrypt(encrypt(x, key, layout="CHW"), result.key, layout="CHW")
"""

from __future__ import annotations

import time

import numpy as np

from ...key import BlockKey
from ..result import AttackInputError, AttackResult
from ..solvers.blocks import from_blocks, position_map, symmetry_index_map, to_blocks
from ..solvers.flip_mask import position_stats, recover_flip_mask
from ..solvers.jigsaw import solve_jigsaw
from ..solvers.pixel_shuffle import recover_pixel_perm
from ..solvers.priors import GenericPrior, ReferencePrior

__all__ = ["check_encrypted_batch", "recover_key"]


def check_encrypted_batch(
    encrypted: np.ndarray, block_size: int, *, block_order: bool = True
) -> tuple[int, int, int, int]:
    """Validate a batch for the attacks; ``(N, C, H, W)`` or :class:`AttackInputError`.
    ``block_order=False`` for schemes that do not move blocks (LE): one block is enough."""
    if not isinstance(encrypted, np.ndarray) or encrypted.dtype != np.uint8:
        kind = getattr(encrypted, "dtype", type(encrypted).__name__)
        raise AttackInputError(
            f"expected a numpy uint8 array of encrypted images (N, C, H, W), got {kind}; "
            "load the PNGs as uint8 without normalising them"
        )
    if encrypted.ndim != 4:
        raise AttackInputError(
            f"expected encrypted images as (N, C, H, W), got shape {encrypted.shape}; add the "
            "batch and channel axes (x[None] or x[:, None])"
        )
    n, c, h, w = encrypted.shape
    m = int(block_size)
    if n < 1:
        raise AttackInputError("no images: the attack needs at least one encrypted image")
    if m < 1 or h % m or w % m:
        raise AttackInputError(
            f"images of {h}x{w} are not a grid of {m}x{m} blocks; pass the block size the data "
            "were encrypted with (ENCRYPTION.json says it)"
        )
    if block_order and (h // m) * (w // m) < 2:
        raise AttackInputError(
            f"a {h}x{w} image is a single {m}x{m} block: there is no block order to recover"
        )
    return n, c, h, w


def _unflip(blocks: np.ndarray, signs: np.ndarray) -> np.ndarray:
    flip = (signs < 0).astype(np.uint8) * 255
    return blocks ^ flip  # 255 - v == v XOR 0xFF for uint8


def recover_key(
    encrypted: np.ndarray,
    block_size: int,
    *,
    prior: ReferencePrior | GenericPrior | None = None,
    max_samples: int | None = 200_000,
    seed: int = 0,
) -> AttackResult:
    """Estimate the key from encrypted images alone.

    Args:
        encrypted: uint8 ``(N, C, H, W)``, all encrypted with the same key.
        block_size: M (public: it is the model's patch size and in ENCRYPTION.json).
        prior: how to choose among keys the data cannot tell apart (:mod:`.priors`); default
            :class:`GenericPrior`.
        max_samples: blocks used for the position statistics (cost ``samples * D^2``).
        seed: for the random subset of blocks and the clustering start.

    Returns:
        An :class:`AttackResult` whose ``key`` the project's ``decrypt`` accepts.
    """
    n_img, c, h, w = check_encrypted_batch(encrypted, block_size)
    m = int(block_size)
    grid = (h // m, w // m)
    prior = prior or GenericPrior()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    blocks = to_blocks(encrypted, m)  # (N, n, D)
    # K3: with the 255-flips in place the blank blocks still carry sign information
    flips = recover_flip_mask(stats=position_stats(blocks, max_samples, seed))
    timings["K3"] = time.perf_counter() - t0
    t = time.perf_counter()
    plain_blocks = _unflip(blocks, flips.signs)
    stats = position_stats(plain_blocks, max_samples, seed, drop_constant=True)
    shuffle = recover_pixel_perm(stats, c, m, seed=seed)
    signs = flips.signs
    if shuffle.flipped is not None and shuffle.flipped.any():
        # a channel whose K3 signs came out complemented (anti-correlated colours, few images)
        signs = np.where(shuffle.flipped, -signs, signs).astype(np.int8)
        plain_blocks = _unflip(blocks, signs)
    timings["K2"] = time.perf_counter() - t
    t = time.perf_counter()
    slots = [shuffle.slot]
    if grid[0] != grid[1]:  # a transposed K2 would not fit a non-square grid: try both
        slots.append(position_map_transpose(shuffle.slot, c, m))
    best = None
    for slot in slots:
        pieces = np.empty_like(plain_blocks)
        pieces[:, :, slot] = plain_blocks
        sol = solve_jigsaw(pieces.reshape(n_img, -1, c, m, m), grid)
        if best is None or sol.cost < best[1].cost:
            best = (slot, sol, pieces)
    slot, sol, pieces = best
    timings["K1"] = time.perf_counter() - t
    t = time.perf_counter()
    rec_blocks = np.empty_like(pieces)
    rec_blocks[:, sol.place] = pieces
    recon = from_blocks(rec_blocks, (c, h, w), m)
    choice = prior.choose(recon, grid)
    timings["prior"] = time.perf_counter() - t
    gmap = symmetry_index_map(choice.symmetry, *grid)
    pmap = position_map(choice.symmetry, c, m)
    chan_inv = np.argsort(np.array(choice.channel_order))  # recon channel -> chosen channel
    m2 = m * m
    moved = pmap[slot]  # spatial symmetry first (channels unchanged) ...
    pixel_perm = chan_inv[moved // m2] * m2 + moved % m2  # ... then the channel order
    mask = (signs < 0) ^ choice.invert
    key = BlockKey((h, w), m, c, gmap[sol.place], pixel_perm, mask.astype(np.uint8))
    timings["total"] = time.perf_counter() - t0
    ambiguities = list(sol.notes) + choice.ambiguity()  # every other part is fixed by the data
    return AttackResult(
        key=key,
        confidence={
            "K3": float(flips.confidence.mean()),
            "K2": float(shuffle.confidence),
            "K1": float(sol.confidence),
        },
        timings=timings,
        ambiguities=ambiguities,
        details={
            "images": n_img,
            "blocks_per_image": grid[0] * grid[1],
            "statistics_samples": stats.samples,
            "k3_method": flips.method,
            "k2_rounds": shuffle.rounds,
            "k3_positions_reinverted": int(0 if shuffle.flipped is None else shuffle.flipped.sum()),
            "blank_pieces": sol.blank_pieces,
            **choice.details(),
        },
        method="ciphertext-only",
    )


def position_map_transpose(slot: np.ndarray, channels: int, m: int) -> np.ndarray:
    """``slot`` with every block transposed (for non-square grids)."""
    from ..solvers.blocks import Symmetry

    return position_map(Symmetry(True, False, False), channels, m)[slot]
