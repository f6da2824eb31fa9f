"""Weights and the PUBLIC demo and zoo keys that ship with the package.

``ppconvmixer_256_8_fmnist.demo``: ``ppconvmixer_256_8`` for Fashion-MNIST at 28x28, one
channel, block 4, trained with the project's recipe (``hub/train_demo_model.py``) on images
encrypted with the demo key below. Load it offline with
``timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True)``.

``ppconvmixer_128_8_fmnist.zoo_*``: the ConvMixer models of the Table I reproduction
(``benchmarks/reproduce_table1.py --zoo DIR --ship``), each trained on Fashion-MNIST encrypted
with its scheme's PUBLIC zoo key (:func:`zoo_key`), or on plain images (``zoo_plain``). The
Table I reproduction's other models (AdaptNet and PyramidNet, a few MB each) are not shipped:
that command writes them into ``DIR`` (``hub/zoo.yaml``).

The demo and zoo keys are **public**: each is generated from a published seed and its file
ships with the package, so anyone can decrypt images encrypted with it. They exist only to show
the workflow and to make the zoo's numbers reproducible; never encrypt real data with them.
"""

from __future__ import annotations

from pathlib import Path

from ...key import BlockKey
from ...schemes import SchemeKey, generate_key, load_key

__all__ = [
    "DEMO_KEY_FILE",
    "DEMO_KEY_SEED",
    "DEMO_WEIGHTS",
    "SHIPPED_ZOO",
    "ZOO_GEOMETRY",
    "ZOO_KEY_SEED",
    "ZOO_SCHEMES",
    "demo_key",
    "zoo_key",
    "zoo_key_file",
]

HERE = Path(__file__).resolve().parent
DEMO_KEY_SEED = 20220804  # public on purpose
DEMO_KEY_FILE = HERE / "fmnist28_demo.PUBLIC.key"
DEMO_WEIGHTS = HERE / "ppconvmixer_256_8_fmnist.demo"

# The zoo keys: generate_key(scheme, seed=ZOO_KEY_SEED) at Fashion-MNIST's geometry, the keys
# benchmarks/reproduce_table1.py trains its seed-0 rows with (seed 1000 + seed). Public.
ZOO_KEY_SEED = 1000
ZOO_SCHEMES = ("blockwise", "le", "ele", "etc", "pe")
ZOO_GEOMETRY = dict(image_size=28, channels=1)  # block 4, or 1 for the pixel-wise pe
# shipped zoo tag -> its folder in the package (the small ConvMixer models, ~0.7 MB each)
SHIPPED_ZOO = {
    f"ppconvmixer_128_8_fmnist.{tag}": HERE / f"ppconvmixer_128_8_fmnist.{tag}"
    for tag in ("zoo_blockwise_p", "zoo_blockwise_no_p", "zoo_pe", "zoo_plain")
}


def demo_key() -> BlockKey:
    """The public demo key (28x28, block 4, 1 channel) the demo weights were trained with."""
    key = BlockKey.load(DEMO_KEY_FILE)
    if key != BlockKey.generate(28, 4, channels=1, seed=DEMO_KEY_SEED):
        raise ValueError(f"{DEMO_KEY_FILE} is not the published demo key")
    return key


def zoo_key_file(scheme: str) -> Path:
    """Where the PUBLIC zoo key of ``scheme`` ships (``fmnist28_zoo_<scheme>.PUBLIC.key``)."""
    if scheme not in ZOO_SCHEMES:
        raise ValueError(f"no zoo key for scheme {scheme!r}; zoo schemes: {', '.join(ZOO_SCHEMES)}")
    return HERE / f"fmnist28_zoo_{scheme}.PUBLIC.key"


def generate_zoo_key(scheme: str, seed: int = ZOO_KEY_SEED) -> SchemeKey:
    """``generate_key(scheme, seed=seed)`` at the zoo's geometry (28x28, 1 channel, block 4,
    block 1 for pe): the zoo key with the default seed."""
    block = 1 if scheme == "pe" else 4
    return generate_key(scheme, block_size=block, seed=seed, **ZOO_GEOMETRY)


def zoo_key(scheme: str) -> SchemeKey:
    """The PUBLIC zoo key of ``scheme``, read from its shipped file and checked against its
    published seed (never use it for real data: anyone can regenerate it)."""
    path = zoo_key_file(scheme)
    key = load_key(path)
    if key.fingerprint != generate_zoo_key(scheme).fingerprint:
        raise ValueError(f"{path} is not the published {scheme} zoo key (seed {ZOO_KEY_SEED})")
    return key
