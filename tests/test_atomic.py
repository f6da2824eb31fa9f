"""The one atomic writer: complete files or none, exclusive creation, permissions."""

from __future__ import annotations

import os
import stat

import pytest

from timm_ppconvmixer.atomic import atomic_folder, atomic_write, atomic_write_bytes


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_exclusive_creation_refuses_an_existing_file(tmp_path):
    path = atomic_write_bytes(tmp_path / "k", b"first", overwrite=False)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        atomic_write_bytes(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert atomic_write_bytes(path, b"third").read_bytes() == b"third"  # overwrite=True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_permissions(tmp_path):
    secret = atomic_write_bytes(tmp_path / "secret", b"x", mode=0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    plain = atomic_write_bytes(tmp_path / "plain", b"x")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_text_mode(tmp_path):
    with atomic_write(tmp_path / "t.txt", binary=False) as f:
        f.write("é")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é"


def test_atomic_folder_replaces_whole_or_keeps_the_old(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_folder(out):
            pass
    with pytest.raises(RuntimeError), atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("refused export")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
