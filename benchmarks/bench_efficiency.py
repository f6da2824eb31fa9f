"""Training efficiency against the machine's own peak, in one run, as JSON + a table.

1. Peak: the fp32 rate of a large ``torch.mm`` (all cores; median of repeats).
2. Models: the training step (forward, backward, AdamW) of the demo model
   ``ppconvmixer_256_8_fmnist`` (1x28x28, block 4, batch 128 as in the demo) and of
   ``ppconvmixer_512_16`` (224/16, a small batch), each beside timm's ``ConvMixer`` of the same
   shape (the peer, no P) as timm ships it and with our depthwise backward
   (``timm_ppconvmixer.models.depthwise``, like for like), timed in alternation. FLOPs are counted
   analytically: 2 x MACs forward, and the backward's two products (input gradient, weight
   gradient) of every conv / linear / P, 2 x MACs each; the first conv has no input gradient.
   A depthwise conv's backward is depthwise too: torch's ``FlopCounterMode`` counts it as a
   dense one, so its training count is reported beside ours, and its forward count must equal
   ours (checked).
3. Levers on the demo model's step: channels_last, the depthwise gradients as forward
   convolutions (against nn.Conv2d's backward), ``torch.compile`` (which also fuses GELU,
   BatchNorm and the residual add into one loop; the convolutions stay oneDNN's), threads.
4. The data loader's share of the step in the demo's real pipeline (the encrypted Fashion-MNIST
   saved with ``save_to_disk``, PNG per image): per-sample decoding with 0 or 1 workers against
   the pre-decoded array (``data.predecode``), and, for plain data with a key, encryption in the
   loader against on the device (``data.encrypt_on``).

Run: ``python benchmarks/bench_efficiency.py [--repeats 5] [--no-compile] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from _timing import interleaved_medians
from timm.models.convmixer import ConvMixer
from torch import nn

import timm_ppconvmixer  # noqa: F401
from timm_ppconvmixer.models.depthwise import use_depthwise_backward
from timm_ppconvmixer.models.permutation import AdaptivePermutation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

SHAPES = {
    "demo": dict(
        ours="ppconvmixer_256_8_fmnist",
        peer=dict(dim=256, depth=8, kernel_size=5, patch_size=4, in_chans=1),
        input=(1, 28, 28),
    ),
    "512_16": dict(
        ours="ppconvmixer_512_16",
        peer=dict(dim=512, depth=16, kernel_size=9, patch_size=16, in_chans=3),
        input=(3, 224, 224),
    ),
}


def peak_gflops(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = interleaved_medians({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * n**3 / t / 1e9


def analytic_flops(model: nn.Module, x: torch.Tensor) -> dict:
    """Forward MACs of every conv, linear and P (from the shapes a forward pass sees), and the
    training step's FLOPs: forward 2 x MACs, backward 2 x MACs for the weight gradient and
    2 x MACs for the input gradient (not for the first layer: the image needs none)."""
    records: list[tuple[str, int]] = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            kind = "depthwise" if module.groups > 1 else "conv"
            records.append((kind, output.numel() * module.in_channels // module.groups * k))
        elif isinstance(module, nn.Linear):
            records.append(("linear", output.numel() * module.in_features))
        elif isinstance(module, AdaptivePermutation):
            n = module.weight.shape[0]
            records.append(("P", inputs[0].numel() * n))

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, AdaptivePermutation))
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    macs = sum(m for _, m in records)
    first = records[0][1]
    by_kind: dict[str, int] = {}
    for kind, m in records:
        by_kind[kind] = by_kind.get(kind, 0) + m
    return {
        "forward_gflop": 2 * macs / 1e9,
        "train_gflop": (2 * macs + 2 * macs + 2 * (macs - first)) / 1e9,
        "forward_macs_by_kind": by_kind,
    }


def counter_flops(model: nn.Module, x: torch.Tensor) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model(x)
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
    model.zero_grad(set_to_none=True)
    return {
        "flopcounter_forward_gflop": fwd.get_total_flops() / 1e9,
        "flopcounter_train_gflop": train.get_total_flops() / 1e9,
    }


def build(shape: str, ours: bool, depthwise_backward: bool | None = None) -> nn.Module:
    """Our model, or timm's ``ConvMixer`` of the same shape as timm ships it.
    ``depthwise_backward`` switches the depthwise gradients as forward convolutions
    (``timm_ppconvmixer.models.depthwise``) on or off, for either; ``None`` keeps the
    model's own."""
    spec = SHAPES[shape]
    torch.manual_seed(0)
    if ours:
        model = timm.create_model(spec["ours"], num_classes=10)
    else:
        model = ConvMixer(num_classes=10, **spec["peer"])
    if depthwise_backward is not None:
        use_depthwise_backward(model, depthwise_backward)
    return model


# the step variants of each shape: (ours, depthwise_backward). "peer" is timm's ConvMixer as timm
# ships it (the goal's comparison); "peerdw" is the same with our depthwise backward, so that
# ours / peerdw is P's own cost, like for like.
VARIANTS = {"ours": (True, None), "peer": (False, None), "peerdw": (False, True)}


def make_step(model, batch, input_size, channels_last=False, compile_=False, threads=None):
    from ppcm_recipe.build import use_channels_last

    if channels_last:
        use_channels_last(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    forward = torch.compile(model) if compile_ else model

    def step():
        if threads is not None:
            torch.set_num_threads(threads)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()
        if threads is not None:
            torch.set_num_threads(THREADS)

    return step


THREADS = torch.get_num_threads()


def bench_models(peak: float, repeats: int, batch_large: int) -> dict:
    out = {}
    for shape, batch in (("demo", 128), ("512_16", batch_large)):
        spec = SHAPES[shape]
        x = torch.randn(batch, *spec["input"])
        flops = {}
        for name, ours in (("ours", True), ("peer", False)):
            model = build(shape, ours)  # the peerdw variant has the peer's FLOPs
            flops[name] = {**analytic_flops(model, x), **counter_flops(model, x)}
            diff = abs(flops[name]["flopcounter_forward_gflop"] - flops[name]["forward_gflop"])
            if diff > 1e-3 * flops[name]["forward_gflop"]:
                raise AssertionError(f"{shape}/{name}: analytic forward FLOPs differ: {flops}")
        steps = {
            f"{name}_{fmt}": make_step(build(shape, *how), batch, spec["input"], fmt == "cl")
            for fmt in ("cl", "nchw")
            for name, how in VARIANTS.items()
        }
        med = interleaved_medians(steps, repeats, warmup=1)
        rows = {}
        for key, seconds in med.items():
            name = key.split("_")[0]
            rate = flops["ours" if name == "ours" else "peer"]["train_gflop"] / seconds
            rows[key] = {
                "step_s": seconds,
                "images_per_s": batch / seconds,
                "gflops": rate,
                "share_of_peak": rate / peak,
            }
        out[shape] = {
            "model": spec["ours"],
            "peer": f"timm ConvMixer({spec['peer']})",
            "batch": batch,
            "input": spec["input"],
            "flops": flops,
            "steps": rows,
            "ours_over_peer_time_cl": med["ours_cl"] / med["peer_cl"],
            "ours_over_peer_time_nchw": med["ours_nchw"] / med["peer_nchw"],
            "ours_over_peerdw_time_cl": med["ours_cl"] / med["peerdw_cl"],
            "ours_over_peerdw_time_nchw": med["ours_nchw"] / med["peerdw_nchw"],
        }
    return out


def bench_levers(peak: float, repeats: int, compile_: bool) -> dict:
    spec = SHAPES["demo"]
    flops = analytic_flops(build("demo", True), torch.randn(128, *spec["input"]))["train_gflop"]
    variants = {
        "baseline (NCHW, eager, all threads)": dict(),
        "channels_last": dict(channels_last=True),
        "NCHW, nn.Conv2d's depthwise backward": dict(depthwise_backward=False),
        "channels_last, nn.Conv2d's depthwise backward": dict(
            channels_last=True, depthwise_backward=False
        ),
        "channels_last, 1 thread": dict(channels_last=True, threads=1),
        "NCHW, 1 thread": dict(threads=1),
    }
    compile_s = {}
    if compile_:
        variants["torch.compile (fuses GELU/BN/add), NCHW"] = dict(compile_=True)
        variants["torch.compile, channels_last"] = dict(compile_=True, channels_last=True)
    steps = {}
    for name, kw in variants.items():
        model = build("demo", True, kw.pop("depthwise_backward", None))
        steps[name] = make_step(model, 128, spec["input"], **kw)
        if kw.get("compile_"):
            start = time.perf_counter()
            steps[name]()  # compiles
            compile_s[name] = time.perf_counter() - start
    med = interleaved_medians(steps, repeats, warmup=1)
    base = med["baseline (NCHW, eager, all threads)"]
    return {
        name: {
            "step_s": s,
            "speedup_vs_baseline": base / s,
            "share_of_peak": flops / s / peak,
            **({"compile_s": compile_s[name]} if name in compile_s else {}),
        }
        for name, s in med.items()
    }


def _time_iter(make_iter, n_batches: int, step=None) -> float:
    """Seconds per batch to draw ``n_batches`` (and run ``step`` on each, if given)."""
    start = time.perf_counter()
    count = 0
    for x, _ in make_iter():
        if step is not None:
            step(x)
        count += 1
        if count == n_batches:
            break
    return (time.perf_counter() - start) / count


def bench_loader(repeats: int, n_batches: int) -> dict:
    from ppcm_recipe.config import load_config
    from ppcm_recipe.data import (
        DeviceEncrypt,
        EpochBatchSampler,
        PredecodedImages,
        SeededTransformDataset,
        encrypted_transform,
        load_split,
        train_transform,
    )
    from torch.utils.data import DataLoader

    from timm_ppconvmixer import BlockKey
    from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist

    batch, size, mean, std = 128, (1, 28, 28), (0.5,), (0.5,)
    n = batch * n_batches
    key = BlockKey.generate(28, 4, channels=1, seed=0)
    model = build("demo", True)
    model_step = make_step(model, batch, size, channels_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.zeros(batch, dtype=torch.long)

    def train_on(x):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    with tempfile.TemporaryDirectory() as tmp:
        encrypt_dataset(load_fashion_mnist("train", limit=n), key).save_to_disk(f"{tmp}/enc")
        cfg = load_config(None, ["data.source=hf", f"data.name={tmp}/enc", "data.encrypted=true"])
        images = load_split(cfg, "train", None)
        per_sample = SeededTransformDataset(images, encrypted_transform(size, mean, std), 0)
        start = time.perf_counter()
        pre = PredecodedImages(images, size, mean, std)
        decode_once_s = time.perf_counter() - start
        sampler = EpochBatchSampler(n, batch, seed=0, epoch=0)

        def loader(workers):
            return lambda: DataLoader(per_sample, batch_sampler=sampler, num_workers=workers)

        sources = {
            "per-sample PNG decode, 0 workers": loader(0),
            "per-sample PNG decode, 1 worker": loader(1),
            "pre-decoded array (data.predecode)": lambda: pre.batches(sampler),
        }
        alone = {
            name: statistics.median(_time_iter(make, n_batches) for _ in range(repeats))
            for name, make in sources.items()
        }
        e2e_fns = {
            name: (lambda m=make: _time_iter(m, n_batches, train_on))
            for name, make in sources.items()
        }
        e2e_fns["step alone (no loader)"] = lambda: [model_step() for _ in range(n_batches)]
        e2e = interleaved_medians(e2e_fns, repeats, warmup=1)
        compute = e2e.pop("step alone (no loader)") / n_batches
        loader_rows = {
            name: {
                "loader_s_per_batch_alone": alone[name],
                "step_with_loader_s": e2e[name] / n_batches,
                "loader_share_of_step": 1 - compute / (e2e[name] / n_batches),
            }
            for name in sources
        }

    # plain data + key (the fashion_mnist_28 recipe): encryption in the loader or on the device
    fm = ROOT / "recipes" / "configs" / "fashion_mnist_28.yaml"
    plain_images = load_split(load_config(fm), "train", n)
    encrypt = DeviceEncrypt(key, mean, std)
    enc = {}
    for where in ("loader", "device"):
        cfg = load_config(fm, [f"data.encrypt_on={where}"])
        ds = SeededTransformDataset(plain_images, train_transform(cfg, key, size, mean, std), 0)
        enc[where] = lambda ds=ds: DataLoader(ds, batch_sampler=sampler, num_workers=0)
    timed = interleaved_medians(
        {
            "loader": lambda: _time_iter(enc["loader"], n_batches),
            "device": lambda: _time_iter(enc["device"], n_batches, encrypt),
        },
        repeats,
        warmup=1,
    )
    return {
        "batch": batch,
        "batches": n_batches,
        "compute_step_s": compute,
        "predecode_once_s_for_images": [decode_once_s, n],
        "encrypted_split": loader_rows,
        "encrypt_on": {
            "loader_s_per_batch_encrypt_in_loader": timed["loader"] / n_batches,
            "loader_plus_device_encrypt_s_per_batch": timed["device"] / n_batches,
            "saved_fraction_of_loader_time": 1 - timed["device"] / timed["loader"],
        },
    }


def print_table(result: dict) -> None:
    peak = result["peak_gflops"]
    print(f"peak fp32 torch.mm: {peak:.1f} GFLOP/s ({result['threads']} threads)")
    for r in result["models"].values():
        f = r["flops"]
        print(
            f"\n{r['model']} batch {r['batch']}: train step {f['ours']['train_gflop']:.2f} GFLOP "
            f"(analytic; FlopCounterMode {f['ours']['flopcounter_train_gflop']:.2f}), peer "
            f"{f['peer']['train_gflop']:.2f}"
        )
        print(f"  {'variant':<12}{'step s':>9}{'img/s':>9}{'GFLOP/s':>9}{'of peak':>9}")
        for k, row in r["steps"].items():
            print(
                f"  {k:<12}{row['step_s']:>9.3f}{row['images_per_s']:>9.1f}"
                f"{row['gflops']:>9.1f}{100 * row['share_of_peak']:>8.1f}%"
            )
        for fmt in ("cl", "nchw"):
            print(
                f"  ours / peer time ({fmt}): {r[f'ours_over_peer_time_{fmt}']:.3f} against timm's"
                f" ConvMixer, {r[f'ours_over_peerdw_time_{fmt}']:.3f} against it with our"
                " depthwise backward"
            )
    print("\nlevers, demo model step (batch 128)")
    for name, row in result["levers"].items():
        print(
            f"  {name:<48}{row['step_s']:>8.3f} s  x{row['speedup_vs_baseline']:.2f}"
            f"  {100 * row['share_of_peak']:.1f}% of peak"
        )
    lo = result["loader"]
    print(f"\nloader (demo pipeline, compute step {lo['compute_step_s']:.3f} s)")
    for name, row in lo["encrypted_split"].items():
        print(
            f"  {name:<36} alone {1e3 * row['loader_s_per_batch_alone']:>7.1f} ms/batch, "
            f"share of step {100 * row['loader_share_of_step']:.1f}%"
        )
    e = lo["encrypt_on"]
    print(
        f"  encrypt_on loader {1e3 * e['loader_s_per_batch_encrypt_in_loader']:.1f} ms/batch, "
        f"device {1e3 * e['loader_plus_device_encrypt_s_per_batch']:.1f} ms/batch "
        f"(saves {100 * e['saved_fraction_of_loader_time']:.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-large", type=int, default=8, help="ppconvmixer_512_16 batch")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    peak = peak_gflops(4096, max(5, args.repeats))
    result = {
        "threads": THREADS,
        "torch": torch.__version__,
        "peak_gflops": peak,
        "models": bench_models(peak, args.repeats, args.batch_large),
        "levers": bench_levers(peak, args.repeats, not args.no_compile),
        "loader": bench_loader(args.repeats, args.loader_batches),
        "peak_gflops_after": peak_gflops(4096, max(5, args.repeats)),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
