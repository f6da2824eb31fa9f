import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageDataset, create_loader
from timm.data import create_transform as timm_create_transform
from torchvision import transforms as T
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


# -- against timm's own pipelines, on real images ------------------------------------------------


@pytest.fixture(scope="module")
def real_images():
    """Real Fashion-MNIST test images: 12 greyscale 28x28, and 12 RGB 28x21 ones made of three
    different garments as the channels (not square, so the shorter-side resize and the centre
    crop both act)."""
    from timm_ppconvmixer.data import DatasetUnavailableError, fashion_mnist_arrays

    try:
        images, _ = fashion_mnist_arrays("test")
    except DatasetUnavailableError as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(f"Fashion-MNIST not installed ({e}); apt-get install dataset-fashion-mnist")
    grey = [Image.fromarray(im, mode="L") for im in images[:12]]
    rgb = [
        Image.fromarray(np.stack(images[12 + 3 * i : 15 + 3 * i], -1)[:, 3:24], mode="RGB")
        for i in range(12)
    ]
    return {1: grey, 3: rgb}


KEYS = {1: dict(image_size=16, block_size=4, channels=1), 3: dict(image_size=24, block_size=4)}


def _timm(key, **kwargs):
    stats = dict(mean=(0.5,), std=(0.5,)) if key.channels == 1 else {}
    return timm_create_transform((key.channels, *key.image_size), **stats, **kwargs)


def _interpolations(tf) -> list:
    from torchvision.transforms import InterpolationMode

    found = [getattr(s, "interpolation", None) for s in tf.transforms]
    return [m for m in found if isinstance(m, InterpolationMode)]


def _with_encryption_before_normalize(pipeline, key):
    """timm's float pipeline with encryption inserted right before its Normalize."""
    *steps, norm = pipeline.transforms
    assert isinstance(norm, Normalize)
    head = T.Compose(steps)
    return lambda img: norm(encrypt(head(img), key))


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_pipeline_is_timms_bicubic_eval_plus_encryption_on_real_images(real_images, channels):
    from torchvision.transforms import InterpolationMode

    key = BlockKey.generate(**KEYS[channels], seed=channels)
    ours = create_transform(key, is_training=False)
    assert _interpolations(ours) == [InterpolationMode.BICUBIC]  # the package's eval default
    timm_bicubic = _timm(
        key, is_training=False, interpolation="bicubic", crop_pct=1.0, crop_mode="center",
        use_prefetcher=True,
    )  # fmt: skip
    timm_bilinear = _timm(key, is_training=False, crop_pct=1.0, use_prefetcher=True)
    assert _interpolations(timm_bilinear) == [InterpolationMode.BILINEAR]  # timm's default
    mean, std = ours.transforms[-1].mean, ours.transforms[-1].std
    norm = Normalize(mean, std)
    differs = 0
    for img in real_images[channels]:
        plain = timm_bicubic(img)
        assert plain.shape == (channels, *key.image_size) and plain.dtype == torch.uint8
        out = ours(img)
        assert torch.equal(out, norm(encrypt(plain, key).float().div(255)))
        assert torch.equal(
            create_transform(key, is_training=False, use_prefetcher=True)(img), encrypt(plain, key)
        )
        differs += not torch.equal(out, norm(encrypt(timm_bilinear(img), key).float().div(255)))
    assert differs == len(real_images[channels])  # bilinear would give other pixels


@pytest.mark.parametrize("use_prefetcher", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_training_pipeline_is_timms_default_training_plus_encryption_on_real_images(
    real_images, channels, use_prefetcher
):
    """Same seed, same image: our training output is exactly timm's default training output
    (random resized crop with timm's default bilinear, flip, colour jitter), encrypted, then
    normalised (or handed over as uint8 with the prefetcher)."""
    from torchvision.transforms import InterpolationMode

    key = BlockKey.generate(**KEYS[channels], seed=10 + channels)
    ours = create_transform(key, is_training=True, use_prefetcher=use_prefetcher)
    timms = _timm(key, is_training=True, use_prefetcher=use_prefetcher)
    assert _interpolations(ours) == _interpolations(timms) == [InterpolationMode.BILINEAR]
    if use_prefetcher:
        expected_tf = lambda img: encrypt(timms(img), key)  # noqa: E731
    else:
        expected_tf = _with_encryption_before_normalize(timms, key)
    ours_bicubic = create_transform(
        key, is_training=True, use_prefetcher=use_prefetcher, interpolation="bicubic"
    )
    outputs = []
    for seed, img in enumerate(real_images[channels][:6]):
        random.seed(seed), torch.manual_seed(seed)  # timm's crop draws from random
        expected = expected_tf(img)
        random.seed(seed), torch.manual_seed(seed)
        out = ours(img)
        assert out.shape == (channels, *key.image_size)
        if use_prefetcher:
            assert out.dtype == torch.uint8 and torch.equal(out, expected)
        else:  # ToTensor then flip (1 - v) vs flip on bytes then / 255: one float rounding
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        random.seed(seed), torch.manual_seed(seed)
        assert not torch.equal(ours_bicubic(img), out)  # the interpolation shows in the output
        random.seed(seed + 100), torch.manual_seed(seed + 100)
        outputs.append((out, ours(img)))
    assert all(not torch.equal(a, b) for a, b in outputs)  # the augmentation is random


@pytest.mark.parametrize("scheme", ["blockwise", "etc", "pe", "le"])
def test_encrypt_to_tensor_is_to_tensor_then_encrypt_and_survives_pickling(scheme, photo):
    import pickle

    from timm.data.transforms import MaybePILToTensor

    from timm_ppconvmixer.schemes import generate_key
    from timm_ppconvmixer.transforms import EncryptToTensor

    key = generate_key(scheme, image_size=32, block_size=1 if scheme == "pe" else 8, seed=5)
    img = photo.resize((32, 32))
    tf = EncryptToTensor(key)
    expected = encrypt(MaybePILToTensor()(img), key).float() / 255  # the bytes encrypted
    assert torch.equal(tf(img), expected) and torch.equal(tf(img), expected)  # prebuilt path
    # a loader worker gets a pickled copy: the prebuilt gather is left behind and rebuilt
    copy = pickle.loads(pickle.dumps(tf))
    assert "_run" not in copy.__dict__ and torch.equal(copy(img), expected)
    with pytest.raises(ValueError, match="32"):
        tf(photo)  # not the key's size: the cipher's clear error, not a wrong gather
