"""timm's conventions for the zoo's tags: every way timm names a pretrained cfg, missing layers,
``features_only``, the loaded cfg, the licence and the marker of converted weights.

The shipped tags (timm_ppconvmixer/keyed/shipped.py) load offline from the package. The
key-bound tags (timm_ppconvmixer/keyed/zoo.py) read locally made plain checkpoints in timm's
layout (random weights, a shallow ConvMixer) through ``pretrained_cfg_overlay=dict(file=...)``,
so nothing here downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from timm.data import resolve_data_config
from timm.models import build_model_with_cfg, get_pretrained_cfg, save_for_hf
from timm.models._features import FeatureGetterNet
from timm.models.convmixer import ConvMixer
from torch import nn

from timm_ppconvmixer import KEY_BOUND_TAGS, BlockKey, KeyBoundError, encrypt
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.keyed import SHIPPED_WEIGHTS, encrypt_model

PROJECT_LICENSE = "apache-2.0"  # pyproject.toml: Apache-2.0
# timm's convmixer_* architectures (the key-bound tags' plain twins), shallow: three blocks, so
# timm's default feature indices (the last three blocks) exist
ARCH = {
    "convmixer_768_32": dict(kernel_size=7, patch_size=7, act_layer=nn.ReLU),
    "convmixer_1024_20_ks9_p14": dict(kernel_size=9, patch_size=14, act_layer=nn.GELU),
    "convmixer_1536_20": dict(kernel_size=9, patch_size=7, act_layer=nn.GELU),
}
SHALLOW = dict(dim=16, depth=3)


def plain_arch(tag: str) -> str:
    return KEY_BOUND_TAGS[tag].split(".")[0]


def random_plain(arch: str) -> ConvMixer:
    model = ConvMixer(**ARCH[arch], **SHALLOW)
    model.pretrained_cfg = get_pretrained_cfg(f"{arch}.in1k").to_dict()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def plain_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plain")
    files = {}
    for tag in KEY_BOUND_TAGS:
        files[tag] = root / f"{plain_arch(tag)}.safetensors"
        safetensors.torch.save_file(random_plain(plain_arch(tag)).state_dict(), files[tag])
    return files


@pytest.fixture(scope="module")
def keys() -> dict[int, BlockKey]:
    return {m: BlockKey.generate(224, m, seed=40 + m) for m in (7, 14)}


def key_for(tag: str, keys) -> BlockKey:
    return keys[ARCH[plain_arch(tag)]["patch_size"]]


def key_bound(tag: str, key, file: Path, **kwargs) -> nn.Module:
    return timm.create_model(
        tag, pretrained=True, key=key, pretrained_cfg_overlay=dict(file=str(file)), **SHALLOW,
        **kwargs,
    )  # fmt: skip


def timm_plain(tag: str, file: Path, **kwargs) -> nn.Module:
    """timm's own convmixer_* build (its _create_convmixer), shallow, from ``file``."""
    arch, name = KEY_BOUND_TAGS[tag].split(".")
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        ConvMixer,
        arch,
        True,
        pretrained_cfg=name,
        pretrained_cfg_overlay=dict(file=str(file)),
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **ARCH[arch],
        **SHALLOW,
        **kwargs,
    ).eval()


def normalised(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


def rgb_images(key: BlockKey, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (n, 3, *key.image_size), dtype=torch.uint8, generator=gen)


@pytest.fixture(scope="module")
def fmnist() -> torch.Tensor:
    images, _ = fashion_mnist_arrays("test")
    return (torch.from_numpy(images[:64]).unsqueeze(1).float() / 255 - 0.5) / 0.5


# -- 1. every way timm names a shipped tag gives the shipped model ------------------------------


def ways_to_name(tag: str) -> dict[str, tuple[str, dict]]:
    """(model name, keywords) of each way timm lets a caller name ``tag``'s cfg."""
    arch, name = tag.split(".")
    cfg = get_pretrained_cfg(tag)
    file = dict(file=str(SHIPPED_WEIGHTS[tag] / "model.safetensors"))
    return {
        "tag string": (arch, dict(pretrained_cfg=name)),
        "PretrainedCfg": (arch, dict(pretrained_cfg=cfg)),
        "dict": (arch, dict(pretrained_cfg=cfg.to_dict())),
        "PretrainedCfg + overlay": (arch, dict(pretrained_cfg=cfg, pretrained_cfg_overlay=file)),
        "dict + overlay": (arch, dict(pretrained_cfg=cfg.to_dict(), pretrained_cfg_overlay=file)),
        "tag string + overlay": (arch, dict(pretrained_cfg=name, pretrained_cfg_overlay=file)),
        "arch.tag + overlay": (tag, dict(pretrained_cfg_overlay=file)),
    }


@pytest.mark.parametrize("tag", sorted(SHIPPED_WEIGHTS))
def test_every_way_to_name_a_shipped_tag_gives_the_shipped_model(tag, fmnist):
    shipped = timm.create_model(tag, pretrained=True).eval()
    expected = shipped.state_dict()
    with torch.no_grad():
        logits = shipped(fmnist)
    for way, (name, kwargs) in ways_to_name(tag).items():
        model = timm.create_model(name, pretrained=True, **kwargs).eval()
        got = model.state_dict()
        assert got.keys() == expected.keys(), way  # no layer the weights do not have
        assert all(torch.equal(got[k], v) for k, v in expected.items()), way
        assert model.key_fingerprint == shipped.key_fingerprint, way
        assert model.pretrained_cfg["tag"] == tag.split(".")[1], way
        with torch.no_grad():
            assert torch.equal(model(fmnist), logits), way  # identical predictions
    # as for timm's own models, a cfg string is a tag; "arch.tag" there is refused by timm
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model(tag.split(".")[0], pretrained=True, pretrained_cfg=tag)


def test_a_cfg_that_names_no_tag_gets_one_clear_error_not_a_filled_in_p():
    # zoo_pe was trained without P; a cfg without its tag cannot say so
    file = str(SHIPPED_WEIGHTS["ppconvmixer_128_8_fmnist.zoo_pe"] / "model.safetensors")
    with pytest.raises(ValueError, match="permutation=False"):
        timm.create_model(
            "ppconvmixer_128_8_fmnist", pretrained=True, pretrained_cfg=dict(file=file)
        )


def test_an_unknown_tag_or_another_architectures_cfg_is_refused():
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):  # timm's own refusal
        timm.create_model("ppconvmixer_128_8_fmnist.zoo_nope", pretrained=True)
    with pytest.raises(ValueError, match="ppconvmixer_256_8_fmnist"):
        timm.create_model(
            "ppconvmixer_128_8_fmnist",
            pretrained=True,
            pretrained_cfg=get_pretrained_cfg("ppconvmixer_256_8_fmnist.demo"),
        )


def test_weights_without_p_are_never_loaded_into_a_random_p(tmp_path):
    torch.manual_seed(0)
    no_p = timm.create_model("ppconvmixer_256_8", permutation=False, depth=1, num_classes=3)
    safetensors.torch.save_file(no_p.state_dict(), tmp_path / "no_p.safetensors")
    with_p = timm.create_model("ppconvmixer_256_8", depth=1, num_classes=3)
    safetensors.torch.save_file(with_p.state_dict(), tmp_path / "with_p.safetensors")

    def load(name: str, **kwargs):
        overlay = dict(file=str(tmp_path / name), num_classes=3)
        return timm.create_model(
            "ppconvmixer_256_8", pretrained=True, pretrained_cfg_overlay=overlay, depth=1,
            num_classes=3, **kwargs,
        )  # fmt: skip

    with pytest.raises(ValueError, match=r"no permutation matrix P.*permutation=False"):
        load("no_p.safetensors")
    with pytest.raises(ValueError, match=r"have a permutation matrix P.*permutation=False"):
        load("with_p.safetensors", permutation=False)
    # an explicit, non-random start for P is the user's choice (fine-tuning from plain weights)
    identity = load("no_p.safetensors", permutation_init="identity").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(identity(x), no_p.eval()(x), rtol=0, atol=1e-5)


# -- 2. the key-bound tags ------------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(KEY_BOUND_TAGS))
def test_features_only_equals_timms_feature_model_on_plain_images(tag, keys, plain_files):
    """P sits in the stem and, converted, puts the tokens back in the plain order: every
    block's output on encrypted images is the plain model's on the plain images, exactly."""
    key, file = key_for(tag, keys), plain_files[tag]
    x = rgb_images(key)
    for extra in ({}, dict(out_indices=(0, 2))):
        ours = key_bound(tag, key, file, features_only=True, **extra).eval()
        theirs = timm_plain(tag, file, features_only=True, **extra)
        assert isinstance(ours, FeatureGetterNet)
        assert ours.feature_info.get_dicts() == theirs.feature_info.get_dicts()
        with torch.no_grad():
            got = ours(normalised(encrypt(x, key), ours.pretrained_cfg))
            expected = theirs(normalised(x, theirs.pretrained_cfg))
        assert len(got) == len(expected) == len(ours.feature_info.get_dicts())
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert ours.pretrained_cfg["converted_from"] == KEY_BOUND_TAGS[tag]
        assert ours.pretrained_cfg["tag"] == "in1k" and "num_classes" not in ours.pretrained_cfg
        assert "key" not in ours._model_args and ours.model.key_fingerprint == key.fingerprint
    # the full-size architectures: the same feature layout as timm's own
    arch = tag.split(".")[0]
    full = timm.create_model(arch, features_only=True, device="meta")
    timms = timm.create_model(plain_arch(tag), features_only=True, device="meta")
    assert full.feature_info.get_dicts() == timms.feature_info.get_dicts()


@pytest.mark.parametrize("tag", sorted(KEY_BOUND_TAGS))
def test_the_loaded_cfg_is_the_tags_and_gives_timms_data_config(tag, keys, plain_files):
    model = key_bound(tag, key_for(tag, keys), plain_files[tag])
    cfg, registered = model.pretrained_cfg, get_pretrained_cfg(tag)
    plain = get_pretrained_cfg(KEY_BOUND_TAGS[tag])
    assert cfg["architecture"] == tag.split(".")[0] and cfg["tag"] == "in1k"
    assert cfg["pool_size"] == registered.pool_size and cfg["pool_size"] is not None
    for field in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation"):
        assert cfg[field] == getattr(plain, field), field
    for field in ("first_conv", "classifier", "num_classes", "license", "hf_hub_id"):
        assert cfg[field] == getattr(plain, field), field
    assert cfg["fixed_input_size"] is True  # P is built for the key's block grid
    assert "state_dict" not in cfg  # no copy of the weights in the cfg
    timms = timm.create_model(plain_arch(tag), device="meta")
    assert resolve_data_config({}, model=model) == resolve_data_config({}, model=timms)


@pytest.mark.parametrize("tag", sorted(KEY_BOUND_TAGS))
def test_the_registered_cfg_says_its_hub_id_holds_timms_plain_weights(tag):
    cfg, plain = get_pretrained_cfg(tag), get_pretrained_cfg(KEY_BOUND_TAGS[tag])
    assert cfg.hf_hub_id == plain.hf_hub_id  # timm's loader reads the plain weights there
    assert KEY_BOUND_TAGS[tag] in cfg.description and cfg.hf_hub_id in cfg.description
    assert "plain" in cfg.description and "key=" in cfg.description


def test_a_pretrained_sweep_without_a_key_raises_one_key_bound_error():
    """The refusal comes before timm's loader: no download is tried (none could succeed here,
    and its error would not be a KeyBoundError)."""
    names = timm.list_models("ppconvmixer*", pretrained=True)
    assert set(KEY_BOUND_TAGS) <= set(names)
    for name in names:
        if name in KEY_BOUND_TAGS:
            with pytest.raises(KeyBoundError, match=r"pass key=") as e:
                timm.create_model(name, pretrained=True)
            assert type(e.value) is KeyBoundError and e.value.__cause__ is None
        else:
            assert timm.create_model(name, pretrained=True).pretrained_cfg["tag"], name


# -- 3. the licence -------------------------------------------------------------------------------


def test_key_bound_tags_carry_the_plain_weights_licence_and_shipped_ones_the_projects(
    keys, plain_files
):
    for tag, plain_tag in KEY_BOUND_TAGS.items():
        plain = get_pretrained_cfg(plain_tag).license
        assert plain == "mit"  # timm's ConvMixer weights
        assert get_pretrained_cfg(tag).license == plain
    tag = "ppconvmixer_768_32.in1k"
    assert key_bound(tag, keys[7], plain_files[tag]).pretrained_cfg["license"] == "mit"
    for tag in SHIPPED_WEIGHTS:
        assert get_pretrained_cfg(tag).license == PROJECT_LICENSE, tag
    for arch in ("ppconvmixer_512_16", "ppconvmixer_256_8"):
        assert timm.create_model(arch, device="meta").pretrained_cfg["license"] == PROJECT_LICENSE


# -- 4. the marker of timm's converted weights ---------------------------------------------------


def test_only_the_key_bound_loader_marks_a_model_as_timms_converted_weights(
    keys, plain_files, tmp_path
):
    tag = "ppconvmixer_768_32.in1k"
    loaded = key_bound(tag, keys[7], plain_files[tag])
    assert loaded.pretrained_cfg["converted_from"] == "convmixer_768_32.in1k"
    scratch = timm.create_model("ppconvmixer_768_32", **SHALLOW)  # pretrained=False: trained here
    assert "converted_from" not in scratch.pretrained_cfg
    converted = encrypt_model(random_plain("convmixer_768_32"), keys[7])  # not timm's weights
    assert "converted_from" not in converted.pretrained_cfg
    for shipped in SHIPPED_WEIGHTS:
        assert "converted_from" not in timm.create_model(shipped, pretrained=True).pretrained_cfg
    # timm's own save_for_hf keeps the marker, and timm reloads the folder with it
    small = key_bound(tag, BlockKey.generate(56, 7, seed=2), plain_files[tag], img_size=56)
    save_for_hf(small, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["pretrained_cfg"]["converted_from"] == "convmixer_768_32.in1k"
    again = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True)
    assert again.pretrained_cfg["converted_from"] == "convmixer_768_32.in1k"
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in small.state_dict().items())
