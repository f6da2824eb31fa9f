import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data.model_config import resolve_input_data_config
from timm.models._features import FeatureGetterNet
from timm.models._features_fx import GraphExtractNet
from timm.models._manipulate import group_parameters

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer import (
    KEY_BOUND_TAGS,
    AdaptivePermutation,
    PPConvMixer,
    convmixer_num_params,
    permutation_penalty,
    ppconvmixer_num_params,
)
from timm_ppconvmixer.models.permutation import permutation_penalty_grad

CONFIGS = {  # name: (h, depth, kernel, patch, default input)
    "ppconvmixer_512_16": (512, 16, 9, 16, 224),
    "ppconvmixer_768_32": (768, 32, 7, 7, 224),
    "ppconvmixer_1024_20_ks9_p14": (1024, 20, 9, 14, 224),
    "ppconvmixer_1536_20": (1536, 20, 9, 7, 224),
    "ppconvmixer_256_8": (256, 8, 5, 4, 32),
    "ppconvmixer_256_8_fmnist": (256, 8, 5, 4, 28),
    "ppconvmixer_128_8_fmnist": (128, 8, 5, 4, 28),  # the Table I reproduction's (its zoo tags)
}


def small(**kwargs) -> PPConvMixer:
    args = dict(dim=32, depth=2, kernel_size=3, patch_size=4, img_size=16, num_classes=5)
    return PPConvMixer(**{**args, **kwargs})


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registered_with_timm():
    assert set(timm.list_models("ppconvmixer_*")) == set(CONFIGS)
    for name in timm.list_pretrained("ppconvmixer_*"):  # every cfg names weights that exist
        cfg = timm.models.get_pretrained_cfg(name)
        if name in KEY_BOUND_TAGS:  # timm's plain weights, converted at load (tests/test_zoo.py)
            assert cfg.hf_hub_id == timm.models.get_pretrained_cfg(KEY_BOUND_TAGS[name]).hf_hub_id
        else:
            assert cfg.file and Path(cfg.file).is_file(), name


def test_paper_table_i_parameter_counts():
    with_p = timm.create_model("ppconvmixer_512_16", num_classes=10, device="meta")
    without = timm.create_model(
        "ppconvmixer_512_16", num_classes=10, permutation=False, device="meta"
    )
    assert num_params(without) == 5_306_890  # Eq. (3), Table I: 5.31M
    assert num_params(with_p) == 5_345_306  # Eq. (4), Table I: 5.35M


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_eq3_eq4_for_every_config_and_size(name, scale, in_chans):
    h, d, k, m, size = CONFIGS[name]
    img = (size * scale, size * scale // 2 if scale == 2 else size)
    img = (img[0] // m * m, img[1] // m * m)
    kw = dict(num_classes=10, in_chans=in_chans, img_size=img, device="meta")
    model = timm.create_model(name, **kw)
    assert num_params(model) == ppconvmixer_num_params(h, d, k, m, 10, img, in_chans)
    ablation = timm.create_model(name, permutation=False, **kw)
    assert num_params(ablation) == convmixer_num_params(h, d, k, m, 10, in_chans)
    assert resolve_input_data_config(model)["input_size"] == (in_chans, *img)


@pytest.mark.parametrize(
    "name", ["convmixer_768_32", "convmixer_1024_20_ks9_p14", "convmixer_1536_20"]
)
def test_ablation_is_exactly_timms_convmixer(name):
    ours = timm.create_model("pp" + name, permutation=False, device="meta")
    theirs = timm.create_model(name, device="meta")
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    # the same modules; the depthwise convs are nn.Conv2d subclasses with a faster CPU backward
    # (timm_ppconvmixer/models/depthwise.py, tests/test_depthwise.py)
    mine = repr(ours).replace("PPConvMixer", "ConvMixer").replace("DepthwiseConv2d", "Conv2d")
    assert mine == repr(theirs)
    assert repr(ours).count("DepthwiseConv2d(") == len(theirs.blocks)


def test_identity_init_equals_convmixer_without_p():
    torch.manual_seed(0)
    with_p = small(permutation_init="identity").eval()
    without = small(permutation=False).eval()
    missing = without.load_state_dict(with_p.state_dict(), strict=False)
    assert missing.unexpected_keys == ["stem.3.weight"] and not missing.missing_keys
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(with_p(x), without(x), rtol=0, atol=1e-6)


def test_kaiming_init_is_nn_linear_like():
    w = small(img_size=64).permutation.weight  # n = 256
    bound = 1 / 256**0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_p_actually_mixes_tokens():
    model = small().eval()
    x = torch.randn(1, 3, 16, 16)
    reference = model(x)
    with torch.no_grad():
        model.permutation.weight.copy_(torch.eye(16)[torch.randperm(16)])
    assert not torch.allclose(model(x), reference)


def test_wrong_input_size_names_both_sizes():
    model = timm.create_model("ppconvmixer_256_8")
    with pytest.raises(ValueError, match=r"64x64.*img_size 32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_img_size_must_be_a_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        small(img_size=18)


def _loss(model, x, y):
    return F.cross_entropy(model(x), y)


def test_implicit_penalty_gradient_equals_hand_computed_fp32():
    torch.manual_seed(0)
    model = small(penalty_weight=0.37).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    _loss(model, x, y).backward()
    implicit = model.permutation.weight.grad.clone()

    # Same model, penalty off in the backward pass, L = CE + lambda * L_U written out by hand.
    by_hand = copy.deepcopy(model)
    by_hand.zero_grad()
    by_hand.set_implicit_penalty(False)
    assert by_hand.penalty_weight == 0.37
    (_loss(by_hand, x, y) + 0.37 * by_hand.permutation_penalty()).backward()
    torch.testing.assert_close(implicit, by_hand.permutation.weight.grad, rtol=1e-6, atol=1e-9)
    # and the penalty term really contributes (not a vacuous equality)
    by_hand.zero_grad()
    _loss(by_hand, x, y).backward()
    assert not torch.allclose(implicit, by_hand.permutation.weight.grad, rtol=0, atol=1e-6)


def test_implicit_penalty_exact_under_bf16_autocast():
    torch.manual_seed(1)
    model = small(penalty_weight=1e-2).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model, x, y)
    loss.backward()
    implicit = model.permutation.weight.grad.clone()
    twin = copy.deepcopy(model)
    twin.zero_grad()
    twin.set_implicit_penalty(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(twin, x, y)
    (loss + 1e-2 * twin.permutation_penalty()).backward()
    torch.testing.assert_close(implicit, twin.permutation.weight.grad, rtol=1e-5, atol=1e-8)


def test_penalty_closed_form_gradient_matches_autograd():
    w = torch.randn(9, 9, dtype=torch.float64, requires_grad=True)
    permutation_penalty(w).backward()
    torch.testing.assert_close(permutation_penalty_grad(w.detach()), w.grad)


def test_penalty_is_zero_exactly_on_permutations():
    perm = torch.eye(6)[torch.randperm(6)]
    assert permutation_penalty(perm) == 0
    assert permutation_penalty(perm + 0.1 * torch.rand(6, 6)) > 0
    assert small(permutation=False).permutation_penalty() == 0


def test_no_penalty_in_eval_mode():
    x = torch.randn(1, 3, 16, 16)

    def p_grad(training: bool, implicit: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = small(penalty_weight=10.0).train(training)  # a penalty far above float noise
        model.set_implicit_penalty(implicit)
        model(x).sum().backward()
        return model.permutation.weight.grad

    assert torch.equal(p_grad(False, True), p_grad(False, False))  # eval: no penalty at all
    assert not torch.allclose(p_grad(True, True), p_grad(True, False))  # training: there it is


def test_no_grad_forward_in_training_mode_is_no_training_step():
    """Under torch.no_grad (e.g. a validation pass left in training mode) P gets no penalty
    hook and prior, and a Sinkhorn P counts no step of its temperature schedule."""
    kw = dict(permutation_param="sinkhorn", sinkhorn_steps=10, smoothness_weight=1.0)
    model = small(**kw).train()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert out.grad_fn is None and int(model.permutation.num_updates) == 0
    model(x).sum().backward()  # with gradients it is a step
    assert int(model.permutation.num_updates) == 1


def test_group_matcher_puts_p_with_the_stem():
    model = small()
    groups = group_parameters(model, model.group_matcher())
    stem_group = next(names for names in groups.values() if "stem.0.weight" in names)
    assert "stem.3.weight" in stem_group


def test_forward_intermediates_prune_and_features_only():
    model = small(depth=3).eval()
    x = torch.randn(2, 3, 16, 16)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(inter) == 3 and inter[0].shape == (2, 32, 4, 4)
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([1])
    torch.testing.assert_close(pruned.forward_features(x), inter[1])
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=(0, 2)).eval()
    outs = getter(x)
    torch.testing.assert_close(outs[1], inter[2])
    feats = timm.create_model("ppconvmixer_256_8", features_only=True, out_indices=(1, 7))
    assert [f.shape[1:] for f in feats(torch.randn(1, 3, 32, 32))] == [(256, 8, 8)] * 2


def _checkpointed_blocks(model) -> list[torch.nn.Module]:
    """The modules ``set_grad_checkpointing`` puts under checkpoint: ConvMixer's blocks, or
    the PyramidNet's residual units (its three stages)."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    return [unit for stage in (model.layer1, model.layer2, model.layer3) for unit in stage]


def _forward_backward_counting(model, x, seed: int):
    """Logits, every parameter's gradient, and how often each checkpointed block started
    running (a pre-hook: non-reentrant checkpointing stops a recomputation early, before a
    forward hook would fire)."""
    calls = [0] * len(_checkpointed_blocks(model))
    hooks = [
        block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(_checkpointed_blocks(model))
    ]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # ShakeDrop draws: the same in both runs
    out = model(x)
    after_forward = list(calls)
    out.square().sum().backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, after_forward, calls


@pytest.mark.parametrize(
    "make",
    [
        lambda: small(depth=3),
        lambda: timm.create_model(
            "adaptnet_ele_shakedrop_pyramidnet20_a48", img_size=16, num_classes=5
        ),
    ],
    ids=["ppconvmixer", "adaptnet_pyramidnet"],
)
def test_grad_checkpointing_gives_same_outputs_and_grads(make):
    """With checkpointing on, every block's forward runs again during backward (its
    activations were not kept), and logits and every gradient equal those without it."""
    torch.manual_seed(0)
    model = make().train()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)  # before any forward: spectral norm's u moves with each one
    out, grads, fwd, total = _forward_backward_counting(model, x, seed=2)
    assert fwd == total == [1] * len(fwd)  # no recomputation without checkpointing
    twin.set_grad_checkpointing(True)
    twin_out, twin_grads, twin_fwd, twin_total = _forward_backward_counting(twin, x, seed=2)
    assert twin_fwd == [1] * len(fwd)  # once in forward (under checkpoint, not stored)
    assert twin_total == [2] * len(fwd)  # and once more each in backward: recomputed
    torch.testing.assert_close(twin_out, out, rtol=0, atol=0)
    assert twin_grads.keys() == grads.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in grads.items():
        torch.testing.assert_close(twin_grads[name], grad, msg=name)
    # P (U for AdaptNet) gets a real gradient through the recomputed blocks
    p_name = next(n for n, p in model.named_parameters() if p is model.permutation.weight)
    assert grads[p_name].abs().sum() > 0


def test_reset_classifier_keeps_p():
    model = small()
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 32)
    assert isinstance(model.permutation, AdaptivePermutation)


def test_torchscript_and_fx():
    model = small().eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    fx = GraphExtractNet(model, {"blocks.1": "out"}).eval()
    out = fx(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    torch.testing.assert_close(out, model.forward_features(x))
    assert "stem.3" in [n.target for n in fx.graph_module.graph.nodes]  # P stays a leaf


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = small().eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    # and in training mode, with the implicit penalty inside the graph
    model.train()
    twin = copy.deepcopy(model)
    model(x).sum().backward()
    torch.compile(twin)(x).sum().backward()
    torch.testing.assert_close(
        twin.permutation.weight.grad, model.permutation.weight.grad, rtol=1e-4, atol=1e-6
    )


def test_plain_weights_load_into_a_model_with_p(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    plain = timm.create_model("ppconvmixer_256_8", permutation=False, num_classes=3).eval()
    save_file(plain.state_dict(), tmp_path / "plain.safetensors")
    model = timm.create_model(
        "ppconvmixer_256_8",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "plain.safetensors"), num_classes=3),
        num_classes=3,
        permutation_init="identity",
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=1e-5)


def test_shipped_demo_model_loads_offline_and_works_with_the_demo_key():
    from timm_ppconvmixer import encrypt
    from timm_ppconvmixer.data import fashion_mnist_arrays
    from timm_ppconvmixer.keyed.pretrained import demo_key

    model = timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True).eval()
    key = demo_key()
    assert model.key_fingerprint == key.fingerprint
    images, labels = fashion_mnist_arrays("test")
    x = torch.from_numpy(images[:500]).unsqueeze(1)
    y = torch.from_numpy(labels[:500]).long()

    def accuracy(batch):
        with torch.no_grad():
            return (model((batch.float() / 255 - 0.5) / 0.5).argmax(1) == y).float().mean()

    assert accuracy(encrypt(x, key)) > 0.8  # the card reports 88.38 % on all 10,000
    assert accuracy(x) < 0.3  # plain images: the model only works in the key's domain
