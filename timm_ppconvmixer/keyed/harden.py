"""Hardening a learned P into a permutation applied as an index gather (inference form).

A P that has learned the block order is, up to noise, ``c * Pi``: a permutation matrix Pi times
a scale c (any sign; paper Sec. III-B, Fig. 1: ideally ``P[i, j] = 1`` exactly when encrypted
block i holds plain block j). Because P is linear and the stem module before it is a
per-channel affine BatchNorm, c folds into that BatchNorm exactly and Pi becomes a gather
(:class:`~timm_ppconvmixer.models.permutation.HardPermutation`): no n x n matmul at inference.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from ..models.permutation import (
    AdaptivePermutation,
    HardPermutation,
    nearest_permutation,
    permutation_closeness,
    permutation_penalty,
)
from ..models.registry import PPConvMixer
from .errors import ConversionError

__all__ = ["HardeningReport", "harden_permutation"]


@dataclass
class HardeningReport:
    """How far a learned P was from the scaled permutation ``c * Pi`` that replaced it."""

    num_tokens: int
    penalty: float  # L_U of the learned P (0 for an exact permutation)
    scale: float  # c, folded into the stem's BatchNorm (1 for a plain permutation)
    fit: float  # share of P's energy c * Pi explains: 1 - ||P - c Pi||^2 / ||P||^2
    closeness: float  # permutation_closeness(P): energy on the best permutation, any signs
    relative_distance: float  # ||P - c Pi||_F / ||c Pi||_F
    assigned_weight_fraction: float  # sum |P| on Pi's entries / sum |P|
    rows_whose_max_is_assigned: float  # share of rows whose largest |entry| is Pi's
    predictions_checked: int = 0
    predictions_changed: int = 0
    max_logit_difference: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _fold_scale(model: PPConvMixer, index: int, scale: float) -> None:
    """Multiply the output of the stem module before P by ``scale``: exact, because P is
    linear (``(c x) @ Pi = c (x @ Pi)``) and that module is a per-channel affine BatchNorm
    (``c (g xhat + b) = (c g) xhat + c b``), frozen or synchronised alike."""
    before = model.stem[index - 1] if index > 0 else None
    weight, bias = getattr(before, "weight", None), getattr(before, "bias", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise ConversionError(
            f"P is {scale:g} times a permutation, but the stem module before P "
            f"({type(before).__name__}) has no per-channel affine to absorb that scale"
        )
    with torch.no_grad():
        weight.mul_(scale)
        bias.mul_(scale)


def harden_permutation(
    model: PPConvMixer, images: torch.Tensor | None = None, *, min_fit: float = 0.9
) -> tuple[PPConvMixer, HardeningReport]:
    """Replace a learned P by the nearest scaled permutation ``c * Pi``, applied as an index
    gather, with ``c`` folded into the stem's BatchNorm.

    ``Pi`` maximises ``sum_i |P[i, sigma(i)]|`` (a linear assignment problem, solved with the
    Hungarian method), so P = -Pi and P = 0.3 Pi harden to Pi with c = -1 and c = 0.3, exactly;
    ``c = <P, Pi> / n`` is the least-squares scale. P is the effective matrix (times the
    learning-rate gain, after Sinkhorn). If ``c * Pi`` explains less than ``min_fit`` of P's
    energy (a P that is still dense, or whose assignment has mixed signs or scales), hardening
    would change the model, so it is refused with :class:`ConversionError`. The returned copy's
    P is a :class:`HardPermutation` (no n x n matmul; inference only). With ``images`` (a
    normalised batch), the report says whether any prediction changed.
    """
    perm = model.permutation if isinstance(model, PPConvMixer) else None
    if not isinstance(perm, AdaptivePermutation):
        raise ConversionError("harden_permutation needs a PPConvMixer with a trainable P")
    with torch.no_grad():
        w = perm.matrix().detach().double().cpu()
    n = perm.num_tokens
    rows_t, cols_t = nearest_permutation(w)
    hard = torch.zeros_like(w)
    hard[rows_t, cols_t] = 1.0
    scale = float(w[rows_t, cols_t].sum()) / n
    energy = float(w.square().sum())
    residual = float((w - scale * hard).square().sum())
    fit = 1.0 - residual / energy if energy > 0 else 0.0
    report = HardeningReport(
        num_tokens=n,
        penalty=float(permutation_penalty(w)),
        scale=scale,
        fit=fit,
        closeness=permutation_closeness(w),
        relative_distance=residual**0.5 / (abs(scale) * n**0.5) if scale else float("inf"),
        assigned_weight_fraction=float(w.abs()[rows_t, cols_t].sum() / w.abs().sum()),
        rows_whose_max_is_assigned=float((w.abs().argmax(1) == cols_t).double().mean()),
    )
    if fit < min_fit:
        raise ConversionError(
            f"P is not close enough to a scaled permutation to harden: the nearest one "
            f"({scale:+.3g} times a permutation) explains {fit:.1%} of P's energy, below "
            f"min_fit={min_fit:.0%} (best permutation, any signs: {report.closeness:.1%}); "
            "hardening would change the model's outputs. Train P further (e.g. a stronger "
            "penalty, permutation_param='sinkhorn' with a lower final tau) or keep it dense"
        )
    source = torch.empty(n, dtype=torch.long)
    source[cols_t] = rows_t  # out[:, j] = tokens[:, source[j]]
    hardened = copy.deepcopy(model)
    index = hardened.permutation_index
    if scale != 1.0:
        _fold_scale(hardened, index, scale)
    hardened.stem[index] = HardPermutation(source, perm.grid_size).to(perm.weight.device)
    if images is not None:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            before = model(images)
            model.train(was_training)
            after = hardened.eval()(images)
        report.predictions_checked = len(images)
        report.predictions_changed = int((before.argmax(1) != after.argmax(1)).sum())
        report.max_logit_difference = float((before - after).abs().max())
    return hardened, report
