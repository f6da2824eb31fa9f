"""benchmarks/reproduce_table1.py runs end to end (2 steps, 200 test images, one row of each
kind, two at once) and records what makes its table readable: each row's scheme and key, that
its images are encrypted, and the parameter counts at the run's and at the paper's geometry;
with ``--zoo`` it exports each zoo row's saved model as a timm model folder whose card and
metrics state the numbers measured on those weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_ppconvmixer import ppconvmixer_num_params
from timm_ppconvmixer.data import FASHION_MNIST_DIR
from timm_ppconvmixer.models.adaptnet_pyramidnet import adaptnet_pyramidnet_num_params

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "etc_adaptnet_pyramidnet",
    "blockwise_convmixer_p",
    "plain_convmixer",
    "pe_convmixer",
    "pe_per_image_convmixer",
    "grid_le_le",
]
ZOO = {  # the zoo rows among ROWS -> their entries
    "etc_adaptnet_pyramidnet": "adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist.zoo_etc",
    "blockwise_convmixer_p": "ppconvmixer_128_8_fmnist.zoo_blockwise_p",
    "plain_convmixer": "ppconvmixer_128_8_fmnist.zoo_plain",
    "pe_convmixer": "ppconvmixer_128_8_fmnist.zoo_pe",
}

# Table I's parameter counts, from the formulas (paper Eq. (2)-(4)), at 10 classes
PAPER = {
    "adaptnet_ele_shakedrop_pyramidnet110_a270": 29_310_661,  # 29.31 M
    "shakedrop_pyramidnet110_a270": 28_485_493,  # 28.49 M
    "ppconvmixer_512_16": {False: 5_306_890, True: 5_345_306},  # 5.31 M / 5.35 M
}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """One run of the benchmark (six models trained, minutes): its tests are marked slow."""
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("table1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reproduce_table1.py"), "--out", str(out)]
    cmd += ["--steps", "2", "--test-limit", "200", "--train-limit", "2000", "--rows", *ROWS]
    cmd += ["--zoo", str(out / "zoo"), "--jobs", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "table1.json").read_text()), (out / "table1.md").read_text()


@pytest.mark.slow
def test_rows_and_columns(table):
    results, md = table
    assert [r["row"] for r in results["rows"]] == ROWS
    assert results["test_images"] == 200
    for r in results["rows"]:
        for col in ("top1_plain", "params", "paper_params", "train_s"):
            assert r[col] is not None, (r["row"], col)
        assert 0.0 <= r["top1_plain"] <= 1.0
        assert r["row"] in md
    assert "identity with one channel" in md  # the grey-image caveat is stated


@pytest.mark.slow
def test_encrypted_rows_are_encrypted_with_their_scheme(table):
    rows = {r["row"]: r for r in table[0]["rows"]}
    for name, scheme in [
        ("etc_adaptnet_pyramidnet", "etc"),
        ("blockwise_convmixer_p", "blockwise"),
        ("grid_le_le", "le"),
        ("pe_convmixer", "pe"),
        ("pe_per_image_convmixer", "pe-per-image"),
    ]:
        r = rows[name]
        assert r["scheme"] == scheme
        assert r["key"]["scheme"] == f"ppconvmixer-{scheme}"
        block = 1 if scheme.startswith("pe") else 4  # PE is pixel-wise
        assert (r["key"]["image_size"], r["key"]["block_size"]) == ([28, 28], block)
        assert r["key"]["channels"] == 1
        # most pixels change (Fashion-MNIST's black background moves onto black background
        # under block scrambling alone, so not all of them; grey PE inverts about half of
        # them, at random); training data too
        assert r["test_pixels_changed"] > (0.4 if block == 1 else 0.5), name
        assert r["train_pixels_changed"] > (0.4 if block == 1 else 0.5), name
        assert 0.0 <= r["top1_key"] <= 1.0
        if scheme == "pe-per-image":  # a fresh key per image: no wrong key to try
            assert r["top1_wrong_key"] is None and r["wrong_key_fingerprint"] is None
            continue
        assert r["wrong_key_fingerprint"] != r["key"]["fingerprint"]
        assert 0.0 <= r["top1_wrong_key"] <= 1.0
    plain = rows["plain_convmixer"]
    assert plain["scheme"] == "plain" and "key" not in plain
    assert plain["top1_key"] is None and plain["top1_wrong_key"] is None


@pytest.mark.slow
def test_parameter_counts(table):
    results, _ = table
    rows = {r["row"]: r for r in results["rows"]}
    s = results["settings"]
    convmixer = dict(dim=s["dim"], depth=s["depth"], kernel_size=s["kernel"], patch_size=4)
    cm = (s["dim"], s["depth"], s["kernel"], 4, 10, 28)
    assert rows["blockwise_convmixer_p"]["params"] == ppconvmixer_num_params(*cm, in_chans=1)
    assert rows["plain_convmixer"]["params"] == ppconvmixer_num_params(*cm, in_chans=1) - 49**2
    assert rows["blockwise_convmixer_p"]["model_kwargs"]["dim"] == convmixer["dim"]
    assert rows["etc_adaptnet_pyramidnet"]["params"] == adaptnet_pyramidnet_num_params(
        28, 4, 20, 48, "ele", in_chans=1
    )
    assert rows["grid_le_le"]["params"] == adaptnet_pyramidnet_num_params(
        28, 4, 20, 48, "le", in_chans=1
    )
    # the paper's geometry: Table I's counts
    assert (
        rows["etc_adaptnet_pyramidnet"]["paper_params"]
        == PAPER["adaptnet_ele_shakedrop_pyramidnet110_a270"]
    )
    assert rows["blockwise_convmixer_p"]["paper_params"] == PAPER["ppconvmixer_512_16"][True]
    assert rows["plain_convmixer"]["paper_params"] == PAPER["ppconvmixer_512_16"][False]
    paper = results["paper_params"]
    assert paper["pyramidnet"]["params"] == PAPER["shakedrop_pyramidnet110_a270"]
    stated = {k: v["table1_millions"] for k, v in paper.items() if v["table1_millions"]}
    assert stated == {
        "adaptnet_ele": 29.31,
        "pyramidnet": 28.49,
        "convmixer_no_p": 5.31,
        "convmixer_p": 5.35,
    }
    assert all(v["matches_table1"] for k, v in paper.items() if k in stated)


def test_every_scheme_has_a_row():
    from timm_ppconvmixer.schemes import ENCRYPT_ONLY_SCHEMES, SCHEMES

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reproduce_table1

    covered = {spec["scheme"] for spec in reproduce_table1.TABLE_ROWS.values()}
    assert set(SCHEMES) | set(ENCRYPT_ONLY_SCHEMES) <= covered


@pytest.mark.slow
def test_zoo_folders_hold_the_measured_numbers_of_the_saved_weights(table):
    import timm
    import torch

    results, _ = table
    rows = {r["row"]: r for r in results["rows"]}
    zoo = Path(results["settings"]["zoo"])
    assert sorted(p.name for p in zoo.iterdir()) == sorted(ZOO.values())
    for row, entry in ZOO.items():
        folder = zoo / entry
        metrics = json.loads((folder / "metrics.json").read_text())
        measured = {k: rows[row][k] for k in ("top1_key", "top1_plain", "top1_wrong_key")}
        assert metrics["eval"] == {k: v for k, v in measured.items() if v is not None}
        assert metrics["key_fingerprint"] == rows[row]["key_fingerprint"]
        card = (folder / "README.md").read_text()
        assert "Zoo model of the Table I reproduction" in card
        assert f"{100 * metrics['eval']['top1_plain']:.2f} %" in card
        # the exported weights are the saved ones the numbers were measured on
        exported = timm.create_model(f"local-dir:{folder}", pretrained=True).state_dict()
        saved = timm.create_model(
            f"local-dir:{rows[row]['trained_folder']}", pretrained=True
        ).state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in exported.items())
    assert rows["plain_convmixer"]["key_fingerprint"] is None
    assert rows["pe_convmixer"]["key_fingerprint"] == rows["pe_convmixer"]["key"]["fingerprint"]
