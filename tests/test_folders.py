"""Encrypting image folder trees: real image files on disk, real worker processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.cli import main
from timm_ppconvmixer.data.folders import (
    MANIFEST_NAME,
    BadImagesError,
    FolderError,
    decrypt_folder,
    encrypt_folder,
)
from timm_ppconvmixer.images import prepare_image

SIZE, BLOCK = 32, 4


@pytest.fixture(scope="module")
def key() -> BlockKey:
    return BlockKey.generate(SIZE, BLOCK, channels=3, seed=11)


def _smooth(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """Photo-like content (smooth), so that resizing and JPEG behave as on real images."""
    base = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, channels), dtype=np.uint8)
    img = Image.fromarray(base.squeeze(-1) if channels == 1 else base)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))


def _tree(root: Path) -> Path:
    """A split ImageFolder tree with every kind of file the encryption has to handle."""
    rng = np.random.default_rng(0)
    files = {
        "train/cat/key_size.png": Image.fromarray(_smooth(rng, SIZE, SIZE)),
        "train/cat/photo.jpg": Image.fromarray(_smooth(rng, 45, 60)),
        "train/cat/gray.png": Image.fromarray(_smooth(rng, 40, 36, channels=1), "L"),
        "train/dog/rgba.png": Image.fromarray(_smooth(rng, SIZE, SIZE, channels=4), "RGBA"),
        "train/dog/wide.png": Image.fromarray(_smooth(rng, 30, 70)),
        "val/cat/key_size.png": Image.fromarray(_smooth(rng, SIZE, SIZE)),
        "val/dog/photo.JPEG": Image.fromarray(_smooth(rng, 64, 48)),
    }
    for rel, img in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, format="JPEG" if rel.lower().endswith((".jpg", ".jpeg")) else "PNG")
    (root / "train/dog/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "train/dog/labels.txt").write_text("not an image: ignored and counted\n")
    (root / "train/.DS_Store").write_bytes(b"hidden: skipped")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _tree(tmp_path / "plain")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


GOOD = 7  # images in _tree that can be read


def test_tree_is_mirrored_and_each_output_is_encrypt_of_prepare_image(tree, tmp_path, key):
    dst = tmp_path / "enc"
    report = encrypt_folder(tree, dst, key, skip_bad=True, progress=False)

    assert (report.images, report.written, report.skipped_existing) == (GOOD + 1, GOOD, 0)
    assert [b.path for b in report.bad] == [str(tree / "train/dog/broken.jpg")]
    assert report.ignored == 1 and report.ignored_examples == ["train/dog/labels.txt"]
    for src in [p for p in tree.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]:
        if src.name == "broken.jpg":
            continue
        out = dst / src.relative_to(tree).with_suffix(".png")
        with Image.open(src) as img:
            expected = np.asarray(encrypt(prepare_image(img, key), key))
        assert _pixels(out).shape == (SIZE, SIZE, 3)
        assert np.array_equal(_pixels(out), expected), out
    outputs = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert len(outputs) == GOOD + 1 and MANIFEST_NAME in outputs
    assert not [o for o in outputs if not o.endswith(".png") and o != MANIFEST_NAME]


def test_manifest_holds_public_facts_only(tree, tmp_path, key):
    dst = tmp_path / "enc"
    encrypt_folder(tree, dst, key, skip_bad=True, progress=False)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    assert manifest == {**key.describe(), "format": "png", "resize": "shorter-center-crop"}
    secret = json.loads(key.to_json())
    for name in ("block_perm", "pixel_perm", "np_mask"):
        assert name not in manifest
    needle = json.dumps(secret["pixel_perm"][:6])[1:-1].encode()
    assert all(needle not in data for data in _files(dst).values())


def test_decrypt_folder_gives_back_prepared_images_and_exact_key_size_pngs(tree, tmp_path, key):
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    encrypt_folder(tree, enc, key, skip_bad=True, progress=False, workers=1)
    report = decrypt_folder(enc, dec, key, progress=False)
    assert (report.written, report.bad, report.ignored) == (GOOD, [], 0)
    assert not (dec / MANIFEST_NAME).exists()
    for rel in ("train/cat/key_size.png", "val/cat/key_size.png"):  # PNG of the key's size
        assert np.array_equal(_pixels(dec / rel), _pixels(tree / rel))
    with Image.open(tree / "train/cat/photo.jpg") as img:
        prepared = np.asarray(prepare_image(img, key))
    assert np.array_equal(_pixels(dec / "train/cat/photo.png"), prepared)


def test_decrypt_refuses_another_key_and_reports_wrong_sized_inputs(tree, tmp_path, key):
    enc = tmp_path / "enc"
    encrypt_folder(tree, enc, key, skip_bad=True, progress=False)
    other = BlockKey.generate(SIZE, BLOCK, seed=12)
    with pytest.raises(FolderError, match="was encrypted with key"):
        decrypt_folder(enc, tmp_path / "dec", other, progress=False)
    assert not (tmp_path / "dec").exists()
    with pytest.raises(BadImagesError) as info:  # a plain tree: wrong sizes, JPEG, broken file
        decrypt_folder(tree, tmp_path / "dec2", key, progress=False)
    reasons = {Path(b.path).name: b.reason for b in info.value.report.bad}
    assert "lossy" in reasons["photo.jpg"] and "36x40 L image" in reasons["gray.png"]
    assert info.value.report.written == 2  # the two key-size RGB PNGs


def test_corrupt_image_fails_the_run_naming_it_after_writing_all_others(tree, tmp_path, key):
    dst = tmp_path / "enc"
    with pytest.raises(BadImagesError) as info:
        encrypt_folder(tree, dst, key, progress=False)
    message = str(info.value)
    assert str(tree / "train/dog/broken.jpg") in message and "\n" not in message
    assert info.value.report.written == GOOD
    assert len(list(dst.rglob("*.png"))) == GOOD
    again = encrypt_folder(tree, dst, key, skip_bad=True, progress=False)
    assert (again.written, again.skipped_existing, len(again.bad)) == (0, GOOD, 1)


def test_lossy_output_is_refused_before_anything_is_written(tree, tmp_path, key):
    for fmt in ("jpeg", "JPG", ".webp"):
        with pytest.raises(FolderError, match="lossy"):
            encrypt_folder(tree, tmp_path / "enc", key, output_format=fmt, progress=False)
    with pytest.raises(FolderError, match="not supported"):
        encrypt_folder(tree, tmp_path / "enc", key, output_format="tga", progress=False)
    assert not (tmp_path / "enc").exists()


def test_inputs_mapping_to_one_output_name_fail_before_anything_is_written(tree, tmp_path, key):
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tree / "train/cat/photo.png")
    with pytest.raises(FolderError, match="same output file") as info:
        encrypt_folder(tree, tmp_path / "enc", key, progress=False)
    assert "train/cat/photo.jpg and train/cat/photo.png" in str(info.value)
    assert not (tmp_path / "enc").exists()


def test_resize_policies_exact_and_stretch(tree, tmp_path, key):
    with pytest.raises(BadImagesError) as info:
        encrypt_folder(tree, tmp_path / "exact", key, resize="exact", progress=False)
    bad = {Path(b.path).name for b in info.value.report.bad}
    assert bad == {"broken.jpg", "photo.jpg", "gray.png", "wide.png", "photo.JPEG"}
    assert info.value.report.written == 3  # the key-size RGB and RGBA images
    encrypt_folder(tree, tmp_path / "stretch", key, resize="stretch", skip_bad=True, progress=False)
    with Image.open(tree / "train/dog/wide.png") as img:
        stretched = img.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    expected = np.asarray(encrypt(stretched, key))
    assert np.array_equal(_pixels(tmp_path / "stretch/train/dog/wide.png"), expected)
    with pytest.raises(FolderError, match="resize must be one of"):
        encrypt_folder(tree, tmp_path / "x", key, resize="crop", progress=False)


def test_resume_redoes_only_missing_outputs_and_removes_stale_temp_files(tree, tmp_path, key):
    dst = tmp_path / "enc"
    encrypt_folder(tree, dst, key, skip_bad=True, progress=False)
    first = _files(dst)
    deleted = ["train/cat/gray.png", "val/dog/photo.png", "train/dog/rgba.png"]
    for rel in deleted:
        (dst / rel).unlink()
    stale = dst / "train/cat/.key_size.png.0badf00d.ppcm-part"
    stale.write_bytes(b"half a PNG from a killed run")

    report = encrypt_folder(tree, dst, key, skip_bad=True, progress=False)
    assert (report.written, report.skipped_existing) == (3, GOOD - 3)
    assert report.stale_temp_removed == 1 and not stale.exists()
    assert _files(dst) == first


def test_destination_must_belong_to_the_same_key_and_policy(tree, tmp_path, key):
    dst = tmp_path / "enc"
    encrypt_folder(tree, dst, key, skip_bad=True, progress=False)
    other = BlockKey.generate(SIZE, BLOCK, seed=99)
    with pytest.raises(FolderError, match="holds images encrypted with key"):
        encrypt_folder(tree, dst, other, skip_bad=True, progress=False)
    with pytest.raises(FolderError, match="was made with --resize"):
        encrypt_folder(tree, dst, key, resize="stretch", skip_bad=True, progress=False)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"someone else's file")
    with pytest.raises(FolderError, match="not empty"):
        encrypt_folder(tree, foreign, key, skip_bad=True, progress=False)
    with pytest.raises(FolderError, match="overlap"):
        encrypt_folder(tree, tree / "enc", key, progress=False)


def test_cli_commands_print_a_report_and_fail_with_one_line(tree, tmp_path, key, capsys):
    key_file = key.save(tmp_path / "owner.key")
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    assert main(["encrypt", "--key", str(key_file), str(tree), str(enc), "--no-progress"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"bad image: {tree / 'train/dog/broken.jpg'}: ") for line in err)
    assert err[-1].startswith("error: ") and "broken.jpg" in err[-1]

    argv = ["encrypt", "--key", str(key_file), str(tree), str(enc), "--skip-bad", "--workers", "1"]
    assert main([*argv, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_existing"] == GOOD
    assert main(["decrypt", "--key", str(key_file), str(enc), str(dec), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == GOOD
    argv = ["encrypt", "--key", str(key_file), str(tree), str(enc), "--format", "jpg"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lossy" in err and err.count("\n") == 1


# -- interrupted runs ---------------------------------------------------------------------------

KILL_IMAGES, KILL_SIZE, KILL_BLOCK = 300, 96, 8
# The run stops itself (SIGSTOP) when it creates the output folder of the last class folder it
# walks: the workers finish what they were handed, but that folder's images are never handed
# out, so the run is certain to be unfinished when it is killed, however loaded the machine.
# It creates every output folder in its main process (os.mkdir: an audit event), as it reaches
# it, and never hands out the images of a folder before creating its output folder.
_RUN = """
import os, signal, sys
from pathlib import Path
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.data.folders import encrypt_folder
last, main = Path(sys.argv[2], "validation", "class2"), os.getpid()

def stop_at_the_last_folder(event, args):
    if event == "os.mkdir" and os.getpid() == main and Path(os.fsdecode(args[0])) == last:
        os.kill(main, signal.SIGSTOP)

sys.addaudithook(stop_at_the_last_folder)
key = BlockKey.generate({size}, {block}, seed=5)
encrypt_folder(sys.argv[1], sys.argv[2], key, workers=2, progress=False)
"""


def _count_outputs(root: Path) -> int:
    return sum(name.endswith(".png") for _, _, files in os.walk(root) for name in files)


def _wait_until_stopped(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for ``proc`` to stop itself (SIGSTOP); fail if it ends or hangs instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            assert info.si_code == os.CLD_STOPPED, f"the run ended (code {info.si_status}) first"
            return
        time.sleep(0.01)
    raise AssertionError(f"the folder encryption did not reach its last folder in {timeout} s")


def test_killed_run_resumes_to_the_same_bytes_as_a_clean_run(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "plain"
    for i in range(KILL_IMAGES):
        folder = src / ("train" if i % 5 else "validation") / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth(rng, KILL_SIZE, KILL_SIZE)).save(folder / f"{i:04d}.png")
    dst, ref = tmp_path / "enc", tmp_path / "clean"
    script = _RUN.format(size=KILL_SIZE, block=KILL_BLOCK)
    proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(dst)])
    try:
        _wait_until_stopped(proc)
        done = _count_outputs(dst)
    finally:
        proc.kill()  # SIGKILL ends a stopped process too; its workers die with it
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    after_kill = _count_outputs(dst)
    assert 0 < done <= after_kill < KILL_IMAGES

    key = BlockKey.generate(KILL_SIZE, KILL_BLOCK, seed=5)
    resumed = encrypt_folder(src, dst, key, workers=2, progress=False)
    assert resumed.skipped_existing >= after_kill and resumed.written > 0
    assert resumed.written + resumed.skipped_existing == KILL_IMAGES
    encrypt_folder(src, ref, key, workers=2, progress=False)
    assert _files(dst) == _files(ref)
    assert not [p for p in dst.rglob("*") if p.name.startswith(".")]
    with Image.open(dst / "train/class1/0001.png") as img:
        assert np.array_equal(np.asarray(decrypt(img, key)), _pixels(src / "train/class1/0001.png"))


@pytest.mark.parametrize("scheme", ["le", "ele", "etc", "pe"])
def test_every_scheme_encrypts_and_decrypts_a_folder_tree(tree, tmp_path, scheme):
    from timm_ppconvmixer.schemes import generate_key

    key = generate_key(scheme, image_size=SIZE, block_size=1 if scheme == "pe" else BLOCK, seed=2)
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    encrypt_folder(tree, enc, key, workers=1, skip_bad=True, progress=False)
    manifest = json.loads((enc / MANIFEST_NAME).read_text())
    assert manifest["scheme"] == f"ppconvmixer-{scheme}"
    assert manifest["fingerprint"] == key.fingerprint
    src = Image.open(tree / "train/cat/photo.jpg")
    expected = encrypt(prepare_image(src, key), key)
    assert np.array_equal(_pixels(enc / "train/cat/photo.png"), np.asarray(expected))
    decrypt_folder(enc, dec, key, workers=1, progress=False)
    assert np.array_equal(_pixels(dec / "train/cat/photo.png"), np.asarray(prepare_image(src, key)))


def test_pe_per_image_folder_is_encrypted_afresh_and_cannot_be_decrypted(tree, tmp_path, capsys):
    args = ["--scheme", "pe-per-image", "--image-size", str(SIZE), "--skip-bad", "--no-progress"]
    assert main(["encrypt", *args, "--workers", "1", str(tree), str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest["scheme"] == "ppconvmixer-pe-per-image" and "key" not in manifest
    a = _pixels(tmp_path / "a/train/cat/key_size.png")
    plain = np.asarray(Image.open(tree / "train/cat/key_size.png"))
    assert not np.array_equal(a, plain)
    # each value is a channel of the same pixel, or its inverse
    folded = np.sort(np.minimum(a, 255 - a), axis=-1)
    assert np.array_equal(folded, np.sort(np.minimum(plain, 255 - plain), axis=-1))
    capsys.readouterr()
    dst = str(tmp_path / "b")
    assert main(["decrypt", *args[:4], "--no-progress", str(tmp_path / "a"), dst]) == 1
    assert "cannot be decrypted, by design" in capsys.readouterr().err
