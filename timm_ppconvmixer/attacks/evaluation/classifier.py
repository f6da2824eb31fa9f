"""A small plain-domain classifier that tells how recognisable reconstructions are.

Not part of any attack: the owner trains it on *plain* images (a split disjoint from the images
it is evaluated on) and compares its top-1 on the plain images with its top-1 on the attacker's
reconstructions (and on the encrypted images, the no-attack baseline). Any input size works:
images are average-pooled to at most 32x32 first. CPU-sized: two small convolutions.

Example:
    >>> import numpy as np
    >>> from timm_ppconvmixer.data import fashion_mnist_arrays
    >>> x, y = fashion_mnist_arrays("test")
    >>> model = train_classifier(x[:2000, None], y[:2000], epochs=1)
    >>> top1(model, x[2000:3000, None], y[2000:3000]) > 0.5
    True
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["SmallClassifier", "cached_classifier", "top1", "train_classifier"]


class SmallClassifier(nn.Module):
    """conv-pool-conv-pool-MLP on images pooled to at most 32x32, input uint8 -> float."""

    def __init__(self, channels: int, classes: int, side: int) -> None:
        super().__init__()
        self.side = min(side, 32)
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(self.side),
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, 128),
            nn.ReLU(),
            nn.Linear(128, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0 - 0.5)


def train_classifier(
    images: np.ndarray, labels: np.ndarray, *, epochs: int = 2, seed: int = 0, batch: int = 128
) -> SmallClassifier:
    """Train on uint8 ``(N, C, H, W)`` plain images with integer labels (Adam, 2e-3)."""
    torch.manual_seed(seed)
    classes = int(labels.max()) + 1
    model = SmallClassifier(images.shape[1], classes, max(images.shape[-2:]))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    y = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def top1(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> float:
    """Top-1 accuracy on uint8 ``(N, C, H, W)`` images."""
    model.eval()
    x = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred.numpy() == labels).mean())


def cached_classifier(
    folder: str | Path, images: np.ndarray, labels: np.ndarray, *, epochs: int = 2
) -> SmallClassifier:
    """Train once and keep the weights in ``folder/classifier.pt`` (with a JSON note saying on
    what it was trained); later calls with the same data shape load it."""
    folder = Path(folder)
    weights, note = folder / "classifier.pt", folder / "classifier.json"
    meta = {
        "trained_on": list(images.shape),
        "classes": int(labels.max()) + 1,
        "epochs": epochs,
        "architecture": "SmallClassifier (timm_ppconvmixer.attacks.evaluation.classifier)",
    }
    if weights.exists() and note.exists() and json.loads(note.read_text()) == meta:
        model = SmallClassifier(images.shape[1], meta["classes"], max(images.shape[-2:]))
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval()
    model = train_classifier(images, labels, epochs=epochs)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    note.write_text(json.dumps(meta, indent=2) + "\n")
    return model
