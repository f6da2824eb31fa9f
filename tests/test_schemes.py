"""The family of schemes: each scheme against a per-block loop written from its step list (not
from the compiled gather plan), exact round trips on every input type, and the shared key life
cycle (file, permissions, validation, fingerprint) for every scheme."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from timm_ppconvmixer import BlockKey, CipherInputError, InvalidKeyError, decrypt, encrypt
from timm_ppconvmixer.cipher import encrypt_hwc_to_chw
from timm_ppconvmixer.schemes import (
    SCHEMES,
    ELEKey,
    EtCKey,
    LEKey,
    PEKey,
    generate_key,
    load_key,
    per_image_encryption,
)

# -- references: each scheme's steps, one block (or pixel) at a time --------------------------


def _blocks(x: np.ndarray, m: int) -> list[np.ndarray]:
    _, h, w = x.shape
    return [x[:, y : y + m, xx : xx + m] for y in range(0, h, m) for xx in range(0, w, m)]


def _assemble(blocks: list[np.ndarray], shape: tuple, m: int) -> np.ndarray:
    out = np.empty(shape, dtype=np.uint8)
    gw = shape[2] // m
    for i, b in enumerate(blocks):
        by, bx = divmod(i, gw)
        out[:, by * m : (by + 1) * m, bx * m : (bx + 1) * m] = b
    return out


def _le_block(block: np.ndarray, perm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = block.reshape(-1).astype(np.int64)
    halves = np.empty(2 * values.size, dtype=np.int64)
    halves[0::2], halves[1::2] = values >> 4, values & 15  # upper half first
    halves = halves[perm]
    halves = np.where(mask, 15 - halves, halves)
    return ((halves[0::2] << 4) | halves[1::2]).astype(np.uint8).reshape(block.shape)


def ref_blockwise(x, key):
    blocks = _blocks(x, key.block_size)
    pp, mask = key.pixel_perm.numpy(), key.np_mask.numpy()
    out = []
    for src in key.block_perm.tolist():
        vec = blocks[src].reshape(-1)[pp]
        out.append(np.where(mask, 255 - vec, vec).reshape(blocks[src].shape))
    return _assemble(out, x.shape, key.block_size)


def ref_le(x, key):
    perm, mask = key.nibble_perm.numpy(), key.nibble_mask.numpy()
    blocks = [_le_block(b, perm, mask) for b in _blocks(x, key.block_size)]
    return _assemble(blocks, x.shape, key.block_size)


def ref_ele(x, key):
    perm, mask = key.nibble_perm.numpy(), key.nibble_mask.numpy()
    le = [_le_block(b, perm[k], mask[k]) for k, b in enumerate(_blocks(x, key.block_size))]
    return _assemble([le[src] for src in key.block_perm.tolist()], x.shape, key.block_size)


def ref_etc(x, key):
    blocks = _blocks(x, key.block_size)
    out = []
    for i, src in enumerate(key.block_perm.tolist()):
        b = np.rot90(blocks[src], int(key.rotation[i]), axes=(1, 2))
        b = {0: b, 1: b[:, :, ::-1], 2: b[:, ::-1, :]}[int(key.flip[i])]
        b = 255 - b if key.np_mask[i] else b
        out.append(b[key.channel_perm[i].numpy()])
    return _assemble(out, x.shape, key.block_size)


def ref_pe(x, key):
    c, h, w = x.shape
    out = np.empty_like(x)
    for p in range(h * w):
        y, xx = divmod(p, w)
        for ch in range(c):
            v = x[int(key.channel_perm[p, ch]), y, xx]
            out[ch, y, xx] = 255 - v if key.np_mask[p, ch] else v
    return out


REFERENCES = {
    "blockwise": ref_blockwise,
    "le": ref_le,
    "ele": ref_ele,
    "etc": ref_etc,
    "pe": ref_pe,
}


def make_key(scheme, size, m, c, seed):
    return generate_key(
        scheme, image_size=size, block_size=1 if scheme == "pe" else m, channels=c, seed=seed
    )


@st.composite
def scheme_image_key(draw, schemes=SCHEMES):
    scheme = draw(st.sampled_from(schemes))
    m = draw(st.sampled_from([1, 2, 4]))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c = draw(st.sampled_from([1, 3]))
    b = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    key = make_key(scheme, (gh * m, gw * m), m, c, seed)
    x = np.random.default_rng(seed).integers(0, 256, (b, c, gh * m, gw * m), dtype=np.uint8)
    return scheme, torch.from_numpy(x), key


# -- every scheme against its reference, and round trips ---------------------------------------


@settings(max_examples=60, deadline=None)
@given(scheme_image_key())
def test_every_scheme_agrees_with_its_step_by_step_reference(case):
    scheme, x, key = case
    enc = encrypt(x, key)
    for b in range(x.shape[0]):
        assert np.array_equal(enc[b].numpy(), REFERENCES[scheme](x[b].numpy(), key))


@settings(max_examples=60, deadline=None)
@given(scheme_image_key())
def test_decrypt_inverts_encrypt_for_tensors_arrays_and_pil(case):
    _, x, key = case
    assert torch.equal(decrypt(encrypt(x, key), key), x)
    hwc = x.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(decrypt(encrypt(hwc, key, layout="HWC"), key, layout="HWC"), hwc)
    one = hwc[0] if key.channels == 3 else hwc[0, :, :, 0]
    img = Image.fromarray(one)
    assert np.array_equal(np.asarray(decrypt(encrypt(img, key), key)), one)
    # the fused HWC -> CHW path of EncryptToTensor gives the same bytes, by either gather:
    # torch's int32 index_select (a writable contiguous array, what EncryptToTensor passes) and
    # numpy's take (strided or read-only arrays, which torch cannot wrap without a warning)
    writable = np.ascontiguousarray(hwc[0])
    read_only = writable.copy()
    read_only.flags.writeable = False
    for a in (hwc[0], writable, read_only):
        assert torch.equal(encrypt_hwc_to_chw(a, key), encrypt(x[0], key))
        if not key.per_image:
            enc_hwc = encrypt(x[0], key).permute(1, 2, 0).contiguous().numpy()
            assert torch.equal(encrypt_hwc_to_chw(enc_hwc, key, decrypt=True), x[0])


@settings(max_examples=30, deadline=None)
@given(scheme_image_key())
def test_floats_of_8_bit_levels_encrypt_like_their_bytes(case):
    _, x, key = case
    f = x.float() / 255  # what ToTensor makes
    enc = encrypt(f, key)
    assert enc.dtype == torch.float32
    assert torch.equal((enc * 255).round().to(torch.uint8), encrypt(x, key))
    assert torch.equal((decrypt(enc, key) * 255).round().to(torch.uint8), x)


def test_the_cpu_lookup_tables_split_and_merge_halves_like_the_device_code():
    from timm_ppconvmixer import cipher

    x = torch.arange(256, dtype=torch.uint8).repeat(3, 1)
    halves = cipher._split_halves(x)
    assert torch.equal(halves, cipher._split_halves_by_shifts(x))
    assert torch.equal(halves[0, 2 * 0xA7 : 2 * 0xA7 + 2], torch.tensor([0xA, 0x7]))
    assert torch.equal(cipher._merge_halves(halves), x)
    assert torch.equal(cipher._merge_halves_by_shifts(halves), x)


@pytest.mark.parametrize("scheme", ["le", "ele"])
def test_halves_schemes_refuse_floats_off_the_8_bit_grid(scheme):
    key = make_key(scheme, 8, 4, 3, 0)
    with pytest.raises(CipherInputError, match="4-bit halves"):
        encrypt(torch.full((3, 8, 8), 0.5), key)  # 127.5 / 255: not an 8-bit level
    with pytest.raises(CipherInputError, match="4-bit halves"):
        encrypt(torch.full((3, 8, 8), 100 / 255 + 1e-4), key)  # close to a level, not on it


@pytest.mark.parametrize("scheme", ["le", "ele"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_halves_schemes_take_every_8_bit_level_in_every_float_dtype(scheme, dtype):
    key = make_key(scheme, 16, 4, 1, 0)
    x = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    wide = torch.float64 if dtype == torch.float64 else torch.float32

    def to_float(u):  # ToTensor (in float32; float64 divides in float64), then a cast
        return (u.to(wide) / 255).to(dtype)

    f = to_float(x)
    enc = encrypt(f, key)
    assert enc.dtype == dtype and torch.equal(enc, to_float(encrypt(x, key)))
    assert torch.equal(decrypt(enc, key), f)


def test_etc_is_a_whole_value_map_and_pe_keeps_pixels_in_place():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    etc = make_key("etc", 16, 4, 3, 1)
    # every encrypted value is a plain value of the same block's source, or its inverse
    src = set(x.flatten().tolist())
    assert set(v if v in src else 255 - v for v in encrypt(x, etc).flatten().tolist()) <= src
    pe = make_key("pe", 16, 1, 3, 2)
    folded = torch.minimum(encrypt(x, pe), 255 - encrypt(x, pe)).sort(dim=0).values
    assert torch.equal(folded, torch.minimum(x, 255 - x).sort(dim=0).values)


def test_one_channel_colour_shuffles_are_the_identity():
    etc, pe = make_key("etc", 8, 4, 1, 0), make_key("pe", 8, 1, 1, 0)
    assert (etc.channel_perm == 0).all() and (pe.channel_perm == 0).all()


def test_schemes_share_keys_as_documented():
    le, ele = make_key("le", 16, 4, 3, 0), make_key("ele", 16, 4, 3, 0)
    x = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    same = x.clone()
    same[:, 4:8, 4:8] = same[:, 0:4, 0:4]  # block 5 repeats block 0
    # LE: one key for every block, blocks stay in place: equal blocks encrypt equally
    assert torch.equal(encrypt(same, le)[:, 4:8, 4:8], encrypt(same, le)[:, 0:4, 0:4])
    # ELE: a key per block position: the rows of its shuffles differ
    assert not torch.equal(ele.nibble_perm[0], ele.nibble_perm[5])


# -- pe-per-image -------------------------------------------------------------------------------


def test_pe_per_image_gives_a_new_ciphertext_every_time_and_cannot_be_decrypted():
    pe = per_image_encryption(16, channels=3)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    first, second = encrypt(x, pe), encrypt(x, pe)
    assert not torch.equal(first, second)
    batch = encrypt(torch.stack([x, x]), pe)
    assert not torch.equal(batch[0], batch[1])  # a fresh key per image of one batch too
    for enc in (first, second, batch[0], batch[1]):  # each is a PE encryption of x
        folded = torch.minimum(enc, 255 - enc).sort(dim=0).values
        assert torch.equal(folded, torch.minimum(x, 255 - x).sort(dim=0).values)
    hwc = x.permute(1, 2, 0).numpy()
    for attempt in (
        lambda: decrypt(first, pe),
        lambda: decrypt(hwc, pe),
        lambda: decrypt(Image.fromarray(hwc), pe),
        lambda: encrypt_hwc_to_chw(hwc, pe, decrypt=True),
    ):
        with pytest.raises(CipherInputError, match="cannot be decrypted, by design"):
            attempt()
    # both halves of the key are drawn: channel orders and inversions vary over the pixels
    levels = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
    enc = encrypt(levels.contiguous(), pe)
    inverted = enc > 127
    order = torch.where(inverted, 255 - enc, enc)
    kept = (order == levels).all(dim=0).float().mean()  # about 1/6 of the pixels
    assert 0.05 < kept < 0.5 and 0.3 < inverted.float().mean() < 0.7
    f = encrypt(x.float() / 255, pe)
    assert f.dtype == torch.float32 and set((f * 255).round().flatten().tolist()) <= set(
        v for u in x.flatten().tolist() for v in (u, 255 - u)
    )


# -- the key life cycle, for every scheme -------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_key_file_round_trip_owner_only_and_no_overwrite(tmp_path, scheme):
    key = make_key(scheme, (8, 12), 4, 3, 7)
    path = key.save(tmp_path / "k.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = load_key(path)
    assert type(loaded) is type(key) and loaded == key
    assert loaded.fingerprint == key.fingerprint and loaded.scheme == scheme
    assert json.loads(path.read_text())["scheme"] == key.describe()["scheme"]
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_key(scheme, (8, 12), 4, 3, 8).save(path)
    assert load_key(path) == key
    assert "salt" not in repr(key) and json.loads(key.to_json())["salt"] not in repr(key)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unseeded_keys_come_from_the_csprng_and_differ(scheme):
    a, b = make_key(scheme, 8, 4, 3, None), make_key(scheme, 8, 4, 3, None)
    assert a != b and a.fingerprint != b.fingerprint
    assert make_key(scheme, 8, 4, 3, 3) == make_key(scheme, 8, 4, 3, 3)


def _tamper(tmp_path, key, edit):
    data = json.loads(key.to_json())
    edit(data)
    path = tmp_path / "bad.key"
    path.write_text(json.dumps(data))
    return path


def _shorten(value):
    return value[:-1]


def _repeat_first(value):
    rows = value if isinstance(value[0], list) else [value]
    rows[-1][-1] = rows[-1][0]
    return value


BAD_FIELDS = [
    ("le", "nibble_perm", _shorten),
    ("le", "nibble_perm", _repeat_first),
    ("le", "nibble_mask", _shorten),
    ("ele", "block_perm", _repeat_first),
    ("ele", "nibble_perm", _shorten),
    ("ele", "nibble_perm", _repeat_first),
    ("ele", "nibble_mask", lambda v: "2" + v[1:]),
    ("etc", "rotation", lambda v: [4] + v[1:]),
    ("etc", "flip", lambda v: [3] + v[1:]),
    ("etc", "flip", lambda v: [1.0] + v[1:]),
    ("etc", "np_mask", _shorten),
    ("etc", "channel_perm", _repeat_first),
    ("pe", "channel_perm", _shorten),
    ("pe", "np_mask", _shorten),
]


@pytest.mark.parametrize("scheme, field, edit", BAD_FIELDS)
def test_validation_names_the_bad_field(tmp_path, scheme, field, edit):
    key = make_key(scheme, 8, 4, 3, 0)
    path = _tamper(tmp_path, key, lambda d: d.update({field: edit(d[field])}))
    with pytest.raises(InvalidKeyError, match=field) as info:
        load_key(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_missing_fields_edits_and_versions_are_refused(tmp_path, scheme):
    key = make_key(scheme, 8, 4, 3, 0)
    first = next(f.name for f, _ in key.secret_items())
    for edit, message in (
        (lambda d: d.pop(first), "lacks field"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(salt="00" * 16), "fingerprint mismatch"),
        (lambda d: d.update(scheme="ppconvmixer-nope"), "unknown 'scheme'"),
    ):
        with pytest.raises(InvalidKeyError, match=message):
            load_key(_tamper(tmp_path, key, edit))


def test_a_file_without_scheme_is_blockwise_and_blockkey_load_names_other_schemes(tmp_path):
    key = BlockKey.generate(8, 4, seed=0)
    path = _tamper(tmp_path, key, lambda d: d.pop("scheme"))
    assert load_key(path) == key and BlockKey.load(path) == key
    le = make_key("le", 8, 4, 3, 0).save(tmp_path / "le.key")
    with pytest.raises(InvalidKeyError, match="holds a 'le' key; this needs a 'blockwise' key"):
        BlockKey.load(le)
    assert isinstance(LEKey.load(le), LEKey)
    with pytest.raises(InvalidKeyError, match="holds a 'le' key"):
        ELEKey.load(le)


def test_fingerprints_differ_across_schemes_even_for_equal_arrays():
    keys = [make_key(s, 8, 4, 3, 0) for s in SCHEMES]
    assert len({k.fingerprint for k in keys}) == len(SCHEMES)
    le = make_key("le", 8, 4, 3, 0)
    twin = LEKey.__new__(LEKey)
    twin.__dict__.update(le.__dict__)
    twin.FILE_SCHEME = "ppconvmixer-ele"  # same salt, same arrays, another scheme's name
    assert twin._compute_fingerprint() != le._compute_fingerprint()


def test_generate_key_checks_its_arguments():
    with pytest.raises(InvalidKeyError, match="unknown scheme 'nope'"):
        generate_key("nope", image_size=8, block_size=4)
    with pytest.raises(InvalidKeyError, match="per_image_encryption"):
        generate_key("pe-per-image", image_size=8)
    with pytest.raises(InvalidKeyError, match="block_size is required"):
        generate_key("le", image_size=8)
    with pytest.raises(InvalidKeyError, match="block_size must be 1"):
        generate_key("pe", image_size=8, block_size=4)
    with pytest.raises(InvalidKeyError, match="multiple of 4"):
        generate_key("etc", image_size=10, block_size=4)
    assert isinstance(generate_key("pe", image_size=8), PEKey)
    assert isinstance(generate_key("etc", image_size=8, block_size=4), EtCKey)
