"""Hard permutations: the gather that replaces a hardened P, and how close a learned P is to
a permutation (for hardening, the leak guard and the owner's evaluation).

With ``P[i, j] = 1`` exactly when encrypted block ``i`` holds plain block ``j``
(``BlockKey.block_perm[i] == j``), ``tokens @ P`` puts every plain block back in its place
(paper Sec. III-B, Fig. 1); a P close to such a matrix therefore carries the key's block order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from timm.models import register_notrace_module

__all__ = [
    "BlockOrderRecovery",
    "HardPermutation",
    "block_order_of",
    "block_order_recovery",
    "grid_symmetries",
    "nearest_permutation",
    "permutation_closeness",
]


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

    def matrix(self) -> torch.Tensor:
        """The 0/1 matrix this gather applies."""
        n = self.source.numel()
        out = torch.zeros(n, n, device=self.source.device)
        out[self.source, torch.arange(n, device=self.source.device)] = 1.0
        return out

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


@torch.no_grad()
def permutation_closeness(matrix: torch.Tensor) -> float:
    """How close P is to a signed, scaled permutation, in [0, 1]: the largest share of P's
    energy (sum of squares) that lies on the entries of one permutation,
    ``max_sigma sum_i P[i, sigma(i)]^2 / sum_ij P_ij^2`` (a linear assignment problem).

    1 exactly when P has one non-zero entry per row and column (any signs and scales); about
    3/n for the Kaiming-uniform start; for a P that carries the key's block order (K1) it is
    near 1. Pass the effective matrix (``AdaptivePermutation.matrix()``), not Sinkhorn logits.
    """
    from scipy.optimize import linear_sum_assignment

    energy = matrix.detach().double().cpu().square()
    total = float(energy.sum())
    if total == 0.0:
        return 0.0
    rows, cols = linear_sum_assignment(energy.numpy(), maximize=True)
    return float(energy[rows, cols].sum()) / total


def grid_symmetries(grid_size: tuple[int, int]) -> list[torch.Tensor]:
    """Index maps of the rotations and mirrors of a row-major grid (8 for a square grid, 4
    otherwise): ``g[j]`` is the position that position j comes from."""
    gh, gw = grid_size
    index = torch.arange(gh * gw).view(gh, gw)
    maps = []
    for t in (index, index.T) if gh == gw else (index,):
        for flip in ((), (0,), (1,), (0, 1)):
            maps.append((t.flip(flip) if flip else t).reshape(-1))
    return maps


@torch.no_grad()
def nearest_permutation(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the permutation that maximises ``sum_i |P[i, sigma(i)]|`` (a linear
    assignment problem on ``|P|``, Hungarian method), so that P, -P and 0.3 P read alike."""
    from scipy.optimize import linear_sum_assignment

    weights = matrix.detach().double().cpu().abs().numpy()
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def block_order_of(matrix: torch.Tensor) -> torch.Tensor:
    """The block order a P (effective matrix, or a hardened P's ``matrix()``) states, as a
    ``block_perm`` estimate: ``order[i] = j`` where the nearest permutation to ``|P|`` has
    ``P[i, j]``, i.e. encrypted block i goes back to place j. The one way every part of the
    package reads a block order out of P (the owner's evaluation, the leak guard, the attack on
    shared models, hardening).

    Example:
        >>> key = BlockKey.generate(32, 8, seed=0)  # doctest: +SKIP
        >>> p = torch.eye(16)[key.block_perm]       # P[i, block_perm[i]] = 1
        >>> bool((block_order_of(-p) == key.block_perm).all())  # doctest: +SKIP
        True
    """
    rows, cols = nearest_permutation(matrix)
    order = torch.empty_like(rows)
    order[rows] = cols
    return order


class BlockOrderRecovery(NamedTuple):
    """Share of the key's block order (K1) a P states: ``exact``, and ``up_to_symmetry``
    (the best over the grid's rotations and mirrors, :func:`grid_symmetries`)."""

    exact: float
    up_to_symmetry: float


def block_order_recovery(
    matrix: torch.Tensor, block_perm: torch.Tensor, grid_size: tuple[int, int]
) -> BlockOrderRecovery:
    """How much of K1 P has learned (owner only: it needs the key): the share of encrypted
    blocks i that :func:`block_order_of` sends to ``block_perm[i]``; chance is about 1/n.

    Up to symmetry: a P that puts every block back in a rotated or mirrored place restores a
    rotated or mirrored image, which is as readable, and no ciphertext-only method can tell
    these orders apart (K2 can be rotated along with K1); so the share is also reported for
    the best of the grid's symmetries g (block i sent to ``g[block_perm[i]]``).
    """
    order = block_order_of(matrix)
    truth = block_perm.detach().cpu().to(torch.long)
    shares = [float((order == g[truth]).double().mean()) for g in grid_symmetries(grid_size)]
    return BlockOrderRecovery(exact=shares[0], up_to_symmetry=max(shares))
