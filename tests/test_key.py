import json
import os
import re
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import holds_key_material

from timm_ppconvmixer import BlockKey, InvalidKeyError
from timm_ppconvmixer.schemes.base import MAX_KEY_FILE_BYTES


def test_generate_shapes_and_permutations():
    key = BlockKey.generate((64, 32), 8, channels=3)
    assert key.image_size == (64, 32) and key.grid_size == (8, 4) and key.num_blocks == 32
    assert torch.equal(key.block_perm.sort().values, torch.arange(32))
    assert torch.equal(key.pixel_perm.sort().values, torch.arange(3 * 8 * 8))
    assert key.np_mask.shape == (192,) and key.np_mask.dtype == torch.bool


def test_unseeded_keys_differ_and_seeded_keys_repeat():
    assert BlockKey.generate(32, 4) != BlockKey.generate(32, 4)
    a, b = BlockKey.generate(32, 4, seed=7), BlockKey.generate(32, 4, seed=7)
    assert a == b and a.fingerprint == b.fingerprint
    assert torch.equal(a.block_perm, b.block_perm)
    assert BlockKey.generate(32, 4, seed=8).fingerprint != a.fingerprint


@pytest.mark.parametrize("size, block", [(30, 4), ((32, 30), 4), (0, 4), (32, 0)])
def test_bad_geometry_is_refused(size, block):
    with pytest.raises(InvalidKeyError):
        BlockKey.generate(size, block)


def test_repr_shows_fingerprint_not_secrets():
    key = BlockKey.generate(32, 4, seed=1)
    text = repr(key) + str(key) + json.dumps(key.describe())
    assert key.fingerprint in text
    assert holds_key_material(text.encode(), key) == []
    assert holds_key_material(key.to_json().encode(), key)  # the search finds what is there


def test_save_load_round_trip_with_owner_only_permissions(tmp_path):
    key = BlockKey.generate((32, 48), 4, channels=1, seed=3)
    path = key.save(tmp_path / "owner.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = BlockKey.load(path)
    assert loaded == key and loaded.fingerprint == key.fingerprint
    assert loaded.image_size == (32, 48) and loaded.channels == 1
    assert torch.equal(loaded.np_mask, key.np_mask)
    assert [p.name for p in tmp_path.iterdir()] == ["owner.key"]  # no temporary left behind


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.key"
    BlockKey.generate(32, 4, seed=1).save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        BlockKey.generate(32, 4, seed=2).save(path)
    assert path.read_bytes() == before
    BlockKey.generate(32, 4, seed=2).save(path, overwrite=True)
    assert BlockKey.load(path) == BlockKey.generate(32, 4, seed=2)


def _tampered(tmp_path, edit):
    data = json.loads(BlockKey.generate(16, 4, seed=0).to_json())
    edit(data)
    path = tmp_path / "bad.key"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(scheme="other"), "scheme"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.pop("pixel_perm"), "lacks field"),
        (lambda d: d.update(block_perm=d["block_perm"][:-1]), "block_perm"),
        (lambda d: d["pixel_perm"].__setitem__(0, d["pixel_perm"][1]), "pixel_perm"),
        (lambda d: d.update(np_mask=d["np_mask"][:-1]), "np_mask"),
        (lambda d: d.update(np_mask="2" * len(d["np_mask"])), "np_mask"),
        (lambda d: d.update(block_size=8), "block_perm"),
        (lambda d: d.update(image_size=[18, 16]), "multiple"),
        (lambda d: d.update(fingerprint="ppcm1-0"), "fingerprint mismatch"),
        (lambda d: d.update(block_size=4.7), "block_size must be an integer"),
        (lambda d: d.update(block_size=4.0), "block_size must be an integer"),
        (lambda d: d.update(channels=True), "channels must be an integer"),
        (lambda d: d.update(image_size=[16.0, 16]), "image_size must be"),
        (lambda d: d.update(image_size=16), "image_size must be"),
        (lambda d: d.update(block_perm=list(np.roll(d["block_perm"], 1).tolist())), "fingerprint"),
    ],
)
def test_load_validates_everything(tmp_path, edit, message):
    path = _tampered(tmp_path, edit)
    with pytest.raises(InvalidKeyError, match=message) as info:
        BlockKey.load(path)
    assert str(path) in str(info.value)


def test_load_rejects_non_key_files(tmp_path):
    path = tmp_path / "x.key"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(InvalidKeyError, match="not a key file"):
        BlockKey.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BlockKey.load(tmp_path / "missing.key")


def test_fingerprint_is_salted_so_it_cannot_confirm_a_guessed_key(tmp_path):
    key = BlockKey.generate(16, 4, seed=3)
    same_secrets = BlockKey(
        key.image_size, key.block_size, key.channels, key.block_perm, key.pixel_perm, key.np_mask
    )  # right permutations and mask, but without the key file's secret salt
    assert same_secrets.fingerprint != key.fingerprint
    assert json.loads(key.to_json())["salt"] not in key.fingerprint + repr(key)
    assert BlockKey.load(key.save(tmp_path / "k.key")).fingerprint == key.fingerprint


def test_a_key_file_without_fingerprint_is_refused_with_how_to_rewrite_it(tmp_path):
    """The fingerprint is the file's integrity check: without it an edited key would load
    unchecked. The message's one-liner rewrites the file once, and the rewrite loads."""
    data = json.loads(BlockKey.generate(16, 4, seed=0).to_json())
    data.pop("salt")  # an unsalted early key file
    data.pop("fingerprint")
    path = tmp_path / "old.key"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidKeyError, match="no 'fingerprint' field") as err:
        BlockKey.load(path)
    command = re.search(r'python -c "(.*)" OLD.key NEW.key', str(err.value)).group(1)
    new = tmp_path / "new.key"
    subprocess.run([sys.executable, "-c", command, str(path), str(new)], check=True)
    key = BlockKey.load(new)
    assert "salt" not in json.loads(key.to_json()) and "fingerprint" in json.loads(new.read_text())
    assert key.block_perm.tolist() == data["block_perm"]


def test_only_a_bounded_regular_file_is_read_as_a_key(tmp_path):
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo)  # opening it for reading would block for ever
    with pytest.raises(InvalidKeyError, match="not a regular file"):
        BlockKey.load(fifo)
    with pytest.raises(InvalidKeyError, match="not a regular file"):
        BlockKey.load("/dev/zero")  # would be read until memory runs out
    big = tmp_path / "big.key"
    with open(big, "wb") as f:
        f.truncate(MAX_KEY_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(InvalidKeyError, match="at most"):
        BlockKey.load(big)


def test_a_key_file_others_can_read_gets_a_loud_warning_with_the_chmod(tmp_path):
    path = BlockKey.generate(16, 4, seed=0).save(tmp_path / "mine.key")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockKey.load(path)  # saved 0600: silent
    for mode in (0o644, 0o640, 0o666):
        os.chmod(path, mode)
        with pytest.warns(UserWarning, match=f"chmod 600 {re.escape(str(path))}"):
            BlockKey.load(path)
    public = tmp_path / "demo.PUBLIC.key"
    public.write_bytes(path.read_bytes())
    os.chmod(public, 0o644)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockKey.load(public)  # published by design


def test_an_out_of_range_or_huge_entry_says_what_is_wrong(tmp_path):
    data = json.loads(BlockKey.generate(16, 4, seed=0).to_json())
    path = tmp_path / "k.key"
    bad = dict(data, block_perm=[99] + data["block_perm"][1:])
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidKeyError, match="entry 99 is out of that range"):
        BlockKey.load(path)
    bad = dict(data, block_perm=[10**30] + data["block_perm"][1:])
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidKeyError, match="too large"):
        BlockKey.load(path)


def test_float_entries_are_refused_not_truncated(tmp_path):
    data = json.loads(BlockKey.generate(16, 4, seed=0).to_json())
    data["block_perm"] = [float(v) for v in data["block_perm"]]
    path = tmp_path / "f.key"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidKeyError, match="list of integers"):
        BlockKey.load(path)


def test_keys_with_the_same_secrets_are_equal_whatever_their_salt():
    key = BlockKey.generate(16, 4, seed=3)
    resalted = BlockKey(
        key.image_size, key.block_size, key.channels, key.block_perm, key.pixel_perm, key.np_mask
    )
    assert resalted == key and hash(resalted) == hash(key)
    assert resalted.fingerprint != key.fingerprint  # the fingerprint stays blinded
    assert BlockKey.generate(16, 4, seed=4) != key


def test_save_cannot_replace_a_file_created_after_any_check(tmp_path, monkeypatch):
    """Two writers race for one path, deterministically: both have written their whole key
    and reached the step that gives the file its name before either takes it (any existence
    check is behind both), then A goes first. Exactly A wins; B gets the clear error; the path
    only ever holds A's complete file. Whatever call names the file (link, replace, rename) is
    held at a barrier: the real call still runs, only its timing is fixed."""
    import os
    import threading
    from pathlib import Path

    from timm_ppconvmixer import atomic

    path = tmp_path / "race.key"
    a, b = BlockKey.generate(16, 4, seed=1), BlockKey.generate(16, 4, seed=2)
    both_ready = threading.Barrier(2, timeout=30)
    a_done = threading.Event()
    seen: dict[str, object] = {}

    def held(real):
        def call(src, dst, *args, **kwargs):
            if Path(dst) != path:
                return real(src, dst, *args, **kwargs)
            me = threading.current_thread().name
            seen[me] = Path(src).read_bytes()  # what this writer is about to name
            both_ready.wait()
            seen.setdefault("path existed at the barrier", path.exists())
            if me == "B":
                assert a_done.wait(30)
            try:
                return real(src, dst, *args, **kwargs)
            finally:
                if me == "A":
                    seen["after A"] = path.read_bytes() if path.exists() else None
                    a_done.set()

        return call

    for name in ("link", "replace", "rename"):
        monkeypatch.setattr(atomic.os, name, held(getattr(os, name)))
    outcomes: dict[str, object] = {}

    def save(k, name):
        try:
            k.save(path)
            outcomes[name] = "saved"
        except FileExistsError as e:
            outcomes[name] = e
        finally:
            if name == "A":
                a_done.set()  # never leave B waiting, even if A failed early

    threads = [threading.Thread(target=save, args=(k, n), name=n) for k, n in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.undo()
    # both writers had their whole, valid key file ready and the path was still free
    assert seen["A"] == a.to_json().encode() and seen["B"] == b.to_json().encode()
    assert seen["path existed at the barrier"] is False
    assert outcomes["A"] == "saved"
    assert isinstance(outcomes["B"], FileExistsError)
    assert "refusing to overwrite a key file" in str(outcomes["B"])
    assert seen["after A"] == a.to_json().encode()  # complete the moment it appeared
    assert path.read_bytes() == a.to_json().encode() and BlockKey.load(path) == a
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["race.key"]  # no temporary files left


def test_keys_pickle_without_their_cached_plans():
    import pickle

    from timm_ppconvmixer import encrypt

    key = BlockKey.generate(16, 4, seed=5)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    before = encrypt(x, key)
    copy = pickle.loads(pickle.dumps(key))
    assert copy == key and copy.fingerprint == key.fingerprint
    assert torch.equal(encrypt(x, copy), before)
