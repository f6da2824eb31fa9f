"""AdaptNet (ELE, Madono et al.) and LE-AdaptNet in front of a ShakeDrop PyramidNet: Eq. (2)
and Table I's parameter counts, the batched forward against a per-block reference loop, U's
shared L_U, the implicit regularisers, shapes, and a training step."""

import argparse
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.utils import ParseKwargs

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer.models.adaptnet import (
    AdaptNet,
    LEAdaptNet,
    PerPositionBatchNorm,
    adaptnet_num_params,
    total_variation_prior,
    total_variation_prior_grad,
)
from timm_ppconvmixer.models.adaptnet_pyramidnet import adaptnet_pyramidnet_num_params
from timm_ppconvmixer.models.permutation import AdaptivePermutation, permutation_penalty
from timm_ppconvmixer.models.pyramidnet import pyramidnet_num_params


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_adaptnet_count_at_cifar_geometry():
    """N (C M^2 16 M^2 + 2 16 M^2) + N^2 = 823,296 at 32x32x3, block 4: BatchNorm per position."""
    net = AdaptNet(img_size=32, block_size=4, in_chans=3)
    assert num_params(net) == adaptnet_num_params(32, 4, 3) == 64 * (3 * 16 * 256 + 512) + 64**2
    assert num_params(net) == 823_296
    assert num_params(net.norm) == 64 * 2 * 256  # one BatchNorm(256) per block position


def test_le_adaptnet_count():
    """One shared conv and BatchNorm: C M^2 16 M^2 + 2 16 M^2."""
    net = LEAdaptNet(img_size=32, block_size=4, in_chans=3)
    assert num_params(net) == adaptnet_num_params(32, 4, 3, shared=True) == 3 * 16 * 256 + 512
    fmnist = LEAdaptNet(img_size=28, block_size=4, in_chans=1)
    assert num_params(fmnist) == adaptnet_num_params(28, 4, 1, shared=True) == 4_608


def test_table1_adaptnet_shakedrop_count():
    """Table I, EtC and ELE rows: AdaptNet + ShakeDrop at 32x32, block 4, 10 classes: 29.31 M."""
    model = timm.create_model("adaptnet_ele_shakedrop_pyramidnet110_a270", num_classes=10)
    count = num_params(model)
    assert count == 823_296 + pyramidnet_num_params(110, 270, in_chans=16) == 29_310_661
    assert round(count / 1e6, 2) == 29.31
    assert count == adaptnet_pyramidnet_num_params(32, 4, 110, 270)


@pytest.mark.parametrize(
    "name, img, chans, adaptnet, expected",
    [
        ("adaptnet_le_shakedrop_pyramidnet110_a270", 32, 3, "le", 28_500_165),
        ("adaptnet_ele_shakedrop_pyramidnet20_a48", 32, 3, "ele", 1_140_097),
        ("adaptnet_le_shakedrop_pyramidnet20_a48", 32, 3, "le", 329_601),
        ("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist", 28, 1, "ele", 544_994),
        ("adaptnet_le_shakedrop_pyramidnet20_a48_fmnist", 28, 1, "le", 321_409),
    ],
)
def test_variant_counts(name, img, chans, adaptnet, expected):
    model = timm.create_model(name)
    depth, alpha = (110, 270) if "110" in name else (20, 48)
    formula = adaptnet_pyramidnet_num_params(img, 4, depth, alpha, adaptnet, in_chans=chans)
    assert num_params(model) == formula == expected
    assert model.pretrained_cfg["input_size"] == (chans, img, img)
    assert model.pretrained_cfg["fixed_input_size"] is True


def reference_adaptnet(net: AdaptNet, x: torch.Tensor) -> torch.Tensor:
    """[15]'s forward, one block position at a time: its conv, its BatchNorm (batch statistics),
    LeakyReLU; the N vectors times U; PixelShuffle."""
    m, (gh, gw) = net.block_size, net.grid_size
    net.proj.eval()  # the weights the forward pass used: no further power iteration
    weights = net.proj.normalised_weight().detach()  # (N, O, C M^2)
    net.proj.train()
    o = weights.shape[1]
    outs = []
    for i in range(gh):
        for j in range(gw):
            n = i * gw + j
            block = x[:, :, i * m : (i + 1) * m, j * m : (j + 1) * m]
            conv = F.conv2d(block, weights[n].view(o, -1, m, m)).flatten(1)  # (B, O)
            gamma = net.norm.weight[n * o : (n + 1) * o]
            beta = net.norm.bias[n * o : (n + 1) * o]
            normed = F.batch_norm(conv, None, None, gamma, beta, training=True, eps=net.norm.eps)
            outs.append(F.leaky_relu(normed, 0.2))
    tokens = torch.stack(outs, dim=2) @ net.mixing.weight  # (B, O, N) @ U
    return F.pixel_shuffle(tokens.view(x.shape[0], o, gh, gw), m)


@pytest.mark.parametrize("size, chans", [(32, 3), (28, 1)])
def test_batched_forward_matches_per_block_loop(size, chans):
    torch.manual_seed(0)
    net = AdaptNet(img_size=size, block_size=4, in_chans=chans).double().train()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
        net.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, chans, size, size, dtype=torch.float64)
    out = net(x)  # training: one power iteration, then the batched forward
    assert out.shape == (6, 16, size, size)
    torch.testing.assert_close(out, reference_adaptnet(net, x))


def test_spectral_norm_per_position():
    torch.manual_seed(0)
    net = AdaptNet(img_size=16, block_size=4, in_chans=3).train()
    x = torch.randn(4, 3, 16, 16)
    net(x)  # one power iteration per training forward pass
    for _ in range(500):  # more of them converge
        net.proj.normalised_weight()
    sigma = torch.linalg.matrix_norm(net.proj.normalised_weight().detach(), ord=2)
    torch.testing.assert_close(sigma, torch.ones(16), rtol=1e-3, atol=1e-3)
    u = net.proj.weight_u.clone()
    net.eval()
    net(x)
    torch.testing.assert_close(net.proj.weight_u, u)  # no power iteration in evaluation


def test_u_is_the_shared_permutation_module_and_l_u():
    model = timm.create_model("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist")
    u = model.permutation
    assert isinstance(u, AdaptivePermutation) and u.weight.shape == (49, 49)
    assert model.penalty_weight == 1e-3  # [15]'s code
    torch.testing.assert_close(model.permutation_penalty(), permutation_penalty(u.weight))
    assert model.permutation_penalty() > 0  # kaiming start
    with torch.no_grad():
        u.weight.copy_(torch.eye(49)[torch.randperm(49)])
    assert model.permutation_penalty().item() == pytest.approx(0.0, abs=1e-7)
    assert model.no_weight_decay() == {"adapt.mixing.weight"}
    le = timm.create_model("adaptnet_le_shakedrop_pyramidnet20_a48_fmnist")
    assert le.permutation is None and le.penalty_weight == 0.0
    assert le.permutation_penalty().item() == 0.0 and le.no_weight_decay() == set()


def test_tv_prior_is_their_formula_and_its_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    # util_norm.total_variation_norm of [15], beta = 2, channels 0..2, / (31 * 32 * 16), / B
    expected = 0.0
    for c in range(3):
        f = x[:, c]
        expected = expected + ((f[:, :-1, :-1] - f[:, 1:, :-1]) ** 2).sum()
        expected = expected + ((f[:, :-1, :-1] - f[:, :-1, 1:]) ** 2).sum()
    expected = expected / (31 * 32 * 16) / 2
    value = total_variation_prior(x)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, x)
    torch.testing.assert_close(total_variation_prior_grad(x.detach()), grad)


def test_implicit_regularisers_match_the_explicit_loss():
    """With the implicit L_U and L_s, the gradient of a plain loss equals the gradient of
    loss + 0.001 L_U(U) + 0.1 L_s(map) without them ([15]'s training loss)."""
    torch.manual_seed(0)
    implicit = AdaptNet(img_size=16, block_size=4, in_chans=3, spectral_norm=False).train()
    explicit = AdaptNet(
        img_size=16, block_size=4, in_chans=3, spectral_norm=False,
        implicit_penalty=False, tv_weight=0.0,
    ).train()  # fmt: skip
    explicit.load_state_dict(implicit.state_dict())
    x = torch.randn(4, 3, 16, 16)
    implicit(x).square().mean().backward()
    out = explicit(x)
    loss = out.square().mean()
    loss = loss + 1e-3 * explicit.mixing.penalty_value() + 0.1 * total_variation_prior(out)
    loss.backward()
    for (name, a), b in zip(implicit.named_parameters(), explicit.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_set_implicit_penalty_for_explicit_recipes():
    model = timm.create_model("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist")
    model.set_implicit_penalty(False)
    assert model.permutation.implicit_penalty is False


@pytest.mark.parametrize(
    "name, shape",
    [
        ("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist", (1, 28, 28)),
        ("adaptnet_le_shakedrop_pyramidnet20_a48_fmnist", (1, 28, 28)),
        ("adaptnet_ele_shakedrop_pyramidnet20_a48", (3, 32, 32)),
        ("adaptnet_le_shakedrop_pyramidnet20_a48", (3, 32, 32)),
    ],
)
def test_shapes(name, shape):
    model = timm.create_model(name).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert model.adapt(x).shape == (2, 16, *shape[1:])
        side = -(-shape[1] // 4)
        assert model.forward_features(x).shape == (2, 64, side, side)
        assert model(x).shape == (2, 10)


def test_wrong_input_size_is_refused():
    model = timm.create_model("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist").eval()
    with pytest.raises(ValueError, match="built for img_size 28x28"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiple of block_size"):
        AdaptNet(img_size=30, block_size=4)


@pytest.mark.parametrize(
    "name",
    [
        "adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist",
        "adaptnet_le_shakedrop_pyramidnet20_a48_fmnist",
    ],
)
def test_training_step_decreases_the_loss(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batch_loss():  # in training mode, with the same ShakeDrop draws before and after
        torch.manual_seed(1)
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    model.train()
    before = batch_loss()
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert batch_loss() < 0.9 * before


def test_train_py_model_kwargs():
    """timm's train.py turns ``--model-kwargs`` into create_model kwargs with ParseKwargs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    argv = ["--model-kwargs", "penalty_weight=0.01", "tv_weight=0.0", "permutation_init=identity"]
    args = parser.parse_args(argv)
    model = timm.create_model("adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist", **args.model_kwargs)
    assert model.penalty_weight == 0.01 and model.adapt.tv_weight == 0.0
    torch.testing.assert_close(model.permutation.weight, torch.eye(49))


def test_per_position_batchnorm_is_their_loop_over_blocks():
    """[15]'s LE network: one BatchNorm2d called on each block's 1x1 output in row-major order,
    so each position gets its own batch statistics and the running statistics one update per
    position; PerPositionBatchNorm must give the same outputs, buffers and parameter grads."""
    torch.manual_seed(0)
    ours = PerPositionBatchNorm(8).double().train()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
        ours.running_mean.uniform_(-1, 1)
        ours.running_var.uniform_(0.5, 2)
    theirs = copy.deepcopy(ours)
    theirs.__class__ = torch.nn.BatchNorm2d
    x = torch.randn(5, 8, 3, 4, dtype=torch.float64) * 3 + 1
    for _ in range(2):  # two steps: the running statistics carry over
        out = ours(x)
        rows = []
        for i in range(3):
            row = [theirs(x[:, :, i : i + 1, j : j + 1]) for j in range(4)]
            rows.append(torch.cat(row, dim=3))
        ref = torch.cat(rows, dim=2)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
        assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item()
    (g_ours,) = torch.autograd.grad(out.square().sum(), ours.weight)
    (g_theirs,) = torch.autograd.grad(ref.square().sum(), theirs.weight)
    torch.testing.assert_close(g_ours, g_theirs)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))  # evaluation: the shared running statistics


def test_le_adaptnet_normalises_each_block_on_its_own():
    net = LEAdaptNet(img_size=16, block_size=4, in_chans=3).double().train()
    assert isinstance(net.norm, PerPositionBatchNorm)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    x[:, :, :4, :4] += 5.0  # one block far off the others: shared statistics would shift it
    feats = net.norm(net.proj(x))  # (B, O, 4, 4)
    mean = feats.mean(dim=0)  # each position centred on the batch: beta (0) everywhere
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-9, rtol=0)


@pytest.mark.parametrize("spectral", [True, False])
def test_block_convs_use_their_he_fan_out_init(spectral):
    """[15] draws every block conv from N(0, 2 / (M M O)): 0.0221 at block 4 with O = 256 (the
    draw reaches spectral_norm's weight_orig, which shares weight's storage until a forward)."""
    torch.manual_seed(0)
    ele = AdaptNet(img_size=32, block_size=4, in_chans=3, spectral_norm=spectral)
    le = LEAdaptNet(img_size=32, block_size=4, in_chans=3)
    expected = math.sqrt(2.0 / (4 * 4 * 256))
    assert expected == pytest.approx(0.0221, abs=1e-4)
    for weight in (ele.proj.weight, le.proj.weight):
        assert weight.std().item() == pytest.approx(expected, rel=0.03)
        assert weight.mean().item() == pytest.approx(0.0, abs=expected * 0.05)


def test_le_adaptnet_shared_norm_option_and_model_kwarg():
    model = timm.create_model("adaptnet_le_shakedrop_pyramidnet20_a48_fmnist")
    assert isinstance(model.adapt.norm, PerPositionBatchNorm)
    shared = timm.create_model(
        "adaptnet_le_shakedrop_pyramidnet20_a48_fmnist", per_position_norm=False
    )
    assert type(shared.adapt.norm) is torch.nn.BatchNorm2d
    assert shared.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 1, 28, 28)
    x[:, :, :4, :4] += 5.0
    feats = shared.adapt.norm(shared.adapt.proj(x)).mean(dim=0)  # shared statistics
    assert feats[:, 0, 0].abs().mean() > 0.1  # the off block is not centred on its own


def test_per_position_batchnorm_scripts_like_eager():
    torch.manual_seed(0)
    net = LEAdaptNet(img_size=16, block_size=4, in_chans=3).train()
    scripted = torch.jit.script(copy.deepcopy(net))
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(scripted(x), net(x))  # training: per-position statistics
    torch.testing.assert_close(scripted.norm.running_var, net.norm.running_var)
    net.eval(), scripted.eval()
    torch.testing.assert_close(scripted(x), net(x))
