import copy
import sys
import zlib

import pytest
import timm
import torch
from conftest import holds_key_material
from timm.models.convmixer import ConvMixer
from torch import nn
from torchvision.transforms import Normalize

from timm_ppconvmixer import BlockKey, PPConvMixer, encrypt
from timm_ppconvmixer.keyed.convert import (
    ConversionError,
    decrypt_model,
    encrypt_model,
    rekey_model,
)
from timm_ppconvmixer.keyed.harden import harden_permutation
from timm_ppconvmixer.models.permutation import HardPermutation, permutation_closeness

# timm's ConvMixer configs at reduced width and depth: (kernel, patch, activation)
TIMM_CONFIGS = {
    "convmixer_1536_20": (9, 7, nn.GELU),
    "convmixer_768_32": (7, 7, nn.ReLU),
    "convmixer_1024_20_ks9_p14": (9, 14, nn.GELU),
}


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, eval mode: nothing the identity could hide.
    Models built without timm's factory get the registered cfg (for mean/std)."""
    if not hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg = timm.models.get_pretrained_cfg("ppconvmixer_256_8").to_dict()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def small_timm_convmixer(name, in_chans=3, num_classes=6):
    kernel, patch, act = TIMM_CONFIGS[name]
    model = ConvMixer(
        dim=24,
        depth=2,
        kernel_size=kernel,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=num_classes,
        act_layer=act,
    )
    model.pretrained_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    return randomise_(model)


def normalise(x, model_or_mean, std=None):
    if std is None:
        cfg = model_or_mean.pretrained_cfg
        mean, std = cfg["mean"], cfg["std"]
    else:
        mean = model_or_mean
    return Normalize(mean, std)(x)


@pytest.mark.parametrize("name", sorted(TIMM_CONFIGS))
@pytest.mark.parametrize("size", [(4, 4), (3, 5)])  # block grid, square and rectangular
def test_encrypted_model_equals_plain_model_on_every_timm_config(name, size):
    plain = small_timm_convmixer(name)
    m = TIMM_CONFIGS[name][1]
    key = BlockKey.generate((size[0] * m, size[1] * m), m, seed=zlib.crc32(name.encode()) % 1000)
    private = encrypt_model(plain, key).eval()
    x = torch.rand(3, 3, *key.image_size)
    expected = plain(normalise(x, plain))
    got = private(normalise(encrypt(x, key), plain))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert private.key_fingerprint == key.fingerprint
    assert private.pretrained_cfg["input_size"] == (3, *key.image_size)
    assert "hf_hub_id" not in private.pretrained_cfg  # not the source's weights any more
    # the plain model on encrypted images is far off: the identity is not vacuous
    assert (plain(normalise(encrypt(x, key), plain)) - expected).abs().max() > 1e-2


def test_one_channel_with_explicit_mean_std_and_input_not_modified():
    plain = small_timm_convmixer("convmixer_768_32", in_chans=1)
    before = copy.deepcopy(plain.state_dict())
    key = BlockKey.generate((21, 28), 7, channels=1, seed=4)
    private = encrypt_model(plain, key, mean=(0.3,), std=(0.7,))
    x = torch.rand(4, 1, 21, 28)
    torch.testing.assert_close(
        private.eval()(normalise(encrypt(x, key), (0.3,), (0.7,))),
        plain(normalise(x, (0.3,), (0.7,))),
        rtol=0,
        atol=1e-4,
    )
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    assert private.pretrained_cfg["mean"] == (0.3,)


def small_ppconvmixer(seed=0, **overrides):
    """A small randomised PPConvMixer (16x12 images, block 4); with P it is dense, as after
    training."""
    args = dict(dim=16, depth=2, kernel_size=3, patch_size=4, img_size=(16, 12), num_classes=5)
    return randomise_(PPConvMixer(**{**args, **overrides}), seed=seed)


def trained_like_model(seed=0):
    """An encrypted-domain model whose P is dense, as after training."""
    return small_ppconvmixer(seed)


@pytest.mark.parametrize("with_p", [True, False])
def test_from_ppconvmixer_with_and_without_p(with_p):
    plain = small_ppconvmixer(3, img_size=(12, 16), num_classes=4, permutation=with_p)
    key = BlockKey.generate((12, 16), 4, seed=9)
    private = encrypt_model(plain, key).eval()
    x = torch.rand(2, 3, 12, 16)
    torch.testing.assert_close(
        private(normalise(encrypt(x, key), plain)), plain(normalise(x, plain)), rtol=0, atol=1e-4
    )


def test_rekey_is_exact_for_a_dense_p_and_round_trips():
    k1, k2 = BlockKey.generate((16, 12), 4, seed=1), BlockKey.generate((16, 12), 4, seed=2)
    model = trained_like_model()
    model.key_fingerprint = k1.fingerprint
    moved = rekey_model(model, k1, k2).eval()
    x = torch.rand(3, 3, 16, 12)
    torch.testing.assert_close(
        moved(normalise(encrypt(x, k2), model)),
        model(normalise(encrypt(x, k1), model)),
        rtol=0,
        atol=1e-4,
    )
    assert moved.key_fingerprint == k2.fingerprint
    back = rekey_model(moved, k2, k1)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_decrypt_model_inverts_encrypt_model():
    key = BlockKey.generate((16, 12), 4, seed=5)
    model = trained_like_model(1)
    plain = decrypt_model(model, key)
    x = torch.rand(2, 3, 16, 12)
    torch.testing.assert_close(
        plain(normalise(x, model)), model(normalise(encrypt(x, key), model)), rtol=0, atol=1e-4
    )
    assert plain.key_fingerprint is None


def test_rekey_refuses_the_wrong_old_key():
    k1, k2, k3 = (BlockKey.generate((16, 12), 4, seed=s) for s in (1, 2, 3))
    model = trained_like_model()
    model.key_fingerprint = k1.fingerprint
    with pytest.raises(ConversionError, match="made for key"):
        rekey_model(model, k3, k2)


@pytest.mark.parametrize(
    "key, message",
    [
        (BlockKey.generate(24, 8, seed=0), "patch size"),
        (BlockKey.generate(28, 7, channels=1, seed=0), "channel"),
    ],
)
def test_mismatches_are_refused(key, message):
    with pytest.raises(ConversionError, match=message):
        encrypt_model(small_timm_convmixer("convmixer_768_32"), key)


def test_image_size_mismatch_and_non_convmixer_are_refused():
    model = trained_like_model()
    with pytest.raises(ConversionError, match="img_size 16x12"):
        encrypt_model(model, BlockKey.generate(16, 4, seed=0))
    with pytest.raises(ConversionError, match="ConvMixer"):
        encrypt_model(timm.create_model("resnet10t"), BlockKey.generate(16, 4, seed=0))


def test_harden_keeps_predictions_when_p_is_near_a_permutation():
    key = BlockKey.generate((16, 12), 4, seed=7)
    plain = small_ppconvmixer(2, permutation=False)
    private = encrypt_model(plain, key)
    with torch.no_grad():
        w = private.permutation.weight
        w.add_(0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    x = normalise(encrypt(torch.rand(16, 3, 16, 12), key), plain)
    hardened, report = harden_permutation(private, x)
    assert isinstance(hardened.stem[-1], HardPermutation)
    assert report.predictions_checked == 16 and report.predictions_changed == 0
    assert report.rows_whose_max_is_assigned == 1.0 and 0 < report.relative_distance < 0.1
    assert report.penalty > 0
    # the gather is the permutation the key implies
    assert torch.equal(hardened.stem[-1].source, torch.argsort(key.block_perm))


@pytest.mark.parametrize("scale", [1.0, -1.0, 0.3, -2.5])
def test_harden_folds_sign_and_scale_exactly(scale):
    """P = c * the key's inverse block permutation hardens to that permutation, with c folded
    into the stem's BatchNorm: same logits, on any sign and scale."""
    key = BlockKey.generate((16, 12), 4, seed=11)
    plain = small_ppconvmixer(6, permutation=False)
    private = encrypt_model(plain, key).eval()
    with torch.no_grad():
        private.permutation.weight.mul_(scale)
    x = normalise(encrypt(torch.rand(8, 3, 16, 12), key), plain)
    hardened, report = harden_permutation(private, x)
    assert report.scale == pytest.approx(scale) and report.fit == pytest.approx(1.0)
    assert report.closeness == pytest.approx(1.0)
    assert report.max_logit_difference < 1e-4 and report.predictions_changed == 0
    assert torch.equal(hardened.stem[-1].source, torch.argsort(key.block_perm))


@pytest.mark.parametrize("noise", [0.3, 1.0])
def test_harden_refuses_a_p_far_from_a_scaled_permutation(noise):
    key = BlockKey.generate((16, 12), 4, seed=12)
    private = encrypt_model(small_ppconvmixer(7, permutation=False), key)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = private.permutation.weight
        w.add_(noise * torch.randn(w.shape, generator=gen))
    assert permutation_closeness(w) < 0.9
    with pytest.raises(ConversionError, match="not close enough to a scaled permutation"):
        harden_permutation(private)


def test_harden_refuses_mixed_signs_and_a_dense_p():
    key = BlockKey.generate((16, 12), 4, seed=13)
    private = encrypt_model(small_ppconvmixer(8, permutation=False), key)
    with torch.no_grad():  # per-token signs: a signed permutation, but no common scale
        signs = torch.ones(12, 1)
        signs[::2] = -1.0
        private.permutation.weight.mul_(signs)
    with pytest.raises(ConversionError, match="explains"):
        harden_permutation(private)
    with pytest.raises(ConversionError, match="explains"):
        harden_permutation(trained_like_model())


def test_harden_a_sinkhorn_p_at_low_temperature():
    key = BlockKey.generate((16, 12), 4, seed=14)
    kw = dict(permutation_param="sinkhorn", sinkhorn_tau=(0.05, 0.05), permutation_lr_gain=2.0)
    model = small_ppconvmixer(9, permutation_init=key.block_perm.tolist(), **kw)
    model.permutation.reset_parameters()  # randomise_ drew random logits; back to the order
    x = torch.randn(6, 3, 16, 12)
    hardened, report = harden_permutation(model, x)
    assert report.fit > 0.999 and report.max_logit_difference < 1e-4
    assert torch.equal(hardened.stem[-1].source, torch.argsort(key.block_perm))


def test_encrypt_and_rekey_are_exact_for_a_sinkhorn_p():
    """Sinkhorn commutes with row permutations, so permuting the logits' rows is exact."""
    k1, k2 = BlockKey.generate((16, 12), 4, seed=15), BlockKey.generate((16, 12), 4, seed=16)
    kw = dict(permutation_param="sinkhorn", permutation_lr_gain=3.0, sinkhorn_tau=(0.5, 0.5))
    model = small_ppconvmixer(10, **kw)
    x = torch.rand(3, 3, 16, 12)
    private = encrypt_model(model, k1).eval()
    torch.testing.assert_close(
        private(normalise(encrypt(x, k1), model)), model(normalise(x, model)), rtol=0, atol=1e-4
    )
    moved = rekey_model(private, k1, k2).eval()
    torch.testing.assert_close(
        moved(normalise(encrypt(x, k2), model)), model(normalise(x, model)), rtol=0, atol=1e-4
    )


def test_harden_exact_permutation_is_lossless():
    key = BlockKey.generate((16, 12), 4, seed=8)
    plain = small_ppconvmixer(4, depth=1, num_classes=1000, permutation=False)
    private = encrypt_model(plain, key).eval()
    x = torch.randn(4, 3, 16, 12)
    hardened, report = harden_permutation(private, x)
    assert report.relative_distance == 0 and report.max_logit_difference <= 1e-6


def test_convert_cli_writes_a_folder_timm_loads(tmp_path):
    import subprocess
    from pathlib import Path

    torch.manual_seed(0)
    plain = timm.create_model("convmixer_1024_20_ks9_p14", num_classes=4).eval()
    ckpt = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file(plain.state_dict(), ckpt)
    key_path = tmp_path / "owner.key"
    BlockKey.generate(224, 14, seed=3).save(key_path)
    out = tmp_path / "converted"
    cli = Path(sys.executable).parent / "ppconvmixer"
    proc = subprocess.run(
        [
            cli,
            "convert",
            "--key",
            key_path,
            "--model",
            "convmixer_1024_20_ks9_p14",
            "--num-classes",
            "4",
            "--checkpoint",
            ckpt,
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    key = BlockKey.load(key_path)
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.key_fingerprint == key.fingerprint
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(
        loaded(normalise(encrypt(x, key), plain)), plain(normalise(x, plain)), rtol=0, atol=1e-4
    )
    for path in out.iterdir():
        assert holds_key_material(path.read_bytes(), key) == [], path


def test_an_encrypted_model_is_not_encrypted_twice():
    key = BlockKey.generate((16, 12), 4, seed=1)
    model = trained_like_model()
    model.key_fingerprint = key.fingerprint
    with pytest.raises(ConversionError, match="rekey_model"):
        encrypt_model(model, BlockKey.generate((16, 12), 4, seed=2))


def test_convert_cli_needs_weights(tmp_path):
    import subprocess
    from pathlib import Path

    key_path = BlockKey.generate(224, 14, seed=3).save(tmp_path / "owner.key")
    cli = Path(sys.executable).parent / "ppconvmixer"
    proc = subprocess.run(
        [cli, "convert", "--key", key_path, "--model", "convmixer_1024_20_ks9_p14", tmp_path / "o"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "no weights to convert" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_convert_cli_of_published_weights_marks_the_folder_for_the_leak_guard(tmp_path):
    """Weights converted from a published checkpoint (here a local-dir: folder, as a timm tag or
    hf-hub: would be) give the key back against it: config.json says which checkpoint, and the
    leak guard refuses the folder unless the owner accepts that; a --checkpoint conversion of
    the owner's own weights carries no such mark."""
    import json
    import subprocess
    from pathlib import Path

    from timm.models import save_for_hf

    from timm_ppconvmixer.hub import KeyMaterialError, assert_no_key_material
    from timm_ppconvmixer.hub.leak_guard import PublicStemFinding

    torch.manual_seed(0)
    plain = timm.create_model("convmixer_1024_20_ks9_p14", num_classes=4).eval()
    published = tmp_path / "published"
    save_for_hf(plain, published, safe_serialization=True)
    key_path = BlockKey.generate(224, 14, seed=3).save(tmp_path / "owner.key")
    out = tmp_path / "converted"
    cli = Path(sys.executable).parent / "ppconvmixer"
    spec = f"local-dir:{published}"
    proc = subprocess.run(
        [cli, "convert", "--key", key_path, "--model", spec, out], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["converted_from"] == spec
    key = BlockKey.load(key_path)
    with pytest.raises(KeyMaterialError, match="allow_public_stem_leak"):
        assert_no_key_material(out, key)
    with pytest.raises(KeyMaterialError, match="allow_public_stem_leak"):  # P alone accepted
        assert_no_key_material(out, key, allow_key_derived_weights=True)
    accepted = assert_no_key_material(
        out, key, allow_key_derived_weights=True, allow_public_stem_leak=True
    )
    assert [f for f in accepted if isinstance(f, PublicStemFinding)]
    own = tmp_path / "own"  # the owner's own checkpoint: nothing public to compare against
    ckpt = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file(plain.state_dict(), ckpt)
    args = ["--model", "convmixer_1024_20_ks9_p14", "--num-classes", "4", "--checkpoint", ckpt]
    proc = subprocess.run(
        [cli, "convert", "--key", key_path, *args, own], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "converted_from" not in json.loads((own / "config.json").read_text())
    assert_no_key_material(own, key, allow_key_derived_weights=True)
