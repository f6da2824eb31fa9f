"""Adaptation networks that put block-wise encrypted images back into a form an ordinary CNN
classifier can use (the paper's Sec. III-C, Fig. 3, Eq. (2)).

* :class:`AdaptNet`, the ELE adaptation network of Madono, Tanaka, Onishi, Ogawa, "Block-wise
  Scrambled Image Recognition Using Adaptation Network" (AAAI-WS 2020, the paper's [15]): for each
  of the ``N = (H/M)(W/M)`` block positions its own spectrally normalised linear map of the
  ``C M^2`` block values to ``O = 16 M^2`` features (a conv with kernel and stride M, no bias),
  its own BatchNorm and LeakyReLU(0.2); the N feature vectors mixed by a learnable N x N matrix U
  (``tokens (B, O, N) @ U``, the same module as the paper's P,
  :class:`~timm_ppconvmixer.models.permutation.AdaptivePermutation`, with the same L_U);
  PixelShuffle(M)
  back to a 16-channel H x W map. Parameters (Eq. (2) with h = O):
  ``N (C M^2 O + 2 O) + N^2``: 823,296 at 32x32x3, block 4.
* :class:`LEAdaptNet`, the adaptation network of Tanaka's LE ("Learnable Image Encryption",
  ICCE-TW 2018, the paper's [14]) as Madono et al. re-implemented it: one block conv shared by
  every position, one BatchNorm shared by every position but applied to each block on its own
  (:class:`PerPositionBatchNorm`), LeakyReLU(0.1), PixelShuffle(M); no U.
  Parameters ``C M^2 O + 2 O``.

Training loss of [15] (their code): ``L_CE + 0.001 L_U(U) + 0.1 L_s``, with L_s the total
variation prior of :func:`total_variation_prior` on the map. Both regularisers follow
PPConvMixer's pattern (``timm_ppconvmixer/models/permutation.py``): L_U is implicit by default (U's
gradient gets ``0.001 dL_U/dU`` in every training backward pass, so timm's unmodified ``train.py``
trains with it) or explicit (``set_implicit_penalty(False)`` and ``loss += penalty_weight *
model.permutation_penalty()``, the accelerate recipe); L_s needs the batch's map, so like P's
smoothness prior it is always implicit (``tv_weight``).

Faithfulness notes (against [15]'s public code, ``proposed_adaptation_network.py``,
``tanaka_adaptation_network.py`` and ``util_norm.py``):

* Their 64 per-position convs and 64 BatchNorms run one by one in a Python loop; here they are one
  batched matrix product with a batched spectral norm (one power iteration per training step per
  position, as ``torch.nn.utils.spectral_norm``) and one BatchNorm over the N x O features, the
  same statistics (per position and channel, over the batch) and the same parameters.
* Their model also builds modules its forward pass never uses (a self-attention layer, two
  4096 x 4096 linear layers, an MLP; in the LE network two 1x1 convs): left out. Table I's
  29.31 M counts only the used ones.
* Their TV prior looks at the first 3 of the map's 16 channels and divides by 31 * 32 * 16 and
  by the batch size; kept (``tv_channels=3``), with the divisor generalised to
  ``(H - 1) W * channels``.
* Initialisation: their loop draws every conv's weight from He normal by fan-out,
  ``N(0, 2 / (M M O))`` (std 0.0221 at block 4, O = 256). It reaches the spectral-norm convs
  too: ``torch.nn.utils.spectral_norm`` leaves ``weight`` pointing at ``weight_orig``'s storage
  until the first forward pass, so the in-place draw lands in ``weight_orig``. Both networks
  here draw their block convs the same way.
* Their LE network runs its one BatchNorm on each block's 1x1 output in turn, so in training
  each position is normalised with its own batch statistics and the running statistics take N
  momentum updates per step, one per position in row-major order;
  :class:`PerPositionBatchNorm` does exactly that in one pass. In evaluation both use the
  shared running statistics.
* U takes weight decay in their SGD; here, as P, it is exempt by default
  (``permutation_weight_decay=False``), since decay pulls U towards 0, where L_U is zero too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.models import register_notrace_module
from torch import nn

from .permutation import AdaptivePermutation

__all__ = [
    "AdaptNet",
    "BlockwiseLinear",
    "LEAdaptNet",
    "PerPositionBatchNorm",
    "adaptnet_num_params",
    "total_variation_prior",
    "total_variation_prior_grad",
]


def adaptnet_num_params(
    img_size: int | tuple[int, int],
    block_size: int,
    in_chans: int = 3,
    map_chans: int = 16,
    shared: bool = False,
) -> int:
    """Eq. (2) without the classifier: ``N (C M^2 O + 2 O) + N^2`` for :class:`AdaptNet` (ELE),
    ``C M^2 O + 2 O`` for :class:`LEAdaptNet` (``shared=True``); ``O = map_chans * M^2``."""
    h, w = to_2tuple(img_size)
    m = block_size
    n = (h // m) * (w // m)
    out = map_chans * m * m
    per_position = in_chans * m * m * out + 2 * out
    return per_position if shared else n * per_position + n * n


def he_fan_out_std(block_size: int, out_chans: int) -> float:
    """Std of [15]'s conv init, He normal by fan-out: ``sqrt(2 / (k k O))`` with k = M."""
    return math.sqrt(2.0 / (block_size * block_size * out_chans))


def _tv_scale(x: torch.Tensor) -> float:
    b, c, h, w = x.shape
    return 1.0 / (b * (h - 1) * w * c)


def total_variation_prior(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """L_s of [15]: the squared total variation of the first ``channels`` channels of the map
    ``x`` (B, C, H, W), ``sum_{i < H-1, j < W-1} (x_ij - x_i+1,j)^2 + (x_ij - x_i,j+1)^2``, divided
    by ``B (H - 1) W C`` (their code: ``31 * 32 * 16`` at 32x32 with 16 channels, and B)."""
    f = x[:, :channels].float()
    corner = f[:, :, :-1, :-1]
    tv = ((corner - f[:, :, 1:, :-1]).square() + (corner - f[:, :, :-1, 1:]).square()).sum()
    return tv * _tv_scale(x)


def total_variation_prior_grad(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Closed-form gradient of :func:`total_variation_prior` with respect to ``x``."""
    f = x[:, :channels].float()
    corner = f[:, :, :-1, :-1]
    down = corner - f[:, :, 1:, :-1]
    right = corner - f[:, :, :-1, 1:]
    grad = torch.zeros_like(x, dtype=torch.float32)
    k = min(channels, x.shape[1])
    grad[:, :k, :-1, :-1] += 2 * (down + right)
    grad[:, :k, 1:, :-1] -= 2 * down
    grad[:, :k, :-1, 1:] -= 2 * right
    return (grad * _tv_scale(x)).to(x.dtype)


class _AddTVGradient(torch.autograd.Function):
    """Identity on the map forwards; backwards adds ``weight * dL_s/dmap`` to its gradient."""

    @staticmethod
    def forward(ctx, x, weight: float, channels: int):
        ctx.save_for_backward(x)
        ctx.weight, ctx.channels = weight, channels
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        extra = total_variation_prior_grad(x, ctx.channels).to(grad_output.dtype)
        return grad_output + ctx.weight * extra, None, None


class _ImplicitTV(nn.Module):
    """The implicit L_s term, shared by both adaptation networks (they set ``tv_weight`` and
    ``tv_channels``)."""

    @torch.jit.unused
    def _with_tv_gradient(self, x: torch.Tensor) -> torch.Tensor:
        return _AddTVGradient.apply(x, self.tv_weight, self.tv_channels)

    def _add_tv(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not torch.jit.is_scripting()
            and self.training
            and self.tv_weight != 0.0
            and torch.is_grad_enabled()
        ):
            return self._with_tv_gradient(x)
        return x


class BlockwiseLinear(nn.Module):
    """A separate bias-free linear map for each block position, ``(B, C, H, W) -> (B, N, O)``:
    the N per-position convs (kernel = stride = M) of [15] as one batched product. With
    ``spectral_norm`` each position's ``(O, C M^2)`` matrix is divided by its largest singular
    value, estimated by power iteration as ``torch.nn.utils.spectral_norm`` does (one step per
    training forward pass, vectors kept in buffers; none in evaluation)."""

    def __init__(
        self,
        grid_size: tuple[int, int],
        block_size: int,
        in_chans: int,
        out_chans: int,
        spectral_norm: bool = True,
        eps: float = 1e-12,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_blocks = self.grid_size[0] * self.grid_size[1]
        self.block_size = block_size
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.spectral_norm = spectral_norm
        self.eps = eps
        fan_in = in_chans * block_size * block_size
        self.weight = nn.Parameter(torch.empty(self.num_blocks, out_chans, fan_in, **dd))
        if spectral_norm:
            self.register_buffer("weight_u", torch.empty(self.num_blocks, out_chans, **dd))
            self.register_buffer("weight_v", torch.empty(self.num_blocks, fan_in, **dd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # [15]'s init of each position's conv (module docstring): He normal by fan-out, k k O
        self.weight.normal_(0.0, he_fan_out_std(self.block_size, self.out_chans))
        if self.spectral_norm:
            self.weight_u.normal_()
            self.weight_v.normal_()
            self.weight_u.copy_(F.normalize(self.weight_u, dim=1, eps=self.eps))
            self.weight_v.copy_(F.normalize(self.weight_v, dim=1, eps=self.eps))

    def extra_repr(self) -> str:
        return (
            f"grid_size={self.grid_size}, block_size={self.block_size}, in_chans={self.in_chans}, "
            f"out_chans={self.out_chans}, spectral_norm={self.spectral_norm}"
        )

    def _power_iteration(self) -> None:
        with torch.no_grad():
            w = self.weight.detach()
            v = F.normalize(torch.einsum("nok,no->nk", w, self.weight_u), dim=1, eps=self.eps)
            u = F.normalize(torch.einsum("nok,nk->no", w, v), dim=1, eps=self.eps)
            self.weight_v.copy_(v)
            self.weight_u.copy_(u)

    def normalised_weight(self) -> torch.Tensor:
        """The effective ``(N, O, C M^2)`` weights (divided by their spectral norms)."""
        if not self.spectral_norm:
            return self.weight
        if self.training:
            self._power_iteration()
        u, v = self.weight_u.clone(), self.weight_v.clone()
        sigma = torch.einsum("no,nok,nk->n", u, self.weight, v)
        return self.weight / sigma[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        m = self.block_size
        gh, gw = h // m, w // m
        blocks = x.reshape(b, c, gh, m, gw, m).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, -1)
        return torch.einsum("bnk,nok->bno", blocks, self.normalised_weight().to(x.dtype))


class PerPositionBatchNorm(nn.BatchNorm2d):
    """One BatchNorm2d (one set of affine parameters and running statistics) applied to every
    position of a ``(B, C, H, W)`` map as if to each 1x1 position on its own, in row-major
    order, which is what [15]'s LE network does with its per-block loop.

    Training: position ``p`` is normalised with the mean and biased variance of its own ``B``
    values; the running statistics take one momentum update per position, in order, with the
    unbiased variance, i.e. after a step ``r <- (1 - m)^HW r + sum_p m (1 - m)^(HW - 1 - p) s_p``
    (``num_batches_tracked`` counts HW per step). Evaluation (or no running statistics tracked
    and training off): the running statistics over the whole map, as ``nn.BatchNorm2d``.
    State dict and parameters are ``nn.BatchNorm2d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # the shared running statistics, as nn.BatchNorm2d in eval
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.running_mean is None,
                0.0,
                self.eps,
            )
        b, c, h, w = x.shape
        if b < 2:
            raise ValueError(
                "PerPositionBatchNorm needs more than 1 image per batch in training: each "
                "position is normalised with its own batch statistics"
            )
        momentum = self.momentum
        if momentum is None:
            raise ValueError("PerPositionBatchNorm needs a float momentum (as [15]'s default 0.1)")
        f = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = f.mean(dim=0)  # (C, H, W): each position's batch statistics
        var = f.var(dim=0, unbiased=False)
        out = (f - mean) * torch.rsqrt(var + self.eps)
        weight, bias = self.weight, self.bias
        if weight is not None and bias is not None:
            out = out * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)
        running_mean, running_var = self.running_mean, self.running_var
        if running_mean is not None and running_var is not None:
            # the N sequential momentum updates of [15]'s loop, in closed form: position p
            # (row-major) weighs m (1 - m)^(N - 1 - p), the old statistics (1 - m)^N
            n = h * w
            with torch.no_grad():
                powers = torch.arange(n - 1, -1, -1, dtype=torch.float64, device=x.device)
                weights = (momentum * torch.pow(1.0 - momentum, powers)).to(mean.dtype)
                keep = (1.0 - momentum) ** n
                unbiased = var.detach() * (b / (b - 1))
                running_mean.mul_(keep).add_(mean.detach().flatten(1) @ weights)
                running_var.mul_(keep).add_(unbiased.flatten(1) @ weights)
                tracked = self.num_batches_tracked
                if tracked is not None:
                    tracked.add_(n)
        return out.to(x.dtype)


def _check_size(img_size: tuple[int, int], block_size: int) -> tuple[int, int]:
    h, w = img_size
    if h % block_size or w % block_size:
        raise ValueError(
            f"img_size {h}x{w} is not a multiple of block_size {block_size}: the adaptation "
            "network maps each encrypted block on its own"
        )
    return h // block_size, w // block_size


@register_notrace_module  # FX keeps it a leaf: the size check and the implicit prior stay Python
class AdaptNet(_ImplicitTV):
    """ELE adaptation network of [15] (module docstring): ``(B, C, H, W) -> (B, map_chans, H, W)``.

    Args:
        img_size: (H, W) or int, fixes the N block positions.
        block_size: M, the encryption's block size (kernel and stride of the block convs).
        in_chans: C.
        map_chans: channels of the output map (16 in [15]); each position has
            ``map_chans * M^2`` features.
        negative_slope: LeakyReLU slope (0.2 in [15]).
        spectral_norm: spectrally normalise each position's conv (True in [15]).
        permutation_init, penalty_weight, implicit_penalty, penalty, permutation_weight_decay:
            U's options, as P's in ``AdaptivePermutation`` (defaults: kaiming init as
            ``nn.Linear``, lambda 0.001 of [15]'s code, implicit, ``"madono"`` L_U, no decay).
        tv_weight: weight of the implicit total variation prior L_s (0.1 in [15]'s code).
        tv_channels: channels of the map L_s looks at (3 in [15]'s code).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 32,
        block_size: int = 4,
        in_chans: int = 3,
        map_chans: int = 16,
        negative_slope: float = 0.2,
        spectral_norm: bool = True,
        permutation_init: str = "kaiming",
        penalty_weight: float = 1e-3,
        implicit_penalty: bool = True,
        penalty: str = "madono",
        permutation_weight_decay: bool = False,
        tv_weight: float = 0.1,
        tv_channels: int = 3,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.img_size = to_2tuple(img_size)
        self.grid_size = _check_size(self.img_size, block_size)
        self.block_size = block_size
        self.out_chans = map_chans
        features = map_chans * block_size * block_size
        self.tv_weight = float(tv_weight)
        self.tv_channels = int(tv_channels)
        self.proj = BlockwiseLinear(
            self.grid_size, block_size, in_chans, features, spectral_norm=spectral_norm, **dd
        )
        num_blocks = self.grid_size[0] * self.grid_size[1]
        # one BatchNorm per position and feature, statistics over the batch: [15]'s N
        # BatchNorm2d(O) on 1x1 maps
        self.norm = nn.BatchNorm1d(num_blocks * features, **dd)
        self.act = nn.LeakyReLU(negative_slope)
        self.mixing = AdaptivePermutation(
            self.grid_size,
            init=permutation_init,
            penalty_weight=penalty_weight,
            implicit_penalty=implicit_penalty,
            penalty=penalty,
            weight_decay=permutation_weight_decay,
            image_size=self.img_size,
            patch_size=block_size,
            **dd,
        )
        self.shuffle = nn.PixelShuffle(block_size)

    @torch.jit.unused
    def _size_message(self, h: int, w: int) -> str:
        return (
            f"input image is {h}x{w} but this adaptation network was built for img_size "
            f"{self.img_size[0]}x{self.img_size[1]} (one conv per block position); resize the "
            "images (and the key) to that size, or create the model with that img_size"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if h != self.img_size[0] or w != self.img_size[1]:
            if torch.jit.is_scripting():
                raise ValueError("input size does not match the img_size AdaptNet was built for")
            raise ValueError(self._size_message(h, w))
        feats = self.act(self.norm(self.proj(x).flatten(1)))  # (B, N * O)
        gh, gw = self.grid_size
        tokens = feats.view(b, gh * gw, -1).transpose(1, 2).reshape(b, -1, gh, gw)
        return self._add_tv(self.shuffle(self.mixing(tokens)))


@register_notrace_module  # FX keeps it a leaf: the implicit prior stays Python
class LEAdaptNet(_ImplicitTV):
    """Tanaka's adaptation network for LE, as re-implemented by [15]: one block conv (kernel =
    stride = M, no bias) shared by every position, BatchNorm, LeakyReLU, PixelShuffle(M).

    Args: as :class:`AdaptNet` (no U); ``negative_slope`` 0.1 and ``tv_weight`` 0 as in [15]'s
    LE code (its loss is the cross-entropy alone). ``per_position_norm``: normalise each block
    with its own batch statistics, as [15]'s code (default), or with one set of statistics
    over the whole map (``False``: ``nn.BatchNorm2d``; same parameters and state dict).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 32,
        block_size: int = 4,
        in_chans: int = 3,
        map_chans: int = 16,
        negative_slope: float = 0.1,
        tv_weight: float = 0.0,
        tv_channels: int = 3,
        per_position_norm: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.img_size = to_2tuple(img_size)
        self.grid_size = _check_size(self.img_size, block_size)
        self.block_size = block_size
        self.out_chans = map_chans
        features = map_chans * block_size * block_size
        self.tv_weight = float(tv_weight)
        self.tv_channels = int(tv_channels)
        self.proj = nn.Conv2d(in_chans, features, block_size, stride=block_size, bias=False, **dd)
        with torch.no_grad():  # He normal by fan-out, as [15]'s code initialises this conv
            self.proj.weight.normal_(0, he_fan_out_std(block_size, features))
        self.norm = (PerPositionBatchNorm if per_position_norm else nn.BatchNorm2d)(features, **dd)
        self.act = nn.LeakyReLU(negative_slope)
        self.shuffle = nn.PixelShuffle(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_tv(self.shuffle(self.act(self.norm(self.proj(x)))))
