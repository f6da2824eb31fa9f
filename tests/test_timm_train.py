"""Fine-tuning with timm's own, unmodified train.py on an encrypted image folder.

timm's train.py is not part of the timm package; the test takes its path from the environment
variable TIMM_TRAIN_PY (an unmodified train.py from timm's GitHub repository). Without it the
test skips, except where PPCM_REQUIRE_TIMM_TRAIN=1 (CI, via `.ci/run`): there a missing
train.py is a failure, so the test can never be skipped silently.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer import BlockKey, encrypt
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.hub import save_model_folder
from timm_ppconvmixer.models.permutation import permutation_penalty_grad

TRAIN_PY = os.environ.get("TIMM_TRAIN_PY")
_FOUND = bool(TRAIN_PY) and Path(TRAIN_PY).is_file()
_REQUIRED = os.environ.get("PPCM_REQUIRE_TIMM_TRAIN") == "1"
_WHY = "set TIMM_TRAIN_PY to the train.py of timm's GitHub repository to run this test"


@pytest.fixture(autouse=True)
def _train_py_present():
    if not _FOUND:
        if _REQUIRED:
            pytest.fail(f"TIMM_TRAIN_PY={TRAIN_PY!r} is not a file; CI requires it: {_WHY}")
        pytest.skip(_WHY)


# Flags that keep timm's augmentation from breaking the block grid (recipes/timm_train.md).
KEY_FREE_FLAGS = ["--no-aug", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--crop-pct", "1.0"]


def encrypted_folder(root: Path, key: BlockKey, per_class: int) -> Path:
    images, labels = fashion_mnist_arrays("test")
    for split, offset in (("train", 0), ("validation", 1000)):
        for cls in (0, 1):
            folder = root / split / f"class{cls}"
            folder.mkdir(parents=True)
            picks = np.flatnonzero(labels[offset:] == cls)[:per_class] + offset
            for i in picks:
                enc = encrypt(Image.fromarray(images[i], "L"), key)
                enc.save(folder / f"{i}.png")
    return root


def run_train(data: Path, out: Path, *extra: str) -> None:
    cmd = [
        sys.executable, TRAIN_PY, "--data-dir", str(data), "--device-modules", "timm_ppconvmixer",
        "--device", "cpu", "--no-prefetcher", "--workers", "0", "--epochs", "1",
        "--batch-size", "8", "--validation-batch-size", "8", "--input-size", "1", "28", "28",
        "--mean", "0.5", "--std", "0.5", "--opt", "momentum", "--momentum", "0",
        "--weight-decay", "0", "--lr", "0.5", "--sched", "cosine", "--warmup-epochs", "0",
        "--smoothing", "0",
        "--seed", "0", "--output", str(out), "--experiment", "run", "--checkpoint-hist", "1",
        *KEY_FREE_FLAGS, *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def checkpoint_p(out: Path) -> torch.Tensor:
    ckpt = torch.load(out / "run" / "last.pth.tar", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]["stem.3.weight"]


def test_one_epoch_trains_checkpoints_validates_and_the_penalty_acts_on_p(tmp_path):
    key = BlockKey.generate(28, 4, channels=1, seed=2)
    data = encrypted_folder(tmp_path / "data", key, per_class=4)  # one batch of 8: one step
    model_args = ["--model", "ppconvmixer_256_8", "--num-classes", "2", "--model-kwargs",
                  "img_size=28", "dim=32", "depth=2"]  # fmt: skip
    run_train(data, tmp_path / "no_penalty", *model_args, "penalty_weight=0")
    run_train(data, tmp_path / "penalty", *model_args, "penalty_weight=3.0")
    for run in ("no_penalty", "penalty"):
        summary = (tmp_path / run / "run" / "summary.csv").read_text()
        assert "eval_top1" in summary  # validated
    # Same seed, data and init: the only difference after one SGD step (lr 0.5) is the
    # implicit penalty's gradient, -lr * lambda * dL_U/dP at the initial P.
    torch.manual_seed(0)
    init = timm.create_model(
        "ppconvmixer_256_8", num_classes=2, in_chans=1, img_size=28, dim=32, depth=2
    ).permutation.weight.detach()
    delta = checkpoint_p(tmp_path / "penalty") - checkpoint_p(tmp_path / "no_penalty")
    expected = -0.5 * 3.0 * permutation_penalty_grad(init)
    assert delta.abs().max() > 1e-4
    torch.testing.assert_close(delta, expected, rtol=1e-3, atol=1e-6)


def test_fine_tune_a_pretrained_folder_with_a_new_number_of_classes(tmp_path):
    key = BlockKey.generate(28, 4, channels=1, seed=3)
    data = encrypted_folder(tmp_path / "data", key, per_class=8)
    source = timm.create_model(
        "ppconvmixer_256_8", num_classes=10, in_chans=1, img_size=28, dim=32, depth=2
    )
    source.key_fingerprint = key.fingerprint
    folder = save_model_folder(source, tmp_path / "pretrained")
    run_train(
        data, tmp_path / "ft", "--model", "ppconvmixer_256_8", "--pretrained",
        "--pretrained-path", str(folder / "model.safetensors"), "--num-classes", "2",
        "--model-kwargs", "img_size=28", "dim=32", "depth=2", "--lr", "1e-7",
    )  # fmt: skip
    ckpt = torch.load(
        tmp_path / "ft" / "run" / "last.pth.tar", map_location="cpu", weights_only=False
    )
    assert ckpt["state_dict"]["head.weight"].shape == (2, 32)  # new head
    # the body started from the pretrained weights (a tiny lr keeps it there), P included
    for name in ("stem.0.weight", "stem.3.weight", "blocks.1.1.weight"):
        torch.testing.assert_close(
            ckpt["state_dict"][name], source.state_dict()[name], rtol=0, atol=1e-4
        )
    assert json.loads((folder / "config.json").read_text())["model_args"]["img_size"] == [28, 28]


@pytest.mark.slow
def test_adaptnet_shakedrop_trains_and_l_u_acts_on_u(tmp_path):
    """timm's train.py trains an ELE-AdaptNet + ShakeDrop PyramidNet with --model-kwargs, and
    the implicit L_U of Madono et al.'s loss acts on U exactly as on P."""
    key = BlockKey.generate(28, 4, channels=1, seed=4)
    data = encrypted_folder(tmp_path / "data", key, per_class=4)  # one batch of 8: one step
    name = "adaptnet_ele_shakedrop_pyramidnet20_a48_fmnist"
    model_args = ["--model", name, "--num-classes", "2", "--model-kwargs", "depth=8", "alpha=12"]
    run_train(data, tmp_path / "no_penalty", *model_args, "penalty_weight=0")
    run_train(data, tmp_path / "penalty", *model_args, "penalty_weight=3.0")
    assert "eval_top1" in (tmp_path / "penalty" / "run" / "summary.csv").read_text()
    torch.manual_seed(0)
    init = timm.create_model(name, num_classes=2, depth=8, alpha=12).permutation.weight.detach()

    def u(run: str) -> torch.Tensor:
        path = tmp_path / run / "run" / "last.pth.tar"
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        return ckpt["state_dict"]["adapt.mixing.weight"]

    delta = u("penalty") - u("no_penalty")
    assert delta.abs().max() > 1e-4
    torch.testing.assert_close(
        delta, -0.5 * 3.0 * permutation_penalty_grad(init), rtol=1e-3, atol=1e-6
    )
