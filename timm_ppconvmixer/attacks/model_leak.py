"""What a shared model reveals of the key.

(a) **Converted from a public plain checkpoint**
(:func:`timm_ppconvmixer.keyed.convert.encrypt_model`,
docs/design.md section 2 "Encryption" with the conversion of the paper's Sec. III-B): the
stem's weights become ``W' = W A^-1`` with ``A`` a signed, scaled permutation built from K2 and
K3, and P becomes ``P[block_perm]``. Whoever knows which public checkpoint was converted (model
cards name it) matches each column of ``W'`` to the column of ``W`` it is a multiple of (K2:
``|cosine| = 1``, Hungarian method over all columns), reads K3 from the sign of the multiple, and
K1 from the rows of P (``argmax`` when the plain model had no P, i.e. ``P = I``). Exact.

(b) **Trained from scratch on encrypted data**: P is learned, and the demo (docs/training.md)
shows it does not converge to the inverse block permutation in one epoch;
:func:`block_order_from_p` reads the nearest permutation (Hungarian method, as
``harden_permutation``) and the owner scores it with :func:`~.evaluation.scoring.score_key`. The
stem, however, is a bank of filters applied to shuffled and flipped patches:
:func:`shuffle_from_stem` runs the ciphertext-only K3/K2 steps (:mod:`.solvers.flip_mask`,
:mod:`.solvers.pixel_shuffle`) on its columns, treating the output filters as samples (learned
filters of natural images are smooth, so neighbouring pixels' weights correlate, the same
statistics that break the encrypted images).

Example:
    >>> import timm, torch
    >>> from timm_ppconvmixer import BlockKey
    >>> from timm_ppconvmixer.keyed.convert import encrypt_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> plain = timm.create_model("ppconvmixer_256_8", num_classes=10, permutation=False,
    ...                           img_size=32, dim=32, depth=1).eval()
    >>> key = BlockKey.generate(32, 4, 3, seed=0)
    >>> shared = encrypt_model(plain, key, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> r = key_from_converted_model(shared, plain)
    >>> same = [(getattr(r.key, k) == getattr(key, k)).all() for k in ("block_perm", "pixel_perm")]
    >>> bool(all(same))
    True
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..key import BlockKey
from ..models.permutation import block_order_of
from .result import AttackInputError, AttackResult
from .solvers.flip_mask import PositionStats, recover_flip_mask
from .solvers.pixel_shuffle import recover_pixel_perm

__all__ = ["block_order_from_p", "key_from_converted_model", "shuffle_from_stem"]


def _stem(model: nn.Module) -> nn.Conv2d:
    conv = getattr(getattr(model, "stem", None), "__getitem__", None)
    if conv is None or not isinstance(model.stem[0], nn.Conv2d):
        raise AttackInputError(f"{type(model).__name__} has no ConvMixer stem convolution")
    return model.stem[0]


def _p_matrix(model: nn.Module) -> np.ndarray | None:
    """The effective P (``matrix()``: after Sinkhorn and the gain), or None without P."""
    perm = getattr(model, "permutation", None)
    if not callable(getattr(perm, "matrix", None)):
        return None
    with torch.no_grad():
        return perm.matrix().detach().double().cpu().numpy()


def key_from_converted_model(shared: nn.Module, public: nn.Module) -> AttackResult:
    """Exact key of a model made by ``encrypt_model(public, key)``, given ``public``."""
    t0 = time.perf_counter()
    conv, conv0 = _stem(shared), _stem(public)
    if conv.weight.shape != conv0.weight.shape:
        raise AttackInputError(
            f"stem shapes differ ({tuple(conv.weight.shape)} vs {tuple(conv0.weight.shape)}): "
            "not the public model this one was converted from"
        )
    out_ch, c, m, _ = conv.weight.shape
    w = conv.weight.detach().double().reshape(out_ch, -1).numpy()
    w0 = conv0.weight.detach().double().reshape(out_ch, -1).numpy()
    wn = w / np.maximum(np.linalg.norm(w, axis=0), 1e-12)
    w0n = w0 / np.maximum(np.linalg.norm(w0, axis=0), 1e-12)
    cos = wn.T @ w0n  # (D, D): encrypted column j vs plain column q
    rows, cols = linear_sum_assignment(-np.abs(cos))
    pixel_perm = np.empty(len(rows), dtype=np.int64)
    pixel_perm[rows] = cols
    fit = np.abs(cos[rows, cols])
    mask = cos[np.arange(len(rows)), pixel_perm] < 0
    p, p0 = _p_matrix(shared), _p_matrix(public)
    if p is None:
        raise AttackInputError("the shared model has no permutation matrix P (not a PPConvMixer)")
    n = p.shape[0]
    p0 = np.eye(n) if p0 is None else p0
    # P' = P0[block_perm]: row i of P' is row block_perm[i] of P0
    dist = ((p[:, None, :] - p0[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(dist)
    block_perm = np.empty(n, dtype=np.int64)
    block_perm[rows] = cols
    size = tuple(getattr(shared, "img_size", None) or (int(np.sqrt(n)) * m,) * 2)
    key = BlockKey(size, m, c, block_perm, pixel_perm, mask.astype(np.uint8))
    return AttackResult(
        key=key,
        confidence={
            "K2": float((fit > 0.999).mean()),
            "K3": float((fit > 0.999).mean()),
            "K1": float((dist[rows, cols] < 1e-9).mean()),
        },
        timings={"total": time.perf_counter() - t0},
        details={"min_abs_cosine": float(fit.min())},
        method="converted-model",
    )


def block_order_from_p(model: nn.Module) -> tuple[np.ndarray, float]:
    """The block order a shared model's P states, as a ``block_perm`` estimate
    (:func:`timm_ppconvmixer.models.permutation.block_order_of` on the effective matrix, so a
    Sinkhorn, scaled or negated P reads right), and the share of rows whose largest ``|P|``
    agrees with it (a key-free confidence)."""
    p = _p_matrix(model)
    if p is None:
        raise AttackInputError("the model has no permutation matrix P")
    estimate = block_order_of(torch.from_numpy(p)).numpy()
    return estimate, float((np.abs(p).argmax(1) == estimate).mean())


def shuffle_from_stem(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """K2 and K3 estimates (``pixel_perm``, ``np_mask``) from a trained model's stem filters,
    up to a block symmetry, the channel order and global inversion (see :mod:`.blocks`)."""
    conv = _stem(model)
    out_ch, c, m, _ = conv.weight.shape
    w = conv.weight.detach().double().reshape(out_ch, -1).numpy()
    w = w - w.mean(0, keepdims=True)
    stats = PositionStats(np.zeros(w.shape[1]), w.T @ w / out_ch, out_ch)
    flips = recover_flip_mask(stats=stats)
    shuffle = recover_pixel_perm(stats.flipped(flips.signs), c, m)
    return shuffle.slot, flips.mask
