"""The ciphertext-only attack from few images (the few-images regime), real data.

What must hold, each measured in docs/security_few_images.md, and each failed by the attack
without the step its page names ("The three steps", and the appendix's table of the attack
without them): K2 from 2 Fashion-MNIST images (k-nearest-neighbour layout restarts); a
100-image Fashion-MNIST sample whose K2 layout folds without the 8-neighbour start (8.4 dB
instead of exact); two photographs at the paper's geometry (224/16) decrypted exactly up to the
symmetries no ciphertext-only attacker can resolve (channels grouped by the nearest-neighbour
graph; 11.4 dB without it); and K3 of photographs whose blue channel anti-correlates with green
(a whole channel complemented without the vote of the channel signs). Each is a run of the
few-images regime of benchmarks/security_eval.py (``benchmarks/security/runs.py``): its samples,
attack and scoring.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.attacks import GenericPrior

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from security.data import Setting, skimage_photo_paths  # noqa: E402
from security.runs import REGIMES, measure, run_group  # noqa: E402

FEW = REGIMES["few-images"]  # the regime of docs/security_few_images.md


@pytest.fixture(scope="module")
def fashion_runs(fmnist, tmp_path_factory):
    """The runner's few-images runs on Fashion-MNIST 28/4 (keys 1000-1002, N = 2 and 100): the
    60,000 training images, the public test split as the prior, no classifier."""
    setting = Setting("fmnist28_4", x=fmnist[0], ref=fmnist[2])
    cache = tmp_path_factory.mktemp("few_images")
    rows = run_group("blockwise", setting, FEW, keys=3, ns=[2, 100], cache=cache)
    return {(r["key_seed"], r["N"]): r for r in rows}


@pytest.mark.parametrize("seed", [1000, 1002])
def test_k2_from_two_fashion_mnist_images(fashion_runs, seed):
    # without the layout restarts: K2 25 % (seed 1000) and 31 % (seed 1002) up to symmetry
    assert fashion_runs[(seed, 2)]["key"]["K2"] == 1.0


def test_the_k2_layout_does_not_fold_on_100_fashion_mnist_images(fashion_runs):
    # without the 8-neighbour start: K2 25 %, K1 6 %, PSNR 8.4 dB, SSIM 0.09 (the layout folds)
    row = fashion_runs[(1002, 100)]
    assert row["scored_images"] == 100  # every attacked image judged
    assert row["psnr"] >= 99.0
    assert row["ssim"] >= 0.999


def _photo_run(seed: int, n: int) -> dict:
    """The runner's few-images run of key ``seed`` on its first ``n`` photographs (224/16),
    cut from scikit-image's five photographs alone (a dev dependency: a missing one fails the
    test), so the crops are the same on every machine, whatever else it has installed."""
    setting = Setting("photo224_16", photos=skimage_photo_paths())
    x, _, order = setting.draw(FEW.sample_seed + seed - 1000, [10], True)
    key = BlockKey.generate(224, 16, 3, seed=seed)
    return measure("blockwise", key, x, None, order[:n], n, None, 16, GenericPrior(), symmetry=True)


@pytest.mark.parametrize(("seed", "n"), [(1000, 2), (1003, 10)])
def test_few_photographs_at_224_16_decrypt_up_to_symmetry(seed, n):
    # without the channel grouping: 11.4 dB / SSIM 0.24 (seed 1000, 2 photographs: channels
    # mixed) and 14.2 dB / 0.30 (seed 1003, 10 photographs: channels mixed, a layout folded)
    row = _photo_run(seed, n)
    assert row["psnr_sym"] >= 30.0
    assert row["ssim_sym"] >= 0.95


def test_anticorrelated_channels_keep_k3():
    # without the vote of the channel signs: K3 66.7 % (the blue channel complemented)
    assert _photo_run(1003, 5)["key"]["K3"] == 1.0
