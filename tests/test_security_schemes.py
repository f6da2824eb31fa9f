"""The cross-scheme evaluation (benchmarks/security_schemes.py, issue 18) on real Fashion-MNIST:
every registered scheme's attack runs through the same runner and scorer, and the table's
"N at which images are recognisable / exact" columns read the runs right."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from security_schemes import aggregate, run_scheme_setting, summary  # noqa: E402

from timm_ppconvmixer.attacks.registry import SCHEME_ATTACKS  # noqa: E402


@pytest.fixture(scope="module")
def small_setting(fmnist):
    from timm_ppconvmixer.data import fashion_mnist_arrays

    x, y, test = fmnist  # the provider's data: training images; the prior: the public test split
    test_y = fashion_mnist_arrays("test")[1]
    data = np.random.default_rng(0).permutation(len(x))[:600]
    return dict(x=x[data], y=y[data], ref=test[:2000], ref_y=test_y[:2000], block=4, ns=[1, 300])


@pytest.mark.parametrize("scheme", sorted(SCHEME_ATTACKS))
def test_every_scheme_runs_through_the_same_runner(scheme, small_setting, tmp_path):
    rows = run_scheme_setting(scheme, "fmnist28", small_setting, 1, tmp_path)
    attack = SCHEME_ATTACKS[scheme]
    per_image = attack.score_key is None  # no shared key: one run, every image alone
    ns = [1] if per_image else [1, 300]
    assert [r["N"] for r in rows] == ns
    assert rows[-1]["scored_images"] == 600  # every image of the sample, at every N
    for r in rows:
        assert r["scheme"] == scheme and 0.0 <= r["exact_images"] <= 1.0
        assert 0.0 <= r["top1_reconstruction"] <= 1.0
        if attack.score_key is not None:
            assert set(attack.key_parts) <= set(r["key"]), r["key"]
    assert rows[-1]["top1_plain"] > 0.5  # the classifier is a real one (300 images)
    table = aggregate(rows)
    assert [e["N"] for e in table] == ns and table[0]["keys"] == 1


def test_the_blockwise_attack_reads_as_recognisable_and_exact_at_300(small_setting, tmp_path):
    rows = run_scheme_setting("blockwise", "fmnist28", small_setting, 1, tmp_path)
    # docs/security.md: 300 images at 28/4 give the whole key; one image gives nothing
    assert rows[-1]["exact_images"] == 1.0 and rows[0]["exact_images"] < 0.1
    (row,) = summary(aggregate(rows), {})
    assert row["recognisable_N"] == 300 and row["exact_N"] == 300 and row["largest_N"] == 300


def test_summary_finds_the_first_n_of_each_column():
    def entry(n, exact, top1):
        return {
            "scheme": "x", "setting": "fmnist28", "N": n, "keys": 5,
            "exact_images": (exact, exact), "ssim": (exact, exact), "seconds": (1.0, 2.0),
            "psnr": (20.0, 20.0), "top1_reconstruction": (top1, top1), "top1_plain": 0.9,
            "key": {},
        }  # fmt: skip

    table = [entry(1, 0.0, 0.1), entry(10, 0.2, 0.86), entry(100, 0.995, 0.9)]
    (row,) = summary(table, {"x": {"top1": 0.8, "model": "m", "row": "r", "seeds": 1}})
    assert (row["recognisable_N"], row["exact_N"], row["largest_N"]) == (10, 100, 100)
    (never,) = summary([entry(1, 0.0, 0.1), entry(10, 0.5, 0.84)], {})
    assert never["recognisable_N"] is None and never["exact_N"] is None


def test_a_stopped_evaluation_resumes_run_by_run(small_setting, tmp_path):
    # an attack of minutes per run (ELE on photographs) must not be measured twice: the runs
    # already saved are kept as they are, only the missing (key, N) are measured, and every new
    # run is saved as soon as it is done
    setting = dict(small_setting, ns=[1, 3])
    saved: list[list[dict]] = []

    def save(rows):
        saved.append(list(rows))

    first = run_scheme_setting("pe", "fmnist28", setting, 1, tmp_path, save=save)
    assert [len(s) for s in saved] == [1, 2]
    saved.clear()
    second = run_scheme_setting("pe", "fmnist28", setting, 2, tmp_path, done=first[:1], save=save)
    assert [(r["key_seed"], r["N"]) for r in second] == [(1000, 1), (1000, 3), (1001, 1), (1001, 3)]
    assert second[0] is first[0]  # kept, not measured again
    assert second[1] is not first[1] and second[1]["N"] == 3  # the missing run was measured
    assert [len(s) for s in saved] == [2, 3, 4]


def test_an_n_above_the_scored_images_attacks_all_n(small_setting, tmp_path):
    # N = 60,000 means the attack sees 60,000 images, though 2,000 are scored: the scored ones
    # are the first of the attacked (an earlier version attacked only the scored images)
    rows = run_scheme_setting(
        "blockwise", "fmnist28", dict(small_setting, ns=[300]), 1, tmp_path, scored=100
    )
    (row,) = rows
    assert row["attacked_images"] == 300 and row["scored_images"] == 100
    assert row["exact_images"] == 1.0  # 300 images give the whole key, measured
