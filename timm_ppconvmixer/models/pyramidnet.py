"""PyramidNet with ShakeDrop, the classifier of the paper's Table I "ShakeDrop" rows, registered
with timm as ``shakedrop_pyramidnet*`` (timm has no PyramidNet).

* PyramidNet (Han, Kim, Kim, "Deep Pyramidal Residual Networks", CVPR 2017): three stages of
  basic blocks ``BN - conv3x3 - BN - ReLU - conv3x3 - BN`` (no ReLU after the addition); the
  width grows by ``alpha / (3 n)`` per block, ``n = (depth - 2) / 6`` blocks per stage, so block
  ``k`` (1-based, over all stages) has ``16 + ceil(alpha k / (3 n))`` channels; the shortcut is the
  identity (2x2 average pooling where the block strides), zero-padded to the new width.
* ShakeDrop (Yamada, Iwamura, Akiba, Kise, "ShakeDrop Regularization for Deep Residual
  Learning", IEEE Access 7, 2019, Eq. (6)-(8)): the residual branch F(x) is multiplied by
  ``b + alpha - b alpha`` in the forward pass and by ``b + beta - b beta`` in the backward pass,
  ``b ~ Bernoulli(p_l)``, ``alpha ~ U[-1, 1]``, ``beta ~ U[0, 1]``; at test time by the expected
  value ``E[b + alpha - b alpha] = p_l`` (for alpha centred on 0). Linear decay rule:
  ``p_l = 1 - (l / L)(1 - p_L)``, ``p_L = 0.5``.

Table I's ShakeDrop is PyramidNet-110 with alpha 270 (``shakedrop_pyramidnet110_a270``): with
10 classes it has 28,485,493 parameters (Table I: 28.49 M), as :func:`pyramidnet_num_params`
says and ``timm.create_model`` counts.

Faithfulness notes (against the PyTorch code of Madono et al. and of owruby/shake-drop_pytorch,
the code behind Table I's ShakeDrop rows):

* That code draws one gate ``b`` per mini-batch; here ``b``, ``alpha`` and ``beta`` are drawn per
  image, as the paper's per-example equations are written. Both have the same expectation.
* That code draws ``beta`` in the backward pass; here it is drawn in the forward pass and used in
  the backward pass (same distribution; gradient checkpointing, which re-runs the forward with
  the saved random state, then sees the same beta).
* That code is CUDA-only; this one runs on any device.
* Global average pooling replaces the fixed 8x8 pooling, so 28x28 inputs (Fashion-MNIST) work.
"""

import math

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, get_device_dtype
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    register_notrace_module,
)
from torch import nn

__all__ = [
    "ShakeBasicBlock",
    "ShakeDrop",
    "ShakePyramidNet",
    "pyramidnet_cfg",
    "pyramidnet_num_params",
    "pyramidnet_widths",
    "shake_drop",
]

FMNIST_MEAN, FMNIST_STD = (0.5,), (0.5,)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class _ShakeDropFunction(torch.autograd.Function):
    """``x * forward_scale`` in the forward pass, ``grad * backward_scale`` in the backward."""

    @staticmethod
    def forward(ctx, x, forward_scale, backward_scale):
        ctx.save_for_backward(backward_scale)
        return x * forward_scale

    @staticmethod
    def backward(ctx, grad_output):
        (backward_scale,) = ctx.saved_tensors
        return grad_output * backward_scale, None, None


def shake_drop(
    x: torch.Tensor,
    p_drop: float,
    alpha_range: tuple[float, float] = (-1.0, 1.0),
    beta_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """ShakeDrop in training (Yamada et al. 2019, Eq. (6)): per image, with probability
    ``1 - p_drop`` (the paper's ``b = 1``) the branch passes unchanged both ways; otherwise it is
    scaled by ``alpha ~ U(alpha_range)`` forwards and by ``beta ~ U(beta_range)`` backwards."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    gate = (torch.rand(shape, device=x.device) >= p_drop).to(x.dtype)
    alpha = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(*alpha_range)
    beta = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(*beta_range)
    return _ShakeDropFunction.apply(x, gate + (1 - gate) * alpha, gate + (1 - gate) * beta)


@register_notrace_module  # FX keeps it a leaf: the autograd function stays Python
class ShakeDrop(nn.Module):
    """ShakeDrop on a residual branch; ``p_drop = 1 - p_l`` is the probability of perturbing it.

    Training: :func:`shake_drop`. Evaluation: the expected forward scale,
    ``1 - p_drop + p_drop * mean(alpha_range)`` (``p_l`` for the paper's ``alpha`` in [-1, 1]).
    """

    def __init__(
        self,
        p_drop: float = 0.5,
        alpha_range: tuple[float, float] = (-1.0, 1.0),
        beta_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        if not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"ShakeDrop p_drop must be in [0, 1], got {p_drop}")
        self.p_drop = float(p_drop)
        self.alpha_range = (float(alpha_range[0]), float(alpha_range[1]))
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.eval_scale = 1.0 - self.p_drop + self.p_drop * sum(self.alpha_range) / 2

    def extra_repr(self) -> str:
        return f"p_drop={self.p_drop:.4f}, alpha_range={self.alpha_range}"

    @torch.jit.unused
    def _shake(self, x: torch.Tensor) -> torch.Tensor:
        return shake_drop(x, self.p_drop, self.alpha_range, self.beta_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p_drop > 0.0 and not torch.jit.is_scripting():
            return self._shake(x)
        return x * self.eval_scale


class ShakeBasicBlock(nn.Module):
    """PyramidNet's basic block with ShakeDrop on the branch (Han et al. Fig. 6(d))."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        p_drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, **dd)
        self.shake_drop = ShakeDrop(p_drop)
        # ceil_mode: the same size as the strided conv's output for odd sizes too (7 -> 4)
        self.downsample = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.pad_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.bn3(self.conv2(self.act(self.bn2(out))))
        out = self.shake_drop(out)
        shortcut = self.downsample(x)
        if self.pad_chs > 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad_chs))
        return out + shortcut


def pyramidnet_widths(depth: int, alpha: int, base_chs: int = 16) -> list[int]:
    """Channel counts: the stem's, then each block's (Han et al. Eq. (2), ceil as in the
    public code): ``base + ceil(alpha k / (3 n))`` for block ``k = 1 .. 3 n``."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"PyramidNet with basic blocks needs depth = 6 n + 2, n >= 1; got {depth}")
    n3 = 3 * ((depth - 2) // 6)
    return [base_chs] + [base_chs - (-alpha * k // n3) for k in range(1, n3 + 1)]


def pyramidnet_num_params(
    depth: int, alpha: int, num_classes: int = 10, in_chans: int = 3, base_chs: int = 16
) -> int:
    """Parameters of :class:`ShakePyramidNet`: stem conv 3x3 with bias and BN, per block
    ``BN(c_in) + 9 c_in c_out + BN(c_out) + 9 c_out^2 + BN(c_out)``, final BN and the linear
    classifier (BN: 2 per channel)."""
    w = pyramidnet_widths(depth, alpha, base_chs)
    total = 9 * in_chans * w[0] + w[0] + 2 * w[0]
    for c_in, c_out in zip(w[:-1], w[1:], strict=True):
        total += 2 * c_in + 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out
    return total + 2 * w[-1] + w[-1] * num_classes + num_classes


class ShakePyramidNet(nn.Module):
    """PyramidNet (basic blocks) with ShakeDrop, for 32x32 (CIFAR) or 28x28 (Fashion-MNIST).

    Args:
        depth: 6 n + 2 (110 in Table I).
        alpha: total width increase (270 in Table I).
        in_chans, num_classes, global_pool, drop_rate: as timm's models (``drop_rate`` is dropout
            before the classifier; 0 in the papers).
        p_drop_last: ``1 - p_L`` of the linear decay rule, the last block's ShakeDrop probability
            (0.5 in Yamada et al.); block ``l`` of ``L`` gets ``l / L * p_drop_last``. 0 gives a
            plain PyramidNet.
        base_chs: the stem's width (16).

    Example:
        >>> import timm, timm_ppconvmixer
        >>> model = timm.create_model("shakedrop_pyramidnet110_a270", num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        28485493
    """

    def __init__(
        self,
        depth: int = 110,
        alpha: int = 270,
        in_chans: int = 3,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        p_drop_last: float = 0.5,
        base_chs: int = 16,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        widths = pyramidnet_widths(depth, alpha, base_chs)
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, base_chs, 3, padding=1, bias=True, **dd),
            nn.BatchNorm2d(base_chs, **dd),
        )
        self.feature_info = [dict(num_chs=base_chs, reduction=1, module="stem")]
        num_blocks = 3 * n
        for stage in range(3):
            blocks = []
            for i in range(stage * n, (stage + 1) * n):
                stride = 2 if stage > 0 and i == stage * n else 1
                p_drop = p_drop_last * (i + 1) / num_blocks
                blocks.append(ShakeBasicBlock(widths[i], widths[i + 1], stride, p_drop, **dd))
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            width = widths[(stage + 1) * n]
            info = dict(num_chs=width, reduction=2**stage, module=f"layer{stage + 1}")
            self.feature_info.append(info)
        self.num_features = self.head_hidden_size = widths[-1]
        self.norm = nn.BatchNorm2d(widths[-1], **dd)
        self.act = nn.ReLU(inplace=True)
        self.head = ClassifierHead(widths[-1], num_classes, global_pool, drop_rate, **dd)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Han et al.'s initialisation, as in the public code: He normal by fan-out for convs,
        # BN to (1, 0), zero classifier bias
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        fine = [(r"^layer(\d+)\.(\d+)", None), (r"^norm", (99999,))]
        return dict(stem=r"^adapt|^stem", blocks=r"^layer(\d+)" if coarse else fine)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        # the model's device and dtype: the head may have no parameters left (num_classes 0)
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.layer1, x)
            x = checkpoint_seq(self.layer2, x)
            x = checkpoint_seq(self.layer3, x)
        else:
            x = self.layer3(self.layer2(self.layer1(x)))
        return self.act(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_pyramidnet(variant: str, pretrained: bool = False, **kwargs) -> ShakePyramidNet:
    return build_model_with_cfg(
        ShakePyramidNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def pyramidnet_cfg(input_size=(3, 32, 32), mean=HALF_MEAN, std=HALF_STD, **kwargs) -> dict:
    """The pretrained cfg of a PyramidNet member (``kwargs`` override or add fields)."""
    side = input_size[-1]
    return {
        "url": "",
        "num_classes": 10,
        "input_size": input_size,
        "pool_size": (-(-side // 4), -(-side // 4)),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": mean,
        "std": std,
        "classifier": "head.fc",
        "first_conv": "stem.0",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "shakedrop_pyramidnet110_a270": pyramidnet_cfg(),
        "shakedrop_pyramidnet20_a48": pyramidnet_cfg(),
        "shakedrop_pyramidnet20_a48_fmnist": pyramidnet_cfg(
            input_size=(1, 28, 28), mean=FMNIST_MEAN, std=FMNIST_STD
        ),
    }
)


@register_model
def shakedrop_pyramidnet110_a270(pretrained: bool = False, **kwargs) -> ShakePyramidNet:
    """Table I's ShakeDrop: PyramidNet-110, alpha 270, p_L 0.5; CIFAR-10 32x32."""
    args = dict(dict(depth=110, alpha=270), **kwargs)
    return _create_pyramidnet("shakedrop_pyramidnet110_a270", pretrained, **args)


@register_model
def shakedrop_pyramidnet20_a48(pretrained: bool = False, **kwargs) -> ShakePyramidNet:
    """A small member of the family for CPU-scale runs: depth 20, alpha 48; 32x32."""
    args = dict(dict(depth=20, alpha=48), **kwargs)
    return _create_pyramidnet("shakedrop_pyramidnet20_a48", pretrained, **args)


@register_model
def shakedrop_pyramidnet20_a48_fmnist(pretrained: bool = False, **kwargs) -> ShakePyramidNet:
    """shakedrop_pyramidnet20_a48 for Fashion-MNIST: 28x28, one channel, 10 classes."""
    args = dict(dict(depth=20, alpha=48), **kwargs)
    return _create_pyramidnet("shakedrop_pyramidnet20_a48_fmnist", pretrained, **args)
