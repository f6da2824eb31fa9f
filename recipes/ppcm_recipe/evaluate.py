"""Owner-side evaluation: top-1 with the correct key, on plain images and with a wrong key;
how much of the block permutation P recovered; a picture of P against the key's inverse block
permutation (owner only: the picture shows the key's block order)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.models.permutation import (
    AdaptivePermutation,
    HardPermutation,
    block_order_recovery,
)

from .data import DecryptedView, EvalDataset, encrypted_transform, eval_transform


@torch.no_grad()
def top1(model, loader, device, autocast) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def inverse_block_permutation_matrix(key: BlockKey) -> torch.Tensor:
    """The ideal P (paper Fig. 1): P[i, j] = 1 iff encrypted block i holds plain block j."""
    n = key.num_blocks
    target = torch.zeros(n, n)
    target[torch.arange(n), key.block_perm] = 1.0
    return target


@torch.no_grad()
def permutation_recovery(model, key: BlockKey) -> dict | None:
    """How much of the key's block order (K1) the model's P states, exact and up to the grid's
    rotations and mirrors (:func:`timm_ppconvmixer.models.permutation.block_order_recovery`,
    read off the effective matrix ``P.matrix()``: after Sinkhorn and the learning-rate gain, or
    a hardened P's gather); None for a model without P."""
    perm = getattr(model, "permutation", None)
    if not isinstance(perm, (AdaptivePermutation, HardPermutation)):
        return None
    recovery = block_order_recovery(perm.matrix(), key.block_perm, key.grid_size)
    return recovery._asdict()


def plot_permutation(model, key: BlockKey, path: Path) -> Path | None:
    """Owner-only figure: learned P next to the key's inverse block permutation."""
    perm = getattr(model, "permutation", None)
    if not isinstance(perm, AdaptivePermutation):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = perm.matrix().detach().float().cpu()  # the effective P (Sinkhorn, gain)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    lim = float(w.abs().max())
    im = axes[0].imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0].set_title("learned P")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[1].imshow(inverse_block_permutation_matrix(key), cmap="Greys")
    axes[1].set_title("key's inverse block permutation")
    for ax in axes:
        ax.set_xlabel("output token j (plain block)")
        ax.set_ylabel("input token i (encrypted block)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_all(cfg, model, images, key, input_size, mean, std, device, autocast) -> dict:
    """Top-1 on the validation split: with the correct key, on plain images, with a wrong key
    (those two need the owner's key); without a key only in the data's own domain."""
    bs, workers = cfg["eval"]["batch_size"], cfg["data"]["num_workers"]

    def run(view, transform):
        return top1(
            model,
            DataLoader(EvalDataset(view, transform), bs, num_workers=workers),
            device,
            autocast,
        )

    if key is None:
        if cfg["data"]["encrypted"]:
            return {"top1_encrypted": run(images, encrypted_transform(input_size, mean, std))}
        return {"top1_plain": run(images, eval_transform(input_size, mean, std))}
    plain = DecryptedView(images, key) if cfg["data"]["encrypted"] else images
    wrong = BlockKey.generate(key.image_size, key.block_size, key.channels, seed=cfg["seed"] + 1)
    return {
        "top1_key": run(plain, eval_transform(input_size, mean, std, key)),
        "top1_plain": run(plain, eval_transform(input_size, mean, std)),
        "top1_wrong_key": run(plain, eval_transform(input_size, mean, std, wrong)),
    }
