"""DepthwiseConv2d: nn.Conv2d's function and parameters, with the CPU gradients computed as
forward depthwise convolutions (timm_ppconvmixer/models/depthwise.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.convmixer import ConvMixer
from torch import nn

from timm_ppconvmixer import PPConvMixer
from timm_ppconvmixer.models.depthwise import DepthwiseConv2d, use_depthwise_backward

FAST = "_DepthwiseConvForwardBackwardBackward"


def pair(channels, kernel, padding="same", dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    plain = nn.Conv2d(channels, channels, kernel, groups=channels, padding=padding, **kwargs)
    plain = plain.to(dtype)
    with torch.no_grad():  # no symmetry a missing flip could hide behind
        plain.weight.copy_(torch.randn_like(plain.weight))
    return plain, DepthwiseConv2d.from_conv(copy.deepcopy(plain))


def forward_backward(conv, x, grad):
    x = x.detach().requires_grad_()
    y = conv(x)
    y.backward(grad)
    return y, x.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("kernel", [3, 5, 9])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("padding", ["same", "int"])
def test_gradients_equal_nn_conv2d(kernel, channels_last, padding):
    plain, fast = pair(6, kernel, "same" if padding == "same" else kernel // 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 6, 11, 10, dtype=torch.float64).contiguous(memory_format=fmt)
    grad = torch.randn(4, 6, 11, 10, dtype=torch.float64).contiguous(memory_format=fmt)
    y_fast = fast(x.detach().requires_grad_())
    assert type(y_fast.grad_fn).__name__ == FAST  # the fast path was taken
    want = forward_backward(plain, x, grad)
    got = forward_backward(fast, x, grad)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)  # the same forward
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g, w)
    assert got[1].is_contiguous(memory_format=fmt)


def test_float32_gradients_within_rounding():
    plain, fast = pair(32, 5, dtype=torch.float32)
    x = torch.randn(8, 32, 7, 7).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    for g, w in zip(
        forward_backward(fast, x, grad)[1:], forward_backward(plain, x, grad)[1:], strict=True
    ):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pair(4, 4),  # even kernel: "same" pads unevenly
        lambda: pair(4, 3, padding=0),
        lambda: pair(4, 3, padding=1, stride=2),
        lambda: pair(4, 3, padding=2, dilation=2),
        lambda: pair(4, 3, padding="same", padding_mode="reflect"),
    ],
)
def test_other_shapes_compute_as_nn_conv2d(make):
    plain, fast = make()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    y = fast(x.detach().requires_grad_())
    assert type(y.grad_fn).__name__ != FAST
    grad = torch.randn_like(plain(x))
    for g, w in zip(forward_backward(fast, x, grad), forward_backward(plain, x, grad), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_no_input_gradient_or_switched_off_is_nn_conv2d():
    _, fast = pair(4, 3)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    assert type(fast(x).grad_fn).__name__ == "ConvolutionBackward0"  # weight grad only
    with torch.no_grad():
        assert fast(x.requires_grad_()).grad_fn is None
    use_depthwise_backward(fast, enable=False)
    assert type(fast(x.requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"
    use_depthwise_backward(fast)
    assert type(fast(x.requires_grad_()).grad_fn).__name__ == FAST


def test_double_backward():
    _, fast = pair(3, 3)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: fast._forward_conv_gradients(x), (x, fast.weight, fast.bias)
    )


@pytest.mark.parametrize(
    "dtype, batch",
    [(torch.complex128, 2), (torch.bfloat16, 2), (torch.float64, 0)],
    ids=["complex", "bfloat16", "empty-batch"],
)
def test_other_dtypes_and_an_empty_batch_compute_as_nn_conv2d(dtype, batch):
    plain, fast = pair(4, 3, dtype=dtype)
    x = torch.randn(batch, 4, 6, 6, dtype=dtype)
    assert type(fast(x.detach().requires_grad_()).grad_fn).__name__ != FAST
    grad = torch.randn(batch, 4, 6, 6, dtype=dtype)
    for g, w in zip(forward_backward(fast, x, grad), forward_backward(plain, x, grad), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_forward_mode_ad_and_batched_gradients():
    from timm_ppconvmixer.models.depthwise import _DepthwiseConvForwardBackward

    _, fast = pair(3, 3)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _DepthwiseConvForwardBackward.apply(x, w, b, 1),
        (x, fast.weight, fast.bias),
        check_forward_ad=True,
        check_batched_grad=True,
    )


def test_torch_func_transforms_match_timms_convmixer():
    from torch.func import functional_call, grad, jvp, vmap

    args = dict(dim=16, depth=1, kernel_size=3, patch_size=4, num_classes=5)
    torch.manual_seed(0)
    ours = PPConvMixer(**args, img_size=8, permutation=False).eval()
    theirs = ConvMixer(**args).eval()
    theirs.load_state_dict(ours.state_dict())
    x, y = torch.randn(3, 3, 8, 8), torch.randint(0, 5, (3,))
    results = []
    for model in (ours, theirs):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(p, xx, yy, model=model, buffers=buffers):
            return F.cross_entropy(functional_call(model, (p, buffers), (xx,)), yy)

        per_sample = vmap(grad(lambda p, xx, yy: loss(p, xx[None], yy[None])), (None, 0, 0))
        tangent = jvp(model, (x,), (torch.ones_like(x),))[1]
        results.append((grad(loss)(params, x, y), per_sample(params, x, y), tangent))
    (g_ours, ps_ours, t_ours), (g_timm, ps_timm, t_timm) = results
    for name in g_ours:
        torch.testing.assert_close(g_ours[name], g_timm[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ps_ours[name], ps_timm[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(t_ours, t_timm, rtol=1e-4, atol=1e-5)


def test_ppconvmixer_is_timms_convmixer_in_training():
    args = dict(dim=32, depth=2, kernel_size=5, patch_size=4, num_classes=5)
    torch.manual_seed(0)
    ours = PPConvMixer(**args, img_size=16, permutation=False).train()
    after_ours = torch.rand(1)
    torch.manual_seed(0)
    theirs = ConvMixer(**args).train()
    after_theirs = torch.rand(1)
    # the swap draws no random numbers and keeps timm's initialisation
    assert torch.equal(after_ours, after_theirs)
    assert all(isinstance(b[0].fn[0], DepthwiseConv2d) for b in ours.blocks)
    mine, timms = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(timms) and all(torch.equal(mine[k], timms[k]) for k in mine)
    x = torch.randn(6, 3, 16, 16)
    y = torch.randint(0, 5, (6,))
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=0, atol=0)
    F.cross_entropy(out_ours, y).backward()
    F.cross_entropy(out_theirs, y).backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6)
