"""benchmarks/reproduce_table1.py runs end to end (2 steps, 200 test images, one row of each
kind) and records what makes its table readable: each row's scheme and key, that its images are
encrypted, and the parameter counts at the run's and at the paper's geometry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_ppconvmixer import ppconvmixer_num_params
from timm_ppconvmixer.adaptnet_pyramidnet import adaptnet_pyramidnet_num_params
from timm_ppconvmixer.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["etc_adaptnet_pyramidnet", "blockwise_convmixer_p", "plain_convmixer", "grid_le_le"]

# Table I's parameter counts, from the formulas (paper Eq. (2)-(4)), at 10 classes
PAPER = {
    "adaptnet_ele_shakedrop_pyramidnet110_a270": 29_310_661,  # 29.31 M
    "shakedrop_pyramidnet110_a270": 28_485_493,  # 28.49 M
    "ppconvmixer_512_16": {False: 5_306_890, True: 5_345_306},  # 5.31 M / 5.35 M
}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("table1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reproduce_table1.py"), "--out", str(out)]
    cmd += ["--steps", "2", "--test-limit", "200", "--train-limit", "2000", "--rows", *ROWS]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "table1.json").read_text()), (out / "table1.md").read_text()


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


def test_encrypted_rows_are_encrypted_with_their_scheme(table):
    rows = {r["row"]: r for r in table[0]["rows"]}
    for name, scheme in [
        ("etc_adaptnet_pyramidnet", "etc"),
        ("blockwise_convmixer_p", "blockwise"),
        ("grid_le_le", "le"),
    ]:
        r = rows[name]
        assert r["scheme"] == scheme
        assert r["key"]["scheme"] == f"ppconvmixer-{scheme}"
        assert (r["key"]["image_size"], r["key"]["block_size"]) == ([28, 28], 4)
        assert r["key"]["channels"] == 1
        assert r["wrong_key_fingerprint"] != r["key"]["fingerprint"]
        # most pixels change (Fashion-MNIST's black background moves onto black background
        # under block scrambling alone, so not all of them); training data too
        assert r["test_pixels_changed"] > 0.5, name
        assert r["train_pixels_changed"] > 0.5, name
        for col in ("top1_key", "top1_wrong_key"):
            assert 0.0 <= r[col] <= 1.0
    plain = rows["plain_convmixer"]
    assert plain["scheme"] == "plain" and "key" not in plain
    assert plain["top1_key"] is None and plain["top1_wrong_key"] is None


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
