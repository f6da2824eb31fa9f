import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageDataset, create_loader
from timm.data import create_transform as timm_create_transform
from torchvision.transforms import Normalize

from timm_ppconvmixer import BlockKey, encrypt
from timm_ppconvmixer.transforms import BlockScramble, create_transform


@pytest.fixture
def key():
    return BlockKey.generate(32, 8, seed=11)


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8))


def _plain_uint8(photo, size):
    # timm's own eval pipeline with the package's resampling default (bicubic)
    plain = timm_create_transform(
        size, is_training=False, crop_pct=1.0, interpolation="bicubic", use_prefetcher=True
    )
    return plain(photo)


def test_eval_output_is_normalise_of_encrypted_plain_pipeline(key, photo):
    plain = _plain_uint8(photo, 32)
    assert plain.dtype == torch.uint8 and plain.shape == (3, 32, 32)
    norm = Normalize(
        mean=torch.tensor((0.485, 0.456, 0.406)), std=torch.tensor((0.229, 0.224, 0.225))
    )
    # encryption of the plain pipeline's bytes, then ToTensor's scaling, then Normalize
    expected = norm(encrypt(plain, key).float().div(255))
    out = create_transform(key, is_training=False)(photo)
    assert torch.equal(out, expected)


def test_prefetcher_mode_hands_encrypted_uint8_to_the_loader(key, photo):
    out = create_transform(key, is_training=False, use_prefetcher=True)(photo)
    assert out.dtype == torch.uint8
    assert torch.equal(out, encrypt(_plain_uint8(photo, 32), key))


def test_block_scramble_on_timm_numpy_chw(key):
    chw = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    assert np.array_equal(BlockScramble(key)(chw), encrypt(torch.from_numpy(chw), key).numpy())
    assert np.array_equal(BlockScramble(key, decrypt=True)(BlockScramble(key)(chw)), chw)
    assert key.fingerprint in repr(BlockScramble(key))


def test_grayscale_key_converts_rgb_inputs(photo):
    key = BlockKey.generate(28, 4, channels=1, seed=0)
    out = create_transform(key)(photo)
    assert out.shape == (1, 28, 28)


def test_input_size_must_match_key(key):
    with pytest.raises(ValueError, match="key's"):
        create_transform(key, input_size=(3, 64, 64))


@pytest.mark.parametrize("use_prefetcher", [False, True])
def test_training_transform_runs_through_timm_loader(image_folder, key, use_prefetcher):
    dataset = ImageDataset(str(image_folder))
    loader = create_loader(
        dataset,
        input_size=(3, 32, 32),
        batch_size=4,
        is_training=True,
        use_prefetcher=use_prefetcher,
        device=torch.device("cpu"),
        num_workers=1,
        re_prob=0.5 if not use_prefetcher else 0.0,
    )
    loader.dataset.transform = create_transform(
        key, is_training=True, use_prefetcher=use_prefetcher, re_prob=0.0 if use_prefetcher else 0.5
    )
    batches = list(loader)
    assert sum(len(t) for _, t in batches) == 8
    x, _ = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.is_floating_point()


@pytest.mark.parametrize("scheme", ["le", "ele", "etc", "pe"])
def test_every_scheme_in_the_eval_and_training_pipelines(scheme, photo):
    from timm_ppconvmixer.schemes import generate_key

    key = generate_key(scheme, image_size=32, block_size=1 if scheme == "pe" else 8, seed=3)
    out = create_transform(key, is_training=False, use_prefetcher=True)(photo)
    assert torch.equal(out, encrypt(_plain_uint8(photo, 32), key))
    # erasing moves encryption after ToTensor (floats): halves schemes get 8-bit levels
    train = create_transform(
        key, is_training=True, re_prob=1.0, re_mode="pixel", use_prefetcher=False
    )
    assert train(photo).shape == (3, 32, 32)


def test_pe_per_image_in_a_pipeline_encrypts_each_call_afresh(photo):
    from timm_ppconvmixer.schemes import per_image_encryption

    tf = create_transform(per_image_encryption(32), is_training=False, use_prefetcher=True)
    first, second = tf(photo), tf(photo)
    assert first.dtype == torch.uint8 and not torch.equal(first, second)


def _resize_interpolations(tf):
    from torchvision.transforms import InterpolationMode

    return [
        s.interpolation
        for s in tf.transforms
        if isinstance(getattr(s, "interpolation", None), (InterpolationMode, tuple, list, str))
    ]


def test_training_keeps_timms_default_interpolation(key, photo):
    """Without ``interpolation``, training uses timm's default (bilinear): the encrypted
    pipeline gives exactly the encryption of timm's own training output (same random crop)."""
    ours = create_transform(key, is_training=True, use_prefetcher=True)
    timms = timm_create_transform(32, is_training=True, use_prefetcher=True)
    assert _resize_interpolations(ours) == _resize_interpolations(timms)
    for seed in range(5):
        random.seed(seed), torch.manual_seed(seed)  # timm's crop draws from random
        expected = encrypt(timms(photo), key)
        random.seed(seed), torch.manual_seed(seed)
        assert torch.equal(ours(photo), expected)
    # a user's choice still reaches timm
    bicubic = create_transform(key, is_training=True, interpolation="bicubic")
    assert _resize_interpolations(bicubic) == _resize_interpolations(
        timm_create_transform(32, is_training=True, interpolation="bicubic")
    )
    assert _resize_interpolations(bicubic) != _resize_interpolations(timms)
