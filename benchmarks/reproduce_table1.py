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
images with the row's scheme and a seeded key (``generate_key(scheme, seed=1000 + seed)``; with
seed 0 that is the scheme's PUBLIC zoo key, ``timm_ppconvmixer.keyed.pretrained.zoo_key``); the
wrong key is the same scheme with seed ``2000 + seed``. ``pe-per-image`` draws a fresh key from
the CSPRNG for every training and every test image (nothing to seed, nothing to keep), so it
has no "wrong key": its column is empty. Every trained model is saved as a model folder
(``<out>/trained/<row>-seed<seed>``) and its accuracies are measured on the weights reloaded
from that folder. Evaluation: all 10,000 test images (``--test-limit`` only for the test).

Classifiers (small members of the paper's families, so the whole table runs on 2 CPU cores):
``shakedrop_pyramidnet20_a48_fmnist`` and ``adaptnet_{ele,le}_shakedrop_pyramidnet20_a48_fmnist``
(PyramidNet-20, alpha 48, ShakeDrop p_L 0.5); ``ppconvmixer_128_8_fmnist`` (``--dim``, default
128, depth 8, kernel 5, patch 4), the same shape in the five ConvMixer rows.
Parameters are counted at the run's geometry and, with ``timm.create_model`` on the meta device,
at the paper's (checked against Table I's 29.31 M, 28.49 M, 5.31 M and 5.35 M).

Grey images make two steps degenerate: EtC's per-block colour-channel permutation and PE's
per-pixel channel order are the identity with one channel (EtC keeps its block scrambling,
rotation, flip and negative-positive steps). The block-wise scheme's pixel shuffle runs over
C M^2 = 16 values per block instead of 48, LE / ELE's over 2 C M^2 = 32 halves instead of 96.
So EtC here is a weaker transform than on CIFAR's colour images; see the README.

Rows (``--rows``; default ``table``): the six rows of Table I and three rows for the schemes
Table I lacks, so every scheme of ``timm_ppconvmixer.schemes`` has an accuracy (LE images with
the LE-AdaptNet PyramidNet; PE and pe-per-image images with the ConvMixer without P: PE is
pixel-wise, block size 1, so there is no block order for P to learn); and, opt-in, Madono et
al.'s 3 x 4 grid ``grid_<scheme>_<adaptnet>`` (no AdaptNet / LE-AdaptNet / ELE-AdaptNet on
plain, LE, EtC and ELE images; ``--rows table grid`` for both).

The zoo (``--zoo DIR``): the seed-0 model of every zoo row (``ZOO_ENTRIES``: all rows but
pe-per-image) is exported as a timm model folder ``DIR/<entry>`` (``model.safetensors``,
``config.json``, the ``README.md`` card of ``timm_ppconvmixer.hub.export``, ``metrics.json``),
trained under its scheme's PUBLIC zoo key; ``--ship`` writes the small ConvMixer entries into
the package instead (``timm_ppconvmixer/keyed/pretrained``, the ``ppconvmixer_128_8_fmnist.zoo_*``
tags). ``--reuse`` takes the models of an earlier run from ``<out>/trained`` instead of
training them again (their numbers are measured again on the saved weights).

Run (the README's table, the zoo folder and the shipped zoo weights come from this command;
``--jobs`` trains that many rows at once, one thread each):

    python benchmarks/reproduce_table1.py --out outputs/table1 --steps 250 --seeds 0 1 \
        --rows table --seed-rows blockwise_convmixer_no_p blockwise_convmixer_p plain_convmixer \
        --zoo outputs/zoo --ship --jobs 4

Prints the table and writes ``<out>/table1.json`` and ``<out>/table1.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer import encrypt, hub
from timm_ppconvmixer.atomic import atomic_write_bytes
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.keyed.pretrained import (
    SHIPPED_ZOO,
    ZOO_KEY_SEED,
    generate_zoo_key,
    zoo_key_file,
)
from timm_ppconvmixer.schemes import per_image_encryption

SIZE, BLOCK, CHANNELS, CLASSES = 28, 4, 1, 10
PYRAMID = "shakedrop_pyramidnet20_a48_fmnist"
CONVMIXER = "ppconvmixer_128_8_fmnist"

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
    # the schemes Table I lacks (no paper number)
    "le_adaptnet_pyramidnet": dict(scheme="le", family="pyramidnet", adapt="le", paper=None),
    "pe_convmixer": dict(scheme="pe", family="convmixer", p=False, paper=None),
    "pe_per_image_convmixer": dict(scheme="pe-per-image", family="convmixer", p=False, paper=None),
}
# Table rows whose seed-0 model is a zoo entry (--zoo): row -> entry name. The ConvMixer ones
# are the package's timm tags (SHIPPED_ZOO); pe-per-image has no key to publish a model under.
ZOO_ENTRIES = {
    "blockwise_convmixer_p": f"{CONVMIXER}.zoo_blockwise_p",
    "blockwise_convmixer_no_p": f"{CONVMIXER}.zoo_blockwise_no_p",
    "pe_convmixer": f"{CONVMIXER}.zoo_pe",
    "plain_convmixer": f"{CONVMIXER}.zoo_plain",
    "etc_adaptnet_pyramidnet": f"adaptnet_ele_{PYRAMID}.zoo_etc",
    "ele_adaptnet_pyramidnet": f"adaptnet_ele_{PYRAMID}.zoo_ele",
    "le_adaptnet_pyramidnet": f"adaptnet_le_{PYRAMID}.zoo_le",
    "plain_pyramidnet": f"{PYRAMID}.zoo_plain",
}
ZOO_SEED = 0  # the row seed whose key is the public zoo key (seed 1000 + 0)
GRID_ROWS = {
    f"grid_{scheme or 'plain'}_{adapt or 'none'}": dict(
        scheme=scheme, family="pyramidnet", adapt=adapt, paper=None
    )
    for scheme in (None, "le", "etc", "ele")
    for adapt in (None, "le", "ele")
}
ALL_ROWS = {**TABLE_ROWS, **GRID_ROWS}


def model_spec(spec: dict, args, row: str | None = None) -> tuple[str, dict, str]:
    """(run model name, its kwargs, the key of its paper-size model in PAPER_MODELS); a
    ConvMixer zoo row's name carries its tag, so its cfg (and saved config.json) names it."""
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
        name = ZOO_ENTRIES[row] if ZOO_ENTRIES.get(row, "").startswith(CONVMIXER) else CONVMIXER
        return name, kwargs, "convmixer_p" if spec["p"] else "convmixer_no_p"
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


def row_keys(scheme: str | None, seed: int):
    """(key, wrong key) of a row: seeded keys of the scheme (seed 1000 + seed is the zoo key
    for seed 0); pe-per-image's per-image encryption and no wrong key; None for plain rows."""
    if scheme is None:
        return None, None
    if scheme == "pe-per-image":
        return per_image_encryption(SIZE, channels=CHANNELS), None
    return generate_zoo_key(scheme, ZOO_KEY_SEED + seed), generate_zoo_key(scheme, 2000 + seed)


def trained_folder(out: Path, name: str, seed: int) -> Path:
    return out / "trained" / f"{name}-seed{seed}"


def train_row(name: str, spec: dict, data: dict, args, seed: int, papers: dict) -> dict:
    scheme = spec["scheme"]
    train_x, train_y = data["train"]
    test_x, test_y = data["test"]
    row = {"row": name, "seed": seed, "scheme": scheme or "plain"}
    key, wrong = row_keys(scheme, seed)
    if key is not None:
        enc_train = encrypt(train_x, key)  # pe-per-image: a fresh key for every image
        enc_test = encrypt(test_x, key)
        row["key"] = key.describe()
        row["wrong_key_fingerprint"] = None if wrong is None else wrong.fingerprint
        # deterministic evidence that the row's images are encrypted (checked by the test)
        row["test_pixels_changed"] = round(float((enc_test != test_x).float().mean()), 4)
        row["train_pixels_changed"] = round(float((enc_train != train_x).float().mean()), 4)
        train_x = enc_train
    model_name, kwargs, paper_tag = model_spec(spec, args, name)
    folder = trained_folder(args.out, name, seed)
    measured = earlier_measurement(args, name, seed, row) if args.reuse else None
    if measured is not None:
        return measured
    if args.reuse and (folder / "row.json").is_file():
        trained = json.loads((folder / "row.json").read_text())
        if trained.get("key", {}).get("fingerprint") != row.get("key", {}).get("fingerprint"):
            raise SystemExit(f"{folder} was trained under another key: train it again")
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True)
        train_s, loss = trained["train_s"], torch.tensor(trained["final_loss"])
    else:
        model, train_s, loss = train_model(model_name, kwargs, train_x, train_y, args, seed)
        model.eval()
        if key is not None and not getattr(key, "per_image", False):
            model.key_fingerprint = key.fingerprint  # recorded in config.json, never the key
        hub.save_model_folder(model, folder, overwrite=True)
        meta = {"train_s": round(train_s, 1), "final_loss": float(loss.detach()), **row}
        atomic_write_bytes(folder / "row.json", json.dumps(meta, indent=2).encode())
        # measured on the saved weights, as the zoo publishes them
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True)
    started = time.perf_counter()
    if key is None:
        row["top1_key"] = None
        row["top1_plain"] = top1(model, test_x, test_y)
        row["top1_wrong_key"] = None
    else:
        row["top1_key"] = top1(model, enc_test, test_y)
        row["top1_plain"] = top1(model, test_x, test_y)
        row["top1_wrong_key"] = (
            None if wrong is None else top1(model, encrypt(test_x, wrong), test_y)
        )
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
        trained_folder=str(folder),
        weights_sha256=weights_sha256(folder),
        key_fingerprint=getattr(model, "key_fingerprint", None),
    )
    return row


def earlier_measurement(args, name: str, seed: int, row: dict) -> dict | None:
    """--reuse: the row as ``<out>/table1.json`` recorded it, measured on the weights saved in
    its trained folder (unchanged since: the folder's checksum), so they are not measured
    again; None if there is none (stale pe-per-image rows are measured again too)."""
    if name == "pe_per_image_convmixer":
        return None
    for r in args.earlier_rows:
        if (r["row"], r["seed"]) != (name, seed) or r.get("key") != row.get("key"):
            continue
        if r.get("weights_sha256") == weights_sha256(trained_folder(args.out, name, seed)):
            return r
    return None


def weights_sha256(folder: Path) -> str | None:
    path = folder / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def train_model(model_name: str, kwargs: dict, train_x, train_y, args, seed: int):
    """The one recipe of every row: (model, train seconds, last loss)."""
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
    return model, time.perf_counter() - started, loss


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
            "n/a (fresh key per image)"
            if r["scheme"] == "pe-per-image"
            else pct(r["top1_wrong_key"]),
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
        "shuffles run over 16 pixels / 32 halves per block instead of 48 / 96. PE on grey "
        "images is its negative-positive step alone (one inversion bit per pixel).",
        "",
        "pe-per-image: every training and test image is encrypted with a fresh key from the "
        "CSPRNG (not seeded, so its numbers vary from run to run); there is no wrong key to try, "
        "and its 'top-1 with key' is on test images each under its own fresh key.",
    ]
    return "\n".join(lines) + "\n"


# -- the zoo ----------------------------------------------------------------------------------

ZOO_NOTE = (
    "**Zoo model of the Table I reproduction, trained under a PUBLIC key.** {key_text} It "
    "exists to make the project's Table I numbers reproducible and its models loadable; "
    "**never encrypt real data with a zoo key**: anyone can regenerate it. To classify your "
    "own data, train under your own secret key (`ppconvmixer keygen`)."
)


def zoo_metrics(row: dict, results: dict, entry: str) -> dict:
    """The entry's ``metrics.json``: what the card reports (``eval``, measured on the saved
    weights) and how it was measured (no key material: the fingerprint only)."""
    measured = {k: row[k] for k in ("top1_key", "top1_plain", "top1_wrong_key")}
    return {
        "eval": {k: v for k, v in measured.items() if v is not None},
        "key_fingerprint": row["key_fingerprint"],
        "scheme": row["scheme"],
        "public_zoo_key": None
        if row["scheme"] == "plain"
        else {"seed": ZOO_KEY_SEED + row["seed"], "file": zoo_key_file(row["scheme"]).name},
        "wrong_key_fingerprint": row.get("wrong_key_fingerprint"),
        "test_images": results["test_images"],
        "entry": entry,
        "table1_row": row["row"],
        "model": row["model"],
        "model_kwargs": row["model_kwargs"],
        "params": row["params"],
        "train_s": row["train_s"],
        "steps": results["settings"]["steps"],
        "batch": results["settings"]["batch"],
    }


def export_zoo_entry(row: dict, results: dict, zoo: Path, ship: bool) -> Path:
    """Export a zoo row's saved model as a timm model folder with the project's card (the
    leak guard runs against the zoo key), plus ``metrics.json``."""
    entry = ZOO_ENTRIES[row["row"]]
    dest = SHIPPED_ZOO[entry] if ship and entry in SHIPPED_ZOO else zoo / entry
    model = hub.load_model(row["trained_folder"])
    scheme = row["scheme"]
    key = None if scheme == "plain" else generate_zoo_key(scheme, ZOO_KEY_SEED + row["seed"])
    if key is None:
        key_text = "It classifies plain (unencrypted) Fashion-MNIST images; no key."
    else:
        key_text = (
            f"The images were encrypted with the {scheme} zoo key "
            f'`generate_key("{scheme}", seed={ZOO_KEY_SEED + row["seed"]}, image_size=28, '
            f"block_size={key.block_size}, channels=1)`, shipped as "
            f"`timm_ppconvmixer/keyed/pretrained/{zoo_key_file(scheme).name}`."
        )
    s = results["settings"]
    recipe = (
        f"`python benchmarks/reproduce_table1.py --steps {s['steps']} --zoo DIR` (row "
        f"`{row['row']}`, seed {row['seed']}): {s['steps']} steps of batch {s['batch']}, AdamW lr "
        f"{s['lr']}, weight decay {s['weight_decay']}, cosine schedule, no augmentation, on the "
        "60,000 Fashion-MNIST training images"
        + ("" if key is None else " encrypted once with the zoo key")
        + f"; {row['train_s']} s of training on one CPU thread."
    )
    metrics = zoo_metrics(row, results, entry)
    hub.export(
        model,
        dest,
        key=key,
        metrics=metrics,
        dataset={"id": "zalando-datasets/fashion_mnist", "name": "Fashion-MNIST", "split": "test"},
        recipe=recipe,
        repo_id=f"timm-ppconvmixer/{entry}",
        model_name=entry,
        notes=ZOO_NOTE.format(key_text=key_text),
        plain_images=key is None,
        overwrite=True,
    )
    atomic_write_bytes(dest / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    return dest


# -- the run ----------------------------------------------------------------------------------

_DATA: dict = {}  # the images, set before the workers fork (shared, not pickled per task)


def _run_task(task: tuple) -> dict:
    name, seed, args, papers = task
    torch.set_num_threads(args.threads)
    return train_row(name, ALL_ROWS[name], _DATA, args, seed, papers)


# rough cost of a row (the AdaptNet and PyramidNet rows take ~3x a ConvMixer's): longest first
def _cost(task: tuple) -> int:
    return 0 if ALL_ROWS[task[0]]["family"] == "convmixer" else 1


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
        help="row names, 'table' (Table I's six rows and the schemes it lacks) or 'grid' "
        "(Madono's 3 x 4 grid)",
    )
    parser.add_argument("--zoo", type=Path, default=None, help="export the zoo entries here")
    parser.add_argument(
        "--ship", action="store_true", help="with --zoo: the ConvMixer entries into the package"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="take trained models from <out>/trained if there"
    )
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None, help="for tests only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.zoo is not None and ZOO_SEED not in args.seeds:
        parser.error(f"--zoo exports the seed-{ZOO_SEED} models (the public zoo keys): add it")
    if args.ship and args.zoo is None:
        parser.error("--ship needs --zoo DIR (where the entries not shipped go)")
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
    earlier = args.out / "table1.json"  # read before this run rewrites it
    args.earlier_rows = json.loads(earlier.read_text())["rows"] if earlier.is_file() else []
    data = {"train": load("train", args.train_limit), "test": load("test", args.test_limit)}
    _DATA.update(data)
    papers = paper_params()
    results = {
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k != "earlier_rows"
        },
        "test_images": len(data["test"][0]),
        "paper_params": papers,
        "rows": [],
    }
    started = time.time()
    every = [n for n in names if args.seed_rows is None or n in args.seed_rows]
    tasks = [
        (name, seed, args, papers)
        for name in names
        for seed in (args.seeds if name in every else args.seeds[:1])
    ]
    done: dict = {}

    def record(row: dict) -> None:
        done[(row["row"], row["seed"])] = row
        results["rows"] = [done[t[:2]] for t in tasks if t[:2] in done]  # the table's order
        print(json.dumps({k: row[k] for k in ("row", "seed", "top1_key", "top1_plain",
                                              "top1_wrong_key", "train_s", "eval_s")}),
              flush=True)  # fmt: skip
        (args.out / "table1.json").write_text(json.dumps(results, indent=2))

    if args.jobs > 1:
        # fork: the workers share the loaded images; one thread each (--threads)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(_run_task, t) for t in sorted(tasks, key=_cost, reverse=True)]
            for future in futures:
                record(future.result())
    else:
        for task in tasks:
            record(_run_task(task))
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
    if args.zoo is not None:
        for row in results["rows"]:
            if row["row"] in ZOO_ENTRIES and row["seed"] == ZOO_SEED:
                print(f"zoo: {export_zoo_entry(row, results, args.zoo, args.ship)}", flush=True)
    print(markdown(results))
    print(json.dumps({"total_wall_s": results["total_wall_s"]}))


if __name__ == "__main__":
    main()
