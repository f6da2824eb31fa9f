"""Image priors that pick one of the keys the ciphertext cannot tell apart.

Ciphertext statistics determine the key only up to (see :mod:`.blocks`): a dihedral symmetry of
the image (K1 and K2 transformed together), the order of the colour channels (K2), and global
inversion ``x -> 255 - x`` (K3 complemented). Each choice decrypts every image to a transformed
version of itself, so the attacker needs a belief about what images look like. Two stated
priors (docs/security.md lists what each resolves):

* :class:`ReferencePrior`: the attacker holds some *public* plain images of the same kind (for
  Fashion-MNIST the public test split; for photographs any photographs). The candidate whose
  mean image and per-channel value histograms are closest to the reference's wins.
* :class:`GenericPrior` (no data): images are darker than mid-grey on average (inversion;
  true of ImageNet, mean 0.45, and of Fashion-MNIST, 0.29), colour channels are ordered by
  mean brightness R >= G >= B (ImageNet: 0.485, 0.456, 0.406), and for colour photographs the
  top half is brighter than the bottom half (sky). Transposition and left-right mirroring stay
  unresolved (reported).

Example:
    >>> import numpy as np
    >>> x = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    >>> x[:, :, :2] = 200  # bright band at the top
    >>> GenericPrior().choose(255 - x, (2, 2)).invert
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from .blocks import Symmetry, apply_symmetry, valid_symmetries

__all__ = ["GenericPrior", "OrientationChoice", "ReferencePrior"]

_BINS = 32


@dataclass
class OrientationChoice:
    """The chosen symmetry (applied to the reconstruction), channel order and inversion."""

    symmetry: Symmetry
    channel_order: tuple[int, ...]  # candidate channel c = reconstruction channel order[c]
    invert: bool
    prior: str
    unresolved: list[str] = field(default_factory=list)

    def details(self) -> dict[str, str | bool]:
        """What an attack result's ``details`` report of the choice (key-free)."""
        return {
            "prior": self.prior,
            "chosen_symmetry": self.symmetry.name,
            "inverted": bool(self.invert),
        }

    def ambiguity(self, only: tuple[str, ...] | None = None) -> list[str]:
        """The attack result's line for what the prior left undecided (``only``: of these
        kinds, for a scheme where the others cannot arise); empty when it decided all."""
        left = [u for u in self.unresolved if only is None or u in only]
        if not left:
            return []
        return [
            f"{self.prior} prior could not decide: {', '.join(left)} (the reconstruction may "
            "be transformed by these)"
        ]


def _features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean image (C, H, W) and per-channel normalised histograms (C, bins) of uint8 images."""
    mean = x.mean(axis=0, dtype=np.float64)
    hist = np.stack(
        [
            np.bincount((x[:, c] // (256 // _BINS)).reshape(-1), minlength=_BINS)
            for c in range(x.shape[1])
        ]
    ).astype(np.float64)
    return mean, hist / np.maximum(hist.sum(1, keepdims=True), 1)


def _candidates(x: np.ndarray, grid: tuple[int, int]):
    """Every (symmetry, channel order, inversion) with the features it would have."""
    mean, hist = _features(x)
    for g in valid_symmetries(grid, 1):
        gm = np.ascontiguousarray(apply_symmetry(mean, g))
        for order in permutations(range(x.shape[1])):
            om, oh = gm[list(order)], hist[list(order)]
            for invert in (False, True):
                yield (
                    g,
                    order,
                    invert,
                    (255.0 - om if invert else om),
                    (oh[:, ::-1] if invert else oh),
                )


def _unresolved(scores: dict, best: tuple, tol: float) -> list[str]:
    """Name each factor whose flip costs less than ``tol`` of the score range."""
    g, order, invert = best
    values = np.array(list(scores.values()))
    span = max(float(values.max() - values.min()), 1e-12)
    out = []
    flips = {
        "transpose": (Symmetry(not g.transpose, g.flip_rows, g.flip_cols), order, invert),
        "up-down mirror": (Symmetry(g.transpose, not g.flip_rows, g.flip_cols), order, invert),
        "left-right mirror": (Symmetry(g.transpose, g.flip_rows, not g.flip_cols), order, invert),
        "global inversion": (g, order, not invert),
    }
    for name, other in flips.items():
        if other in scores and scores[best] - scores[other] < tol * span:
            out.append(name)
    if len(order) > 1:
        others = [k for k in scores if k[0] == g and k[2] == invert and k[1] != order]
        if others and scores[best] - max(scores[k] for k in others) < tol * span:
            out.append("channel order")
    return out


class ReferencePrior:
    """Prior from public plain images of the same kind (uint8 ``(R, C, H, W)``, any R)."""

    name = "reference"

    def __init__(self, reference: np.ndarray) -> None:
        if reference.ndim != 4 or reference.dtype != np.uint8:
            raise ValueError("reference images must be uint8 (R, C, H, W)")
        self.mean, self.hist = _features(reference)

    def choose(self, recon: np.ndarray, grid: tuple[int, int]) -> OrientationChoice:
        if recon.shape[1:] != self.mean.shape:
            raise ValueError(f"reference images are {self.mean.shape}, data {recon.shape[1:]}")
        scores = {}
        scale = 255.0 * np.sqrt(self.mean.size)
        for g, order, invert, mean, hist in _candidates(recon, grid):
            d_mean = np.linalg.norm(mean - self.mean) / scale
            d_hist = np.abs(hist - self.hist).sum() / (2 * len(hist))
            scores[(g, order, invert)] = -(d_mean + d_hist)
        best = max(scores, key=scores.get)
        return OrientationChoice(*best, self.name, _unresolved(scores, best, 0.01))


class GenericPrior:
    """Data-free prior: darker than mid-grey, R >= G >= B, bright top for colour photos."""

    name = "generic"

    def choose(self, recon: np.ndarray, grid: tuple[int, int]) -> OrientationChoice:
        scores = {}
        c = recon.shape[1]
        for g, order, invert, mean, _ in _candidates(recon, grid):
            darker = -mean.mean() / 255.0
            chan = mean.mean(axis=(1, 2)) / 255.0
            ordered = sum(chan[i] - chan[j] for i in range(c) for j in range(i + 1, c))
            h = mean.shape[1]
            top = (mean[:, : h // 2].mean() - mean[:, h - h // 2 :].mean()) / 255.0 if c == 3 else 0
            # lexicographic in effect: inversion, then channel order, then up-down; the small
            # last term keeps the solver's own orientation where nothing decides
            keep = -1e-6 * (g.transpose + g.flip_cols + (g.flip_rows if c != 3 else 0))
            scores[(g, order, invert)] = 100 * darker + 10 * ordered + top + keep
        best = max(scores, key=scores.get)
        unresolved = ["transpose", "left-right mirror"] if grid[0] == grid[1] else []
        unresolved = unresolved if grid[0] == grid[1] else ["left-right mirror"]
        if c != 3:
            unresolved.append("up-down mirror")
        return OrientationChoice(*best, self.name, unresolved)
