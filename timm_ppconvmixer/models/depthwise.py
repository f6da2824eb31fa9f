"""ConvMixer's depthwise convolution with a faster CPU backward; the same function and
parameters as ``nn.Conv2d(dim, dim, k, groups=dim, padding="same")``.

On CPU, oneDNN runs a depthwise convolution's forward fast, but its backward several times
(input gradient) to twenty times (weight gradient, at 14x14 maps) slower, although for stride 1,
dilation 1 and an odd kernel with "same" padding both gradients are forward depthwise
convolutions themselves:

* ``dL/dx = conv2d(dL/dy, flip(w))``, the kernel turned by 180 degrees;
* ``dL/dw``: the ``b * c`` planes of ``x`` as one image, convolved with the planes of ``dL/dy``
  as kernels (a ``k x k`` output each), summed over the batch.

:class:`DepthwiseConv2d` computes them that way on CPU and the bias gradient as one sum, so its
forward is ``nn.Conv2d``'s, its gradients equal ``nn.Conv2d``'s up to float rounding (another
order of summation), and its state dict, ``isinstance`` and every timm tool are those of a
``nn.Conv2d``. On other devices, for other shapes, dtypes other than float32 and float64,
under autocast, while scripting or tracing, or where no gradient flows to the input, it is
``nn.Conv2d`` itself; ``torch.func`` transforms and forward-mode AD work as with ``nn.Conv2d``.
``benchmarks/bench_efficiency.py`` measures what it saves.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import _symbolic_trace

__all__ = ["DepthwiseConv2d", "use_depthwise_backward"]

# True inside torch.fx symbolic tracing (timm's feature extraction), where the module must stay
# an ordinary nn.Conv2d call. is_fx_tracing (older torch) is also true under torch.export, which
# then takes nn.Conv2d's path. Resolved once: it is asked on every forward.
_fx_tracing = getattr(_symbolic_trace, "is_fx_symbolic_tracing", _symbolic_trace.is_fx_tracing)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias, pad: int) -> torch.Tensor:
    """Forward depthwise conv2d, stride 1, dilation 1, symmetric zero padding ``pad``; one group
    per kernel."""
    return F.conv2d(x, weight, bias, 1, pad, 1, weight.shape[0])


def _weight_grad_by_forward_conv(x: torch.Tensor, grad: torch.Tensor, pad: int) -> torch.Tensor:
    """``dL/dw[c, 0, i, j] = sum_{b, p} x_pad[b, c, p + (i, j)] * grad[b, c, p]``: one depthwise
    forward convolution of the ``b * c`` planes of ``x``, taken as one image, with the planes of
    ``grad`` as its kernels (output ``k x k``), then summed over the batch."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # keep channels innermost: memory (h, w, b, c), a copy of c-long runs, no transpose
        planes = x.permute(2, 3, 0, 1).reshape(1, h, w, b * c).permute(0, 3, 1, 2)
    else:
        planes = x.reshape(1, b * c, h, w)
    out = _depthwise(planes, grad.reshape(b * c, 1, h, w), None, pad)
    return out.view(b, c, 1, 2 * pad + 1, 2 * pad + 1).sum(0)


class _DepthwiseConvForwardBackward(torch.autograd.Function):
    """Depthwise conv2d (stride 1, dilation 1, odd kernel, symmetric padding ``k // 2``) whose
    backward is two forward depthwise convolutions: the input gradient convolves the output
    gradient with the flipped kernel, the weight gradient is
    :func:`_weight_grad_by_forward_conv`. Built from differentiable ops, so double backward
    works; ``setup_context``, a generated vmap rule and ``jvp`` make ``torch.func`` (per-sample
    gradients, ``jvp``, ``hessian``) and forward-mode AD work as with ``nn.Conv2d``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, padding: int):
        return _depthwise(x, weight, bias, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, _):
        """The convolution is bilinear in (x, w): d(x * w) = dx * w + x * dw, plus db."""
        x, weight = ctx.saved_tensors
        pad = ctx.padding
        out = None
        if x_t is not None:
            out = _depthwise(x_t, weight, None, pad)
        if weight_t is not None:
            term = _depthwise(x, weight_t, None, pad)
            out = term if out is None else out + term
        if bias_t is not None:
            term = bias_t.view(1, -1, 1, 1)
            shape = (x.shape[0], -1, x.shape[2], x.shape[3])
            out = term.expand(shape).clone() if out is None else out + term
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        pad = ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _depthwise(grad, weight.flip(-1, -2), None, pad)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad_by_forward_conv(x, grad, pad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` for ConvMixer's depthwise convolution, with its gradients computed as
    forward convolutions on CPU (see the module docstring). ``conv_gradients = False`` (or
    :func:`use_depthwise_backward` with ``enable=False``) makes it compute gradients exactly as
    ``nn.Conv2d`` does."""

    conv_gradients: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._conv_gradients_applies(x):
            return self._forward_conv_gradients(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _conv_gradients_applies(self, x: torch.Tensor) -> bool:
        k_h, k_w = self.kernel_size
        if torch.jit.is_tracing() or _fx_tracing():  # before x is read: it may be a proxy
            return False
        return (
            self.conv_gradients
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and x.requires_grad
            and x.dim() == 4
            and x.shape[0] > 0  # groups = b * c in the weight gradient
            # real float32/float64 only: no conjugation here (complex), and half precision
            # would round each image's k x k term before the batch sum
            and x.dtype in (torch.float32, torch.float64)
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
    def _forward_conv_gradients(self, x: torch.Tensor) -> torch.Tensor:
        return _DepthwiseConvForwardBackward.apply(
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


def use_depthwise_backward(module: nn.Module, enable: bool = True) -> None:
    """Make every depthwise convolution under ``module`` compute its CPU gradients as forward
    convolutions (``enable``), or exactly as ``nn.Conv2d`` does (``enable=False``).

    Enabling replaces each depthwise ``nn.Conv2d`` (``groups == in_channels == out_channels >
    1``) among the submodules of ``module`` (at any depth; ``module`` itself, having no parent
    here, is not replaced: use :meth:`DepthwiseConv2d.from_conv` for a lone convolution) by a
    :class:`DepthwiseConv2d` that shares its parameters; the state dict is unchanged.
    PPConvMixer does this for its blocks at construction; ``benchmarks/bench_efficiency.py``
    applies it to timm's ``ConvMixer`` for a like-for-like comparison."""
    for parent in list(module.modules()):
        if isinstance(parent, DepthwiseConv2d):
            parent.conv_gradients = enable
        for name, child in list(parent.named_children()):
            if (
                enable
                and type(child) is nn.Conv2d
                and child.groups == child.in_channels == child.out_channels
                and child.groups > 1
            ):
                setattr(parent, name, DepthwiseConv2d.from_conv(child))
