"""The main job (README's first command) end to end, at a reduced training size."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.hub import scan_for_key_material

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_keeps_the_key_with_the_owner(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "demo.py"), "--out", str(out),
         "--train-limit", "1024", "train.max_steps=4", "train.checkpoint_every=2"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    key = BlockKey.load(out / "owner" / "owner.key")
    assert summary["key_fingerprint"] == key.fingerprint
    assert set(summary["eval"]) == {"top1_key", "top1_plain", "top1_wrong_key"}
    for name in ("report.md", "samples.png", "photo.png", "training_curve.png"):
        assert (out / name).is_file()
    report = (out / "report.md").read_text()
    assert key.fingerprint in report and "The provider's view" in report
    assert set(summary["attack"]["key_recovered"]) >= {"K1", "K2", "K3"}
    assert (out / "owner" / "attack" / "report.md").is_file()
    model = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True)
    assert model.key_fingerprint == key.fingerprint
    # the secrets appear in no file outside owner/: checkpoints (safetensors and accelerate's
    # pickles), the encrypted dataset's arrow files, logs, configs, the export and its card
    shared = [p for p in out.rglob("*") if p.is_file() and "owner" not in p.parts]
    assert any("checkpoints" in p.parts for p in shared)
    assert any(p.suffix == ".arrow" for p in shared)
    secret_lists = [json.dumps(t.tolist())[1:-1].encode() for t in (key.block_perm, key.pixel_perm)]
    for path in shared:  # as text, the way a config or log would carry them
        data = path.read_bytes()
        assert not any(s in data for s in secret_lists), path
    # and in every binary encoding the leak guard knows (raw ints and floats, safetensors)
    assert scan_for_key_material(shared, key) == []
