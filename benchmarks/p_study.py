"""What makes the adaptive permutation matrix P learn the block order?

Fashion-MNIST upscaled to 56x56 (bilinear), block 4: a 14x14 token grid under a 3x3 depthwise
kernel (4 layers see 9x9 tokens), where block scrambling hurts. A small PPConvMixer (h 64,
depth 4), every row with the same seed, data order, step budget and timm optimizer factory
(AdamW, lr 2e-3, weight decay 0.05, ``no_weight_decay()`` honoured) and cosine schedule; the
penalty is applied the way timm's ``train.py`` applies it (implicitly, in the backward pass).

Rows: plain images (without P, and with a P started at the identity: what P adds as a layer);
encrypted without P; the paper's P (Eq. (1), lambda 1e-4, P in weight decay); the same P out of
weight decay; each variant (``docs/permutation.md``). Columns: top-1
on the 10,000 test images, the share of the block order P recovered (owner's measure: output
tokens whose largest |P| entry is the right encrypted block; exact, and up to the 8 rotations
and mirrors of the grid, which no ciphertext-only method can tell apart), training seconds.

``jigsaw_init`` starts P from a block order estimated from the encrypted training images alone
(:func:`estimate_block_order`, a ciphertext-only jigsaw solver; see the privacy note in
``docs/permutation.md``).

    python benchmarks/p_study.py --out outputs/p_study     # ~30 min on 2 CPU cores

Prints the table as JSON, writes ``<out>/results.json`` and ``<out>/p_over_training.png``
(owner only: it shows the key's block order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer import BlockKey, encrypt
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.models.permutation import (
    AdaptivePermutation,
    block_order_of,
    block_order_recovery,
    grid_symmetries,
)
from timm_ppconvmixer.models.permutation_penalties import grid_adjacency

SIZE, BLOCK = 56, 4


def rows(steps: int) -> dict[str, dict]:
    """Study rows: whether images are encrypted, and the model kwargs (timm.create_model)."""
    sinkhorn = dict(permutation_param="sinkhorn", sinkhorn_tau=(1.0, 0.05), sinkhorn_steps=steps)
    return {
        "plain": dict(encrypted=False, kwargs=dict(permutation=False)),
        # P's capacity alone: a dense n x n token mixing that starts as the identity
        "plain_with_p": dict(encrypted=False, kwargs=dict(permutation_init="identity")),
        "encrypted_no_p": dict(kwargs=dict(permutation=False)),
        "paper_p": dict(kwargs=dict(permutation_weight_decay=True)),
        "p_no_weight_decay": dict(kwargs=dict()),
        "doubly_stochastic": dict(
            kwargs=dict(penalty="doubly_stochastic", penalty_weight=1.0, permutation_lr_gain=10.0)
        ),
        "sinkhorn": dict(kwargs=dict(**sinkhorn, permutation_lr_gain=30.0)),
        "sinkhorn_smoothness": dict(
            kwargs=dict(**sinkhorn, permutation_lr_gain=30.0, smoothness_weight=1.0)
        ),
        "jigsaw_init": dict(jigsaw=True, kwargs=dict()),
    }


def load(split: str, key: BlockKey | None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist_arrays(split)
    x = torch.from_numpy(np.array(images)).unsqueeze(1).float()
    x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    if key is not None:
        x = encrypt(x, key)
    return x, torch.from_numpy(np.array(labels)).long()


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.5


def estimate_block_order(x: torch.Tensor, grid: int, seed: int = 0) -> np.ndarray:
    """Ciphertext-only jigsaw estimate of K1, up to the grid's rotations and mirrors.

    K2 and K3 are the same for every block, so in-block position a of one block and position b
    of another are comparable across blocks; in smooth images |corr| is highest between pixels
    on the touching edges of neighbouring blocks. Steps: (1) ``|corr|`` between every (block,
    position) pair over the images; compatibility = its maximum per block pair; (2) the 16x16
    |corr| patterns of confident pairs (mutual top 4) fall into four direction clusters
    (k-means; left is right transposed, up is down transposed), which name "right" and "down"
    up to a symmetry; (3) affinity(i -> j, d) = cosine(pattern, cluster d) * compatibility^2;
    (4) greedy placement on a growing canvas kept within grid x grid, each step taking the
    free slot and block with the best mean affinity to the placed neighbours. Returns
    ``order[i]`` = estimated plain position of encrypted block i (``BlockKey.block_perm``'s
    convention, up to a symmetry of the grid).
    """
    blocks = F.unfold(x.float() / 255, BLOCK, stride=BLOCK)  # (N, D, n)
    n_img, d, n = blocks.shape
    v = blocks.permute(0, 2, 1).reshape(n_img, n * d).double()
    v = v - v.mean(0)
    cov = v.T @ v / n_img
    std = cov.diagonal().clamp_min(1e-8).sqrt()
    corr = (cov / std[:, None] / std[None, :]).abs().view(n, d, n, d).permute(0, 2, 1, 3)
    corr = corr.numpy()  # (n, n, D, D)
    compat = corr.max(axis=(2, 3))
    np.fill_diagonal(compat, -1.0)
    top = np.argsort(-compat, axis=1)[:, :4]
    pairs = [(i, j) for i in range(n) for j in top[i] if i in top[j] and i < j]
    pats = [corr[i, j].reshape(-1) for i, j in pairs] + [corr[i, j].T.reshape(-1) for i, j in pairs]

    def unit(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(-1, keepdims=True)
        return a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-12)

    pats = unit(np.stack(pats))
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(10):  # k-means restarts
        centres = pats[rng.choice(len(pats), 4, replace=False)]
        for _ in range(50):
            label = np.argmax(pats @ centres.T, 1)
            centres = unit(np.stack([pats[label == k].mean(0) for k in range(4)]))
        score = (pats @ centres.T).max(1).sum()
        if best is None or score > best[0]:
            best = (score, centres)
    centres = best[1]
    transposed = unit(np.stack([c.reshape(d, d).T.reshape(-1) for c in centres]))
    partner = np.argmax(centres @ transposed.T, 1)  # left = partner[right]
    right = 0
    down = next(k for k in range(4) if k not in (right, partner[right]))
    cos = unit(corr.reshape(n * n, d * d)) @ centres[[right, down]].T
    aff_r, aff_d = (cos[:, k].reshape(n, n) * compat**2 for k in range(2))
    return _place(aff_r, aff_d, grid)


def _place(aff_r: np.ndarray, aff_d: np.ndarray, g: int) -> np.ndarray:
    n = aff_r.shape[0]
    size = 2 * g - 1
    canvas = -np.ones((size, size), dtype=np.int64)
    placed = np.zeros(n, dtype=bool)
    start = int(np.argmax(np.maximum(aff_r.max(1), aff_d.max(1))))
    canvas[g - 1, g - 1], placed[start] = start, True
    box = [g - 1, g - 1, g - 1, g - 1]  # rmin, rmax, cmin, cmax
    for _ in range(n - 1):
        free = np.flatnonzero(~placed)
        best = None
        for r in range(max(0, box[1] - g + 1), min(size, box[0] + g)):
            for c in range(max(0, box[3] - g + 1), min(size, box[2] + g)):
                if canvas[r, c] >= 0:
                    continue
                score, k = np.zeros(len(free)), 0
                for nb, mat, forward in (
                    ((r, c - 1), aff_r, True),
                    ((r, c + 1), aff_r, False),
                    ((r - 1, c), aff_d, True),
                    ((r + 1, c), aff_d, False),
                ):
                    if 0 <= nb[0] < size and 0 <= nb[1] < size and canvas[nb] >= 0:
                        score += mat[canvas[nb], free] if forward else mat[free, canvas[nb]]
                        k += 1
                if k:
                    j = int(np.argmax(score))
                    value = score[j] / k + 0.1 * k  # prefer slots with more placed neighbours
                    if best is None or value > best[0]:
                        best = (value, r, c, free[j])
        _, r, c, b = best
        canvas[r, c], placed[b] = b, True
        box = [min(box[0], r), max(box[1], r), min(box[2], c), max(box[3], c)]
    layout = canvas[box[0] : box[0] + g, box[2] : box[2] + g].reshape(-1)
    order = np.empty(n, dtype=np.int64)
    order[layout] = np.arange(n)
    return order


def p_matrix(model) -> torch.Tensor | None:
    perm = getattr(model, "permutation", None)
    if not isinstance(perm, AdaptivePermutation):
        return None
    with torch.no_grad():
        return perm.matrix().detach().float().cpu().clone()


def recovery(matrix: torch.Tensor | None, key: BlockKey) -> list[float | None]:
    """[exact, up to the grid's symmetries, neighbours kept]. The last is local order: the share
    of neighbouring output tokens whose blocks (largest |P| per column) are neighbours in the
    plain image, a rotation, mirror or shift of the whole layout changing nothing."""
    if matrix is None:
        return [None, None, None]
    adj = grid_adjacency(key.grid_size)
    # plain block at each output token, read as every block order is (block_order_of)
    plain = key.block_perm[torch.argsort(block_order_of(matrix))]
    kept = float((adj * adj[plain][:, plain]).sum() / adj.sum())
    shares = block_order_recovery(matrix, key.block_perm, key.grid_size)
    return [shares.exact, shares.up_to_symmetry, kept]


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(normalise(x[i : i + 500])).argmax(1) == y[i : i + 500]).sum())
        for i in range(0, len(x), 500)
    )
    return correct / len(x)


def train_row(name: str, spec: dict, data: dict, key: BlockKey, args, order) -> dict:
    x, y = data["train_enc" if spec.get("encrypted", True) else "train_plain"]
    kwargs = dict(spec["kwargs"])
    if spec.get("jigsaw"):
        kwargs["permutation_init"] = [int(v) for v in order]
    torch.manual_seed(args.seed)
    model = timm.create_model(
        "ppconvmixer_256_8",
        dim=args.dim,
        depth=args.depth,
        kernel_size=args.kernel,
        patch_size=BLOCK,
        img_size=SIZE,
        in_chans=1,
        num_classes=10,
        **kwargs,
    )
    opt = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    sched = CosineLRScheduler(
        opt, t_initial=args.steps, warmup_t=args.steps // 20, warmup_lr_init=1e-5, t_in_epochs=False
    )
    order_gen = torch.Generator().manual_seed(args.seed)  # same batches for every row
    batches = torch.randperm(len(x), generator=order_gen)
    curve, snapshots = [], {}
    mid = args.steps // 2 // args.log_every * args.log_every  # a logged step
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(args.steps + 1):
        if step % args.log_every == 0 or step == args.steps:
            m = p_matrix(model)
            curve.append([step, *recovery(m, key)])
            if m is not None and step in (0, mid, args.steps):
                snapshots[step] = m.abs().numpy()
        if step == args.steps:
            break
        idx = batches[(step * args.batch) % len(x) :][: args.batch]
        model.train()
        loss = F.cross_entropy(model(normalise(x[idx])), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
    train_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    exact, sym, kept = recovery(p_matrix(model), key)
    test_x, test_y = data["test_enc" if spec.get("encrypted", True) else "test_plain"]
    return {
        "row": name,
        "kwargs": {k: v for k, v in kwargs.items() if k != "permutation_init"}
        | ({"permutation_init": "jigsaw estimate"} if spec.get("jigsaw") else {}),
        "top1": round(100 * top1(model, test_x, test_y), 2),
        "recovered": exact,
        "recovered_up_to_symmetry": sym,
        "neighbours_kept": kept,
        "train_s": round(train_s, 1),
        "train_cpu_s": round(cpu_s, 1),  # CPU seconds of this process (all its threads)
        "final_loss": round(float(loss.detach()), 4),
        "curve": curve,
        "_snapshots": snapshots,
    }


def plot(results: list[dict], key: BlockKey, path: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_p = [r for r in results if r["recovered"] is not None]
    if not with_p:
        return None
    best = max(with_p, key=lambda r: (r["recovered_up_to_symmetry"], r["top1"]))
    fig = plt.figure(figsize=(16, 8))
    ax = fig.add_subplot(2, 1, 1)
    for r in with_p:
        c = np.array(r["curve"], dtype=float)
        (line,) = ax.plot(c[:, 0], 100 * c[:, 2], label=f"{r['row']} (up to symmetry)")
        ax.plot(c[:, 0], 100 * c[:, 1], "--", color=line.get_color(), lw=0.8)
        ax.plot(c[:, 0], 100 * c[:, 3], ":", color=line.get_color(), lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("block order recovered (%)")
    ax.set_title("solid: up to rotation/mirror; dashed: exact; dotted: neighbours kept", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    n, perm = key.num_blocks, key.block_perm.numpy()
    final = best["_snapshots"][max(best["_snapshots"])]
    found = final.argmax(0)  # encrypted block at each output token
    maps = [g.numpy() for g in grid_symmetries(key.grid_size)]
    g = max(maps, key=lambda g: (perm[found] == g).mean())  # the rotation/mirror P chose
    target, turned = np.zeros((n, n)), np.zeros((n, n))
    target[np.arange(n), perm] = 1.0
    turned[np.argsort(perm)[g], np.arange(n)] = 1.0
    panels = [(f"{best['row']}: |P| at step {s}", m) for s, m in best["_snapshots"].items()]
    panels.append(("key's inverse block permutation, turned as P is", turned))
    panels.append(("key's inverse block permutation", target))
    for i, (title, m) in enumerate(panels):
        a = fig.add_subplot(2, len(panels), len(panels) + i + 1)
        a.imshow(m, cmap="Greys", interpolation="nearest")
        a.set_title(title, fontsize=8)
        a.set_xlabel("output token j")
        a.set_ylabel("encrypted block i")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return best["row"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/p_study"))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--jigsaw-images", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", nargs="*", help="subset of rows (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    key = BlockKey.generate(SIZE, BLOCK, channels=1, seed=args.seed)  # reproducible study key
    data = {}
    for split in ("train", "test"):
        data[f"{split}_plain"] = load(split, None)
        data[f"{split}_enc"] = (encrypt(data[f"{split}_plain"][0], key), data[f"{split}_plain"][1])
    spec = rows(args.steps)
    names = args.rows or list(spec)
    order, jigsaw = None, {}
    if any(spec[n].get("jigsaw") for n in names):
        t = time.perf_counter()
        order = estimate_block_order(data["train_enc"][0][: args.jigsaw_images], SIZE // BLOCK)
        estimate = torch.zeros(key.num_blocks, key.num_blocks)
        estimate[torch.arange(key.num_blocks), torch.as_tensor(order)] = 1.0
        exact, sym, kept = recovery(estimate, key)
        jigsaw = {"seconds": round(time.perf_counter() - t, 1), "recovered": exact}
        jigsaw.update(recovered_up_to_symmetry=sym, neighbours_kept=kept)
    results = []
    for n in names:
        results.append(train_row(n, spec[n], data, key, args, order))
        done = {k: results[-1][k] for k in ("row", "top1", "recovered_up_to_symmetry", "train_s")}
        print(json.dumps(done), file=sys.stderr, flush=True)  # progress
    best = plot(results, key, args.out / "p_over_training.png")
    table = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    report = {
        "geometry": f"Fashion-MNIST {SIZE}x{SIZE}, block {BLOCK}, grid 14x14",
        "model": f"h {args.dim}, depth {args.depth}, kernel {args.kernel}",
        "budget": f"{args.steps} steps of {args.batch} images (AdamW lr {args.lr}, "
        f"weight decay {args.weight_decay}, cosine)",
        "test_images": len(data["test_enc"][1]),
        "jigsaw_estimate": jigsaw,
        "figure_row": best,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print(
        json.dumps(
            {**report, "rows": [{k: v for k, v in r.items() if k != "curve"} for r in table]},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
