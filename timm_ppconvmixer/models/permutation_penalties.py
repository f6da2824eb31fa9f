"""Penalties, priors and the Sinkhorn operator for the adaptive permutation matrix P.

Everything here is a plain function of the effective matrix P (n x n, tokens ``(B, h, n) @ P``,
paper Sec. III-B, Fig. 1) with a closed-form gradient, so that
:class:`~timm_ppconvmixer.models.permutation.AdaptivePermutation` can add
``weight * gradient`` to P's
gradient inside the backward pass (the implicit mechanism that lets timm's unmodified
``train.py`` train with Eq. (1)).

Penalties (``penalty=`` of the model):

* ``"madono"`` (default, faithful): L_U of Madono et al. (the paper's [15]) as in their code,
  divided by n^2. Zero at every matrix with at most one non-zero entry per row and column, so
  also at 0, at -Pi and at c * Pi: it says "sparse", not "permutation".
* ``"doubly_stochastic"``: the exact penalty of AutoShuffleNet (Lyu, Zhang, Qi, Xin,
  "AutoShuffleNet: Learning Permutation Matrices via an Exact Lipschitz Continuous Penalty in
  Deep Convolutional Neural Networks", KDD 2020, arXiv:1901.08624), whose L1-L2 term [15]
  uses. There the L1-L2 term is exact only on the set of doubly stochastic matrices
  (non-negative, rows and columns summing to 1); here that set is imposed by quadratic
  penalties, so the sum is zero exactly at permutation matrices and positive at 0, -Pi, 2 Pi
  and any other matrix.

Prior (``smoothness_weight=``): a relaxed jigsaw objective on the tokens after P; see
:func:`smoothness_prior`.
"""

from __future__ import annotations

import torch

__all__ = [
    "PENALTIES",
    "doubly_stochastic_penalty",
    "doubly_stochastic_penalty_grad",
    "grid_adjacency",
    "madono_penalty",
    "madono_penalty_grad",
    "penalty_and_grad",
    "sinkhorn",
    "smoothness_prior",
    "smoothness_prior_grad",
    "token_correlation",
]

PENALTIES = ("madono", "doubly_stochastic")


def _l1_minus_l2(w: torch.Tensor) -> torch.Tensor:
    rows = w.abs().sum(1) - torch.linalg.vector_norm(w, dim=1)
    cols = w.abs().sum(0) - torch.linalg.vector_norm(w, dim=0)
    return rows.sum() + cols.sum()


def _l1_minus_l2_grad(w: torch.Tensor, eps: float) -> torch.Tensor:
    # 2 sign(w) - w / ||w_i,:|| - w / ||w_:,j||, in three passes over the n x n matrix instead
    # of six (P is 784 x 784 at 448/16, and this runs in every training step's backward)
    inv_row = torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(eps).reciprocal()
    inv_col = torch.linalg.vector_norm(w, dim=0, keepdim=True).clamp_min(eps).reciprocal()
    return torch.sign(w).mul_(2).addcmul_(w, inv_row + inv_col, value=-1)


def madono_penalty(weight: torch.Tensor) -> torch.Tensor:
    """L_U of [15] (Eq. (1)), unweighted:
    ``(sum_i (||P_i,:||_1 - ||P_i,:||_2) + sum_j (||P_:,j||_1 - ||P_:,j||_2)) / n^2``."""
    n = weight.shape[0]
    return _l1_minus_l2(weight.float()) / (n * n)


def madono_penalty_grad(weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Closed-form dL_U/dP: ``(2 sign(P) - P / ||P_i,:||_2 - P / ||P_:,j||_2) / n^2``.

    Matches autograd of :func:`madono_penalty` wherever no row or column is all zero (there the
    L2 norm is not differentiable; ``eps`` keeps the result finite).
    """
    n = weight.shape[0]
    return _l1_minus_l2_grad(weight.float(), eps).div_(n * n).to(weight.dtype)


def doubly_stochastic_penalty(weight: torch.Tensor) -> torch.Tensor:
    """AutoShuffleNet's exact permutation penalty with its doubly stochastic constraints as
    penalties, divided by n (so that lambda weighs it per row):

        ( L1-L2(P) + sum_ij relu(-P_ij)^2
          + sum_i (sum_j P_ij - 1)^2 + sum_j (sum_i P_ij - 1)^2 ) / n

    Zero if and only if P is a permutation matrix: the last three terms vanish only on
    doubly stochastic matrices, where L1-L2 vanishes only at permutations (Lyu et al.).
    """
    n = weight.shape[0]
    w = weight.float()
    negative = torch.relu(-w).square().sum()
    sums = (w.sum(1) - 1).square().sum() + (w.sum(0) - 1).square().sum()
    return (_l1_minus_l2(w) + negative + sums) / n


def doubly_stochastic_penalty_grad(weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Closed-form gradient of :func:`doubly_stochastic_penalty`."""
    n = weight.shape[0]
    w = weight.float()
    grad = _l1_minus_l2_grad(w, eps) - 2 * torch.relu(-w)
    grad = grad + 2 * (w.sum(1, keepdim=True) - 1) + 2 * (w.sum(0, keepdim=True) - 1)
    return (grad / n).to(weight.dtype)


def penalty_and_grad(kind: str):
    """``(penalty, gradient)`` functions for a ``penalty=`` name (see :data:`PENALTIES`)."""
    if kind == "madono":
        return madono_penalty, madono_penalty_grad
    if kind == "doubly_stochastic":
        return doubly_stochastic_penalty, doubly_stochastic_penalty_grad
    raise ValueError(f"penalty must be one of {PENALTIES}, got {kind!r}")


def sinkhorn(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Sinkhorn normalisation in the log domain: alternately normalise rows and columns of
    ``exp(logits)`` (Sinkhorn, Ann. Math. Statist. 35, 1964; used as a differentiable relaxation
    of permutations by Adams and Zemel, arXiv:1106.1925, and Mena et al., "Learning Latent
    Permutations with Gumbel-Sinkhorn Networks", ICLR 2018, whose temperature ``tau`` divides the
    logits before this call). Ends with a column step, so columns sum to 1 exactly and rows
    approximately; as ``tau -> 0`` the result tends to the permutation maximising
    ``sum_i logits[i, sigma(i)]``. Equivariant: ``sinkhorn(L[r][:, c]) = sinkhorn(L)[r][:, c]``.
    """
    # Entries below e^-60 of their row's largest are raised to it: below about e^-87 float32
    # goes subnormal, which CPUs process some 20x slower; the change to P is below 1e-26.
    log_p = logits.float()
    log_p = (log_p - log_p.amax(dim=1, keepdim=True).detach()).clamp_min(-60.0)
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = (log_p - torch.logsumexp(log_p, dim=0, keepdim=True)).clamp_min(-60.0)
    return log_p.exp()


def grid_adjacency(grid_size: tuple[int, int], device=None) -> torch.Tensor:
    """4-neighbour adjacency of the row-major token grid, ``(n, n)`` float, symmetric."""
    gh, gw = grid_size
    index = torch.arange(gh * gw, device=device).view(gh, gw)
    adj = torch.zeros(gh * gw, gh * gw, device=device)
    adj[index[:, :-1].reshape(-1), index[:, 1:].reshape(-1)] = 1.0
    adj[index[:-1].reshape(-1), index[1:].reshape(-1)] = 1.0
    return adj + adj.T


@torch.no_grad()
def token_correlation(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``K[i, i']``: correlation over the batch between tokens i and i' of ``(B, h, n)`` tokens,
    summed over the h channels (each token centred over the batch), minus its mean off the
    diagonal, and 0 on the diagonal. Centring stops a constant part of K from favouring any
    P; the zero diagonal stops the relaxation from rewarding a token spread over neighbouring
    places (a token "next to itself" would count its perfect self-correlation)."""
    t = tokens.detach().float()
    t = t - t.mean(0, keepdim=True)
    cov = torch.einsum("bci,bcj->ij", t, t)
    scale = cov.diagonal().clamp_min(eps).rsqrt()
    corr = cov * scale[:, None] * scale[None, :]
    n = corr.shape[0]
    off = (corr.sum() - corr.diagonal().sum()) / max(n * n - n, 1)
    return (corr - off).fill_diagonal_(0.0)


def smoothness_prior(weight: torch.Tensor, corr: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Relaxed jigsaw prior: ``-tr(A P^T K P) / sum(A)``.

    For a permutation P this is minus the mean correlation of the encrypted tokens that P
    places on neighbouring grid positions: smooth images make true neighbours correlate most,
    so the key's inverse block permutation scores well. For a doubly stochastic P it is the
    expected value under the transport plan P (a Koopmans-Beckmann quadratic assignment
    relaxed to the Birkhoff polytope, as in Gold and Rangarajan, "A Graduated Assignment
    Algorithm for Graph Matching", IEEE TPAMI 18(4), 1996), which unlike smoothness of the
    mixed tokens themselves does not reward averaging (uniform P scores 0). It is the
    "natural image" prior of [15]'s published code, moved from pixels to tokens.
    """
    w = weight.to(corr.dtype)
    return -(adj * (w.T @ corr @ w)).sum() / adj.sum()


def smoothness_prior_grad(
    weight: torch.Tensor, corr: torch.Tensor, adj: torch.Tensor
) -> torch.Tensor:
    """Closed-form gradient of :func:`smoothness_prior` (K, A symmetric): ``-2 K P A / sum(A)``."""
    return (-2.0 * corr @ weight.to(corr.dtype) @ adj / adj.sum()).to(weight.dtype)
