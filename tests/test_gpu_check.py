"""``benchmarks/gpu_check.py --device cpu --tiny`` in CI, so the prepared GPU check cannot rot:
it runs without ``datasets`` (blocked in the child process), writes its JSON, and its resume
check (a recipe run stopped after a checkpoint and resumed) finds the uninterrupted weights."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUN_WITHOUT_DATASETS = (
    "import runpy, sys; sys.modules['datasets'] = None; "
    "sys.path.insert(0, {bench!r}); sys.argv = ['gpu_check.py', *sys.argv[1:]]; "
    "runpy.run_path({script!r}, run_name='__main__')"
)


def test_gpu_check_tiny_on_cpu_without_datasets(tmp_path):
    out = tmp_path / "gpu_check.json"
    code = RUN_WITHOUT_DATASETS.format(
        bench=str(ROOT / "benchmarks"), script=str(ROOT / "benchmarks" / "gpu_check.py")
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--device", "cpu", "--tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["datasets_imported"] is False
    tr = result["training"]
    step = tr["step_s"]  # median seconds per step of each model: the measured figures
    assert set(step) == {"ours", "ours_without_p", "timm_convmixer"}
    assert all(math.isfinite(v) and v > 0 for v in step.values()), step
    # every derived figure is the one its name states, from those medians
    assert tr["images_per_s"] == pytest.approx({k: tr["batch"] / v for k, v in step.items()})
    assert tr["ours_over_timm_images_per_s"] == pytest.approx(step["timm_convmixer"] / step["ours"])
    assert tr["p_share_of_step"] == pytest.approx(1 - step["ours_without_p"] / step["ours"])
    assert set(tr["peak_memory_bytes"]) == set(step)
    assert all(v > 0 for v in tr["peak_memory_bytes"].values())
    enc = result["encrypt_vs_clone"]
    assert all(math.isfinite(enc[k]) and enc[k] > 0 for k in ("encrypt_s", "clone_s")), enc
    assert enc["encrypt_images_per_s"] == pytest.approx(enc["batch"] / enc["encrypt_s"])
    assert enc["clone_images_per_s"] == pytest.approx(enc["batch"] / enc["clone_s"])
    assert enc["throughput_ratio_encrypt_over_clone"] == pytest.approx(
        enc["clone_s"] / enc["encrypt_s"]
    )
    resume = result["resume"]
    assert resume["resumed_from_checkpoint"], "the stopped run left no checkpoint"
    assert resume["resumed"], "the second run did not resume from the checkpoint"
    assert resume["weights_identical"] and resume["eval_identical"]
    assert resume["logged_steps_resumed_run"] == resume["steps"]
