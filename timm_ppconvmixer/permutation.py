"""The adaptive permutation matrix P and its penalty L_U (paper Sec. III-B, Eq. (1)).

P is a trainable ``n x n`` matrix, ``n = (H/M)(W/M)``, that mixes the patch tokens right after
ConvMixer's patch embedding: ``tokens (B, h, n) -> tokens @ P``. Block permutation (K1) moves
encrypted patches to other positions, which ConvMixer's depthwise convolutions cannot undo; P
can learn the inverse permutation: with ``P[i, j] = 1`` exactly when encrypted block ``i`` holds
plain block ``j`` (``block_perm[i] == j``), output token ``j`` is the plain block ``j``.

The penalty of Madono et al. (AAAI-WS 2020), cited by the paper as [15], pulls P towards a
permutation matrix:

    L_U = ( sum_i (||P_i,:||_1 - ||P_i,:||_2) + sum_j (||P_:,j||_1 - ||P_:,j||_2) ) / n^2

and the training loss is ``L = L_CE + lambda * L_U`` (Eq. (1)), lambda = 1e-4 in the paper.

Two ways to apply lambda * L_U (never both; see :class:`AdaptivePermutation`):

* explicit: add ``model.permutation_penalty() * lambda`` to the loss (the accelerate recipe), with
  ``implicit_penalty=False``;
* implicit (default, for timm's unmodified ``train.py``): in training mode the forward pass routes
  P through an identity autograd function whose backward adds ``lambda * dL_U/dP`` to P's
  gradient. The loss value does not include the penalty, the gradient does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.models import register_notrace_module

__all__ = [
    "AdaptivePermutation",
    "HardPermutation",
    "permutation_penalty",
    "permutation_penalty_grad",
    "PERMUTATION_INITS",
]

PERMUTATION_INITS = ("kaiming", "identity")


def permutation_penalty(weight: torch.Tensor) -> torch.Tensor:
    """L_U of Madono et al. [15] for a square matrix, unweighted (see module docstring)."""
    n = weight.shape[0]
    w = weight.float()
    rows = w.abs().sum(1) - torch.linalg.vector_norm(w, dim=1)
    cols = w.abs().sum(0) - torch.linalg.vector_norm(w, dim=0)
    return (rows.sum() + cols.sum()) / (n * n)


def permutation_penalty_grad(weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Closed-form dL_U/dP: ``(2 sign(P) - P / ||P_i,:||_2 - P / ||P_:,j||_2) / n^2``.

    Matches autograd of :func:`permutation_penalty` wherever no row or column is all zero (there
    the L2 norm is not differentiable; ``eps`` keeps the result finite).
    """
    n = weight.shape[0]
    w = weight.float()
    row_norm = torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(eps)
    col_norm = torch.linalg.vector_norm(w, dim=0, keepdim=True).clamp_min(eps)
    grad = 2 * torch.sign(w) - w / row_norm - w / col_norm
    return (grad / (n * n)).to(weight.dtype)


class _AddPenaltyGradient(torch.autograd.Function):
    """Identity on P in the forward pass; adds ``scale * dL_U/dP`` to P's gradient in backward."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.scale = scale
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad_output + ctx.scale * permutation_penalty_grad(weight), None


@register_notrace_module  # FX keeps it a leaf: the size check and penalty hook stay Python
class AdaptivePermutation(nn.Module):
    """Token mixing by a trainable n x n matrix P (paper Fig. 1).

    Args:
        grid_size: (H/M, W/M), the patch grid the model was built for; fixes n.
        init: ``"kaiming"`` (default) initialises P like ``nn.Linear`` (Kaiming-uniform with
            a=sqrt(5), i.e. U(-1/sqrt(n), 1/sqrt(n))), as the adaptation network of [15] whose
            penalty the paper uses; ``"identity"`` starts from P = I, which makes the untrained
            model exactly timm's ConvMixer (useful when fine-tuning from plain weights).
        penalty_weight: lambda of Eq. (1) (paper: 1e-4).
        implicit_penalty: add ``lambda * dL_U/dP`` to P's gradient in every training backward
            pass (see module docstring). Exact in fp32 and under bf16 autocast. Under fp16 loss
            scaling the added term is not scaled with the loss, so after unscaling its weight is
            lambda / loss_scale (effectively off): use bf16, or the explicit penalty. With
            gradient accumulation over k micro-batches it is added k times while the loss is
            divided by k, so the effective weight is k * lambda: pass lambda / k to keep it.
        image_size, patch_size: only used to word the error for a wrong input size.
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        init: str = "kaiming",
        penalty_weight: float = 1e-4,
        implicit_penalty: bool = True,
        image_size: tuple[int, int] | None = None,
        patch_size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if init not in PERMUTATION_INITS:
            raise ValueError(f"permutation_init must be one of {PERMUTATION_INITS}, got {init!r}")
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_tokens = self.grid_size[0] * self.grid_size[1]
        self.image_size = tuple(image_size) if image_size is not None else None
        self.patch_size = patch_size
        self.init = init
        self.penalty_weight = float(penalty_weight)
        self.implicit_penalty = bool(implicit_penalty)
        self.weight = nn.Parameter(
            torch.empty(self.num_tokens, self.num_tokens, device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "identity":
            with torch.no_grad():
                self.weight.zero_()
                self.weight.fill_diagonal_(1.0)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return (
            f"grid_size={self.grid_size}, num_tokens={self.num_tokens}, init={self.init!r}, "
            f"penalty_weight={self.penalty_weight}, implicit_penalty={self.implicit_penalty}"
        )

    @torch.jit.unused
    def _size_message(self, got: tuple[int, int]) -> str:
        gh, gw = self.grid_size
        if self.image_size is not None and self.patch_size is not None:
            m = self.patch_size
            ih, iw = self.image_size
            return (
                f"input image is {got[0] * m}x{got[1] * m} but this model's permutation matrix was "
                f"built for img_size {ih}x{iw} ({gh}x{gw} blocks of "
                f"{m}x{m}); resize the images (and the key) to that size, or create the model with "
                f"img_size=({got[0] * m}, {got[1] * m}) and train P anew"
            )
        return f"token grid {got[0]}x{got[1]} does not match P's grid {gh}x{gw}"

    @torch.jit.unused
    def _weight_with_penalty(self) -> torch.Tensor:
        return _AddPenaltyGradient.apply(self.weight, self.penalty_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, gh, gw = x.shape
        if gh != self.grid_size[0] or gw != self.grid_size[1]:
            if torch.jit.is_scripting():
                raise ValueError("input size does not match the img_size P was built for")
            raise ValueError(self._size_message((gh, gw)))
        weight = self.weight
        if (
            not torch.jit.is_scripting()
            and self.training
            and self.implicit_penalty
            and self.penalty_weight != 0.0
            and weight.requires_grad
            and torch.is_grad_enabled()
        ):
            weight = self._weight_with_penalty()
        return torch.matmul(x.flatten(2), weight).view(b, c, gh, gw)


@register_notrace_module
class HardPermutation(nn.Module):
    """A permutation of the tokens applied as an index gather (inference form of a hardened P).

    ``out[..., j] = tokens[..., source[j]]``, equal to ``tokens @ P`` for the 0/1 matrix with
    ``P[source[j], j] = 1``.
    """

    def __init__(self, source: torch.Tensor, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.register_buffer("source", source.to(torch.long).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, gh, gw = x.shape
        if gh != self.grid_size[0] or gw != self.grid_size[1]:
            raise ValueError(
                f"token grid {gh}x{gw} does not match the hardened permutation's grid "
                f"{self.grid_size[0]}x{self.grid_size[1]}"
            )
        tokens = x.flatten(2)
        # gather with a broadcast (expanded, copy-free) index is several times faster on CPU
        # than index_select along the last dimension
        index = self.source.expand(b, c, self.source.numel())
        return torch.gather(tokens, 2, index).view(b, c, gh, gw)
