"""Fashion-MNIST from the Debian package's files, and encrypting `datasets` datasets."""

import numpy as np
import pytest
from conftest import holds_key_material
from datasets import Dataset, load_dataset, load_from_disk
from PIL import Image

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.data import (
    FASHION_MNIST_CLASSES,
    DatasetUnavailableError,
    encrypt_dataset,
    fashion_mnist_arrays,
    load_fashion_mnist,
)


def test_fashion_mnist_is_the_real_data():
    images, labels = fashion_mnist_arrays("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced
    ds = load_fashion_mnist("test", limit=50)
    assert len(ds) == 50 and ds.features["label"].names == list(FASHION_MNIST_CLASSES)
    assert np.array_equal(np.asarray(ds[3]["image"]), images[3]) and ds[3]["label"] == labels[3]


def test_missing_files_give_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: the Hub fallback must fail cleanly
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)


FALLBACK_CLIENT = """
import sys, numpy as np
from timm_ppconvmixer.data import FASHION_MNIST_DIR, load_fashion_mnist
assert not FASHION_MNIST_DIR.exists(), FASHION_MNIST_DIR  # the Debian files are not there
ds = load_fashion_mnist("test", limit=int(sys.argv[1]))
np.save(sys.argv[2], np.stack([np.asarray(r["image"]) for r in ds]))
np.save(sys.argv[3], np.asarray(ds["label"]))
"""


def test_without_the_debian_files_the_loader_reads_the_hub_dataset(tmp_path):
    """The other source of Fashion-MNIST: the Hub dataset, here served by the local Hub server
    the tests use (the owner pushes the real test split under the Hub dataset's id)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from local_hub import LocalHub

    from timm_ppconvmixer.data.datasets import FASHION_MNIST_HUB_ID

    root = Path(__file__).resolve().parents[1]
    images, labels = fashion_mnist_arrays("test")
    with LocalHub(tmp_path / "hub") as hub:
        env = {**os.environ, **hub.client_env(home=tmp_path / "owner")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        push = (
            "from timm_ppconvmixer.data import load_fashion_mnist\n"
            f"load_fashion_mnist('test', limit=30).push_to_hub({FASHION_MNIST_HUB_ID!r}, "
            "split='test')\n"
        )
        subprocess.run([sys.executable, "-c", push], env=env, check=True, timeout=600)
        user = {**env, **hub.client_env(home=tmp_path / "user")}
        user["FASHION_MNIST_DIR"] = str(tmp_path / "no-debian-package")
        out = [str(tmp_path / "images.npy"), str(tmp_path / "labels.npy")]
        proc = subprocess.run(
            [sys.executable, "-c", FALLBACK_CLIENT, "20", *out],
            env=user, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(np.load(out[0]), images[:20])
    assert np.array_equal(np.load(out[1]), labels[:20])


def test_encrypt_dataset_round_trips_through_save_and_load(tmp_path):
    key = BlockKey.generate(28, 4, channels=1, seed=4)
    ds = load_fashion_mnist("test", limit=40).add_column("note", [f"n{i}" for i in range(40)])
    enc = encrypt_dataset(ds, key, batch_size=16)
    assert enc.features == ds.features and enc["note"] == ds["note"] and enc["label"] == ds["label"]
    for i in (0, 17, 39):
        expected = encrypt(ds[i]["image"], key)
        assert np.array_equal(np.asarray(enc[i]["image"]), np.asarray(expected))
    enc.save_to_disk(str(tmp_path / "enc"))
    again = load_from_disk(str(tmp_path / "enc"))
    assert np.array_equal(np.asarray(decrypt(again[5]["image"], key)), np.asarray(ds[5]["image"]))
    back = encrypt_dataset(again, key, decrypt=True)
    assert np.array_equal(np.asarray(back[9]["image"]), np.asarray(ds[9]["image"]))
    # nothing of the key is stored with the dataset, not even in datasets' own state
    for path in (tmp_path / "enc").rglob("*"):
        if path.is_file():
            assert holds_key_material(path.read_bytes(), key) == [], path


def test_encrypt_an_imagefolder_dataset_with_two_processes(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)  # not the key's size
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = load_dataset("imagefolder", data_dir=str(tmp_path / "imgs"), split="train")
    key = BlockKey.generate(16, 4, channels=3, seed=1)
    enc = encrypt_dataset(ds, key, num_proc=2, batch_size=4)
    assert len(enc) == 12 and enc.features == ds.features
    from timm_ppconvmixer.images import prepare_image

    for i in (0, 11):
        expected = encrypt(prepare_image(ds[i]["image"], key), key)
        assert enc[i]["image"].size == (16, 16)
        assert np.array_equal(np.asarray(enc[i]["image"]), np.asarray(expected))


def test_unknown_image_column_is_refused():
    ds = Dataset.from_dict({"x": [1]})
    with pytest.raises(ValueError, match="no column 'image'"):
        encrypt_dataset(ds, BlockKey.generate(8, 4, seed=0))


@pytest.mark.parametrize("scheme", ["le", "ele", "etc", "pe"])
def test_encrypt_dataset_with_every_scheme(scheme):
    from timm_ppconvmixer.schemes import generate_key

    key = generate_key(
        scheme, image_size=28, block_size=1 if scheme == "pe" else 4, channels=1, seed=5
    )
    ds = load_fashion_mnist("test", limit=8)
    enc = encrypt_dataset(ds, key, batch_size=4)
    assert np.array_equal(np.asarray(enc[3]["image"]), np.asarray(encrypt(ds[3]["image"], key)))
    back = encrypt_dataset(enc, key, decrypt=True)
    assert np.array_equal(np.asarray(back[6]["image"]), np.asarray(ds[6]["image"]))


def test_encrypt_dataset_with_a_fresh_key_per_image_cannot_be_decrypted():
    from timm_ppconvmixer import CipherInputError
    from timm_ppconvmixer.schemes import per_image_encryption

    pe = per_image_encryption(28, channels=1)
    ds = load_fashion_mnist("test", limit=4)
    ds = ds.select([0, 0, 1, 2])  # the same image twice
    enc = encrypt_dataset(ds, pe, batch_size=4)
    first, second = np.asarray(enc[0]["image"]), np.asarray(enc[1]["image"])
    plain = np.asarray(ds[0]["image"])
    assert not np.array_equal(first, second)
    assert np.array_equal(np.minimum(first, 255 - first), np.minimum(plain, 255 - plain))
    with pytest.raises(CipherInputError, match="cannot be decrypted, by design"):
        encrypt_dataset(enc, pe, decrypt=True)


def test_data_install_skips_with_a_message_where_apt_is_missing(tmp_path):
    """`make setup` goes on without apt (or root): the script says what it skipped and how to
    get the data, and exits 0, so the loader's other sources stay usable."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "install_system_data.sh"
    bin_dir = tmp_path / "bin"  # a PATH with the shell's basics but no dpkg and no apt-get
    bin_dir.mkdir()
    for tool in ("id", "bash"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(
        [str(bin_dir / "bash"), str(script)], env={"PATH": str(bin_dir)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped installing dataset-fashion-mnist (no apt-get" in proc.stderr
    assert "FASHION_MNIST_DIR" in proc.stderr and "zalando-datasets/fashion_mnist" in proc.stderr
