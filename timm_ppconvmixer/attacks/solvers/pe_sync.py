"""Per-pixel channel order and inversion from neighbour consistency: a group synchronisation.

PE (:mod:`timm_ppconvmixer.schemes.pe`) maps every pixel's centred colour vector
``y' = y - 127.5`` through a *signed permutation* ``E_p`` (a channel order and an inversion
bit per channel: inversion ``v -> 255 - v`` is ``y' -> -y'``). Decryption is ``x'_p = L_p y'_p``
with ``L_p = E_p^T``. The signed permutations of C channels form the hyperoctahedral group
(``C! 2^C`` elements: 2 for grey, 48 for RGB).

Natural images are smooth: neighbouring plain pixels are close. A distance ``rho`` that is a
sum of a function of each channel's absolute difference is invariant under signed
permutations, so the cost of an edge ``(p, q)`` depends only on the *relative* element
``R = L_p^T L_q``: ``rho(x'_p - x'_q) = rho(y'_p - R y'_q)``. The attack

1. tabulates for every edge of the pixel grid (4-neighbours and diagonals) the cost of each of
   the K relative elements, summed over the images that share the key (one image for the
   per-image form);
2. solves the synchronisation problem "find ``L_p`` with ``L_p^T L_q`` close to each edge's best
   ``R``" by its spectral relaxation: the top C eigenvectors of the sparse block matrix with
   blocks ``w_e R_e`` (A. Singer, "Angular synchronization by eigenvectors and semidefinite
   programming", Appl. Comput. Harmon. Anal. 30(1), 2011; for permutations D. Pachauri,
   R. Kondor, V. Singh, "Solving the multi-way matching problem by permutation
   synchronization", NeurIPS 2013), rounded to the nearest signed permutations;
3. refines by iterated conditional modes (J. Besag, "On the statistical analysis of dirty
   pictures", J. R. Stat. Soc. B 48(3), 1986): every pixel takes the element that minimises
   its edges' costs given its neighbours, four interleaved pixel classes at a time.

The energy is unchanged by ``L_p -> G L_p`` for one global G: the whole image may come out
with its channels reordered and each channel inverted. That global element is left to the
caller's prior (:mod:`.pe`).

Example:
    >>> import numpy as np
    >>> g = SignedPerms(1)
    >>> rng = np.random.default_rng(0)
    >>> ramps = np.arange(8)[None, None, None, :] * rng.integers(-20, 20, (10, 1, 1, 1))
    >>> x = np.clip(60 + ramps + np.zeros((10, 1, 8, 8)), 0, 255).astype(np.uint8)
    >>> flips = rng.random((8, 8)) < 0.5  # one key (pe): the same flips in all 10 images
    >>> y = np.where(flips, 255 - x, x)
    >>> labels = synchronise(edge_costs(y, g, pooled=True), g)[0][0]
    >>> bool(((labels == 1) == flips).all() or ((labels == 0) == flips).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations, product

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

__all__ = [
    "OFFSETS",
    "SignedPerms",
    "edge_costs",
    "energy",
    "icm",
    "spanning_tree",
    "spectral",
    "synchronise",
]

# neighbour offsets (dy, dx) whose edges are used; diagonals add redundancy, which lets one
# bad edge be outvoted (natural images are smooth along diagonals too, only less so)
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
_DIAGONAL_WEIGHT = 0.5  # a diagonal neighbour is farther away: its cost counts half
_CHUNK_VALUES = 1 << 23  # bounds the (chunk, H, W, K, C) float32 temporary (32 MiB)


@dataclass(frozen=True)
class _Table:
    mats: np.ndarray  # (K, C, C) int8 signed permutation matrices
    perm: np.ndarray  # (K, C): (M y)_k = sign[k] * y[perm[k]]
    sign: np.ndarray  # (K, C)
    mult: np.ndarray  # (K, K): index of mats[a] @ mats[b]
    inv: np.ndarray  # (K,): index of mats[a].T


class SignedPerms:
    """The C! 2^C signed permutation matrices of C channels, indexed 0..K-1 (0 the identity);
    with ``signed=False`` the C! permutations only (for channel orders of folded images)."""

    def __init__(self, channels: int, signed: bool = True) -> None:
        c = int(channels)
        perms, signs = [], []
        for p in permutations(range(c)):
            for s in product((1, -1) if signed else (1,), repeat=c):
                perms.append(p)
                signs.append(s)
        perm, sign = np.array(perms), np.array(signs)
        mats = np.zeros((len(perm), c, c), dtype=np.int8)
        rows = np.arange(c)
        for k in range(len(perm)):
            mats[k, rows, perm[k]] = sign[k]
        code = {m.tobytes(): k for k, m in enumerate(mats)}
        mult = np.array([[code[(a @ b).astype(np.int8).tobytes()] for b in mats] for a in mats])
        inv = np.array([code[np.ascontiguousarray(a.T).tobytes()] for a in mats])
        self.channels = c
        self.table = _Table(mats, perm, sign, mult, inv)

    @property
    def size(self) -> int:
        return len(self.table.perm)

    def apply(self, labels: np.ndarray, images: np.ndarray) -> np.ndarray:
        """``x_p = L_p y_p`` for uint8 images ``(B, C, H, W)`` and labels ``(B, H, W)``
        (values kept, reordered and inverted exactly: ``255 - v`` is an exact uint8 map)."""
        t = self.table
        perm, sign = t.perm[labels], t.sign[labels]  # (B, H, W, C)
        y = np.moveaxis(images, 1, -1)
        x = np.take_along_axis(y, perm, axis=-1)
        x = np.where(sign < 0, 255 - x, x)
        return np.ascontiguousarray(np.moveaxis(x, -1, 1))

    def nearest(self, blocks: np.ndarray) -> np.ndarray:
        """Index of the signed permutation closest (Frobenius) to each ``(C, C)`` block."""
        scores = np.einsum("kij,...ij->...k", self.table.mats.astype(np.float64), blocks)
        return scores.argmax(-1)


def _shifted(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``a (..., H, W, ...)`` at p and at q = p + (dy, dx), over the p with q inside.

    The spatial axes are the two after the leading batch axis."""
    h, w = a.shape[1:3]
    ys, yq = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        xs, xq = slice(0, w - dx), slice(dx, w)
    else:
        xs, xq = slice(-dx, w), slice(0, w + dx)
    return a[:, ys, xs], a[:, yq, xq]


def edge_costs(
    encrypted: np.ndarray, group: SignedPerms, *, pooled: bool = False
) -> dict[tuple[int, int], np.ndarray]:
    """Per edge offset, the cost ``(B, H', W', K)`` of each relative element R for the edge
    ``(p, p + offset)``: ``sum_channels |y'_p - R y'_q|``, summed over the images when
    ``pooled`` (one key for all: B = 1) or per image (B = N).

    The absolute difference (not its square) keeps a few real edges of an image from
    outweighing the many smooth pairs.
    """
    t = group.table
    n, c, h, w = encrypted.shape
    chunk = max(1, _CHUNK_VALUES // (h * w * group.size * c))
    out: dict[tuple[int, int], np.ndarray] = {}
    for dy, dx in OFFSETS:
        total = None
        for s in range(0, n, chunk):
            y = np.moveaxis(encrypted[s : s + chunk], 1, -1).astype(np.float32) - 127.5
            yp, yq = _shifted(y, dy, dx)  # (b, H', W', C)
            ry = yq[..., t.perm] * t.sign.astype(np.float32)  # (b, H', W', K, C)
            cost = np.abs(yp[..., None, :] - ry).sum(-1)  # (b, H', W', K)
            if pooled:
                cost = cost.sum(0, keepdims=True)
            total = cost if total is None or not pooled else total + cost
            if not pooled:
                out.setdefault((dy, dx), []).append(cost)  # type: ignore[attr-defined]
        if pooled:
            out[(dy, dx)] = total
        else:
            out[(dy, dx)] = np.concatenate(out[(dy, dx)])  # type: ignore[arg-type]
        if dy and dx:
            out[(dy, dx)] = out[(dy, dx)] * _DIAGONAL_WEIGHT
    return out


def energy(costs: dict, labels: np.ndarray, group: SignedPerms) -> np.ndarray:
    """Total cost ``(B,)`` of labels ``(B, H, W)`` (decryption elements ``L_p``)."""
    t = group.table
    total = np.zeros(len(labels))
    for (dy, dx), c in costs.items():
        lp, lq = _shifted(labels, dy, dx)
        rel = t.mult[t.inv[lp], lq]
        total += np.take_along_axis(c, rel[..., None], -1)[..., 0].reshape(len(c), -1).sum(1)
    return total


def spectral(costs: dict, group: SignedPerms, shape: tuple[int, int]) -> np.ndarray:
    """Labels ``(B, H, W)`` from the spectral relaxation (module docstring, step 2), one
    sparse eigenproblem per image (or one for the pooled costs)."""
    t = group.table
    c = group.channels
    h, w = shape
    b = next(iter(costs.values())).shape[0]
    idx = np.arange(h * w).reshape(1, h, w)
    out = np.zeros((b, h, w), dtype=np.int64)
    edges = []
    for (dy, dx), cost in costs.items():
        p, q = _shifted(idx, dy, dx)
        srt = np.sort(cost, axis=-1)
        margin = srt[..., 1] - srt[..., 0] if cost.shape[-1] > 1 else srt[..., 0] * 0
        edges.append((p.reshape(-1), q.reshape(-1), cost.argmin(-1), margin))
    pp = np.concatenate([e[0] for e in edges])
    qq = np.concatenate([e[1] for e in edges])
    # block (p, q) = w R: C*C entries per edge, as coordinates of a (C n, C n) sparse matrix
    ri, rj = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    rows = (pp[:, None] * c + ri.reshape(1, -1)).reshape(-1)
    cols = (qq[:, None] * c + rj.reshape(1, -1)).reshape(-1)
    for i in range(b):
        best = np.concatenate([e[2][i].reshape(-1) for e in edges])
        weight = np.concatenate([e[3][i].reshape(-1) for e in edges]).astype(np.float64)
        weight = weight / max(float(weight.max()), 1e-12)
        vals = (t.mats[best].reshape(len(best), -1) * weight[:, None]).reshape(-1)
        keep = vals != 0
        a = coo_matrix((vals[keep], (rows[keep], cols[keep])), shape=(c * h * w, c * h * w))
        a = (a + a.T).tocsr()
        deg = np.sqrt(np.maximum(np.asarray(abs(a).sum(1)).ravel(), 1e-12))
        a = a.multiply(1 / deg[:, None]).multiply(1 / deg[None, :]).tocsr()
        v0 = np.random.default_rng(i).standard_normal(c * h * w)
        try:
            _, vecs = eigsh(a, k=c, which="LA", v0=v0, tol=1e-4, maxiter=5000)
        except ArpackNoConvergence as e:  # the best vectors so far still round usefully
            vecs = e.eigenvectors if e.eigenvectors.shape[1] == c else np.ones((c * h * w, c))
        blocks = vecs.reshape(h * w, c, c)  # block p ~ L_p^T Q for one orthogonal Q
        out[i] = _round(blocks, group).reshape(h, w)
    return out


def _round(blocks: np.ndarray, group: SignedPerms, iters: int = 8) -> np.ndarray:
    """Labels L_p from ``blocks[p] ~ L_p^T Q``: alternate rounding ``L_p^T`` to the nearest
    signed permutation and re-fitting Q (orthogonal Procrustes)."""
    t = group.table
    norms = np.linalg.norm(blocks.reshape(len(blocks), -1), axis=1)
    ref = blocks[int(norms.argmax())]  # the best-determined pixel sets the frame (L_ref = I)
    u, _, vt = np.linalg.svd(ref)
    q = u @ vt
    enc = np.zeros(len(blocks), dtype=np.int64)
    for _ in range(iters):
        enc_new = group.nearest(blocks @ q.T)
        m = np.einsum("pji,pjk->ik", t.mats[enc_new].astype(np.float64), blocks)
        u, _, vt = np.linalg.svd(m)
        q = u @ vt
        if np.array_equal(enc_new, enc):
            break
        enc = enc_new
    return t.inv[enc]  # L_p = (L_p^T)^T


def _padded(costs: dict, shape: tuple[int, int]) -> dict:
    """Each offset's costs on the full grid plus a one-pixel frame of zeros (index p + 1): an
    edge that leaves the image costs nothing whatever the labels."""
    h, w = shape
    out = {}
    for (dy, dx), cost in costs.items():
        full = np.zeros((cost.shape[0], h + 2, w + 2, cost.shape[-1]), dtype=np.float32)
        x0 = 1 + max(0, -dx)
        full[:, 1 : 1 + cost.shape[1], x0 : x0 + cost.shape[2]] = cost
        out[(dy, dx)] = full
    return out


def icm(costs: dict, labels: np.ndarray, group: SignedPerms, sweeps: int = 10) -> np.ndarray:
    """Iterated conditional modes on labels ``(B, H, W)`` (module docstring, step 3).

    Pixels of one class of ``(y mod 2, x mod 2)`` share no edge (the offsets reach at most one
    pixel away), so each class is updated at once; the energy never rises.
    """
    t = group.table
    k = group.size
    b, h, w = labels.shape
    padc = _padded(costs, (h, w))
    lab = np.zeros((b, h + 2, w + 2), dtype=np.int64)
    lab[:, 1:-1, 1:-1] = labels
    cand = np.arange(k)
    inv_mult = t.mult[t.inv]  # inv_mult[a, l] = index of a^T l
    for _ in range(sweeps):
        changed = 0
        for cy, cx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            ys, xs = slice(1 + cy, h + 1, 2), slice(1 + cx, w + 1, 2)
            hs, ws = len(range(1 + cy, h + 1, 2)), len(range(1 + cx, w + 1, 2))
            local = np.zeros((b, hs, ws, k), dtype=np.float64)
            for (dy, dx), full in padc.items():
                # p first end, q = p + o fixed: R = a^T L_q
                lq = lab[:, 1 + cy + dy : h + 1 + dy : 2, 1 + cx + dx : w + 1 + dx : 2]
                lq = lq[:, :hs, :ws]
                ra = inv_mult[cand[None, None, None, :], lq[..., None]]
                local += np.take_along_axis(full[:, ys, xs], ra, -1)
                # p second end, q = p - o fixed: R = L_q^T a, the cost stored at q
                # (the frame makes q0y, q0x >= 0: dy >= 0 and dx >= -1 ... 1)
                q0y, q0x = 1 + cy - dy, 1 + cx - dx
                cq = full[:, q0y::2, q0x::2][:, :hs, :ws]
                lq = lab[:, q0y::2, q0x::2][:, :hs, :ws]
                rb = t.mult[t.inv[lq]]  # (b, hs, ws, K): L_q^T a for every a
                local += np.take_along_axis(cq, rb, -1)
            cur_l = lab[:, ys, xs]
            new = local.argmin(-1)
            cur = np.take_along_axis(local, cur_l[..., None], -1)[..., 0]
            better = np.take_along_axis(local, new[..., None], -1)[..., 0] < cur - 1e-6
            changed += int(better.sum())
            lab[:, ys, xs] = np.where(better, new, cur_l)
        if not changed:
            break
    return lab[:, 1:-1, 1:-1].copy()


def spanning_tree(costs: dict, group: SignedPerms, shape: tuple[int, int]) -> np.ndarray:
    """Labels ``(B, H, W)`` by greedy merging along the most decided edges first (Kruskal's
    order of a maximum spanning tree of the margins): each edge joins two regions with its
    cheapest relative element, the smaller region re-framed by one group element.

    Unlike the spectral relaxation, which on a grid can let its continuous frame turn slowly
    across the image, every merge keeps the labels in the group.
    """
    t = group.table
    h, w = shape
    idx = np.arange(h * w).reshape(1, h, w)
    b = next(iter(costs.values())).shape[0]
    out = np.zeros((b, h, w), dtype=np.int64)
    ends = [(_shifted(idx, dy, dx)) for dy, dx in costs]
    pp = np.concatenate([p.reshape(-1) for p, _ in ends])
    qq = np.concatenate([q.reshape(-1) for _, q in ends])
    for i in range(b):
        best, margin = [], []
        for cost in costs.values():
            srt = np.sort(cost[i], axis=-1)
            best.append(cost[i].argmin(-1).reshape(-1))
            margin.append((srt[..., 1] - srt[..., 0]).reshape(-1))
        best_a, order = np.concatenate(best), np.argsort(-np.concatenate(margin), kind="stable")
        root = np.arange(h * w)
        members = {r: [r] for r in range(h * w)}
        lab = np.zeros(h * w, dtype=np.int64)
        for e in order.tolist():
            p, q = int(pp[e]), int(qq[e])
            rp, rq = root[p], root[q]
            if rp == rq:
                continue
            r = best_a[e]
            if len(members[rp]) >= len(members[rq]):  # re-frame q's region: L -> H L
                hh = t.mult[t.mult[lab[p], r], t.inv[lab[q]]]
                moved, keep = rq, rp
            else:  # re-frame p's region
                hh = t.mult[t.mult[lab[q], t.inv[r]], t.inv[lab[p]]]
                moved, keep = rp, rq
            m = np.array(members.pop(moved))
            lab[m] = t.mult[hh, lab[m]]
            root[m] = keep
            members[keep].extend(m.tolist())
        out[i] = lab.reshape(h, w)
    return out


def synchronise(
    costs: dict, group: SignedPerms, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(B, H, W)`` (decryption elements, up to one global element per image) and
    their energies: the spanning-tree start (colour) or the spectral start (grey: 2 labels,
    where the relaxation is a sign vector and cannot turn), refined by ICM."""
    if shape is None:
        c0 = costs[(0, 1)]
        shape = (c0.shape[1], c0.shape[2] + 1)
    if group.size > 2:  # better than the spectral start on the colour cases measured
        labels = icm(costs, spanning_tree(costs, group, shape), group)
    else:
        labels = icm(costs, spectral(costs, group, shape), group)
    return labels, energy(costs, labels, group)
