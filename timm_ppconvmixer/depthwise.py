"""ConvMixer's depthwise convolution with a faster CPU backward; the same function and
parameters as ``nn.Conv2d(dim, dim, k, groups=dim, padding="same")``.

On CPU, oneDNN computes a depthwise convolution's input gradient (a transposed convolution)
several times slower than the forward convolution, although for stride 1, dilation 1 and an
odd kernel with "same" padding the two are the same operation with the kernel turned by 180
degrees: ``dL/dx = conv2d(dL/dy, flip(w))``. :class:`DepthwiseConv2d` computes it that way on
CPU and leaves the weight and bias gradients to the usual kernels, so its forward is
``nn.Conv2d``'s, its gradients equal ``nn.Conv2d``'s up to float rounding (another order of
summation), and its state dict, ``isinstance`` and every timm tool are those of a
``nn.Conv2d``. On other devices, for other shapes, under autocast, while scripting or
tracing, or where no gradient flows to the input, it is ``nn.Conv2d`` itself.
``benchmarks/bench_efficiency.py`` measures what it saves.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthwiseConv2d", "use_depthwise_backward"]


class _DepthwiseConvFlippedBackward(torch.autograd.Function):
    """Depthwise conv2d (stride 1, dilation 1, odd kernel, symmetric padding ``k // 2``)
    whose input gradient is the forward convolution of the output gradient with the flipped
    kernel. The backward is built from differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        groups, pad = weight.shape[0], ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), None, 1, pad, 1, groups)
        if ctx.needs_input_grad[1]:
            # the weight gradient alone: asking oneDNN for the input gradient beside it is
            # what is slow, and the bias gradient is one sum
            stride = dilation = [1, 1]
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, [pad, pad], dilation, False, [0, 0], groups,
                [False, True, False],
            )[1]  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` for ConvMixer's depthwise convolution, with the input gradient computed as
    a forward convolution on CPU (see the module docstring). ``flipped_backward = False`` (or
    :func:`use_depthwise_backward` with ``enable=False``) makes it compute gradients exactly as
    ``nn.Conv2d`` does."""

    flipped_backward: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._flipped_backward_applies(x):
            return self._forward_flipped_backward(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _flipped_backward_applies(self, x: torch.Tensor) -> bool:
        k_h, k_w = self.kernel_size
        if torch.jit.is_tracing() or _fx_tracing():  # before x is read: it may be a proxy
            return False
        return (
            self.flipped_backward
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and x.requires_grad
            and x.dim() == 4
            and x.dtype == self.weight.dtype
            and not _autocast_enabled("cpu")  # autocast casts in forward, not in our backward
            and self.groups == self.in_channels == self.out_channels
            and k_h == k_w
            and k_h % 2 == 1
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and self.padding in ("same", (k_h // 2, k_w // 2))
        )

    @torch.jit.unused
    def _forward_flipped_backward(self, x: torch.Tensor) -> torch.Tensor:
        return _DepthwiseConvFlippedBackward.apply(
            x, self.weight, self.bias, self.kernel_size[0] // 2
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "DepthwiseConv2d":
        """The same convolution, sharing ``conv``'s parameters (nothing is initialised, so no
        random numbers are drawn and the model's initialisation is unchanged)."""
        new = torch.nn.utils.skip_init(
            cls,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        return new


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _fx_tracing() -> bool:
    """True inside ``torch.fx`` symbolic tracing (timm's feature extraction), where the module
    must stay an ordinary ``nn.Conv2d`` call."""
    from torch.fx import _symbolic_trace as fx

    # is_fx_tracing (older torch) is also true under torch.export, which then takes nn.Conv2d's
    return getattr(fx, "is_fx_symbolic_tracing", fx.is_fx_tracing)()


def use_depthwise_backward(module: nn.Module, enable: bool = True) -> None:
    """Make every depthwise convolution under ``module`` compute its CPU input gradient as a
    forward convolution (``enable``), or exactly as ``nn.Conv2d`` does (``enable=False``).

    Enabling replaces each depthwise ``nn.Conv2d`` (``groups == in_channels == out_channels >
    1``) by a :class:`DepthwiseConv2d` that shares its parameters; the state dict is unchanged.
    PPConvMixer does this for its blocks at construction; ``benchmarks/bench_efficiency.py``
    applies it to timm's ``ConvMixer`` for a like-for-like comparison."""
    for parent in list(module.modules()):
        if isinstance(parent, DepthwiseConv2d):
            parent.flipped_backward = enable
        for name, child in list(parent.named_children()):
            if (
                enable
                and type(child) is nn.Conv2d
                and child.groups == child.in_channels == child.out_channels
                and child.groups > 1
            ):
                setattr(parent, name, DepthwiseConv2d.from_conv(child))
