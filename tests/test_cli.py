import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from conftest import holds_key_material
from PIL import Image

from timm_ppconvmixer import BlockKey, decrypt, encrypt

CLI = [str(Path(sys.executable).parent / "ppconvmixer")]
SAMPLE_PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def run(*args, ok=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_subcommands():
    out = run("--help").stdout
    for name in (
        "keygen",
        "key-info",
        "encrypt-image",
        "decrypt-image",
        "convert",
        "encrypt",
        "decrypt",
        "push",
        "attack",
    ):
        assert name in out


def test_keygen_key_info_and_no_secret_printed(tmp_path):
    path = tmp_path / "owner.key"
    out = run("keygen", path, "--image-size", "32x48", "--block-size", "8").stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = BlockKey.load(path)
    assert key.fingerprint in out and key.image_size == (32, 48)
    info = json.loads(run("key-info", path).stdout)
    assert info["fingerprint"] == key.fingerprint and info["num_blocks"] == 24
    printed = (out + json.dumps(info)).encode()
    assert holds_key_material(printed, key) == []
    again = run("keygen", path, ok=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_encrypt_and_decrypt_a_real_photo(tmp_path):
    key_path = tmp_path / "k.key"
    run("keygen", key_path, "--image-size", "64", "--block-size", "16", "--seed", "3")
    key = BlockKey.load(key_path)
    run("encrypt-image", "--key", key_path, SAMPLE_PHOTO, tmp_path / "enc.png")
    run("decrypt-image", "--key", key_path, tmp_path / "enc.png", tmp_path / "dec.png")
    enc, dec = Image.open(tmp_path / "enc.png"), Image.open(tmp_path / "dec.png")
    assert enc.size == (64, 64) and enc.mode == "RGB"
    assert np.array_equal(np.asarray(encrypt(dec, key)), np.asarray(enc))
    assert np.array_equal(np.asarray(decrypt(enc, key)), np.asarray(dec))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec.png", "enc.png", "k.key"]


@pytest.mark.parametrize(
    "make_input, output, message",
    [
        (lambda p: SAMPLE_PHOTO, "out.jpg", "lossless"),
        (lambda p: p / "missing.png", "out.png", "no such file"),
        (
            lambda p: (p / "bad.png").write_bytes(b"not an image") and p / "bad.png",
            "o.png",
            "cannot read",
        ),
    ],
)
def test_errors_are_one_clear_line(tmp_path, make_input, output, message):
    key_path = tmp_path / "k.key"
    run("keygen", key_path, "--image-size", "32", "--block-size", "8")
    proc = run(
        "encrypt-image", "--key", key_path, make_input(tmp_path), tmp_path / output, ok=False
    )
    assert proc.returncode == 1
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / output).exists()


@pytest.mark.slow
def test_attack_runs_on_a_demo_shaped_dataset_without_and_with_the_key(tmp_path):
    """`ppconvmixer attack` on what the demo shares: a saved DatasetDict encrypted with
    encrypt_dataset and its ENCRYPTION.json (public facts only)."""
    import datasets

    from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist

    key = BlockKey.generate(28, 4, channels=1, seed=21)
    key_file = key.save(tmp_path / "owner.key")
    data = tmp_path / "encrypted_fashion_mnist"
    split = encrypt_dataset(load_fashion_mnist("test", limit=300), key)
    datasets.DatasetDict({"train": split}).save_to_disk(str(data))
    (data / "ENCRYPTION.json").write_text(json.dumps(key.describe()))

    provider = run("attack", data, "--out", tmp_path / "provider", "--no-progress").stdout
    assert json.loads(provider[: provider.rindex("}") + 1])["images"] == 300
    recovered = tmp_path / "provider" / "recovered.key"
    assert stat.S_IMODE(recovered.stat().st_mode) == 0o600
    BlockKey.load(recovered)  # a key file the project's own tools accept

    run("attack", data, "--out", tmp_path / "owner", "--key", key_file, "--no-progress")
    result = json.loads((tmp_path / "owner" / "result.json").read_text())
    scored = result["steps"][-1]["key_recovered"]
    # known good (docs/security.md: 300 images at 28/4 give the whole key): every part, whole
    assert [scored[part] for part in ("K1", "K2", "K3")] == [1.0, 1.0, 1.0], scored
    for name in ("report.md", "result.json"):  # the report never holds key material
        data_bytes = (tmp_path / "owner" / name).read_bytes()
        assert holds_key_material(data_bytes, key) == [], name
    # scored against another key, the same attack scores far from whole
    other = BlockKey.generate(28, 4, channels=1, seed=22).save(tmp_path / "other.key")
    run("attack", data, "--out", tmp_path / "other", "--key", other, "--no-progress")
    wrong = json.loads((tmp_path / "other" / "result.json").read_text())
    assert wrong["steps"][-1]["key_recovered"]["K1"] < 0.5

    again = run("attack", data, "--out", tmp_path / "owner", ok=False)
    assert again.returncode == 1 and again.stderr.startswith("error: ")
    assert "never overwritten" in again.stderr and again.stderr.count("\n") == 1
    plain = run("attack", tmp_path, "--out", tmp_path / "x", ok=False)  # not encrypted data
    assert plain.returncode == 1 and "not encrypted data" in plain.stderr


@pytest.mark.parametrize("scheme", ["le", "ele", "etc", "pe"])
def test_every_scheme_through_keygen_key_info_and_the_image_commands(tmp_path, capsys, scheme):
    """In-process ``main`` (the console script's own entry point) to keep this fast."""
    from timm_ppconvmixer.cli import main
    from timm_ppconvmixer.schemes import load_key

    key_path = tmp_path / f"{scheme}.key"
    assert main(["keygen", str(key_path), "--scheme", scheme, "--image-size", "32"]) == 0
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = load_key(key_path)
    assert key.scheme == scheme and key.block_size == (1 if scheme == "pe" else 16)
    capsys.readouterr()
    assert main(["key-info", str(key_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scheme"] == f"ppconvmixer-{scheme}" and info["fingerprint"] == key.fingerprint
    enc_path, dec_path = tmp_path / "enc.png", tmp_path / "dec.png"
    assert main(["encrypt-image", "--key", str(key_path), str(SAMPLE_PHOTO), str(enc_path)]) == 0
    assert main(["decrypt-image", "--key", str(key_path), str(enc_path), str(dec_path)]) == 0
    enc, dec = Image.open(enc_path), Image.open(dec_path)
    assert enc.size == (32, 32) and np.array_equal(np.asarray(encrypt(dec, key)), np.asarray(enc))
    assert not np.array_equal(np.asarray(enc), np.asarray(dec))
    assert main(["convert", "--key", str(key_path), "--model", "x", "--pretrained", "o"]) == 1
    assert f"holds a '{scheme}' key; this needs a 'blockwise' key" in capsys.readouterr().err


def test_pe_per_image_encrypts_without_a_key_and_refuses_to_decrypt(tmp_path, capsys):
    from timm_ppconvmixer.cli import main

    out1, out2 = tmp_path / "a.png", tmp_path / "b.png"
    for out in (out1, out2):
        args = ["--scheme", "pe-per-image", "--image-size", "32", str(SAMPLE_PHOTO), str(out)]
        assert main(["encrypt-image", *args]) == 0
    a, b = np.asarray(Image.open(out1)), np.asarray(Image.open(out2))
    assert a.shape == (32, 32, 3) and not np.array_equal(a, b)  # a fresh key each time
    assert main(["encrypt-image", str(SAMPLE_PHOTO), str(tmp_path / "d.png")]) == 1
    assert "pass --key FILE" in capsys.readouterr().err
    # the console script: one error line, nothing written
    proc = run("decrypt-image", "--scheme", "pe-per-image", out1, tmp_path / "c.png", ok=False)
    assert proc.returncode == 1 and "cannot be decrypted, by design" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("command", ["encrypt-image", "decrypt-image"])
def test_an_image_command_never_writes_onto_its_input(tmp_path, command):
    key_path = BlockKey.generate(32, 4, seed=0).save(tmp_path / "k.key")
    image = tmp_path / "photo.png"
    size = (64, 48) if command == "encrypt-image" else (32, 32)  # decrypt needs the key's size
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), np.uint8)).save(
        image
    )
    original = image.read_bytes()
    for extra in ([], ["--overwrite"]):  # not even with --overwrite: the input would be lost
        proc = run(command, "--key", key_path, *extra, image, image, ok=False)
        assert proc.returncode == 1 and "the output is the input" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert image.read_bytes() == original
    link = tmp_path / "same.png"  # another name for the same file
    os.link(image, link)
    proc = run(command, "--key", key_path, "--overwrite", image, link, ok=False)
    assert "the output is the input" in proc.stderr and image.read_bytes() == original


@pytest.mark.parametrize("command", ["encrypt-image", "decrypt-image"])
def test_an_image_command_replaces_an_existing_output_only_with_overwrite(tmp_path, command):
    key_path = BlockKey.generate(32, 4, seed=0).save(tmp_path / "k.key")
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "out.png"
    out.write_bytes(b"someone's earlier result")
    proc = run(command, "--key", key_path, image, out, ok=False)
    assert proc.returncode == 1 and "pass --overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"someone's earlier result"
    run(command, "--key", key_path, "--overwrite", image, out)
    assert Image.open(out).size == (32, 32)
