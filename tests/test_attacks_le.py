"""The ciphertext-only attack on LE on real Fashion-MNIST with seeded keys.

What must hold: from 100 encrypted images the whole LE key and exact decryptions (measured:
every key of docs/security_le.md from N = 100 on); the upper halves alone give a 4-bit
picture at about 32 dB; one image still gives a valid key; bad input raises one clear
error; the report holds no key material.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import holds_key_material

from timm_ppconvmixer import decrypt, encrypt
from timm_ppconvmixer.attacks import (
    AttackInputError,
    ReferencePrior,
    recover_le_key,
    score_images,
    score_le_key,
)
from timm_ppconvmixer.attacks.ciphertext_only.le import upper_only_images
from timm_ppconvmixer.attacks.registry import attack_for
from timm_ppconvmixer.schemes import generate_key


def _sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    return x[np.random.default_rng(seed).choice(len(x), n, replace=False)]


def test_100_images_give_the_whole_le_key(fmnist):
    key = generate_key("le", image_size=28, block_size=4, channels=1, seed=1000)
    x = _sample(fmnist[0], 100, 7)
    enc = encrypt(x, key, layout="CHW")
    result = attack_for("le").recover(enc, 4, prior=ReferencePrior(fmnist[2]))
    score = score_le_key(key, result.key, x)
    assert score["nibble_perm"] == 1.0 and score["nibble_mask_exact"] == 1.0
    assert score["blocks_exact"] == 1.0
    assert score_images(decrypt(enc, result.key, layout="CHW"), x)["exact_images"] == 1.0
    upper = score_images(upper_only_images(enc, result.key), x)
    assert upper["psnr"] > 30.0 and upper["ssim"] > 0.85  # measured 31.8 dB, 0.91


def test_one_image_still_gives_a_valid_le_key(fmnist):
    key = generate_key("le", image_size=28, block_size=4, channels=1, seed=1001)
    x = _sample(fmnist[0], 1, 8)
    result = recover_le_key(encrypt(x, key, layout="CHW"), 4)
    assert result.key.scheme == "le" and result.scheme == "le"
    assert decrypt(encrypt(x, key, layout="CHW"), result.key, layout="CHW").shape == x.shape
    assert score_le_key(key, result.key)["upper_found"] > 0.5  # measured 0.75


def test_an_image_of_one_block_is_attacked_too(fmnist):
    # LE moves no blocks: one block per image is a valid LE image (the block-order check of
    # the block-shuffling attacks does not apply), and its halves still give the upper halves
    x = np.ascontiguousarray(_sample(fmnist[0], 2000, 9)[:, :, 10:14, 10:14])
    key = generate_key("le", image_size=4, block_size=4, channels=1, seed=1002)
    result = recover_le_key(encrypt(x, key, layout="CHW"), 4)
    assert result.key.scheme == "le" and result.details["blocks_per_image"] == 1
    assert score_le_key(key, result.key, x)["upper_found"] == 1.0  # measured 1.0
    with pytest.raises(AttackInputError, match="no block order"):
        attack_for("blockwise").recover(np.zeros((2, 1, 4, 4), dtype=np.uint8), 4)


def test_bad_input_raises_one_clear_error():
    with pytest.raises(AttackInputError, match="numpy uint8"):
        recover_le_key(np.zeros((2, 1, 28, 28), dtype=np.float32), 4)
    with pytest.raises(AttackInputError, match="not a grid of 5x5 blocks"):
        recover_le_key(np.zeros((2, 1, 28, 28), dtype=np.uint8), 5)


def test_le_report_holds_no_key_material(fmnist):
    key = generate_key("le", image_size=28, block_size=4, channels=1, seed=1002)
    result = recover_le_key(encrypt(_sample(fmnist[0], 50, 9), key, layout="CHW"), 4)
    text = json.dumps(result.to_dict())
    assert holds_key_material(text.encode(), key) == []
    assert holds_key_material(text.encode(), result.key) == []
    assert result.key.fingerprint in text
    # the search finds an LE key where there is one
    assert "nibble_perm" in holds_key_material(result.key.to_json().encode(), result.key)
