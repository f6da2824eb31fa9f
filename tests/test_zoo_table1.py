"""The Table I zoo entries that ship with the package (``ppconvmixer_128_8_fmnist.zoo_*``,
written by ``benchmarks/reproduce_table1.py --zoo DIR --ship``): each is a timm pretrained tag
that loads offline from the package, reaches its card's top-1 on real Fashion-MNIST test images
encrypted with its PUBLIC zoo key, is near chance under another key, and carries no key
material; the manifest lists them ready.

Accuracy is checked on the first ``N = 1000`` of the 10,000 test images the card's numbers were
measured on. A 1,000-image top-1 around 0.86 has a binomial standard error of about 1.1 points
(sqrt(0.86 * 0.14 / 1000)), so the slice may differ from the full-set number by sampling alone;
``TOLERANCE`` (4 points, about 3.5 standard errors) allows that and nothing more: a model that
was not trained under its key sits near 10 %.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import holds_key_material

import timm_ppconvmixer  # noqa: F401  (registers the models and tags)
from timm_ppconvmixer import encrypt
from timm_ppconvmixer.data import FASHION_MNIST_DIR, fashion_mnist_arrays
from timm_ppconvmixer.hub import scan_for_key_material
from timm_ppconvmixer.keyed.pretrained import (
    SHIPPED_ZOO,
    ZOO_KEY_SEED,
    ZOO_SCHEMES,
    generate_zoo_key,
    zoo_key,
    zoo_key_file,
)
from timm_ppconvmixer.schemes import generate_key

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 1000
TOLERANCE = 0.04
CHANCE_CEILING = 0.25  # 10 classes: chance is 0.10; a model that works is above 0.80
# shipped tag -> its images' scheme (None: plain images) and whether it has P
TAGS = {
    "ppconvmixer_128_8_fmnist.zoo_blockwise_p": ("blockwise", True),
    "ppconvmixer_128_8_fmnist.zoo_blockwise_no_p": ("blockwise", False),
    "ppconvmixer_128_8_fmnist.zoo_pe": ("pe", False),
    "ppconvmixer_128_8_fmnist.zoo_plain": (None, False),
}


@pytest.fixture(scope="module")
def test_slice() -> tuple[torch.Tensor, torch.Tensor]:
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    images, labels = fashion_mnist_arrays("test")
    x = torch.from_numpy(np.array(images[:N])).unsqueeze(1)  # (N, 1, 28, 28) uint8
    return x, torch.from_numpy(np.array(labels[:N])).long()


def metrics(tag: str) -> dict:
    return json.loads((SHIPPED_ZOO[tag] / "metrics.json").read_text())


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    logits = model((x.float() / 255 - mean) / std)
    return float((logits.argmax(1) == y).float().mean())


def test_the_shipped_tags_are_listed_and_match_the_package():
    assert set(TAGS) == set(SHIPPED_ZOO)
    assert set(TAGS) <= set(timm.list_pretrained("ppconvmixer*"))
    total = 0
    for tag in TAGS:
        weights = SHIPPED_ZOO[tag] / "model.safetensors"
        assert timm.models.get_pretrained_cfg(tag).file == str(weights)
        total += weights.stat().st_size
    assert total < 4_000_000  # "a few MB in all" (the demo's 2.4 MB comes on top)


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_each_tag_loads_offline_and_reaches_its_cards_top1(tag, test_slice, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the package's own file, no Hub
    scheme, has_p = TAGS[tag]
    model = timm.create_model(tag, pretrained=True).eval()
    assert (model.permutation is not None) == has_p
    measured = metrics(tag)
    assert measured["test_images"] == 10_000  # the card's numbers: the full test set
    card = (SHIPPED_ZOO[tag] / "README.md").read_text()
    x, y = test_slice
    if scheme is None:
        assert model.key_fingerprint is None and measured["key_fingerprint"] is None
        assert abs(top1(model, x, y) - measured["eval"]["top1_plain"]) <= TOLERANCE
        plain = 100 * measured["eval"]["top1_plain"]
        assert f"| plain (unencrypted) test images | {plain:.2f} %" in card
        return
    key = zoo_key(scheme)
    assert model.key_fingerprint == key.fingerprint == measured["key_fingerprint"]
    with_key = top1(model, encrypt(x, key), y)
    assert with_key > 0.8
    assert abs(with_key - measured["eval"]["top1_key"]) <= TOLERANCE
    shown = 100 * measured["eval"]["top1_key"]
    assert f"| test images encrypted with this model's key | {shown:.2f} %" in card
    wrong = generate_zoo_key(scheme, 2000)  # the wrong key the card's number was measured with
    assert wrong.fingerprint == measured["wrong_key_fingerprint"]
    assert top1(model, encrypt(x, wrong), y) < CHANCE_CEILING
    assert top1(model, x, y) < CHANCE_CEILING  # plain images: the model needs its key


def test_the_zoo_keys_are_public_seeded_and_named_so():
    for scheme in ZOO_SCHEMES:
        path = zoo_key_file(scheme)
        assert path.name.endswith(".PUBLIC.key") and path.is_file()
        block = 1 if scheme == "pe" else 4
        expected = generate_key(scheme, image_size=28, block_size=block, channels=1, seed=1000)
        assert zoo_key(scheme).fingerprint == expected.fingerprint
    assert ZOO_KEY_SEED == 1000  # benchmarks/reproduce_table1.py: seed 1000 + row seed 0


def test_a_key_file_that_is_not_the_published_zoo_key_is_refused(tmp_path, monkeypatch):
    import timm_ppconvmixer.keyed.pretrained as pretrained

    other = tmp_path / "fmnist28_zoo_blockwise.PUBLIC.key"
    generate_zoo_key("blockwise", 1001).save(other)
    monkeypatch.setattr(pretrained, "HERE", tmp_path)
    with pytest.raises(ValueError, match="not the published blockwise zoo key"):
        zoo_key("blockwise")


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_the_shipped_cards_and_files_carry_no_key_material(tag):
    scheme, _ = TAGS[tag]
    folder = SHIPPED_ZOO[tag]
    card = (folder / "README.md").read_text()
    assert "PUBLIC" in card and "never encrypt real data" in card
    if scheme is None:
        assert "plain" in card
        return
    key = zoo_key(scheme)
    for path in sorted(folder.iterdir()):
        assert scan_for_key_material([path], key) == [], path  # the package's leak guard
        if scheme == "blockwise":
            assert holds_key_material(path.read_bytes(), key) == [], path  # an independent look
        else:  # pe: its 784 inversion bits as a 0/1 string, and the key file itself
            bits = "".join(map(str, key.np_mask.flatten().int().tolist()))
            data = re.sub(rb"\s+", b"", path.read_bytes())
            assert bits[:64].encode() not in data and key.to_json().encode()[:64] not in data


def test_publish_dry_run_shows_the_shipped_entries_ready(tmp_path, capsys):
    publish = importlib.import_module("hub.publish")
    entries = {e.name: e for e in publish.load_manifest(REPO_ROOT / "hub" / "zoo.yaml")}
    for tag, (scheme, _) in TAGS.items():
        entry = entries[tag]
        assert entry.weights == SHIPPED_ZOO[tag]
        if scheme is None:
            assert entry.plain_images and entry.key_file is None
        else:
            assert entry.key_file == zoo_key_file(scheme)
            assert entry.key_fingerprint == zoo_key(scheme).fingerprint
    args = [x for tag in TAGS for x in ("--only", tag)]
    assert publish.main([*args, "--out", str(tmp_path), "--card-lines", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{len(TAGS)} ready, 0 not ready" in out
    assert out.count("leak guard: passed") == len(TAGS)
