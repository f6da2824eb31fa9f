"""Known answers from the public code of Madono et al. ([15]): LE, ELE and EtC as their code
encrypts, reproduced exactly by ``timm_ppconvmixer.schemes`` under the equivalent key.

What was run (once, outside this repository; the data is in ``tests/data/reference_schemes/``,
with the commit and blob ids in ``provenance.json``): ``MADONOKOUKI/Block-wise-Scrambled-Image-
Recognition`` at commit ``0b4606a244e19ca79cc518f9298662c3a4973aea``, its files unmodified,
fed as its ``default_cifar10_{LE,ELE,EtC}.py`` feed them (``ToTensor`` floats, NCHW batches):

* LE: ``Blockwise_scramble_LE.blockwise_scramble`` (``learnable_encryption.BlockScramble``, the
  same class as Tanaka's own public code, with the key file ``key4/0_.pkl`` for every block) on
  a 32x32x3 image; ``BlockScramble.Scramble`` with that key on a whole 8x8x3 image, and with a
  ``BlockScramble([4, 4, 1])`` key on an 8x8 grey image (their class takes any block grid;
  their LE / ELE / EtC pipelines are written for 32x32 images of 4x4 blocks only);
* ELE: ``Blockwise_scramble.blockwise_scramble`` (key file ``key4/<b>_.pkl`` for plain block
  ``b``), then ``Block_location_shuffle.block_location_shuffle`` with the shuffle of
  ``default_cifar10_ELE.py`` (``random.seed(30)``), on the 32x32x3 image;
* EtC: ``etc_encryption.EtC_encryption`` with the draws it makes at import
  (``random.seed(30)``), on the 32x32x3 image, twice: with every channel code set to 0 (the
  one code of its ``channel_change`` that keeps every channel; the others overwrite a channel
  before reading it, so that EtC has no inverse), and with ``channel_change`` replaced by one
  that reads from a copy of the block (what the six codes are written to do).

Their key files are not in their repository: they were made by their ``BlockScramble([4, 4,
3]).genKey`` (``np.random.shuffle``) after ``np.random.seed(2020)``, key files 0 to 63 in
order. The images: ``np.random.default_rng(7)``, 32x32x3, then 8x8x3, then 8x8x1.

Key translation (the arrays are in the npz; :func:`le_key_from_theirs` and
:func:`etc_key_from_theirs` redo it from their raw draws):

* LE: their key ``k`` is a permutation of a block's 2D halves in their order (all lower halves
  first, then all upper; values in (y, x, c) order); their halves at positions ``k > D`` (``D``
  = half the key's length) are inverted before and after the gather, so half ``i`` of the
  result is half ``k[i]`` inverted where ``rev[i] XOR rev[k[i]]``. With ``phi`` their position
  -> ours ((c, y, x, half) order, upper half first): ``nibble_perm[phi(i)] = phi(k[i])``,
  ``nibble_mask[phi(i)] = rev[i] XOR rev[k[i]]``.
* ELE: the LE translation of key file ``b`` is ``nibble_perm[b]`` / ``nibble_mask[b]`` (keys of
  plain block positions, as ours); their shuffle is ``block_perm`` (encrypted block ``a`` holds
  plain block ``shuffle[a]``).
* EtC: their codes belong to plain blocks and act before the blocks move; ours belong to
  encrypted positions and act after: our code at ``a`` is theirs at ``shuffle[a]``. Rotation:
  theirs 0, 1, 2, 3 = 90, 180, 270, 0 degrees (``np.rot90``), so ours is ``(theirs + 1) % 4``;
  flip: theirs 0 upside-down, 1 left-right, 2 none = ours 2, 1, 0; inversion: theirs 0 means
  inverted; channel code ``p`` = the channel order its ``channel_change`` writes.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from timm_ppconvmixer import decrypt, encrypt
from timm_ppconvmixer.schemes import ELEKey, EtCKey, LEKey
from timm_ppconvmixer.schemes import etc as etc_module

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "reference_schemes" / "madono_schemes.npz"
# channel order each of their channel codes writes: channel c of the result is channel
# CHANNEL_CODES[p][c] of the block
CHANNEL_CODES = ((0, 1, 2), (1, 0, 2), (2, 1, 0), (0, 2, 1), (2, 0, 1), (1, 2, 0))


@pytest.fixture(scope="module")
def ref():
    with np.load(DATA) as d:
        return {name: d[name] for name in d.files}


def le_key_from_theirs(key: np.ndarray, m: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(nibble_perm, nibble_mask) of ours for their BlockScramble key (see the docstring)."""
    key = key.astype(np.int64)
    d = m * m * c
    rev = key > key.size / 2
    t = np.arange(2 * d)
    half, value = np.divmod(t, d)  # half 0: lower; value in (y, x, c) order
    yx, ch = np.divmod(value, c)
    phi = (ch * m * m + yx) * 2 + (1 - half)
    perm, mask = np.empty(2 * d, np.int64), np.empty(2 * d, np.int64)
    perm[phi] = phi[key]
    mask[phi] = rev ^ rev[key]
    return perm, mask


def etc_key_from_theirs(ref: dict, channels_from_codes: bool) -> EtCKey:
    src = ref["their_etc_shuffle"].astype(np.int64)
    codes = ref["their_etc_channel"][src] if channels_from_codes else np.zeros(64, np.int64)
    return EtCKey(
        32,
        4,
        3,
        block_perm=src,
        rotation=(ref["their_etc_rotate"][src].astype(np.int64) + 1) % 4,
        flip=np.array([2, 1, 0])[ref["their_etc_reverse"][src]],
        np_mask=ref["their_etc_negaposi"][src] == 0,
        channel_perm=np.array([CHANNEL_CODES[int(p)] for p in codes]),
    )


@pytest.mark.parametrize(
    "plain, cipher, size, channels, raw, stored",
    [
        ("plain32", "le32", 32, 3, "their_le_key", "le"),
        ("plain8", "le8", 8, 3, "their_le_key", "le"),
        ("plain8_grey", "le8_grey", 8, 1, "their_le_grey_key", "le_grey"),
    ],
)
def test_le_reproduces_the_public_code(ref, plain, cipher, size, channels, raw, stored):
    perm, mask = le_key_from_theirs(ref[raw], 4, channels)
    assert np.array_equal(perm, ref[f"{stored}_nibble_perm"])
    assert np.array_equal(mask, ref[f"{stored}_nibble_mask"])
    key = LEKey(size, 4, channels, nibble_perm=perm, nibble_mask=mask)
    x = ref[plain]
    assert np.array_equal(encrypt(x, key, layout="HWC"), ref[cipher])
    assert np.array_equal(decrypt(ref[cipher], key, layout="HWC"), x)


def test_ele_reproduces_the_public_code(ref):
    perm = ref["ele_nibble_perm"].astype(np.int64)
    mask = np.unpackbits(ref["ele_nibble_mask"], axis=1)
    # their LE script reads key file 0 of the same folder: block 0's key is the LE key
    le_perm, le_mask = le_key_from_theirs(ref["their_le_key"], 4, 3)
    assert np.array_equal(perm[0], le_perm) and np.array_equal(mask[0], le_mask)
    assert np.array_equal(ref["ele_block_perm"], ref["their_ele_shuffle"])
    key = ELEKey(32, 4, 3, block_perm=ref["ele_block_perm"], nibble_perm=perm, nibble_mask=mask)
    x = ref["plain32"]
    assert np.array_equal(encrypt(x, key, layout="HWC"), ref["ele32"])
    assert np.array_equal(decrypt(ref["ele32"], key, layout="HWC"), x)


@pytest.mark.parametrize(
    "cipher, channels_from_codes",
    [("etc32_channel0", False), ("etc32_channel_from_copy", True)],
)
def test_etc_reproduces_the_public_code(ref, cipher, channels_from_codes):
    key = etc_key_from_theirs(ref, channels_from_codes)
    for name in ("block_perm", "rotation", "flip", "np_mask"):
        assert np.array_equal(key.secret(name).numpy(), ref[f"etc_{name}"]), name
    if channels_from_codes:
        assert np.array_equal(key.channel_perm.numpy(), ref["etc_channel_perm"])
    x = ref["plain32"]
    assert np.array_equal(encrypt(x, key, layout="HWC"), ref[cipher])
    assert np.array_equal(decrypt(ref[cipher], key, layout="HWC"), x)


# -- EtC's orientation codes: 12 codes, 8 maps -----------------------------------------------


def _orientation_maps() -> dict[tuple[int, int], tuple[int, ...]]:
    """The in-block map each (rotation, flip) code applies, read off the cipher's output."""
    fields = {f.name: f for f in EtCKey.fields((4, 4), 4, 1)}
    block = np.arange(16, dtype=np.uint8).reshape(4, 4)
    maps = {}
    for r, f in itertools.product(range(fields["rotation"].bound), range(fields["flip"].bound)):
        key = EtCKey(4, 4, 1, block_perm=[0], rotation=[r], flip=[f], np_mask=[0],
                     channel_perm=[[0]])  # fmt: skip
        maps[r, f] = tuple(encrypt(block, key).reshape(-1).tolist())
    return maps


def test_etc_orientation_codes_give_8_maps_reflections_twice_as_likely():
    maps = _orientation_maps()
    assert len(maps) == 12 and len(set(maps.values())) == 8
    # the key's draw: rotation and flip codes independent and uniform (the seeded draw here;
    # the CSPRNG draws through the same Field bounds)
    n = 24_000
    big = EtCKey.generate((4, 4 * n), 4, 1, seed=0)
    codes = zip(big.rotation.tolist(), big.flip.tolist(), strict=True)
    drawn = Counter(maps[code] for code in codes)
    codes_per_map = Counter(maps.values())
    rotations = {m for (r, f), m in maps.items() if f == 0}
    for m, count in codes_per_map.items():
        assert count == (1 if m in rotations else 2)  # each reflection has two codes
        assert abs(drawn[m] / n - count / 12) < 0.01
    bits = -sum(c / 12 * math.log2(c / 12) for c in codes_per_map.values())
    assert f"{bits:.2f}" == "2.92" and bits < 3
    # the figure the documentation states
    for text in (etc_module.__doc__, (ROOT / "docs" / "security_etc.md").read_text()):
        assert "2.92 bits" in text
