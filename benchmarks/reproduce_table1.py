"""CPU-scale reproduction of every row of the paper's Table I on the real Fashion-MNIST.

The paper's Table I (CIFAR-10; the paper's numbers are quoted per row as ``paper_top1_cifar10``)
compares EtC and ELE images classified by an ELE-AdaptNet + ShakeDrop PyramidNet, the proposed
block-wise scheme classified by a ConvMixer without and with the adaptive permutation P, and the
plain PyramidNet and ConvMixer. Here every row trains on Fashion-MNIST at its native geometry
(28x28, one channel, block 4: a 7x7 block grid), with one recipe for every row: AdamW (lr 2e-3,
weight decay 0.05, timm's ``create_optimizer_v2``, so ``no_weight_decay()`` is honoured),
cosine schedule with a 5 % warm-up, ``--steps`` steps of batch 128 drawn in the same order for
every row, no augmentation, cross-entropy (P's L_U and AdaptNet's L_U and L_s are implicit, in
the backward pass, as timm's ``train.py`` applies them). Encryption is applied once to the uint8
images with the row's scheme and a seeded key (``generate_key(scheme, seed=1000 + seed)``); the
wrong key is the same scheme with seed ``2000 + seed``. Evaluation: all 10,000 test images
(``--test-limit`` only for the test).

Classifiers (small members of the paper's families, so the whole table runs on 2 CPU cores):
``shakedrop_pyramidnet20_a48_fmnist`` and ``adaptnet_{ele,le}_shakedrop_pyramidnet20_a48_fmnist``
(PyramidNet-20, alpha 48, ShakeDrop p_L 0.5); ``ppconvmixer_256_8_fmnist`` narrowed to
``--dim`` (default 128), depth 8, kernel 5, patch 4, the same shape in the three ConvMixer rows.
Parameters are counted at the run's geometry and, with ``timm.create_model`` on the meta device,
at the paper's (checked against Table I's 29.31 M, 28.49 M, 5.31 M and 5.35 M).

Grey images make two steps degenerate: EtC's per-block colour-channel permutation and PE's
per-pixel channel order are the identity with one channel (EtC keeps its block scrambling,
rotation, flip and negative-positive steps). The block-wise scheme's pixel shuffle runs over
C M^2 = 16 values per block instead of 48, LE / ELE's over 2 C M^2 = 32 halves instead of 96.
So EtC here is a weaker transform than on CIFAR's colour images; see the README.

Rows (``--rows``; default the six rows of Table I): the Table I rows, and, opt-in, Madono et
al.'s 3 x 4 grid ``grid_<scheme>_<adaptnet>`` (no AdaptNet / LE-AdaptNet / ELE-AdaptNet on
plain, LE, EtC and ELE images; ``--rows table grid`` for both).

Run (the README's table comes from this command):

    python benchmarks/reproduce_table1.py --out outputs/table1 --steps 250 --seeds 0 1 \
        --rows table --seed-rows blockwise_convmixer_no_p blockwise_convmixer_p plain_convmixer

Prints the table and writes ``<out>/table1.json`` and ``<out>/table1.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer import encrypt
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.schemes import generate_key

SIZE, BLOCK, CHANNELS, CLASSES = 28, 4, 1, 10
PYRAMID = "shakedrop_pyramidnet20_a48_fmnist"
CONVMIXER = "ppconvmixer_256_8_fmnist"

# the paper-size models of Table I and the parameter counts it states (millions, 2 decimals)
PAPER_MODELS = {
    "adaptnet_ele": ("adaptnet_ele_shakedrop_pyramidnet110_a270", {}, 29.31),
    "pyramidnet": ("shakedrop_pyramidnet110_a270", {}, 28.49),
    "convmixer_no_p": ("ppconvmixer_512_16", {"num_classes": 10, "permutation": False}, 5.31),
    "convmixer_p": ("ppconvmixer_512_16", {"num_classes": 10}, 5.35),
    "adaptnet_le": ("adaptnet_le_shakedrop_pyramidnet110_a270", {}, None),  # not in Table I
}

# Table I rows: scheme (None: plain images), run model, paper model, Table I's top-1 (CIFAR-10)
TABLE_ROWS = {
    "etc_adaptnet_pyramidnet": dict(scheme="etc", family="pyramidnet", adapt="ele", paper=89.09),
    "ele_adaptnet_pyramidnet": dict(scheme="ele", family="pyramidnet", adapt="ele", paper=83.06),
    "blockwise_convmixer_no_p": dict(scheme="blockwise", family="convmixer", p=False, paper=89.14),
    "blockwise_convmixer_p": dict(scheme="blockwise", family="convmixer", p=True, paper=92.65),
    "plain_pyramidnet": dict(scheme=None, family="pyramidnet", adapt=None, paper=96.70),
    "plain_convmixer": dict(scheme=None, family="convmixer", p=False, paper=96.80),
}
GRID_ROWS = {
    f"grid_{scheme or 'plain'}_{adapt or 'none'}": dict(
        scheme=scheme, family="pyramidnet", adapt=adapt, paper=None
    )
    for scheme in (None, "le", "etc", "ele")
    for adapt in (None, "le", "ele")
}
ALL_ROWS = {**TABLE_ROWS, **GRID_ROWS}


def model_spec(spec: dict, args) -> tuple[str, dict, str]:
    """(run model name, its kwargs, the key of its paper-size model in PAPER_MODELS)."""
    if spec["family"] == "convmixer":
        kwargs = dict(
            dim=args.dim,
            depth=args.depth,
            kernel_size=args.kernel,
            patch_size=BLOCK,
            img_size=SIZE,
            in_chans=CHANNELS,
            num_classes=CLASSES,
            permutation=spec["p"],
        )
        return CONVMIXER, kwargs, "convmixer_p" if spec["p"] else "convmixer_no_p"
    adapt = spec["adapt"]
    name = PYRAMID if adapt is None else f"adaptnet_{adapt}_{PYRAMID}"
    return name, {}, "pyramidnet" if adapt is None else f"adaptnet_{adapt}"


def paper_params() -> dict:
    """Parameters of the paper-size models (meta device: nothing allocated)."""
    out = {}
    for tag, (name, kwargs, stated) in PAPER_MODELS.items():
        model = timm.create_model(name, device="meta", **kwargs)
        n = sum(p.numel() for p in model.parameters())
        out[tag] = {
            "model": name,
            "kwargs": kwargs,
            "params": n,
            "table1_millions": stated,
            "matches_table1": None if stated is None else round(n / 1e6, 2) == stated,
        }
    return out


def load(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist_arrays(split)
    n = len(images) if limit is None else min(limit, len(images))
    x = torch.from_numpy(np.array(images[:n])).unsqueeze(1)  # (N, 1, 28, 28) uint8
    return x, torch.from_numpy(np.array(labels[:n])).long()


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.5  # the _fmnist cfgs' mean and std


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(normalise(x[i : i + 500])).argmax(1) == y[i : i + 500]).sum())
        for i in range(0, len(x), 500)
    )
    return correct / len(x)


def train_row(name: str, spec: dict, data: dict, args, seed: int, papers: dict) -> dict:
    scheme = spec["scheme"]
    key = wrong = None
    train_x, train_y = data["train"]
    test_x, test_y = data["test"]
    row = {"row": name, "seed": seed, "scheme": scheme or "plain"}
    if scheme is not None:
        geometry = dict(image_size=SIZE, block_size=BLOCK, channels=CHANNELS)
        key = generate_key(scheme, seed=1000 + seed, **geometry)
        wrong = generate_key(scheme, seed=2000 + seed, **geometry)
        enc_train = encrypt(train_x, key)
        enc_test = encrypt(test_x, key)
        row["key"] = key.describe()
        row["wrong_key_fingerprint"] = wrong.describe()["fingerprint"]
        # deterministic evidence that the row's images are encrypted (checked by the test)
        row["test_pixels_changed"] = round(float((enc_test != test_x).float().mean()), 4)
        row["train_pixels_changed"] = round(float((enc_train != train_x).float().mean()), 4)
        train_x = enc_train
    model_name, kwargs, paper_tag = model_spec(spec, args)
    torch.manual_seed(seed)
    model = timm.create_model(model_name, **kwargs)
    opt = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    sched = CosineLRScheduler(
        opt,
        t_initial=args.steps,
        warmup_t=max(1, args.steps // 20),
        warmup_lr_init=1e-5,
        t_in_epochs=False,
    )
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    model.train()
    loss = torch.zeros(())
    for step in range(args.steps):
        start = (step * args.batch) % len(train_x)
        idx = order[start : start + args.batch]
        loss = F.cross_entropy(model(normalise(train_x[idx])), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    if key is None:
        row["top1_key"] = None
        row["top1_plain"] = top1(model, test_x, test_y)
        row["top1_wrong_key"] = None
    else:
        row["top1_key"] = top1(model, enc_test, test_y)
        row["top1_plain"] = top1(model, test_x, test_y)
        row["top1_wrong_key"] = top1(model, encrypt(test_x, wrong), test_y)
    row.update(
        model=model_name,
        model_kwargs=kwargs,
        params=sum(p.numel() for p in model.parameters()),
        paper_model=papers[paper_tag]["model"],
        paper_params=papers[paper_tag]["params"],
        paper_params_table1_millions=papers[paper_tag]["table1_millions"],
        paper_top1_cifar10=spec["paper"],
        train_s=round(train_s, 1),
        eval_s=round(time.perf_counter() - started, 1),
        final_loss=round(float(loss.detach()), 4),
    )
    return row


def pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Fashion-MNIST 28x28x1, block 4; {s['steps']} steps of batch {s['batch']} per row "
        f"(AdamW lr {s['lr']}, wd {s['weight_decay']}, cosine), no augmentation; test on "
        f"{results['test_images']} images; top-1 in %.",
        "",
        "| row | scheme | model (run) | seed | top-1 with key (plain rows: plain images) | "
        "plain images | wrong key | params (run) | params (paper geometry) | Table I top-1 "
        "(CIFAR-10) | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        main = r["top1_key"] if r["top1_key"] is not None else r["top1_plain"]
        plain = r["top1_plain"] if r["top1_key"] is not None else None
        cells = [
            r["row"],
            r["scheme"],
            f"`{r['model']}`",
            str(r["seed"]),
            pct(main),
            pct(plain),
            pct(r["top1_wrong_key"]),
            f"{r['params']:,}",
            f"{r['paper_params']:,} (`{r['paper_model']}`)",
            "" if r["paper_top1_cifar10"] is None else f"{r['paper_top1_cifar10']:.2f}",
            f"{r['train_s']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean over seeds (rows with more than one seed):", ""]
    for name, m in results["seed_means"].items():
        lines.append(f"- {name}: {100 * m['mean']:.2f} % over seeds {m['seeds']} ({m['values']})")
    lines += [
        "",
        "Paper-geometry parameters (`timm.create_model`, 10 classes, 32x32x3 or 224x224x3):",
        "",
    ]
    for p in results["paper_params"].values():
        stated = "" if p["table1_millions"] is None else f", Table I: {p['table1_millions']} M"
        lines.append(f"- `{p['model']}` {p['kwargs'] or ''}: {p['params']:,}{stated}")
    lines += [
        "",
        "Grey images: EtC's per-block channel permutation (and PE's per-pixel channel order) is "
        "the identity with one channel, so the EtC rows here lack one of EtC's four steps and "
        "its transform is weaker than on CIFAR-10's colour images (the block scrambling, "
        "rotation, flip and negative-positive steps remain); the block-wise and LE/ELE "
        "shuffles run over 16 pixels / 32 halves per block instead of 48 / 96.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/table1"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--dim", type=int, default=128, help="the ConvMixer rows' hidden size")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--seed-rows",
        nargs="*",
        default=None,
        help="rows that run every seed of --seeds (default: all rows); the others run the first",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["table"],
        help="row names, 'table' (the six Table I rows) or 'grid' (Madono's 3 x 4 grid)",
    )
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None, help="for tests only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names: list[str] = []
    for r in args.rows:
        group = {"table": TABLE_ROWS, "grid": GRID_ROWS}.get(r, {r: None})
        for n in group:
            if n not in ALL_ROWS:
                parser.error(f"unknown row {n!r}; choose from table, grid, {', '.join(ALL_ROWS)}")
            if n not in names:
                names.append(n)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"train": load("train", args.train_limit), "test": load("test", args.test_limit)}
    papers = paper_params()
    results = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "test_images": len(data["test"][0]),
        "paper_params": papers,
        "rows": [],
    }
    started = time.time()
    for name in names:
        every = args.seed_rows is None or name in args.seed_rows
        for seed in args.seeds if every else args.seeds[:1]:
            row = train_row(name, ALL_ROWS[name], data, args, seed, papers)
            results["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("row", "seed", "top1_key", "top1_plain",
                                                  "top1_wrong_key", "train_s", "eval_s")}),
                  flush=True)  # fmt: skip
            (args.out / "table1.json").write_text(json.dumps(results, indent=2))
    means = {}
    for name in names:
        runs = [r for r in results["rows"] if r["row"] == name]
        if len(runs) > 1:
            vals = [r["top1_key"] if r["top1_key"] is not None else r["top1_plain"] for r in runs]
            means[name] = {
                "seeds": [r["seed"] for r in runs],
                "values": [round(100 * v, 2) for v in vals],
                "mean": sum(vals) / len(vals),
            }
    results["seed_means"] = means
    results["total_wall_s"] = round(time.time() - started, 1)
    (args.out / "table1.json").write_text(json.dumps(results, indent=2))
    (args.out / "table1.md").write_text(markdown(results))
    print(markdown(results))
    print(json.dumps({"total_wall_s": results["total_wall_s"]}))


if __name__ == "__main__":
    main()
