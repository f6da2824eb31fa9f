"""ShakeDrop PyramidNet: Table I's parameter count, ShakeDrop's train/eval/backward semantics,
shapes at 32x32x3 and 28x28x1, and a training step, all through timm.create_model."""

import argparse

import pytest
import timm
import torch
from timm.utils import ParseKwargs

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer.models.pyramidnet import (
    ShakeDrop,
    pyramidnet_num_params,
    pyramidnet_widths,
)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_table1_shakedrop_count():
    """Table I: ShakeDrop (PyramidNet-110, alpha 270), 10 classes: 28.49 M."""
    model = timm.create_model("shakedrop_pyramidnet110_a270", num_classes=10)
    assert num_params(model) == pyramidnet_num_params(110, 270, num_classes=10) == 28_485_493
    assert round(num_params(model) / 1e6, 2) == 28.49


def test_small_member_counts():
    """Counted independently of pyramidnet_num_params (by the reference code's layer list)."""
    assert num_params(timm.create_model("shakedrop_pyramidnet20_a48")) == 314_929
    assert num_params(timm.create_model("shakedrop_pyramidnet20_a48_fmnist")) == 314_641


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("shakedrop_pyramidnet20_a48", {}),
        ("shakedrop_pyramidnet20_a48", {"num_classes": 100, "depth": 26, "alpha": 84}),
        ("shakedrop_pyramidnet20_a48_fmnist", {}),
    ],
)
def test_count_formula(name, kwargs):
    model = timm.create_model(name, **kwargs)
    expected = pyramidnet_num_params(
        kwargs.get("depth", 20),
        kwargs.get("alpha", 48),
        num_classes=model.num_classes,
        in_chans=model.in_chans,
    )
    assert num_params(model) == expected


def test_widths_grow_linearly_to_alpha():
    widths = pyramidnet_widths(110, 270)
    assert len(widths) == 1 + 54 and widths[0] == 16 and widths[-1] == 16 + 270
    assert {b - a for a, b in zip(widths[:-1], widths[1:], strict=True)} == {5}
    # ceil(alpha k / (3 n)) as the public code's math.ceil, where 48 / 9 does not divide
    assert pyramidnet_widths(20, 48) == [16, 22, 27, 32, 38, 43, 48, 54, 59, 64]
    with pytest.raises(ValueError, match="6 n \\+ 2"):
        pyramidnet_widths(21, 48)


def test_linear_decay_rule():
    """p_l = 1 - l / L (1 - p_L): the drop probability grows linearly to 0.5 at the last block."""
    model = timm.create_model("shakedrop_pyramidnet20_a48")
    drops = [m.p_drop for m in model.modules() if isinstance(m, ShakeDrop)]
    assert len(drops) == 9
    assert drops == pytest.approx([0.5 * (i + 1) / 9 for i in range(9)])


def test_shakedrop_eval_is_the_expectation():
    sd = ShakeDrop(p_drop=0.3).eval()
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(sd(x), 0.7 * x)
    torch.testing.assert_close(sd(x), sd(x))
    asym = ShakeDrop(p_drop=0.5, alpha_range=(0.0, 1.0)).eval()
    torch.testing.assert_close(asym(x), 0.75 * x)  # 1 - p + p * E[alpha]


def _per_image_scale(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    ratio = (y / x).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # one scale per image
    return ratio[:, 0]


def test_shakedrop_train_forward_and_backward():
    torch.manual_seed(0)
    sd = ShakeDrop(p_drop=0.5).train()
    x = torch.rand(4000, 2, 2, 2) + 0.5
    x.requires_grad_(True)
    y = sd(x)
    alpha = _per_image_scale(y.detach(), x.detach())
    y.sum().backward()
    beta = x.grad.flatten(1)[:, 0]
    torch.testing.assert_close(x.grad.flatten(1), beta[:, None].expand(-1, 8))
    kept = alpha == 1.0
    # b = 1 (unchanged both ways) with probability 1 - p_drop, per image
    assert 0.45 < kept.float().mean() < 0.55
    assert torch.equal(beta[kept], torch.ones_like(beta[kept]))
    # otherwise alpha in [-1, 1] forwards, an independent beta in [0, 1] backwards
    assert alpha[~kept].min() >= -1 and alpha[~kept].max() <= 1 and alpha[~kept].min() < -0.9
    assert beta[~kept].min() >= 0 and beta[~kept].max() <= 1
    assert not torch.allclose(alpha[~kept], beta[~kept])
    assert abs(beta[~kept].mean().item() - 0.5) < 0.05 and beta[~kept].min() < 0.05
    # the mean forward scale is the evaluation scale
    assert abs(alpha.mean().item() - sd.eval_scale) < 0.05
    assert not torch.equal(sd(x), sd(x))  # random in training


def test_shakedrop_p_zero_is_identity():
    sd = ShakeDrop(p_drop=0.0).train()
    x = torch.randn(3, 4, requires_grad=True)
    sd(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize(
    "name, shape, features",
    [
        ("shakedrop_pyramidnet20_a48", (3, 32, 32), (64, 8, 8)),
        ("shakedrop_pyramidnet20_a48_fmnist", (1, 28, 28), (64, 7, 7)),
    ],
)
def test_shapes(name, shape, features):
    model = timm.create_model(name).eval()
    assert model.pretrained_cfg["input_size"] == shape
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, *features)
        assert model(x).shape == (2, 10)


def test_training_step_decreases_the_loss():
    torch.manual_seed(0)
    model = timm.create_model("shakedrop_pyramidnet20_a48_fmnist")
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batch_loss():  # in training mode, with the same ShakeDrop draws before and after
        torch.manual_seed(1)
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y).item()

    model.train()
    before = batch_loss()
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert batch_loss() < 0.9 * before


def test_train_py_model_kwargs():
    """timm's train.py parses ``--model-kwargs`` with timm's ParseKwargs into create_model."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    args = parser.parse_args(["--model-kwargs", "depth=26", "alpha=84", "p_drop_last=0.0"])
    model = timm.create_model("shakedrop_pyramidnet20_a48", num_classes=10, **args.model_kwargs)
    assert num_params(model) == pyramidnet_num_params(26, 84)
    assert all(m.p_drop == 0.0 for m in model.modules() if isinstance(m, ShakeDrop))
