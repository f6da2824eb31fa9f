"""The attacks on the paper's scheme on real Fashion-MNIST images with fixed seeded keys (no mocks).

What must hold: a known plain/encrypted pair gives the key; 1,000 encrypted images give K3 and
K2 exactly (up to the block symmetries) and, with the public test split as the attacker's
prior, the whole key and exact decryptions; bad input raises one clear error; reports carry no
key material.
"""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import timm
import torch
from conftest import holds_key_material
from PIL import Image

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.attacks import (
    AttackInputError,
    GenericPrior,
    ReferencePrior,
    key_from_converted_model,
    known_plaintext_attack,
    recover_key,
    run_attack,
    score_images,
    score_key,
)
from timm_ppconvmixer.attacks.evaluation.inputs import load_images
from timm_ppconvmixer.keyed.convert import encrypt_model


def _same_key(a: BlockKey, b: BlockKey) -> bool:
    return all(
        torch.equal(getattr(a, part), getattr(b, part))
        for part in ("block_perm", "pixel_perm", "np_mask")
    )


def test_known_plaintext_pairs_give_the_exact_key(fmnist):
    x = fmnist[0][:2]
    key = BlockKey.generate(28, 4, 1, seed=11)
    result = known_plaintext_attack(x, encrypt(x, key, layout="CHW"), block_size=4)
    assert _same_key(result.key, key)
    assert result.confidence == {"K1": 1.0, "K2": 1.0, "K3": 1.0}


def test_one_known_pair_gives_all_but_blank_twins(fmnist):
    x = fmnist[0][:1]
    key = BlockKey.generate(28, 4, 1, seed=12)
    result = known_plaintext_attack(x, encrypt(x, key, layout="CHW"))
    assert result.details["block_size"] == 4  # found without being told
    scores = score_key(key, result.key, x)
    assert scores["K2_exact"] == scores["K3_exact"] == 1.0
    assert scores["K1_content"] == 1.0  # only blank blocks, identical in the pair, are swapped
    assert result.ambiguities and "twins" in result.ambiguities[0]
    enc = encrypt(fmnist[0][:500], key, layout="CHW")
    others = decrypt(enc, result.key, layout="CHW")
    assert score_images(others, fmnist[0][:500])["psnr"] > 25


def test_ciphertext_only_recovers_k3_and_k2_from_1000_images(fmnist):
    x = fmnist[0][:1000]
    key = BlockKey.generate(28, 4, 1, seed=21)
    enc = encrypt(x, key, layout="CHW")
    result = recover_key(enc, 4, prior=GenericPrior())
    scores = score_key(key, result.key, x)
    assert scores["K3"] == 1.0 and scores["K2"] == 1.0  # up to the block symmetries
    assert scores["K1"] == 1.0
    assert set(result.confidence) == {"K1", "K2", "K3"}
    assert result.timings["total"] > 0


def test_whole_attack_decrypts_1000_images_with_a_public_prior(fmnist):
    x, _, public = fmnist
    key = BlockKey.generate(28, 4, 1, seed=22)
    enc = encrypt(x[:1000], key, layout="CHW")
    result = recover_key(enc, 4, prior=ReferencePrior(public))
    recovered = decrypt(enc, result.key, layout="CHW")
    images = score_images(recovered, x[:1000])
    assert images["exact_images"] == 1.0 and images["ssim"] == pytest.approx(1.0)
    assert _same_key(result.key, key)
    baseline = score_images(enc, x[:1000])
    assert baseline["psnr"] < 10 and baseline["ssim"] < 0.3  # what encryption alone gives


def test_converted_model_gives_the_exact_key():
    torch.manual_seed(0)
    plain = timm.create_model(
        "ppconvmixer_256_8", num_classes=10, permutation=False, img_size=32, dim=48, depth=1
    ).eval()
    key = BlockKey.generate(32, 4, 3, seed=31)
    shared = encrypt_model(plain, key, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert _same_key(key_from_converted_model(shared, plain).key, key)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 28, 28), dtype=np.uint8), "(N, C, H, W)"),
        (np.zeros((2, 1, 28, 28), dtype=np.float32), "uint8"),
        (np.zeros((2, 1, 30, 30), dtype=np.uint8), "not a grid"),
        (np.zeros((0, 1, 28, 28), dtype=np.uint8), "at least one"),
        (np.zeros((1, 1, 4, 4), dtype=np.uint8), "single"),
    ],
)
def test_bad_batches_raise_one_clear_error(bad, message):
    with pytest.raises(AttackInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recover_key(bad, 4)


def _write_folder(root, images, labels):
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(root / f"c{label}" / f"{i:05d}.png")


def test_bad_folders_raise_one_clear_error(tmp_path, fmnist):
    plain = tmp_path / "plain"
    _write_folder(plain, fmnist[0][:5], fmnist[1][:5])
    with pytest.raises(AttackInputError, match="not encrypted data"):
        run_attack(plain, tmp_path / "out", progress=False)
    (plain / "ENCRYPTION.json").write_text(json.dumps({"block_size": 4, "channels": 1}))
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(plain / "c0" / "odd.png")
    with pytest.raises(AttackInputError, match="mixed sizes"):
        run_attack(plain, tmp_path / "out", progress=False)


def test_run_attack_writes_report_and_key_but_no_key_material(tmp_path, fmnist):
    from timm_ppconvmixer.data.folders import encrypt_folder

    x, labels, _ = fmnist
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    _write_folder(plain, x[:120], labels[:120])
    key = BlockKey.generate(28, 4, 1, seed=41)
    encrypt_folder(plain, enc, key, workers=1, progress=False)
    out = tmp_path / "report"
    result = run_attack(enc, out, key=key, progress=False, reference="fashion-mnist")
    assert [s["N"] for s in result["steps"]] == [1, 10, 100, 120]
    assert result["steps"][-1]["images"]["exact_images"] == 1.0
    assert "classifier" in result
    for name in ("report.md", "result.json", "figures/reconstruction_N120.png"):
        assert (out / name).is_file()
    key_file = out / "recovered.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = json.loads(key.to_json())
    recovered = json.loads(key_file.read_text())
    assert holds_key_material(key.to_json().encode(), key)  # the search finds what is there
    for name in ("report.md", "result.json"):
        text = (out / name).read_text()
        for k in ("block_perm", "pixel_perm", "np_mask", "salt"):
            assert k not in text
        assert holds_key_material(text.encode(), key) == [], name
        assert recovered["np_mask"] not in text and secret["np_mask"] not in text
    with pytest.raises(AttackInputError, match="never overwritten"):
        run_attack(enc, out, progress=False)


@pytest.mark.slow
def test_ciphertext_only_on_upscaled_56_block_7(fmnist):
    x = np.stack(
        [
            np.asarray(Image.fromarray(a[0]).resize((56, 56), Image.BICUBIC))
            for a in fmnist[0][:1000]
        ]
    )[:, None]
    key = BlockKey.generate(56, 7, 1, seed=51)
    result = recover_key(encrypt(x, key, layout="CHW"), 7, prior=GenericPrior())
    scores = score_key(key, result.key, x)
    assert scores["K3"] == 1.0 and scores["K2"] == 1.0 and scores["K1"] > 0.9


def test_ssim_matches_scikit_image(fmnist):
    """docs/security.md's claim: our SSIM is scikit-image's (Gaussian window, sigma 1.5, valid
    region, population covariance), to 1e-8, on grey and colour images."""
    from skimage import data as samples  # a dev dependency (the security extra)
    from skimage import metrics

    from timm_ppconvmixer.attacks.evaluation.scoring import ssim

    rng = np.random.default_rng(0)
    grey = fmnist[0][:6]  # (N, 1, 28, 28)
    noisy = np.clip(grey + rng.normal(0, 40, grey.shape), 0, 255).astype(np.uint8)
    photo = samples.astronaut()[100:164, 200:264].transpose(2, 0, 1)[None]  # (1, 3, 64, 64)
    shifted = np.roll(photo, 3, axis=-1)
    options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    for a, b in ((grey, noisy), (photo, shifted)):
        ours = ssim(a, b)
        pairs = zip(a, b, strict=True)
        theirs = [metrics.structural_similarity(x, y, channel_axis=0, **options) for x, y in pairs]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8)
        assert ours.min() < 0.9  # the pairs differ: the comparison is not of 1 with 1


def test_conversion_refuses_other_schemes():
    import timm

    from timm_ppconvmixer.keyed.convert import ConversionError, encrypt_model
    from timm_ppconvmixer.schemes import generate_key

    ele = generate_key("ele", image_size=16, block_size=4, channels=3, seed=0)
    plain = timm.create_model("ppconvmixer_256_8", img_size=16, permutation=False, dim=8, depth=1)
    with pytest.raises(ConversionError, match="blockwise scheme only, not for a 'ele' key"):
        encrypt_model(plain, ele)


def test_the_attacked_scheme_is_the_one_the_data_record(tmp_path):
    """ENCRYPTION.json, else the dataset card's block, names the scheme; a caller's --scheme
    that contradicts it is refused, and only data without a record take the caller's word."""
    from timm_ppconvmixer.attacks.evaluation.inputs import CARD_BLOCK, scheme_of
    from timm_ppconvmixer.hub.dataset_card import CARD_BLOCK as HUB_CARD_BLOCK
    from timm_ppconvmixer.hub.dataset_card import dataset_card
    from timm_ppconvmixer.schemes import generate_key

    assert CARD_BLOCK == HUB_CARD_BLOCK  # one name, repeated across independent layers
    ele = generate_key("ele", image_size=16, block_size=4, channels=1, seed=0)
    folder = tmp_path / "enc"
    (folder / "0").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "0" / "a.png")
    (folder / "ENCRYPTION.json").write_text(json.dumps(ele.describe()))
    batch = load_images(folder)
    assert scheme_of(batch) == "ele"
    assert scheme_of(batch, "ppconvmixer-ele") == "ele"
    with pytest.raises(AttackInputError, match="the data record the 'ele' scheme, not 'le'"):
        scheme_of(batch, "le")
    with pytest.raises(AttackInputError, match="the data record the 'ele' scheme"):
        run_attack(folder, tmp_path / "out", scheme="blockwise", progress=False)
    # a folder as pushed to the Hub: no ENCRYPTION.json, the card's YAML holds the facts
    (folder / "ENCRYPTION.json").unlink()
    etc = generate_key("etc", image_size=16, block_size=4, channels=1, seed=0)
    (folder / "README.md").write_text(dataset_card(etc, {"train": 1}, repo_id="me/enc"))
    assert scheme_of(load_images(folder)) == "etc"
    # no record at all (a saved dataset without its manifest): the caller's word, or blockwise
    (folder / "README.md").unlink()
    assert scheme_of(load_images(folder, encrypted=False)) == "blockwise"
    assert scheme_of(load_images(folder, encrypted=False), "pe") == "pe"


def test_an_owner_key_of_another_scheme_is_refused(tmp_path, fmnist):
    from timm_ppconvmixer.data.folders import encrypt_folder
    from timm_ppconvmixer.schemes import generate_key

    x, labels, _ = fmnist
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    _write_folder(plain, x[:12], labels[:12])
    encrypt_folder(plain, enc, BlockKey.generate(28, 4, 1, seed=41), workers=1, progress=False)
    le = generate_key("le", image_size=28, block_size=4, channels=1, seed=0)
    with pytest.raises(AttackInputError, match="the key is a le key, the data record the blockw"):
        run_attack(enc, tmp_path / "out", key=le, progress=False)


# What the attack of each scheme reaches on these 60 images at N = 60 (key seed 7), with a
# margin: the reconstructions' SSIM, and the share of each key part the owner's scorer finds.
# Measured: LE, PE: the whole key, SSIM 1.0; EtC: block order and inversion 1.0, orientation
# 0.98, SSIM 1.0; ELE: SSIM 0.11, nibble order 0.29 and inversion 0.94 (its block order is
# still at chance at N = 60); PE with a fresh key per image: SSIM 0.28. The encrypted images
# themselves: SSIM 0.02 at most, so an attack that leaves them as they are fails.
REACHED = {
    "le": (0.99, {"nibble_perm": 0.99, "nibble_mask": 0.99}),
    "ele": (0.07, {"nibble_perm": 0.2, "nibble_mask": 0.85}),
    "etc": (0.99, {"block_perm": 0.95, "orientation": 0.9, "inversion": 0.95}),
    "pe": (0.99, {"np_mask": 0.99}),
    "pe-per-image": (0.2, {}),
}


@pytest.mark.parametrize("scheme", ["le", "ele", "etc", "pe", "pe-per-image"])
def test_run_attack_attacks_every_scheme_from_its_record(tmp_path, fmnist, scheme):
    """An encrypted folder of any scheme: the attack is the one ENCRYPTION.json names, scored
    with the scheme's own key parts; a recovered key is a key of that scheme; pe-per-image has
    no key to recover or to score with, only reconstructions scored against plain images."""
    from timm_ppconvmixer.data.folders import encrypt_folder
    from timm_ppconvmixer.schemes import generate_key, load_key, per_image_encryption

    x, labels, _ = fmnist
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    _write_folder(plain, x[:60], labels[:60])
    per_image = scheme == "pe-per-image"
    if per_image:
        key = per_image_encryption(28, 1)
    else:
        key = generate_key(scheme, image_size=28, block_size=1 if scheme == "pe" else 4,
                           channels=1, seed=7)  # fmt: skip
    encrypt_folder(plain, enc, key, workers=1, progress=False)
    out = tmp_path / "report"
    if per_image:
        with pytest.raises(AttackInputError, match="score the attack with --plain"):
            run_attack(enc, out, key=generate_key("pe", image_size=28, channels=1, seed=0))
        result = run_attack(enc, out, plain=plain, progress=False)
    else:
        result = run_attack(enc, out, key=key, progress=False, reference="fashion-mnist")
    assert result["scheme"] == scheme
    steps = result["steps"]
    assert [s["N"] for s in steps] == ([60] if per_image else [1, 10, 60])
    assert all(s["scheme"] == scheme for s in steps)
    assert "classifier" in result
    ssim_at_least, parts_at_least = REACHED[scheme]
    unattacked = score_images(load_images(enc).images, load_images(plain, encrypted=False).images)
    assert unattacked["ssim"] < ssim_at_least - 0.05  # the bound is out of the ciphertext's reach
    assert steps[-1]["images"]["ssim"] >= ssim_at_least, steps[-1]["images"]
    for part, at_least in parts_at_least.items():
        assert steps[-1]["key_recovered"][part] >= at_least, (part, steps[-1]["key_recovered"])
    report = (out / "report.md").read_text()
    assert f"encrypted with the {scheme} scheme" in report
    if per_image:
        assert result["recovered_key_file"] is None and not (out / "recovered.key").exists()
        return
    parts = steps[-1]["key_recovered"]
    assert set(result["key_parts"]) <= set(parts) and result["key_parts"][0] in report
    assert load_key(out / "recovered.key").scheme == scheme
    for name in ("report.md", "result.json"):
        assert holds_key_material((out / name).read_bytes(), key) == [], name


def test_what_the_prior_left_undecided_is_reported_once_per_attack():
    from timm_ppconvmixer.attacks.solvers.blocks import SYMMETRIES
    from timm_ppconvmixer.attacks.solvers.priors import OrientationChoice

    undecided = ["transpose", "channel order"]
    choice = OrientationChoice(SYMMETRIES[0], (0,), False, "generic", undecided)
    (line,) = choice.ambiguity()
    assert line.startswith("generic prior could not decide: transpose, channel order")
    (only,) = choice.ambiguity(only=("global inversion", "channel order"))
    assert "transpose" not in only and "channel order" in only
    assert OrientationChoice(SYMMETRIES[0], (0,), False, "reference").ambiguity() == []
    assert choice.ambiguity(only=("global inversion",)) == []
