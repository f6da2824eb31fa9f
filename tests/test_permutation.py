"""The adaptive permutation P's options: weight decay, penalties, Sinkhorn, gain,
smoothness prior, init from a block order, and the measures of how close P is to the key."""

import argparse
import copy
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import holds_key_material
from timm.layers import freeze_batch_norm_2d
from timm.optim import create_optimizer_v2
from timm.utils import ParseKwargs

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer import BlockKey, PPConvMixer
from timm_ppconvmixer.models.permutation import (
    AdaptivePermutation,
    HardPermutation,
    block_order_of,
    block_order_recovery,
    grid_symmetries,
    permutation_closeness,
)
from timm_ppconvmixer.models.permutation_penalties import (
    doubly_stochastic_penalty,
    doubly_stochastic_penalty_grad,
    grid_adjacency,
    madono_penalty,
    sinkhorn,
    smoothness_prior,
    smoothness_prior_grad,
    token_correlation,
)


def small(**kwargs) -> PPConvMixer:
    args = dict(dim=16, depth=2, kernel_size=3, patch_size=4, img_size=16, num_classes=5)
    return PPConvMixer(**{**args, **kwargs})


def perm_matrix(n: int, seed: int = 0) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.eye(n, dtype=torch.float64)[order]


# -- weight decay ----------------------------------------------------------------------------


def _decay_of(optimizer, param) -> float:
    return next(
        g["weight_decay"] for g in optimizer.param_groups if any(p is param for p in g["params"])
    )


@pytest.mark.parametrize("opt", ["adamw", "sgd", "lamb"])
def test_p_is_out_of_weight_decay_in_timms_optimizer_factory(opt):
    model = timm.create_model("ppconvmixer_256_8", dim=16, depth=1)
    assert model.no_weight_decay() == {"stem.3.weight"}
    optimizer = create_optimizer_v2(model, opt, lr=1e-3, weight_decay=0.05)
    assert _decay_of(optimizer, model.permutation.weight) == 0.0
    assert _decay_of(optimizer, model.stem[0].weight) == 0.05  # the rest still decays
    kept = timm.create_model("ppconvmixer_256_8", dim=16, depth=1, permutation_weight_decay=True)
    assert kept.no_weight_decay() == set()
    optimizer = create_optimizer_v2(kept, opt, lr=1e-3, weight_decay=0.05)
    assert _decay_of(optimizer, kept.permutation.weight) == 0.05
    assert timm.create_model("ppconvmixer_256_8", permutation=False).no_weight_decay() == set()


# -- penalties -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 16])
def test_doubly_stochastic_penalty_is_zero_exactly_at_permutations(n):
    p = perm_matrix(n)
    assert doubly_stochastic_penalty(p) == 0
    for other in (torch.zeros(n, n), -p, 2 * p, 0.3 * p, torch.rand(n, n), p + 0.01):
        assert doubly_stochastic_penalty(other) > 0
    uniform = torch.full((n, n), 1.0 / n)  # doubly stochastic but not a permutation
    assert (doubly_stochastic_penalty(uniform) > 0) == (n > 1)


def test_madono_penalty_is_faithful_and_blind_to_scale_and_sign():
    """The paper's L_U ([15]) is kept as is: zero at any c * permutation, which is why the
    variants exist."""
    p = perm_matrix(6)
    for zero in (p, -p, 2 * p, 0.3 * p, torch.zeros(6, 6)):
        assert madono_penalty(zero) == 0
    assert madono_penalty(torch.rand(6, 6)) > 0


def test_sinkhorn_p_makes_the_paper_penalty_exact():
    """On doubly stochastic matrices L1 - L2 vanishes only at permutations (AutoShuffleNet)."""
    near = small(permutation_param="sinkhorn", permutation_init="identity").permutation
    spread = small(permutation_param="sinkhorn", sinkhorn_tau=(1.0, 1.0)).permutation
    assert near.penalty_value() < 1e-6
    assert spread.penalty_value() > 1e-3
    m = spread.matrix()
    torch.testing.assert_close(m.sum(0), torch.ones(16))
    torch.testing.assert_close(m.sum(1), torch.ones(16), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "fn, grad",
    [
        (doubly_stochastic_penalty, doubly_stochastic_penalty_grad),
        (
            lambda w: smoothness_prior(w, _CORR, _ADJ),
            lambda w: smoothness_prior_grad(w, _CORR, _ADJ),
        ),
    ],
)
def test_closed_form_gradients_match_autograd(fn, grad):
    w = torch.randn(9, 9, dtype=torch.float64, requires_grad=True)
    fn(w).backward()
    torch.testing.assert_close(grad(w.detach()).double(), w.grad, rtol=1e-5, atol=1e-6)


_TOKENS = torch.randn(32, 4, 9)
_CORR = token_correlation(_TOKENS).double()
_ADJ = grid_adjacency((3, 3)).double()


def test_smoothness_prior_prefers_the_true_order_and_does_not_reward_averaging():
    torch.manual_seed(0)
    # smooth random fields on a 6x6 grid, scrambled by a key's block permutation
    field = F.avg_pool2d(torch.randn(256, 8, 10, 10), 5, stride=1)  # (B, h, 6, 6)
    key = BlockKey.generate(24, 4, channels=1, seed=3)
    tokens = field.flatten(2)[:, :, key.block_perm]  # encrypted token i = plain block perm[i]
    corr, adj = token_correlation(tokens), grid_adjacency((6, 6))
    truth = torch.zeros(36, 36)
    truth[torch.arange(36), key.block_perm] = 1.0
    uniform = torch.full((36, 36), 1 / 36)
    assert smoothness_prior(truth, corr, adj) < smoothness_prior(torch.eye(36), corr, adj)
    assert smoothness_prior(truth, corr, adj) < smoothness_prior(uniform, corr, adj)
    assert abs(float(smoothness_prior(uniform, corr, adj))) < 1e-5


# -- the implicit mechanism for every variant ------------------------------------------------

VARIANTS = {
    "paper": {},
    "gain": dict(permutation_lr_gain=7.0),
    "doubly_stochastic": dict(penalty="doubly_stochastic", permutation_lr_gain=3.0),
    "sinkhorn": dict(permutation_param="sinkhorn", sinkhorn_tau=(1.0, 0.3), sinkhorn_steps=4),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_implicit_gradient_equals_the_explicit_loss_for_every_variant(variant):
    torch.manual_seed(0)
    model = small(penalty_weight=0.37, **VARIANTS[variant]).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    twin = copy.deepcopy(model)
    F.cross_entropy(model(x), y).backward()
    twin.set_implicit_penalty(False)
    logits = twin(x)  # counts the step first, so the penalty sees the same temperature
    (F.cross_entropy(logits, y) + 0.37 * twin.permutation_penalty()).backward()
    torch.testing.assert_close(
        model.permutation.weight.grad, twin.permutation.weight.grad, rtol=1e-5, atol=1e-8
    )
    bare = copy.deepcopy(twin)
    bare.zero_grad()
    bare.permutation.num_updates.zero_()
    F.cross_entropy(bare(x), y).backward()  # the penalty really contributes
    assert not torch.allclose(bare.permutation.weight.grad, model.permutation.weight.grad)


def test_implicit_smoothness_prior_equals_its_explicit_form():
    torch.manual_seed(1)
    kw = dict(permutation_param="sinkhorn", penalty_weight=0.0, smoothness_weight=2.5)
    model = small(**kw).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    twin = copy.deepcopy(model)
    F.cross_entropy(model(x), y).backward()
    perm = twin.permutation
    perm.smoothness_weight = 0.0
    tokens = twin.stem[:-1](x).flatten(2)  # what P sees
    prior = smoothness_prior(perm.matrix(), token_correlation(tokens), grid_adjacency((4, 4)))
    (F.cross_entropy(twin(x), y) + 2.5 * prior).backward()
    torch.testing.assert_close(
        model.permutation.weight.grad, perm.weight.grad, rtol=1e-5, atol=1e-8
    )


def test_smoothness_prior_needs_a_doubly_stochastic_p():
    with pytest.raises(ValueError, match="sinkhorn"):
        small(smoothness_weight=1.0)


# -- Sinkhorn, gain, init --------------------------------------------------------------------


def test_sinkhorn_temperature_anneals_with_training_steps_and_is_saved():
    model = small(permutation_param="sinkhorn", sinkhorn_tau=(2.0, 0.02), sinkhorn_steps=10)
    perm, x = model.permutation, torch.randn(2, 3, 16, 16)
    assert float(perm.temperature()) == pytest.approx(2.0)
    model.train()
    for _ in range(5):
        model(x).sum().backward()
    assert int(perm.num_updates) == 5 and float(perm.temperature()) == pytest.approx(0.2)
    constant = small(permutation_param="sinkhorn", sinkhorn_tau=(2.0, 0.02)).train()
    constant(x).sum().backward()  # no schedule: no count, always the end temperature
    assert int(constant.permutation.num_updates) == 0
    assert float(constant.permutation.temperature()) == pytest.approx(0.02)
    with torch.no_grad():  # a forward pass without gradients is no training step
        model(x)
    model.eval()(x).sum().backward()
    assert int(perm.num_updates) == 5
    assert "stem.3.num_updates" in model.state_dict()
    dense, without = set(small().state_dict()), set(small(permutation=False).state_dict())
    assert dense - without == {"stem.3.weight"}  # a dense P keeps the paper's state dict


def test_sinkhorn_is_permutation_equivariant_which_keeps_conversion_exact():
    logits = torch.randn(7, 7)
    r, c = torch.randperm(7), torch.randperm(7)
    torch.testing.assert_close(sinkhorn(logits[r][:, c]), sinkhorn(logits)[r][:, c])


@pytest.mark.parametrize("gain", [1.0, 10.0])
def test_lr_gain_multiplies_ps_step_under_adamw(gain):
    model = small(permutation_lr_gain=gain, penalty_weight=0.0).train()
    before = model.permutation.matrix().detach().clone()
    torch.testing.assert_close(before.abs().max(), torch.tensor(0.25), rtol=0.05, atol=0)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    model(torch.randn(4, 3, 16, 16)).square().sum().backward()
    opt.step()  # Adam's first step moves every entry by lr in the stored weight
    step = (model.permutation.matrix().detach() - before).abs().max()
    torch.testing.assert_close(step, torch.tensor(gain * 1e-3), rtol=1e-3, atol=0)


def test_init_from_a_block_order_list_or_file(tmp_path):
    key = BlockKey.generate(16, 4, seed=2)
    order = key.block_perm.tolist()
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order))
    for init in (order, str(path)):
        for param in ("dense", "sinkhorn"):
            p = small(permutation_init=init, permutation_param=param, permutation_lr_gain=4.0)
            recovery = block_order_recovery(p.permutation.matrix(), key.block_perm, (4, 4))
            assert recovery.exact == recovery.up_to_symmetry == 1.0
            assert "order" in repr(p.permutation)
            assert holds_key_material(repr(p).encode(), key) == []
    with pytest.raises(ValueError, match="permutation of 0..15"):
        small(permutation_init=[0] * 16)
    with pytest.raises(ValueError, match="permutation_init must be one of"):
        small(permutation_init="random")


def test_new_kwargs_through_timm_create_model_and_train_py_model_kwargs():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    cli = (
        "penalty=doubly_stochastic permutation_param=sinkhorn permutation_lr_gain=10 "
        "sinkhorn_tau=(1.0,0.1) sinkhorn_steps=100 sinkhorn_iters=10 smoothness_weight=0.5 "
        "penalty_weight=0.01 permutation_weight_decay=True"
    )
    kwargs = parser.parse_args(["--model-kwargs", *cli.split()]).model_kwargs
    model = timm.create_model("ppconvmixer_256_8", dim=16, depth=1, **kwargs)
    perm = model.permutation
    assert (perm.penalty, perm.param, perm.lr_gain) == ("doubly_stochastic", "sinkhorn", 10.0)
    assert (perm.sinkhorn_tau, perm.sinkhorn_steps, perm.sinkhorn_iters) == ((1.0, 0.1), 100, 10)
    assert (perm.smoothness_weight, perm.penalty_weight, perm.weight_decay) == (0.5, 0.01, True)
    for bad in (dict(penalty="l2"), dict(permutation_param="soft")):
        with pytest.raises(ValueError, match="must be one of"):
            timm.create_model("ppconvmixer_256_8", **bad)


def test_torchscript_and_fx_with_a_sinkhorn_p():
    from timm.models._features_fx import GraphExtractNet

    model = small(permutation_param="sinkhorn", permutation_lr_gain=5.0).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    fx = GraphExtractNet(model, {"blocks.1": "out"}).eval()
    out = fx(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    torch.testing.assert_close(out, model.forward_features(x))


# -- P found by type -------------------------------------------------------------------------


@pytest.mark.parametrize("convert", ["freeze", "sync"])
@pytest.mark.parametrize("with_p", [True, False])
def test_p_is_found_by_type_after_batchnorm_conversions(convert, with_p):
    model = small(permutation=with_p)
    if convert == "freeze":
        model = freeze_batch_norm_2d(model)
        assert type(model.stem[2]).__name__ == "FrozenBatchNorm2d"
    else:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert isinstance(model.stem[2], torch.nn.SyncBatchNorm)
    if with_p:
        assert isinstance(model.permutation, AdaptivePermutation) and model.permutation_index == 3
        assert model.no_weight_decay() == {"stem.3.weight"}
    else:
        assert model.permutation is None and model.permutation_index is None
        assert model.no_weight_decay() == set() and model.penalty_weight == 0.0


# -- measures --------------------------------------------------------------------------------


def test_permutation_closeness():
    p = perm_matrix(12)
    signs = torch.where(torch.rand(12, 1) > 0.5, 1.0, -1.0).double()
    for exact in (p, -p, 0.3 * p, p * signs * torch.rand(12, 1).add(0.5)):
        assert permutation_closeness(exact) == pytest.approx(1.0)
    assert 0.9 < permutation_closeness(p + 0.02 * torch.randn(12, 12, dtype=torch.float64)) < 1
    kaiming = small(img_size=64).permutation.matrix()  # n = 256
    assert permutation_closeness(kaiming) < 0.05
    assert permutation_closeness(torch.full((5, 5), 0.2)) == pytest.approx(0.2)
    assert permutation_closeness(torch.zeros(4, 4)) == 0.0


def test_block_order_recovery_exact_and_up_to_grid_symmetry():
    key = BlockKey.generate(16, 4, seed=5)
    holder = torch.argsort(key.block_perm)
    assert len(grid_symmetries((4, 4))) == 8 and len(grid_symmetries((2, 4))) == 4
    for g in grid_symmetries((4, 4)):
        m = torch.zeros(16, 16)
        m[holder[g], torch.arange(16)] = -2.0  # sign and scale do not hide the order
        recovery = block_order_recovery(m, key.block_perm, grid_size=(4, 4))
        identity = bool((g == torch.arange(16)).all())
        assert recovery.up_to_symmetry == 1.0
        assert (recovery.exact == 1.0) == identity
        if not identity:  # a transposed or mirrored order holds few blocks in their exact place
            assert recovery.exact < 0.5
    # |P|: a negated P that states the order is read as well as P itself, and the same as the
    # hardened gather of that order
    p = torch.eye(16)[key.block_perm] + 0.05 * torch.rand(16, 16)
    assert torch.equal(block_order_of(-p), key.block_perm)
    hard = HardPermutation(torch.argsort(key.block_perm), (4, 4))
    assert torch.equal(block_order_of(hard.matrix()), key.block_perm)
    assert torch.equal(block_order_of(p), key.block_perm)


def test_plain_weights_load_into_a_sinkhorn_model(tmp_path):
    from safetensors.torch import save_file

    plain = timm.create_model("ppconvmixer_256_8", permutation=False, num_classes=3, dim=16)
    save_file(plain.state_dict(), tmp_path / "plain.safetensors")
    model = timm.create_model(
        "ppconvmixer_256_8",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "plain.safetensors"), num_classes=3),
        num_classes=3,
        dim=16,
        permutation_param="sinkhorn",
        permutation_init="identity",
    )
    torch.testing.assert_close(model.stem[0].weight, plain.stem[0].weight)
    assert int(model.permutation.num_updates) == 0


@pytest.mark.slow
def test_torch_compile_matches_eager_with_an_annealed_sinkhorn_p_and_the_prior():
    kw = dict(permutation_param="sinkhorn", sinkhorn_steps=5, smoothness_weight=1.0)
    torch.manual_seed(0)
    model = small(penalty="doubly_stochastic", penalty_weight=0.1, **kw).train()
    x = torch.randn(4, 3, 16, 16)
    twin = copy.deepcopy(model)
    model(x).sum().backward()
    torch.compile(twin)(x).sum().backward()
    grad = model.permutation.weight.grad
    assert grad.abs().max() > 1e-4  # the temperature step and the terms really matter
    torch.testing.assert_close(twin.permutation.weight.grad, grad, rtol=1e-3, atol=1e-6)
    assert int(twin.permutation.num_updates) == int(model.permutation.num_updates) == 1
