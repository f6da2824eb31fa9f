"""Cost of the adaptive permutation matrix P in a training step, as JSON ratios.

Forward + backward + SGD step of ``ppconvmixer_512_16`` (224x224, 10 classes) with P against
the same config with ``permutation=False``, same batch, timed in alternation in one process
(medians of repeats). Peak memory of each is measured in a fresh subprocess: peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. Goal: P costs <= 5 % in time and memory.

At larger images P grows as (H/M)^4: ``--img-size 448`` (784 tokens at block 16; goal: P <= 10 %
of the step). ``--channels-last`` runs the activations as the recipe does by default.

Run: ``python benchmarks/bench_model.py [--batch 8 --repeats 5 --device cpu --img-size 224]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from _timing import interleaved_medians

import timm_ppconvmixer  # noqa: F401

MODEL = "ppconvmixer_512_16"


def _model(permutation: bool, device: str, img_size: int, channels_last: bool = False):
    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=10, permutation=permutation, img_size=img_size)
    if channels_last:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
        from ppcm_recipe.build import use_channels_last

        use_channels_last(model)
    return model.to(device).train()


def make_step(
    permutation: bool, batch: int, device: str, img_size: int = 224, channels_last: bool = False
):
    model = _model(permutation, device, img_size, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def peak_memory(permutation: bool, batch: int, device: str, img_size: int = 224) -> int:
    """Peak bytes of a few training steps, run alone in a fresh process."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import bench_model as b; "
        f"print(b._peak_in_process({permutation}, {batch}, {device!r}, {img_size}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _peak_in_process(permutation: bool, batch: int, device: str, img_size: int = 224) -> int:
    step = make_step(permutation, batch, device, img_size)
    for _ in range(2):
        step()
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step_tensor_bytes(permutation: bool, batch: int, device: str, img_size: int = 224) -> int:
    """Exact bytes a training step holds: parameters, their gradients, and the activations
    autograd saves for the backward pass (counted with saved-tensor hooks; shared storages
    once)."""
    model = _model(permutation, device, img_size)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long, device=device))
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    activations = sum(n for ptr, n in seen.items() if ptr not in params)
    del loss
    return 2 * sum(params.values()) + activations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--img-size", type=int, default=224, help="448: 784 tokens at block 16")
    parser.add_argument("--channels-last", action="store_true", help="as the recipe trains")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measures")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU seconds (all its threads), steadier on a shared machine",
    )
    args = parser.parse_args()
    size, cl = args.img_size, args.channels_last
    med = interleaved_medians(
        {
            "with_p": make_step(True, args.batch, args.device, size, cl),
            "without_p": make_step(False, args.batch, args.device, size, cl),
        },
        args.repeats,
        warmup=1,
        clock=time.process_time if args.clock == "cpu" else time.perf_counter,
    )
    memory = {}
    if not args.no_memory:
        bytes_p = step_tensor_bytes(True, args.batch, args.device, size)
        bytes_no = step_tensor_bytes(False, args.batch, args.device, size)
        mem_p = peak_memory(True, args.batch, args.device, size)
        mem_no = peak_memory(False, args.batch, args.device, size)
        memory = {
            "step_tensor_bytes_with_p": bytes_p,
            "step_tensor_bytes_without_p": bytes_no,
            "step_tensor_bytes_ratio": bytes_p / bytes_no,
            "peak_memory_bytes_with_p": mem_p,
            "peak_memory_bytes_without_p": mem_no,
            "memory_ratio_with_over_without": mem_p / mem_no,
            "memory_measure": "cuda max_memory_allocated"
            if args.device.startswith("cuda")
            else "peak RSS of a fresh process (includes the Python/torch baseline)",
            "step_tensor_bytes_measure": "params + grads + activations saved for backward",
        }
    grid = size // 16
    print(
        json.dumps(
            {
                "model": MODEL,
                "device": args.device,
                "batch": args.batch,
                "img_size": size,
                "tokens": grid * grid,
                "channels_last": cl,
                "clock": args.clock,
                "threads": torch.get_num_threads(),
                "loadavg": os.getloadavg(),
                "step_s_with_p": med["with_p"],
                "step_s_without_p": med["without_p"],
                "time_ratio_with_over_without": med["with_p"] / med["without_p"],
                "p_share_of_step": 1 - med["without_p"] / med["with_p"],
                **memory,
                "goal": "time and memory ratios <= 1.05 at 224; P <= 10 % of the step at 448",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
