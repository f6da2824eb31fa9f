import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from timm_ppconvmixer import BlockKey, CipherInputError, decrypt, encrypt


def reference_encrypt(x: np.ndarray, key: BlockKey) -> np.ndarray:
    """The scheme written out step by step (`docs/design.md` section 2), one block at a time."""
    c, m = key.channels, key.block_size
    gh, gw = key.grid_size
    blocks = [
        x[:, by * m : (by + 1) * m, bx * m : (bx + 1) * m] for by in range(gh) for bx in range(gw)
    ]
    out = np.empty_like(x)
    for i, src in enumerate(key.block_perm.tolist()):  # K1
        vec = blocks[src].reshape(-1)[key.pixel_perm.numpy()]  # K2, (C, M, M) order
        vec = np.where(key.np_mask.numpy(), 255 - vec, vec)  # K3
        by, bx = divmod(i, gw)
        out[:, by * m : (by + 1) * m, bx * m : (bx + 1) * m] = vec.reshape(c, m, m)
    return out


@st.composite
def image_and_key(draw):
    m = draw(st.sampled_from([1, 2, 4, 8]))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c = draw(st.sampled_from([1, 3]))
    b = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    key = BlockKey.generate((gh * m, gw * m), m, channels=c, seed=seed)
    x = torch.from_numpy(
        np.random.default_rng(seed).integers(0, 256, (b, c, gh * m, gw * m), dtype=np.uint8)
    )
    return x, key


@settings(max_examples=60, deadline=None)
@given(image_and_key())
def test_uint8_matches_reference_and_round_trips_exactly(case):
    x, key = case
    enc = encrypt(x, key)
    assert enc.dtype == torch.uint8 and enc.shape == x.shape
    for i in range(x.shape[0]):
        assert np.array_equal(enc[i].numpy(), reference_encrypt(x[i].numpy(), key))
    assert torch.equal(decrypt(enc, key), x)


@settings(max_examples=40, deadline=None)
@given(
    image_and_key(), st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])
)
def test_float_agrees_with_uint8_and_round_trips(case, dtype):
    x, key = case
    xf = (x.double() / 255).to(dtype)
    enc = encrypt(xf, key)
    assert enc.dtype == dtype
    expected = encrypt(x, key).double() / 255
    tol = {torch.float16: 2e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(enc.double(), expected, atol=tol, rtol=0)
    torch.testing.assert_close(decrypt(enc, key).double(), xf.double(), atol=tol, rtol=0)


def test_unbatched_tensor_and_device_kept():
    key = BlockKey.generate(16, 4, seed=0)
    x = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    enc = encrypt(x, key)
    assert enc.shape == (3, 16, 16) and enc.device == x.device
    assert torch.equal(enc, encrypt(x[None], key)[0])


def test_numpy_layouts_and_pil():
    key = BlockKey.generate((16, 24), 8, seed=5)
    chw = np.random.default_rng(0).integers(0, 256, (3, 16, 24), dtype=np.uint8)
    hwc = chw.transpose(1, 2, 0).copy()
    expected = encrypt(torch.from_numpy(chw), key).numpy()
    assert np.array_equal(encrypt(chw, key), expected)  # auto picks CHW
    assert np.array_equal(encrypt(hwc, key), expected.transpose(1, 2, 0))  # auto picks HWC
    assert np.array_equal(encrypt(hwc[None], key)[0], expected.transpose(1, 2, 0))
    img = Image.fromarray(hwc)
    enc_img = encrypt(img, key)
    assert enc_img.mode == "RGB" and np.array_equal(
        np.asarray(enc_img), expected.transpose(1, 2, 0)
    )
    assert np.array_equal(np.asarray(decrypt(enc_img, key)), hwc)


def test_grayscale_numpy_2d_and_pil_l():
    key = BlockKey.generate(8, 4, channels=1, seed=2)
    a = np.arange(64, dtype=np.uint8).reshape(8, 8)
    enc = encrypt(a, key)
    assert enc.shape == (8, 8)
    assert np.array_equal(enc, encrypt(torch.from_numpy(a)[None], key)[0].numpy())
    assert np.array_equal(np.asarray(encrypt(Image.fromarray(a, "L"), key)), enc)


def test_ambiguous_numpy_layout_needs_explicit_choice():
    key = BlockKey.generate(4, 2, channels=4, seed=0)
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(CipherInputError, match="layout="):
        encrypt(a, key)
    assert encrypt(a, key, layout="CHW").shape == (4, 4, 4)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(3, 16, 20, dtype=torch.uint8), "got shape"),
        (torch.zeros(1, 16, 16, dtype=torch.uint8), "got shape"),
        (torch.zeros(3, 16, 16, dtype=torch.int32), "unsupported dtype"),
        (torch.full((3, 16, 16), 1.5), r"\[0, 1\]"),
        (torch.full((3, 16, 16), -0.1), r"\[0, 1\]"),
        (np.zeros((16, 16, 3), dtype=np.float32), "uint8"),
        (np.zeros((16, 16, 1), dtype=np.uint8), "expected a uint8 array"),
        (Image.new("RGBA", (16, 16)), "convert"),
        (Image.new("RGB", (20, 16)), "resize"),
        ([1, 2, 3], "torch.Tensor"),
    ],
)
def test_bad_inputs_get_clear_errors(x, message):
    with pytest.raises(CipherInputError, match=message):
        encrypt(x, BlockKey.generate(16, 4, seed=0))


def test_encryption_actually_scrambles():
    key = BlockKey.generate(32, 4, seed=0)
    x = torch.arange(3 * 32 * 32).reshape(3, 32, 32).remainder(256).to(torch.uint8)
    enc = encrypt(x, key)
    assert (enc != x).float().mean() > 0.9
    other = BlockKey.generate(32, 4, seed=1)
    assert not torch.equal(decrypt(enc, other), x)
