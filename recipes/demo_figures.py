"""Figures for the demo report: plain / encrypted / decrypted pictures, the training curve."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from timm_ppconvmixer import BlockKey, decrypt, encrypt  # noqa: E402
from timm_ppconvmixer.images import prepare_image  # noqa: E402

SAMPLE_PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def sample_grid(images: list[Image.Image], key: BlockKey, path: Path, title: str) -> Path:
    """Rows: plain, encrypted, decrypted; one column per image."""
    fig, axes = plt.subplots(3, len(images), figsize=(1.6 * len(images), 5.2), squeeze=False)
    for col, img in enumerate(images):
        plain = prepare_image(img, key)
        enc = encrypt(plain, key)
        for row, (shown, label) in enumerate(
            ((plain, "plain"), (enc, "encrypted"), (decrypt(enc, key), "decrypted"))
        ):
            ax = axes[row][col]
            ax.imshow(
                np.asarray(shown), cmap="gray" if shown.mode == "L" else None, vmin=0, vmax=255
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def photo_figure(path: Path) -> Path:
    """A real photograph (matplotlib's bundled grace_hopper.jpg) at 224x224, block 16, with a
    fresh key that is thrown away afterwards."""
    key = BlockKey.generate(224, 16, channels=3)
    return sample_grid([Image.open(SAMPLE_PHOTO)], key, path, "224x224, block 16")


def training_curve(metrics: Path, path: Path) -> Path:
    lines = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    train = [ln for ln in lines if "loss" in ln]
    evals = [ln for ln in lines if "eval" in ln]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([ln["step"] for ln in train], [ln["ce"] for ln in train], label="training CE")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    if evals:
        ax2 = ax.twinx()
        for name in evals[-1]["eval"]:
            ax2.plot(
                [e["step"] for e in evals], [100 * e["eval"][name] for e in evals], "o-", label=name
            )
        ax2.set_ylabel("top-1 (%)")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
