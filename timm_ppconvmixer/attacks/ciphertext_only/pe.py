"""Ciphertext-only attacks on PE (:mod:`timm_ppconvmixer.schemes.pe`), both forms.

* ``pe`` (one key for all N images): per pixel position the channel order and inversion bits
  from neighbour consistency pooled over the N images (:mod:`.pe_sync`: edge costs summed over
  images, spectral synchronisation of signed permutations, ICM), then one global element
  (a channel order and an inversion per channel) by a prior. The estimate is a
  :class:`~timm_ppconvmixer.schemes.PEKey`. The pooled costs are the correlation attack of
  :mod:`.flip_mask` restricted to neighbours and extended to channel orders.
* ``pe-per-image`` (a fresh key per image): one image only. The fold ``|v - 127.5|`` of every
  value survives encryption; the channel order of each pixel comes from synchronising the
  folds of neighbours (permutations only), and which values are bright from an exact minimum
  cut with a value prior (:mod:`.pe_cut`, which explains why smoothness alone cannot decide
  it). No key: the result holds the reconstruction.

What no attacker decides from the ciphertext: for ``pe`` one global element of the 2^C C!
(global inversion, and for colour each channel's inversion and the channel order); for
``pe-per-image`` the same per image, and moreover (without a prior on values) each bright
region's side. A prior picks them (:mod:`.priors`): relative channel inversions by the positive
correlation of natural colour channels, global inversion and channel order from a
:class:`~.priors.ReferencePrior`'s mean image and histograms, or the generic rules (darker than
mid-grey, R >= G >= B).

Example:
    >>> from timm_ppconvmixer import encrypt
    >>> from timm_ppconvmixer.schemes import generate_key
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x = fashion_mnist_arrays("test")[0][:100, None]
    >>> key = generate_key("pe", image_size=28, channels=1, seed=0)
    >>> result = recover_pe_key(encrypt(x, key, layout="CHW"), 1)
    >>> score_pe_key(key, result.key)["np_mask"] > 0.99
    True
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...schemes.pe import PEKey
from ..result import AttackInputError, AttackResult
from ..solvers.pe_cut import bright_sides
from ..solvers.pe_sync import SignedPerms, edge_costs, synchronise
from ..solvers.priors import GenericPrior, ReferencePrior

__all__ = [
    "recover_pe_key",
    "recover_pe_per_image",
    "score_pe_key",
    "score_pe_reconstruction",
]

_PRIOR_NATS = 200.0  # weight of the value prior against the smoothness cost (grey levels)
_BINS = 32  # the reference prior's histogram bins (priors.ReferencePrior)


def _check(encrypted: np.ndarray, block_size: int, scheme: str) -> tuple[int, int, int, int]:
    if not isinstance(encrypted, np.ndarray) or encrypted.dtype != np.uint8:
        kind = getattr(encrypted, "dtype", type(encrypted).__name__)
        raise AttackInputError(
            f"expected a numpy uint8 array of {scheme}-encrypted images (N, C, H, W), got "
            f"{kind}; load the PNGs as uint8 without normalising them"
        )
    if encrypted.ndim != 4 or len(encrypted) < 1:
        raise AttackInputError(
            f"expected encrypted images as (N, C, H, W) with N >= 1, got shape "
            f"{encrypted.shape}; add the batch and channel axes (x[None] or x[:, None])"
        )
    if int(block_size) != 1:
        raise AttackInputError(
            f"{scheme} is pixel-wise: block_size must be 1, got {block_size} (ENCRYPTION.json "
            "names the scheme; a block size other than 1 means another scheme)"
        )
    n, c, h, w = encrypted.shape
    if h < 2 or w < 2 or c > 4:
        raise AttackInputError(
            f"images of {h}x{w} with {c} channels: the attack needs at least 2x2 pixels and at "
            "most 4 channels (C! 2^C candidates per pixel)"
        )
    return n, c, h, w


# -- the prior's choice of one global element ---------------------------------------------------


def _global_scores(recon: np.ndarray, group: SignedPerms, prior, per_image: bool) -> np.ndarray:
    """Score ``(B, K)`` of applying global element k to the reconstructions ``(N, C, H, W)``
    (B = N per image, else 1); higher is more plausible. Lexicographic in effect: the colour
    channels' mutual correlation (relative inversions), then inversion, then channel order."""
    t = group.table
    n, c = recon.shape[:2]
    x = recon.reshape(n, c, -1).astype(np.float64)
    if not per_image:
        x = x.transpose(1, 0, 2).reshape(1, c, -1)
    b = len(x)
    mean = x.mean(-1)  # (B, C)
    xc = x - mean[..., None]
    sd = np.sqrt((xc**2).mean(-1)) + 1e-9
    corr = np.einsum("bkp,blp->bkl", xc, xc) / x.shape[-1] / (sd[:, :, None] * sd[:, None, :])
    scores = np.zeros((b, group.size))
    ref = prior if isinstance(prior, ReferencePrior) else None
    if ref is not None and ref.mean.shape[0] != c:
        raise AttackInputError(f"the reference images have {ref.mean.shape[0]} channels, data {c}")
    hist = None
    if ref is not None:
        bins = np.minimum(recon // (256 // _BINS), _BINS - 1).reshape(n, c, -1)
        hist = np.stack([[np.bincount(v, minlength=_BINS) for v in img] for img in bins])
        hist = hist.astype(np.float64) if per_image else hist.sum(0, keepdims=True) * 1.0
        hist /= hist.sum(-1, keepdims=True)
        img_mean = recon.astype(np.float64) if per_image else recon.mean(0, keepdims=True)
    for k in range(group.size):
        perm, sign = t.perm[k], t.sign[k]  # candidate channel j = sign_j * recon channel perm_j
        s = np.outer(sign, sign)
        rel = (corr[:, perm][:, :, perm] * s)[:, np.triu_indices(c, 1)[0], np.triu_indices(c, 1)[1]]
        m = np.where(sign < 0, 255.0 - mean[:, perm], mean[:, perm])  # (B, C)
        score = 1000.0 * rel.sum(-1) if c > 1 else np.zeros(b)
        if ref is not None:
            cm = img_mean[:, perm]
            cm = np.where(sign[None, :, None, None] < 0, 255.0 - cm, cm)
            d_mean = np.sqrt(((cm - ref.mean[None]) ** 2).reshape(b, -1).sum(1))
            d_mean /= 255.0 * np.sqrt(ref.mean.size)
            hk = hist[:, perm]
            hk = np.where(sign[None, :, None] < 0, hk[..., ::-1], hk)
            d_hist = np.abs(hk - ref.hist[None]).sum((1, 2)) / (2 * c)
            score = score - 100.0 * (d_mean + d_hist)
        else:
            score = score - 100.0 * m.mean(1) / 255.0
            score = score + sum(m[:, i] - m[:, j] for i in range(c) for j in range(i + 1, c)) / 255
        scores[:, k] = score
    return scores


def _ambiguities(c: int, prior_name: str, per_image: bool) -> list[str]:
    where = "each image's" if per_image else "the"
    out = [
        f"global inversion of {where} reconstruction: not decidable from the ciphertext; "
        f"chosen by the {prior_name} prior"
    ]
    if c > 1:
        out.append(
            f"{where} global channel order and each channel's inversion: channel inversions by "
            f"the positive correlation of natural colour channels, the order by the {prior_name} "
            "prior"
        )
    return out


# -- pe: one key ---------------------------------------------------------------------------------


def recover_pe_key(
    encrypted: np.ndarray,
    block_size: int = 1,
    *,
    prior: ReferencePrior | GenericPrior | None = None,
    seed: int = 0,
) -> AttackResult:
    """Estimate the PE key shared by ``encrypted`` (N, C, H, W) uint8 (module docstring).

    Any N >= 1 works; one image is attacked as in :func:`recover_pe_per_image` (bright regions
    may come out inverted: :mod:`.pe_cut` says why) and the key read off its reconstruction;
    from two images on the costs are pooled.
    """
    del seed  # deterministic: the eigensolver's start vector is fixed
    n, c, h, w = _check(encrypted, block_size, "pe")
    prior = prior or GenericPrior()
    group = SignedPerms(c)
    t = group.table
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    costs = edge_costs(encrypted, group, pooled=True)
    times["costs"] = time.perf_counter() - t0
    if n == 1:
        # one image: nothing is pooled, and smoothness alone folds bright regions; the
        # per-image attack's value prior does better, and its reconstruction gives the key
        single = recover_pe_per_image(encrypted, 1, prior=prior)
        enc = _element_between(single.reconstruction[0], encrypted[0], group)
        labels = t.inv[enc].reshape(h, w)
        times.update({f"per_image_{k}": v for k, v in single.timings.items()})
    else:
        t1 = time.perf_counter()
        labels, _ = synchronise(costs, group, (h, w))
        times["synchronise"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        recon = group.apply(np.broadcast_to(labels, (n, h, w)), encrypted)
        g = int(_global_scores(recon, group, prior, per_image=False)[0].argmax())
        labels = t.mult[g, labels[0]]  # L_p -> G L_p
        times["prior"] = time.perf_counter() - t2
        enc = t.inv[labels].reshape(-1)  # E_p = L_p^T
    key = PEKey((h, w), 1, c, channel_perm=t.perm[enc], np_mask=t.sign[enc] < 0)
    agree = _edge_agreement(costs, labels.reshape(1, h, w), group)
    times["total"] = time.perf_counter() - t0
    return AttackResult(
        key=key,
        confidence={"channel_perm": agree, "np_mask": agree},
        timings=times,
        ambiguities=_ambiguities(c, getattr(prior, "name", "generic"), per_image=False),
        details={"images": n, "candidates_per_pixel": group.size, "edge_agreement": agree},
        method="pe-neighbour-synchronisation",
        scheme="pe",
    )


def _element_between(plain: np.ndarray, encrypted: np.ndarray, group: SignedPerms) -> np.ndarray:
    """Per pixel the index of a signed permutation E with ``E (x - 127.5) = y - 127.5`` for
    one plain/encrypted image pair (C, H, W) (the first, where equal values allow several)."""
    t = group.table
    c = plain.shape[0]
    x = plain.reshape(c, -1).T.astype(np.int16)  # (P, C)
    y = encrypted.reshape(c, -1).T.astype(np.int16)
    cand = x[:, t.perm]  # (P, K, C)
    cand = np.where(t.sign[None] < 0, 255 - cand, cand)
    return (cand == y[:, None, :]).all(-1).argmax(-1)


def _edge_agreement(costs: dict, labels: np.ndarray, group: SignedPerms) -> float:
    """Share of edges whose relative element is the edge's own cheapest (a key-free check)."""
    t = group.table
    hits = total = 0
    from ..solvers.pe_sync import _shifted  # the same edge geometry as the costs

    for (dy, dx), cost in costs.items():
        lp, lq = _shifted(labels, dy, dx)
        hits += int((t.mult[t.inv[lp], lq] == cost.argmin(-1)).sum())
        total += lp.size
    return hits / max(total, 1)


# -- pe-per-image: one image at a time -------------------------------------------------------


def _value_costs(values: np.ndarray, prior) -> np.ndarray:
    """Unary cost of each candidate plain value (uint8 array) under the prior's histogram:
    negative log frequency (ReferencePrior), or brightness (generic: darker is likelier)."""
    if isinstance(prior, ReferencePrior):
        h = prior.hist.mean(0) + 1e-3  # channel-agnostic: the channel identity comes later
        nll = -np.log(h / h.sum())
        return _PRIOR_NATS * nll[np.minimum(values // (256 // _BINS), _BINS - 1)]
    return values.astype(np.float64) * 1e-3  # generic: a tie-break towards dark, nothing more


def recover_pe_per_image(
    encrypted: np.ndarray,
    block_size: int = 1,
    *,
    prior: ReferencePrior | GenericPrior | None = None,
    seed: int = 0,
) -> AttackResult:
    """Reconstruct every image of ``encrypted`` (N, C, H, W) uint8, each under its own PE key,
    from that image alone (module docstring). ``key`` is None; see ``reconstruction``."""
    del seed
    n, c, h, w = _check(encrypted, block_size, "pe-per-image")
    prior = prior or GenericPrior()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    y = encrypted.astype(np.int16)
    fold = np.minimum(y, 255 - y).astype(np.uint8)  # invariant under inversion
    if c > 1:
        # channel order per pixel: synchronise the folds (permutations only)
        perms = SignedPerms(c, signed=False)
        labels, _ = synchronise(edge_costs(fold, perms), perms, (h, w))
        fold = perms.apply(labels, fold)
        y = perms.apply(labels, encrypted).astype(np.int16)
    times["channel_order"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    mag = 127.5 - fold.astype(np.float64)
    dark, bright = fold, (255 - fold.astype(np.int16)).astype(np.uint8)
    side = bright_sides(mag, _value_costs(dark, prior), _value_costs(bright, prior))
    recon = np.where(side, bright, dark).astype(np.uint8)
    times["sides"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    group = SignedPerms(c)
    g = _global_scores(recon, group, prior, per_image=True).argmax(1)
    recon = group.apply(np.broadcast_to(g[:, None, None], (n, h, w)), recon)
    times["prior"] = time.perf_counter() - t2
    times["total"] = time.perf_counter() - t0
    ambiguities = _ambiguities(c, getattr(prior, "name", "generic"), per_image=True)
    ambiguities.append(
        "which regions are bright: neighbour smoothness prefers every value on one side of "
        "mid-grey (the folded image); decided by the "
        + (
            "reference prior's value histogram"
            if isinstance(prior, ReferencePrior)
            else "generic prior (darker), so bright regions come out folded"
        )
    )
    del y
    return AttackResult(
        key=None,
        confidence={"bright_share": float(side.mean())},
        timings=times,
        ambiguities=ambiguities,
        details={"images": n, "prior_weight": _PRIOR_NATS},
        method="pe-per-image-fold-cut",
        scheme="pe-per-image",
        reconstruction=recon,
    )


# -- scoring (the owner, with the true key or the plain images) ----------------------------------


def score_pe_key(
    true_key: PEKey, estimate: PEKey, plain: np.ndarray | None = None
) -> dict[str, Any]:
    """Shares of PE's key parts recovered: ``channel_perm`` (pixels whose channel order is
    right), ``np_mask`` (inversion bits right), ``pixels`` (both right), up to the global
    element that fits best (named in ``global``) and exactly (``*_exact``)."""
    del plain
    if (true_key.image_size, true_key.channels) != (estimate.image_size, estimate.channels):
        raise ValueError("the estimate's geometry differs from the key's")
    c = true_key.channels
    group = SignedPerms(c)
    t = group.table
    code = {m.tobytes(): k for k, m in enumerate(t.mats)}

    def index(key: PEKey) -> np.ndarray:
        perm, mask = key.channel_perm.numpy(), key.np_mask.numpy()
        mats = np.zeros((len(perm), c, c), dtype=np.int8)
        rows = np.arange(len(perm))[:, None]
        mats[rows, np.arange(c)[None], perm] = np.where(mask, -1, 1)
        return np.array([code[m.tobytes()] for m in mats])

    true_e, est_e = index(true_key), index(estimate)
    rows = {}
    for g in range(group.size):
        # est L = G L_true  <=>  est E = E_true G^T
        e = t.mult[true_e, t.inv[g]]
        perm_ok = (t.perm[e] == t.perm[est_e]).all(1)
        bits_ok = (t.sign[e] == t.sign[est_e]) & (t.perm[e] == t.perm[est_e])
        bit_share = float(((t.sign[e] < 0) == (t.sign[est_e] < 0)).mean())
        rows[g] = {
            "channel_perm": float(perm_ok.mean()),
            "np_mask": bit_share if c == 1 else float(bits_ok.mean()),
            "pixels": float((e == est_e).mean()),
        }
    best = max(rows, key=lambda g: rows[g]["pixels"])
    out: dict[str, Any] = dict(rows[best])
    out["global"] = _name(t, best)
    out.update({f"{k}_exact": v for k, v in rows[0].items()})
    return out


def _name(t, g: int) -> str:
    if g == 0:
        return "identity"
    parts = []
    if not np.array_equal(t.perm[g], np.arange(len(t.perm[g]))):
        parts.append("channel order " + "".join(str(int(i)) for i in t.perm[g]))
    inv = [str(i) for i in range(len(t.sign[g])) if t.sign[g][i] < 0]
    if inv:
        parts.append("inverted channel(s) " + ",".join(inv))
    return "; ".join(parts)


def score_pe_reconstruction(recon: np.ndarray, plain: np.ndarray) -> dict[str, float]:
    """For ``pe-per-image`` (no key): the share of values and of pixels (all channels) the
    reconstruction gets exactly right, and the same after the best global inversion of each
    image (what no prior-free attacker decides)."""
    same = recon == plain
    inv = (255 - recon) == plain
    n = len(recon)
    per_img = same.reshape(n, -1).mean(1)
    per_img_inv = inv.reshape(n, -1).mean(1)
    return {
        "values_exact": float(same.mean()),
        "pixels_exact": float(same.all(1).mean()),
        "values_up_to_inversion": float(np.maximum(per_img, per_img_inv).mean()),
    }
