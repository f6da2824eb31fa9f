"""The images the security runner attacks, its settings and the attacker's priors.

A setting names the data, the image side and the block size: ``fmnist28_4`` (Fashion-MNIST as
in the demo: 28x28, block 4, 1 channel), ``fmnist56_4`` and ``fmnist56_7`` (Fashion-MNIST
upscaled to 56x56, bicubic), ``photo224_16`` and ``photo224_32`` (the paper's geometry: 224x224
RGB crops of offline photographs), ``photo224_16_gray`` (the same crops in grayscale). The
pixel-wise schemes run at block 1 whatever the setting says. ``fmnist28`` and ``photo224`` are
short for ``fmnist28_4`` and ``photo224_16``.

* Fashion-MNIST: the attacked data are the 60,000 training images (what the provider holds;
  upscaled settings: the first training images, three times the largest N); the attacker's
  reference prior and the plain-domain classifier use the public test split.
* Photographs: random square crops (random scale, random left-right flip) of the natural
  photographs shipped by scikit-image (``skimage.data``: astronaut, chelsea, coffee,
  motorcycle_left, rocket) and by the Debian package ``mate-backgrounds``
  (``/usr/share/backgrounds/mate/nature``); a pool of three times the largest N (seed 1), so
  every key draws its own sample; no labels, so no classifier. Their reference prior: 200
  other crops (seed 7).
"""

from __future__ import annotations

import functools
import glob
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from timm_ppconvmixer.attacks import GenericPrior, ReferencePrior
from timm_ppconvmixer.attacks.evaluation.classifier import cached_classifier
from timm_ppconvmixer.data import fashion_mnist_arrays

SETTINGS = (
    "fmnist28_4",
    "fmnist56_4",
    "fmnist56_7",
    "photo224_16",
    "photo224_32",
    "photo224_16_gray",
)
ALIASES = {"fmnist28": "fmnist28_4", "photo224": "photo224_16"}
PRIORS = ("reference", "generic")
DEFAULT_PRIOR = {"fmnist": "reference", "photo": "generic"}  # per kind of data
PHOTO_POOL_SEED = 1  # the crops the provider holds
PHOTO_REFERENCE = (200, 7)  # the attacker's public photographs: 200 other crops (seed 7)
# scikit-image's natural photographs, shipped in its wheel (skimage/data/)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
_NAME = re.compile(r"(fmnist|photo)(\d+)_(\d+)(_gray)?")


def canonical(name: str) -> str:
    """A setting's full name (``fmnist28`` -> ``fmnist28_4``)."""
    name = ALIASES.get(name, name)
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}: one of {', '.join(SETTINGS + tuple(ALIASES))}")
    return name


def skimage_photo_paths() -> list[str]:
    """scikit-image's natural photographs (:data:`SKIMAGE_PHOTOS`), from the folder of its
    package: the files its wheel ships. ``skimage.data.data_dir`` names pooch's download cache
    instead where pooch is installed, which may hold none of them.

    Raises:
        FileNotFoundError: a photograph is missing from the package.
    """
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    missing = [n for n in SKIMAGE_PHOTOS if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"scikit-image's {', '.join(missing)} not in {folder}: reinstall scikit-image "
            "(pip install --force-reinstall scikit-image)"
        )
    return [str(folder / n) for n in SKIMAGE_PHOTOS]


def photo_paths() -> list[str]:
    """The offline photographs: scikit-image's and ``mate-backgrounds``'s."""
    try:
        paths = skimage_photo_paths()
    except ImportError:
        paths = []
    return paths + sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg"))


def photo_crops(
    n: int, size: int = 224, seed: int = 0, gray: bool = False, paths: list[str] | None = None
) -> np.ndarray:
    """``n`` random square crops (random scale, random mirror) resized to ``size``, (n, C, size,
    size) uint8, of ``paths`` (default: :func:`photo_paths`); the first ``k`` crops of a seed
    are the same for every ``n >= k``."""
    paths = photo_paths() if paths is None else paths
    if len(paths) < 5:
        sys.exit(
            "no photographs: pip install 'timm-ppconvmixer[security]' (scikit-image) and "
            "apt-get install mate-backgrounds"
        )
    rng = np.random.default_rng(seed)
    images = [Image.open(p).convert("L" if gray else "RGB") for p in paths]
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        w, h = im.size
        side = rng.uniform(size, min(w, h))
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        crop = im.resize(
            (size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        a = np.asarray(crop)
        out.append(a[None] if gray else a.transpose(2, 0, 1))
    return np.stack(out)


def upscale(x: np.ndarray, size: int) -> np.ndarray:
    """Grey images (N, 1, H, W) resized to ``size`` x ``size`` (bicubic)."""
    return np.stack(
        [
            np.asarray(Image.fromarray(a[0]).resize((size, size), Image.Resampling.BICUBIC))
            for a in x
        ]
    )[:, None]


@functools.cache
def _fmnist(split: str, side: int, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = fashion_mnist_arrays(split)
    x, y = x[:count, None], y[:count]
    return (x, y) if side == 28 else (upscale(x, side), y)


@dataclass(eq=False)
class Setting:
    """One setting's data. ``x``/``y``: the provider's images and labels (``y`` None for
    photographs); ``ref``/``ref_y``: the attacker's public images of the same kind (reference
    prior) and the labels the plain-domain classifier is trained with (None: no classifier).
    For photographs ``ref`` is drawn on first use, and ``photos`` names the files the crops
    are cut from (None: :func:`photo_paths`)."""

    name: str
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    ref: np.ndarray | None = None
    ref_y: np.ndarray | None = None
    photos: list[str] | None = None

    def __post_init__(self) -> None:
        self.name = canonical(self.name)
        kind, side, block, gray = _NAME.fullmatch(self.name).groups()
        self.kind, self.side, self.block, self.gray = kind, int(side), int(block), bool(gray)
        self.channels = 3 if kind == "photo" and not gray else 1
        self.default_prior = DEFAULT_PRIOR[kind]
        self._model: dict[Path, object] = {}

    def prior(self, name: str | None):
        """The attacker's prior: ``reference`` (public images of the same kind) or ``generic``."""
        name = name or self.default_prior
        if name == "generic":
            return GenericPrior()
        if self.ref is None and self.kind == "photo":
            n, seed = PHOTO_REFERENCE
            self.ref = photo_crops(n, self.side, seed=seed, gray=self.gray, paths=self.photos)
        return ReferencePrior(self.ref)

    def classifier(self, cache: Path):
        """The plain-domain classifier (trained once on ``ref``, kept under ``cache``), or None
        where the setting has no labels."""
        if self.ref_y is None:
            return None
        folder = Path(cache) / f"classifier_{self.side}"
        if folder not in self._model:
            self._model[folder] = cached_classifier(folder, self.ref, self.ref_y)
        return self._model[folder]

    def draw(self, seed: int, ns: list[int], fresh_photos: bool):
        """The images one key's sample is drawn from and their order: the shared pool in a
        random order seeded by ``seed``, or (``fresh_photos``) ``max(ns)`` new crops seeded by
        ``seed``, in the order drawn. Returns ``(x, y, order)``."""
        if fresh_photos and self.kind == "photo":
            x = photo_crops(max(ns), self.side, seed=seed, gray=self.gray, paths=self.photos)
            return x, None, np.arange(len(x))
        return self.x, self.y, np.random.default_rng(seed).permutation(len(self.x))


def pool_size(name: str, ns: list[int]) -> int:
    """Images a setting's shared pool holds for N up to ``max(ns)`` (``load_setting``)."""
    name = canonical(name)
    if name.startswith("fmnist28"):
        return 60000
    return min(3 * max(ns), 60000) if name.startswith("fmnist") else 3 * max(ns)


def load_setting(name: str, ns: list[int], *, pool: bool = True) -> Setting:
    """A setting's data for N up to ``max(ns)``: Fashion-MNIST 28 whole; upscaled
    Fashion-MNIST and photographs: a pool of three times the largest N (module doc).
    ``pool=False``: no shared photograph pool (each key draws its own crops)."""
    s = Setting(name)
    size = pool_size(s.name, ns)
    if s.kind == "fmnist":
        count = None if s.side == 28 else size
        s.x, s.y = _fmnist("train", s.side, count)
        s.ref, s.ref_y = _fmnist("test", s.side)
    elif pool:
        s.x = photo_crops(size, s.side, seed=PHOTO_POOL_SEED, gray=s.gray)
    return s
