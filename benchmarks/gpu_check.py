"""One prepared GPU check: one command, one JSON, on a machine with torch, timm,
accelerate, safetensors and huggingface_hub but not ``datasets`` (synthetic images).

1. bf16 training steps through ``accelerate`` for ``ppconvmixer_512_16`` at 224/16 (batch 256)
   against timm's ``ConvMixer`` of the same shape in the same run (images/s, ratio), and the
   same model without P: P's share of the step. Timed in alternation, medians.
2. ``encrypt`` on a uint8 batch on the device against ``clone`` of it.
3. A short recipe run (``recipes/train.py``: image folder, key, ``data.encrypt_on=device``) with
   a checkpoint, stopped early and resumed: its weights must equal an uninterrupted run's,
   bit for bit (deterministic algorithms on for this part).
4. Peak memory (CUDA ``max_memory_allocated`` per part; peak RSS on CPU).

    python benchmarks/gpu_check.py [--json gpu_check.json]          # on a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --tiny               # CI (tests/test_gpu_check.py)

Exit status 1 when the resumed weights differ from the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (part 3)

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _timing import interleaved_medians  # noqa: E402
from PIL import Image  # noqa: E402
from timm.models.convmixer import ConvMixer  # noqa: E402

import timm_ppconvmixer  # noqa: E402,F401
from timm_ppconvmixer import BlockKey, encrypt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

FULL = dict(dim=512, depth=16, kernel_size=9, patch_size=16, img=224, batch=256, repeats=10)
TINY = dict(dim=32, depth=2, kernel_size=3, patch_size=16, img=64, batch=4, repeats=3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_steps(shape: dict, device: torch.device, precision: str) -> dict:
    """Steps of ours (with P), ours without P and timm's ConvMixer, prepared by one Accelerator,
    in alternation."""
    from accelerate import Accelerator
    from ppcm_recipe.build import use_channels_last

    acc = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    arch = {k: shape[k] for k in ("dim", "depth", "kernel_size", "patch_size")}
    builders = {
        "ours": lambda: timm.create_model(
            "ppconvmixer_512_16", num_classes=10, img_size=shape["img"], **arch
        ),
        "ours_without_p": lambda: timm.create_model(
            "ppconvmixer_512_16", num_classes=10, img_size=shape["img"], permutation=False, **arch
        ),
        "timm_convmixer": lambda: ConvMixer(num_classes=10, **arch),
    }
    b, s = shape["batch"], shape["img"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, s, s, generator=gen).to(acc.device)
    y = torch.randint(0, 10, (b,), generator=gen).to(acc.device)
    steps, memory = {}, {}
    for name, make in builders.items():
        torch.manual_seed(0)
        model = make()
        use_channels_last(model)  # the recipe's default
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model, opt = acc.prepare(model, opt)
        model.train()

        def step(model=model, opt=opt):
            with acc.autocast():
                loss = F.cross_entropy(model(x), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(acc.device)

        _reset_peak(acc.device)
        step()
        memory[name] = _peak(acc.device)
        steps[name] = step
    med = interleaved_medians(steps, shape["repeats"], warmup=2)
    return {
        "mixed_precision": precision,
        "batch": b,
        "img_size": s,
        "arch": arch,
        "step_s": med,
        "images_per_s": {k: b / v for k, v in med.items()},
        "ours_over_timm_images_per_s": med["timm_convmixer"] / med["ours"],
        "p_share_of_step": 1 - med["ours_without_p"] / med["ours"],
        "peak_memory_bytes": memory,
    }


def encrypt_vs_clone(shape: dict, device: torch.device) -> dict:
    s, b = shape["img"], shape["batch"]
    key = BlockKey.generate(s, shape["patch_size"], seed=0)
    x = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=device)
    assert torch.equal(encrypt(x, key).cpu(), encrypt(x.cpu(), key))  # same bytes as on CPU

    def timed(fn):
        def run():
            fn()
            _sync(device)

        return run

    med = interleaved_medians(
        {"encrypt": timed(lambda: encrypt(x, key)), "clone": timed(lambda: x.clone())},
        shape["repeats"] * 3,
    )
    return {
        "batch": b,
        "encrypt_s": med["encrypt"],
        "clone_s": med["clone"],
        "encrypt_images_per_s": b / med["encrypt"],
        "clone_images_per_s": b / med["clone"],
        "throughput_ratio_encrypt_over_clone": med["clone"] / med["encrypt"],
    }


def _write_folder(root: Path, split: str, per_class: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((size + 8, size), Image.Resampling.BILINEAR)
            img.save(root / split / c / f"{i}.png")


def resume_check(shape: dict, device: torch.device, precision: str, tmp: Path) -> dict:
    """Uninterrupted run against one stopped after its first checkpoint and resumed."""
    import train as recipe

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    s, tiny = shape["img"], shape is TINY
    per_class = 24 if tiny else 512
    batch = 8 if tiny else 64
    _write_folder(tmp / "data", "train", per_class, s, seed=0)
    _write_folder(tmp / "data", "test", per_class // 4, s, seed=1)
    key_path = BlockKey.generate(s, shape["patch_size"], seed=7).save(tmp / "owner.key")
    steps = 2 * per_class // batch  # one epoch
    common = [
        "model.name=ppconvmixer_512_16",
        f"model.kwargs={{num_classes: 2, img_size: {s}, dim: {min(shape['dim'], 128)}, "
        f"depth: {min(shape['depth'], 4)}, kernel_size: {shape['kernel_size']}}}",
        "data.source=imagefolder",
        f"data.name={tmp / 'data'}",
        f"data.key={key_path}",
        "data.encrypt_on=device",
        "data.num_workers=0",
        "data.mean=[0.5, 0.5, 0.5]",
        "data.std=[0.5, 0.5, 0.5]",
        f"train.batch_size={batch}",
        "train.epochs=1",
        f"train.checkpoint_every={steps // 2}",
        "train.log_every=1",
        f"train.mixed_precision={precision}",
        f"train.cpu={str(device.type == 'cpu').lower()}",
        "augment.mixup=0.2",
        "eval.every_epoch=false",
    ]
    _reset_peak(device)
    started = time.perf_counter()
    straight = recipe.main([*common, f"output={tmp / 'straight'}"])
    straight_s = time.perf_counter() - started
    peak = _peak(device)
    _reset_state()
    recipe.main([*common, f"output={tmp / 'resumed'}", f"train.max_steps={steps // 2 + 1}"])
    _reset_state()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        resumed = recipe.main([*common, f"output={tmp / 'resumed'}"])
    _reset_state()
    torch.use_deterministic_algorithms(False)
    a = (tmp / "straight" / "model" / "model.safetensors").read_bytes()
    b = (tmp / "resumed" / "model" / "model.safetensors").read_bytes()
    log = (tmp / "resumed" / "metrics.jsonl").read_text().splitlines()
    return {
        "steps": steps,
        "checkpoint_every": steps // 2,
        "stopped_after_step": steps // 2 + 1,
        "resumed_from_checkpoint": sorted(p.name for p in (tmp / "resumed/checkpoints").iterdir()),
        "resumed": "resumed from" in printed.getvalue(),
        "weights_identical": a == b,
        "eval_identical": straight["eval"] == resumed["eval"],
        "logged_steps_resumed_run": len([ln for ln in log if '"loss"' in ln]),
        "uninterrupted_run_s": straight_s,
        "eval": straight["eval"],
        "peak_memory_bytes": peak,
    }


def _reset_state() -> None:
    """A fresh Accelerator for the next in-process run."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small shapes (CI on CPU)")
    parser.add_argument("--json", default="gpu_check.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; --device cpu --tiny is the CI check", file=sys.stderr)
        return 2
    shape = TINY if args.tiny else FULL
    precision = "bf16" if device.type == "cuda" else "no"
    started = time.perf_counter()
    result = {
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        ),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "datasets_imported": "datasets" in sys.modules and sys.modules["datasets"] is not None,
        "tiny": args.tiny,
        "loadavg": os.getloadavg(),
        "training": training_steps(shape, device, precision),
        "encrypt_vs_clone": encrypt_vs_clone(shape, device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["resume"] = resume_check(shape, device, precision, Path(tmp))
    result["total_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    Path(args.json).write_text(text)
    print(text)
    ok = result["resume"]["weights_identical"] and result["resume"]["resumed"]
    if not ok:
        print("error: the resumed weights differ from the uninterrupted run's", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
