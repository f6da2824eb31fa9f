"""Key-free augmentation on encrypted images: every claim of encrypted_augment's docstring,
checked against real keys on the test side only (the augmentations never see a key)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import stats
from timm.data import FastCollateMixup, Mixup, create_transform
from timm.data.random_erasing import RandomErasing

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.encrypted_augment import (
    BlockErasing,
    BlockMixup,
    blocks_to_pixels,
    cutmix_blocks,
    erase_blocks,
)

FAST = settings(max_examples=30, deadline=None)


@st.composite
def keys(draw, channels: tuple[int, ...] = (1, 3)) -> BlockKey:
    """Random geometry (block 2 or 4, grids up to 4x4, 1 or 3 channels) and random secrets."""
    block = draw(st.sampled_from([2, 4]))
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return BlockKey.generate(
        (grid[0] * block, grid[1] * block),
        block,
        channels=draw(st.sampled_from(channels)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def dyadic(key: BlockKey, batch: int, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    """Float images k/256: v -> 1 - v is exact on them, so selections compare bit for bit."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, key.channels, *key.image_size)
    return torch.randint(low, high, shape, generator=g).float() / 256


def plain_blocks(key: BlockKey, encrypted_mask: torch.Tensor) -> torch.Tensor:
    """The plain blocks a mask over encrypted blocks covers: encrypted block i holds plain block
    ``block_perm[i]`` (paper Sec. III-A, step 2). Test side only: it needs K1."""
    flat = encrypted_mask.flatten(-2)
    plain = torch.zeros_like(flat)
    plain[..., key.block_perm] = flat
    return plain.view_as(encrypted_mask)


def pixel_mask(key: BlockKey, block_mask: torch.Tensor) -> torch.Tensor:
    return blocks_to_pixels(block_mask, key.block_size).unsqueeze(-3)


class Normalise:
    """Per-channel normalisation with random statistics, as timm's ``Normalize`` does it."""

    def __init__(self, channels: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mean = torch.rand(channels, 1, 1, generator=g)
        self.std = 0.1 + torch.rand(channels, 1, 1, generator=g)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def changed_blocks(key: BlockKey, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Blocks (B, H/M, W/M) in which ``after`` differs from ``before`` anywhere."""
    m = key.block_size
    diff = (before != after).any(1).float().unsqueeze(1)
    return torch.nn.functional.max_pool2d(diff, m).squeeze(1).bool()


# -- claim 1: mixup is exact -------------------------------------------------------------------


@FAST
@given(key=keys(), seed=st.integers(0, 2**16), lam=st.floats(0, 1))
def test_mixup_commutes_with_encryption_before_and_after_normalisation(key, seed, lam):
    a, b = torch.rand(
        2, 2, key.channels, *key.image_size, generator=torch.Generator().manual_seed(seed)
    )
    mix = lam * a + (1 - lam) * b
    torch.testing.assert_close(
        lam * encrypt(a, key) + (1 - lam) * encrypt(b, key), encrypt(mix, key)
    )
    norm = Normalise(key.channels, seed)
    mixed_normalised = lam * norm(encrypt(a, key)) + (1 - lam) * norm(encrypt(b, key))
    torch.testing.assert_close(mixed_normalised, norm(encrypt(mix, key)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
def test_timm_mixup_on_encrypted_batches_is_mixup_of_the_plain_batches(mode):
    key = BlockKey.generate(16, 4, seed=1)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = torch.arange(8)
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode=mode, num_classes=8)
    for seed in range(5):
        np.random.seed(seed)
        enc_out, enc_target = mixup(encrypt(x, key), target)
        np.random.seed(seed)
        plain_out, plain_target = mixup(x.clone(), target)
        torch.testing.assert_close(enc_out, encrypt(plain_out, key))
        torch.testing.assert_close(enc_target, plain_target)


def test_timm_fast_collate_mixup_on_uint8_is_exact_to_one_grey_level():
    """The prefetcher path (``FastCollateMixup``) mixes uint8 and rounds; rounding ties can
    differ by one level between the two sides, nothing more."""
    key = BlockKey.generate(16, 4, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    collate = FastCollateMixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode="elem", num_classes=8)
    for seed in range(5):
        np.random.seed(seed)
        enc_out, _ = collate([(img.numpy(), i) for i, img in enumerate(encrypt(x, key))])
        np.random.seed(seed)
        plain_out, _ = collate([(img.numpy(), i) for i, img in enumerate(x)])
        diff = (enc_out.int() - encrypt(plain_out, key).int()).abs()
        assert diff.max() <= 1


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_block_mixup_mixup_equals_encrypt_of_plain_mixup(mode):
    key = BlockKey.generate((8, 12), 4, seed=3)
    x = torch.rand(6, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    fn = BlockMixup(mixup_alpha=0.8, mode=mode, num_classes=6, block_size=4)
    np.random.seed(7)
    enc_out, enc_target = fn(encrypt(x, key), torch.arange(6))
    np.random.seed(7)
    plain_out, plain_target = fn(x, torch.arange(6))
    torch.testing.assert_close(enc_out, encrypt(plain_out, key))
    torch.testing.assert_close(enc_target, plain_target)


# -- claim 2: block-aligned CutMix is exact ------------------------------------------------------


@FAST
@given(key=keys(), seed=st.integers(0, 2**16), mask_bits=st.integers(0, 2**16 - 1))
def test_block_cutmix_is_encrypt_of_a_plain_whole_block_swap(key, seed, mask_bits):
    a, b = dyadic(key, 2, seed)
    gh, gw = key.grid_size
    bits = torch.tensor([(mask_bits >> i) & 1 for i in range(gh * gw)], dtype=torch.bool)
    enc_mask = bits.view(1, gh, gw)
    swapped = torch.where(pixel_mask(key, plain_blocks(key, enc_mask)), b, a)
    out = cutmix_blocks(encrypt(a[None], key), encrypt(b[None], key), enc_mask, key.block_size)
    assert torch.equal(out, encrypt(swapped, key))
    norm = Normalise(key.channels, seed)  # selection commutes with normalisation too
    out = cutmix_blocks(
        norm(encrypt(a[None], key)), norm(encrypt(b[None], key)), enc_mask, key.block_size
    )
    assert torch.equal(out, norm(encrypt(swapped, key)))


@FAST
@given(
    key=keys(),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["batch", "elem"]),
    region=st.sampled_from(["box", "blocks"]),
)
def test_block_mixup_cutmix_swaps_whole_plain_blocks_with_exact_label_weights(
    key, seed, mode, region
):
    x = dyadic(key, 4, seed)
    enc = encrypt(x, key)
    fn = BlockMixup(
        mixup_alpha=0.0,
        cutmix_alpha=1.0,
        mode=mode,
        label_smoothing=0.0,
        num_classes=4,
        block_size=key.block_size,
        cutmix_region=region,
    )
    np.random.seed(seed)
    out, target = fn(enc.clone(), torch.arange(4))
    taken = changed_blocks(key, enc, out)  # what came from the partner (the reversed batch)
    partner = x.flip(0)
    expected = torch.where(pixel_mask(key, plain_blocks(key, taken)), partner, x)
    assert torch.equal(out, encrypt(expected, key))
    kept = 1 - taken.flatten(1).float().mean(1)
    torch.testing.assert_close(target[torch.arange(4), torch.arange(4)], kept)
    if mode == "batch":
        assert (taken == taken[0]).all()


def _mixed_plain_blocks(key: BlockKey, plain: torch.Tensor, a: torch.Tensor) -> int:
    """Plain blocks holding values of both ``a`` (values < 0.5) and ``b`` (values >= 0.5)."""
    from_a = (plain == a).float()
    share = torch.nn.functional.avg_pool2d(from_a.mean(-3, keepdim=True), key.block_size)
    return int(((share > 0) & (share < 1)).sum())


def test_cutmix_box_not_aligned_to_the_grid_mixes_pixels_inside_plain_blocks():
    key = BlockKey.generate(16, 4, seed=4)
    a = dyadic(key, 1, 0, 0, 128)[0]  # a < 0.5 <= b everywhere: each value says its source
    b = dyadic(key, 1, 1, 128, 256)[0]
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[2:10, 5:13] = True  # not on the 4-pixel grid
    plain = decrypt(torch.where(box, encrypt(b, key), encrypt(a, key)), key)
    assert _mixed_plain_blocks(key, plain, a) > 0
    aligned = torch.zeros(1, 4, 4, dtype=torch.bool)
    aligned[0, 0:2, 1:3] = True  # the same kind of box on the grid
    out = cutmix_blocks(encrypt(a[None], key), encrypt(b[None], key), aligned, 4)
    assert _mixed_plain_blocks(key, decrypt(out, key)[0], a) == 0


def test_timm_cutmix_on_encrypted_batches_is_not_a_block_swap():
    key = BlockKey.generate(32, 8, seed=5)
    a, b = dyadic(key, 1, 0, 0, 128)[0], dyadic(key, 1, 1, 128, 256)[0]
    x = torch.stack([a, b])
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2)
    mixed_runs = 0
    for seed in range(10):
        np.random.seed(seed)
        out, _ = mixup(encrypt(x, key), torch.arange(2))
        mixed_runs += _mixed_plain_blocks(key, decrypt(out, key)[0], a) > 0
    assert mixed_runs >= 5  # timm's boxes fall on the 8-pixel grid only by chance


def _soft_targets(lam: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """What mixing image i (label i) with its partner B-1-i (label B-1-i) must give, written
    out from the definition (label smoothing, then lam and 1 - lam), not through timm."""
    off, on = smoothing / classes, 1 - smoothing + smoothing / classes
    eye = torch.full((classes, classes), off)
    eye.fill_diagonal_(on)
    return lam[:, None] * eye + (1 - lam[:, None]) * eye.flip(0)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("region", ["box", "blocks"])
def test_block_cutmix_takes_the_partner_blocks_lam_says_and_mixes_labels_with_that_lam(
    mode, region
):
    """Read back, not re-derived: image i's pixels lie in [i/4, (i+1)/4), so every pixel of the
    decrypted mix says which image it came from. Each plain block must come whole from image i
    or its partner B-1-i, the partner's share of blocks must be exactly 1 - lam of the soft
    target, lam must be strictly between 0 and 1, and a box region must be a rectangle of
    encrypted blocks of that area."""
    key = BlockKey.generate(32, 4, seed=6)  # 8 x 8 blocks
    batch = 4
    x = torch.cat([dyadic(key, 1, 10 + i, 64 * i, 64 * (i + 1)) for i in range(batch)])
    fn = BlockMixup(
        mixup_alpha=0.0,
        cutmix_alpha=1.0,
        mode=mode,
        label_smoothing=0.1,
        num_classes=batch,
        block_size=4,
        cutmix_region=region,
    )
    for seed in (2, 6, 8, 10):  # seeds whose lam is strictly inside (0, 1) for every image
        np.random.seed(seed)
        out, target = fn(encrypt(x, key), torch.arange(batch))
        source = (decrypt(out, key) * 4).floor().long()  # the image each plain pixel came from
        per_block = source.amax(1).unfold(1, 4, 4).unfold(2, 4, 4).flatten(-2)  # (B, 8, 8, 16)
        low = source.amin(1).unfold(1, 4, 4).unfold(2, 4, 4).flatten(-2)
        assert torch.equal(per_block.amax(-1), low.amin(-1)), "a plain block mixes two images"
        block_source = per_block[..., 0].flatten(1)  # (B, n)
        own = torch.arange(batch)[:, None]
        assert ((block_source == own) | (block_source == batch - 1 - own)).all()
        from_partner = block_source == batch - 1 - own
        share = from_partner.double().mean(1)
        assert ((share > 0) & (share < 1)).all(), (seed, share)  # a real swap, both images
        lam = 1 - share.float()
        torch.testing.assert_close(target, _soft_targets(lam, batch, 0.1))
        # the blocks the partner gave, as encrypted positions: encrypted block e holds plain
        # block block_perm[e], so e came from the partner iff block_perm[e] did
        enc_taken = from_partner[:, key.block_perm].view(batch, *key.grid_size)
        assert torch.equal(
            out, torch.where(pixel_mask(key, enc_taken), encrypt(x.flip(0), key), encrypt(x, key))
        )
        if mode == "batch":
            assert (enc_taken == enc_taken[0]).all()
        if region == "box":
            for taken in enc_taken:
                rows, cols = taken.any(1).nonzero(), taken.any(0).nonzero()
                box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                assert int(taken.sum()) == int(box), "the taken blocks are not a rectangle"


def test_block_mixup_mixup_is_the_lam_weighted_sum_with_the_reversed_batch():
    key = BlockKey.generate(16, 4, seed=7)
    x = encrypt(dyadic(key, 4, 3), key)
    fn = BlockMixup(mixup_alpha=1.0, mode="elem", label_smoothing=0.0, num_classes=4, block_size=4)
    np.random.seed(5)  # a seed whose lam is well inside (0, 1) for every element
    out, target = fn(x.clone(), torch.arange(4))
    lam = target.diagonal()
    assert ((lam > 0.01) & (lam < 0.99)).all(), lam  # every element really mixed
    torch.testing.assert_close(target, _soft_targets(lam, 4, 0.0))
    torch.testing.assert_close(
        out, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x.flip(0)
    )


# -- claim 3: block erasing is exact -------------------------------------------------------------


@FAST
@given(key=keys(), seed=st.integers(0, 2**16), fraction=st.floats(0.05, 1.0))
def test_gray_block_erasing_is_plain_whole_block_erasing_with_gray(key, seed, fraction):
    x = dyadic(key, 3, seed)
    enc = encrypt(x, key)
    torch.manual_seed(seed)
    out = BlockErasing(key.block_size, prob=1.0, max_fraction=fraction)(enc)
    erased = changed_blocks(key, enc, out)
    n = key.num_blocks
    counts = erased.flatten(1).sum(1)
    assert (counts >= 1).all() and (counts <= max(1, int(fraction * n))).all()
    expected = torch.where(pixel_mask(key, plain_blocks(key, erased)), 0.5, x)
    assert torch.equal(decrypt(out, key), expected)

    norm = Normalise(key.channels, seed)
    torch.manual_seed(seed)
    stats_ = {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()}
    erase = BlockErasing(key.block_size, 1.0, fraction, **stats_)
    torch.testing.assert_close(erase(norm(enc)), norm(encrypt(expected, key)))


def test_uniform_block_erasing_gives_uniform_noise_on_uniformly_chosen_plain_blocks():
    key = BlockKey.generate(16, 4, channels=3, seed=6)
    x = dyadic(key, 400, 0)
    enc = encrypt(x, key)
    torch.manual_seed(0)
    out = BlockErasing(4, prob=1.0, max_fraction=0.25, fill="uniform")(enc)
    erased = changed_blocks(key, enc, out)
    plain_erased = pixel_mask(key, plain_blocks(key, erased)).expand_as(x)
    plain = decrypt(out, key)
    assert torch.equal(plain[~plain_erased], x[~plain_erased])  # whole plain blocks only
    noise = plain[plain_erased].numpy()
    assert stats.kstest(noise, "uniform").pvalue > 1e-3
    per_block = plain_blocks(key, erased).flatten(1).sum(0).numpy()
    assert stats.chisquare(per_block).pvalue > 1e-3  # every plain block equally likely


def test_timm_random_erasing_on_encrypted_images_hits_scattered_pixels():
    key = BlockKey.generate(32, 8, seed=7)
    x = dyadic(key, 1, 0)[0]
    torch.manual_seed(0)
    random.seed(0)  # timm's RandomErasing draws the box from Python's random, not torch's
    erase = RandomErasing(probability=1.0, mode="const", device="cpu")
    plain = decrypt(erase(encrypt(x, key).clone()).clamp(0, 1), key)
    changed = (plain != x).any(0).float()[None]
    share = torch.nn.functional.avg_pool2d(changed, 8)
    assert ((share > 0) & (share < 1)).any()  # plain blocks changed only in part


# -- claim 4: flips need the key ----------------------------------------------------------------


@FAST
@given(key=keys(channels=(3,)), other=st.integers(0, 2**32 - 1), seed=st.integers(0, 99))
def test_horizontal_flip_in_the_encrypted_domain_depends_on_the_key(key, other, seed):
    """``E_k(flip(D_k(y)))`` is the encrypted image a plain flip needs; it differs between two
    keys for the same ``y``, so no key-free operation can produce it."""
    k2 = BlockKey.generate(key.image_size, key.block_size, channels=3, seed=other)
    assume(k2 != key)
    y = dyadic(key, 1, seed)
    flip_k1 = encrypt(decrypt(y, key).flip(-1), key)
    flip_k2 = encrypt(decrypt(y, k2).flip(-1), k2)
    assert not torch.equal(flip_k1, flip_k2)
    assert not torch.equal(y.flip(-1), flip_k1)


# -- timm's pipeline with the flags docs/encrypted-data.md recommends ------------------------------


def test_recommended_timm_flags_leave_encrypted_images_untouched():
    key = BlockKey.generate(32, 8, seed=8)
    rng = np.random.default_rng(0)
    images = [
        encrypt(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), key)
        for _ in range(10)
    ]
    # train.py: --hflip 0 --scale 1 1 --ratio 1 1 --color-jitter 0 --reprob 0 (no --aa)
    safe_train = create_transform(
        (3, 32, 32),
        is_training=True,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        hflip=0.0,
        vflip=0.0,
        color_jitter=0.0,
        auto_augment=None,
        re_prob=0.0,
        interpolation="random",
        use_prefetcher=True,
    )
    no_aug = create_transform((3, 32, 32), is_training=True, no_aug=True, use_prefetcher=True)
    evaluation = create_transform((3, 32, 32), crop_pct=1.0, use_prefetcher=True)
    for tf in (safe_train, no_aug, evaluation):
        for img in images:
            for _ in range(3):
                out = tf(img)
                assert torch.equal(out, torch.from_numpy(np.array(img)).permute(2, 0, 1))
    default_train = create_transform((3, 32, 32), is_training=True, use_prefetcher=True)
    torch.manual_seed(0)
    assert any(
        not torch.equal(default_train(img), torch.from_numpy(np.array(img)).permute(2, 0, 1))
        for img in images
    )


# -- input checks -------------------------------------------------------------------------------


def test_inputs_that_cannot_be_mixed_or_erased_are_refused_with_a_reason():
    fn = BlockMixup(num_classes=4, block_size=4)
    with pytest.raises(ValueError, match="even"):
        fn(torch.rand(3, 3, 8, 8), torch.arange(3))
    with pytest.raises(ValueError, match="float batch"):
        fn(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.arange(2))
    with pytest.raises(ValueError, match="multiple of block_size"):
        fn(torch.rand(2, 3, 10, 8), torch.arange(2))
    with pytest.raises(ValueError, match="must be > 0"):
        BlockMixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="float images"):
        BlockErasing(4)(torch.zeros(3, 8, 8, dtype=torch.uint8))
    whole = torch.ones(1, 1, 1, dtype=torch.bool)
    assert erase_blocks(torch.zeros(1, 1, 4, 4), whole, torch.tensor(0.5), 4).eq(0.5).all()
