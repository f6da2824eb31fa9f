"""The accelerate recipe end to end, in real processes on the real Fashion-MNIST."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import holds_key_material
from PIL import Image

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer import BlockKey, ppconvmixer_num_params

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "train.py"
FMNIST = ROOT / "recipes" / "configs" / "fashion_mnist_28.yaml"
PAPER = ROOT / "recipes" / "configs" / "paper_cifar10_ppconvmixer_512_16.yaml"
ACCELERATE_CPU2 = ROOT / "recipes" / "accelerate" / "cpu2.yaml"
BIN = Path(sys.executable).parent

TINY = [
    "data.train_limit=640",
    "data.val_limit=200",
    "data.num_workers=2",
    "model.kwargs.dim=16",
    "model.kwargs.depth=2",
    "train.batch_size=64",
    "train.epochs=2",
    "train.checkpoint_every=4",
    "train.log_every=2",
    "augment.mixup=0.2",
]


@pytest.fixture(scope="module")
def fmnist_key(tmp_path_factory):
    return BlockKey.generate(28, 4, channels=1, seed=5).save(
        tmp_path_factory.mktemp("keys") / "owner.key"
    )


def train_cmd(out, key, *extra, config=FMNIST):
    return [sys.executable, str(TRAIN), "--config", str(config), *TINY, f"output={out}",
            f"data.key={key}", *extra]  # fmt: skip


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_training_outputs_are_complete_and_key_free(tmp_path, fmnist_key):
    out = tmp_path / "run"
    run(train_cmd(out, fmnist_key))
    final = json.loads((out / "final_metrics.json").read_text())
    assert set(final["eval"]) == {"top1_key", "top1_plain", "top1_wrong_key"}
    key = BlockKey.load(fmnist_key)
    # the recorded share, recomputed independently from the exported model's effective P
    from scipy.optimize import linear_sum_assignment

    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    p = model.permutation.matrix().detach().double().abs().numpy()
    rows, cols = linear_sum_assignment(p, maximize=True)
    exact = float((cols[np.argsort(rows)] == key.block_perm.numpy()).mean())
    assert final["permutation_recovery"]["exact"] == pytest.approx(exact)
    assert exact <= final["permutation_recovery"]["up_to_symmetry"] <= 1.0
    assert final["key_fingerprint"] == key.fingerprint
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [ln["step"] for ln in lines if "loss" in ln]
    assert steps == sorted(steps) and steps[-1] == 20  # 640 // 64 * 2 epochs, logged every 2
    assert any("eval" in ln for ln in lines)  # per-epoch evaluation
    assert all(ln["penalty"] > 0 for ln in lines if "loss" in ln)  # L_U is in the loss
    # the shareable model folder loads with timm and carries the fingerprint, not the key
    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert model.key_fingerprint == key.fingerprint
    assert (out / "owner" / "p_vs_inverse_block_permutation.png").is_file()
    for path in [*(out / "model").iterdir(), out / "metrics.jsonl", out / "final_metrics.json"]:
        assert holds_key_material(path.read_bytes(), key) == [], path


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, fmnist_key):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(train_cmd(straight, fmnist_key))
    proc = subprocess.Popen(train_cmd(killed, fmnist_key), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    limit = 120  # seconds, for the run's first 8 steps on a loaded machine
    deadline = time.monotonic() + limit
    try:
        while not list((killed / "checkpoints").glob("step_00000008")):
            assert proc.poll() is None, "training ended before it could be killed"
            if time.monotonic() > deadline:
                pytest.fail(f"the run to be killed wrote no checkpoint step_00000008 in {limit} s")
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no clean-up in the run
        proc.wait()
    assert not (killed / "final_metrics.json").exists()
    resumed = run(train_cmd(killed, fmnist_key))
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert (straight / "model" / "model.safetensors").read_bytes() == (
        killed / "model" / "model.safetensors"
    ).read_bytes()
    a = json.loads((straight / "final_metrics.json").read_text())
    b = json.loads((killed / "final_metrics.json").read_text())
    assert a["eval"] == b["eval"] and a["permutation_recovery"] == b["permutation_recovery"]

    def losses(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in lines]

    assert losses(straight) == losses(killed)
    assert not list((killed / "checkpoints").glob(".tmp*"))


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync(tmp_path, fmnist_key):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CPU2),
           "--main_process_port", str(29500 + os.getpid() % 400), *train_cmd(out, fmnist_key)[1:],
           "data.num_workers=0"]  # fmt: skip
    run(cmd, timeout=600)
    records = [json.loads(p.read_text()) for p in sorted((out / "sync").glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and "MULTI_CPU" in r["distributed_type"] for r in records)
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    final = json.loads((out / "final_metrics.json").read_text())
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(ln["step"] for ln in lines) == 10  # 640 // (64 * 2) * 2 epochs
    # the recorded top-1 is the exported model's, recomputed here by the owner on the same
    # 200 validation images (10 steps of a 16-wide model stay near chance: no threshold)
    top1 = owner_top1(out / "model", BlockKey.load(fmnist_key), limit=200)
    assert abs(final["eval"]["top1_key"] - top1) <= 1 / 200


def owner_top1(model_dir: Path, key: BlockKey, limit: int) -> float:
    """Top-1 of an exported model on the first ``limit`` Fashion-MNIST test images, encrypted
    with ``key`` through the package's own transform."""
    from timm_ppconvmixer.data import load_fashion_mnist
    from timm_ppconvmixer.transforms import create_transform

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    tf = create_transform(key, is_training=False, mean=cfg["mean"], std=cfg["std"])
    test = load_fashion_mnist("test", limit=limit)
    x = torch.stack([tf(im) for im in test["image"]])
    with torch.no_grad():
        predictions = model(x).argmax(1)
    return float((predictions == torch.tensor(test["label"])).double().mean())


@pytest.mark.slow
def test_paper_config_starts_on_cpu(tmp_path):
    """The paper's config, unchanged but for the data (no internet here: a tiny image folder
    of 32x32 images, resized to 224 like CIFAR-10) and the step count."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / "data" / split / f"class{c}").mkdir(parents=True)
            for i in range(4):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / "data" / split / f"class{c}" / f"{i}.png")
    key = BlockKey.generate(224, 16, seed=0).save(tmp_path / "owner.key")
    out = tmp_path / "paper"
    cmd = [sys.executable, str(TRAIN), "--config", str(PAPER), f"output={out}", f"data.key={key}",
           "data.source=imagefolder", f"data.name={tmp_path / 'data'}", "data.num_workers=0",
           "train.batch_size=4", "train.max_steps=2", "train.mixed_precision=no",
           "eval.batch_size=8", "model.kwargs.num_classes=2"]  # fmt: skip
    run(cmd, timeout=900)
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["params"] == ppconvmixer_num_params(512, 16, 9, 16, 2, 224)  # Eq. (4)
    assert set(final["eval"]) == {"top1_key", "top1_plain", "top1_wrong_key"}
    assert final["key_fingerprint"] == BlockKey.load(key).fingerprint


def test_config_errors_are_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TRAIN), "--config", str(FMNIST), "train.epochz=3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "unknown config field 'train.epochz'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_model_loaded_from_recipe_output_gives_same_logits(tmp_path, fmnist_key):
    """The exported model folder holds the weights the run trained: rebuilt independently
    (timm.create_model from the run's config.yaml, then the last training checkpoint's
    weights, as accelerate's save_state wrote them), it gives the exported model's logits on
    real encrypted images; those weights are not the initial ones; and the top-1 the recipe
    recorded is the exported model's."""
    import yaml
    from safetensors.torch import load_file

    from timm_ppconvmixer.data import load_fashion_mnist
    from timm_ppconvmixer.transforms import create_transform

    out = tmp_path / "short"
    run(train_cmd(out, fmnist_key, "train.epochs=1", "eval.every_epoch=false"))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    exported = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()
    (last,) = sorted((out / "checkpoints").glob("step_*"))[-1:]
    assert last.name == "step_00000010"  # 640 // 64 updates: the epoch's end, the last step
    torch.manual_seed(0)  # the recipe's seed: this is the run's initial model
    independent = timm.create_model(cfg["model"]["name"], **cfg["model"]["kwargs"]).eval()
    initial = {k: v.clone() for k, v in independent.state_dict().items()}
    independent.load_state_dict(load_file(last / "model.safetensors"), strict=True)
    key = BlockKey.load(fmnist_key)
    tf = create_transform(key, is_training=False, mean=(0.5,), std=(0.5,))
    test = load_fashion_mnist("test", limit=64)
    x = torch.stack([tf(im) for im in test["image"]])
    with torch.no_grad():
        logits = exported(x)
        torch.testing.assert_close(logits, independent(x), rtol=1e-6, atol=1e-6)
        independent.load_state_dict(initial)
        assert (logits - independent(x)).abs().max() > 1e-3  # trained, not the initial weights
    trained = load_file(out / "model" / "model.safetensors")
    moved = [
        k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained[k])
    ]
    assert any("head" in k for k in moved) and any("stem.3" in k for k in moved)  # head and P
    final = json.loads((out / "final_metrics.json").read_text())
    top1 = owner_top1(out / "model", key, limit=200)
    assert abs(final["eval"]["top1_key"] - top1) <= 1 / 200


@pytest.mark.parametrize("arch", ["adaptnet_le_shakedrop_pyramidnet20_a48_fmnist"])
def test_recipe_keys_and_trains_an_adaptnet_model(tmp_path, fmnist_key, arch):
    """An AdaptNet PyramidNet has no ConvMixer stem (its stem[0] is the PyramidNet's 3x3
    conv): the recipe must take the key's block size from the model's own block size, key it,
    mix with block-aligned CutMix, take a few steps and export a model that reloads."""
    out = tmp_path / "adapt"
    cmd = [sys.executable, str(TRAIN), "--config", str(FMNIST), f"output={out}",
           f"data.key={fmnist_key}", f"model.name={arch}",
           "model.kwargs={num_classes: 10, in_chans: 1, img_size: 28}",
           "data.train_limit=64", "data.val_limit=32", "data.num_workers=0",
           "train.batch_size=16", "train.max_steps=2", "train.log_every=1",
           "augment.cutmix=1.0", "eval.every_epoch=false",
           "eval.batch_size=32"]  # fmt: skip
    run(cmd, timeout=600)
    key = BlockKey.load(fmnist_key)
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["key_fingerprint"] == key.fingerprint
    assert set(final["eval"]) == {"top1_key", "top1_plain", "top1_wrong_key"}
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines if "loss" in ln] == [1, 2]
    assert all(np.isfinite(ln["loss"]) for ln in lines if "loss" in ln)
    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()
    assert model.pretrained_cfg["architecture"] == arch and model.adapt.block_size == 4
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_block_size_comes_from_the_model_not_its_stem():
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        from ppcm_recipe.build import block_size_of
        from ppcm_recipe.config import ConfigError
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    convmixer = timm.create_model("ppconvmixer_256_8", img_size=28, in_chans=1, dim=16, depth=1)
    assert block_size_of(convmixer) == 4 == convmixer.stem[0].kernel_size[0]
    for arch in (
        "adaptnet_le_shakedrop_pyramidnet20_a48",
        "adaptnet_ele_shakedrop_pyramidnet20_a48",
    ):
        model = timm.create_model(arch, block_size=8)  # stem[0] is a 3x3 conv
        assert block_size_of(model) == 8 != model.stem[0].kernel_size[0]
    with pytest.raises(ConfigError, match="states no key block size"):
        block_size_of(timm.create_model("shakedrop_pyramidnet20_a48"))
