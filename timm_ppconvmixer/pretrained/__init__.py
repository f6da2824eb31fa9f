"""Weights and the PUBLIC demo key that ship with the package.

``ppconvmixer_256_8_fmnist.demo``: ``ppconvmixer_256_8`` for Fashion-MNIST at 28x28, one
channel, block 4, trained with the project's recipe (``hub/train_demo_model.py``) on images
encrypted with the demo key below. Load it offline with
``timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True)``.

The demo key is **public**: it is generated from a published seed and its file ships with the
package, so anyone can decrypt images encrypted with it. It exists only to show the workflow;
never encrypt real data with it.
"""

from __future__ import annotations

from pathlib import Path

from ..key import BlockKey

__all__ = ["DEMO_KEY_FILE", "DEMO_KEY_SEED", "DEMO_WEIGHTS", "demo_key"]

HERE = Path(__file__).resolve().parent
DEMO_KEY_SEED = 20220804  # public on purpose
DEMO_KEY_FILE = HERE / "fmnist28_demo.PUBLIC.key"
DEMO_WEIGHTS = HERE / "ppconvmixer_256_8_fmnist.demo"


def demo_key() -> BlockKey:
    """The public demo key (28x28, block 4, 1 channel) the demo weights were trained with."""
    key = BlockKey.load(DEMO_KEY_FILE)
    if key != BlockKey.generate(28, 4, channels=1, seed=DEMO_KEY_SEED):
        raise ValueError(f"{DEMO_KEY_FILE} is not the published demo key")
    return key
