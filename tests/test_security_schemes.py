"""The security runner (benchmarks/security_eval.py and benchmarks/security/) on real
Fashion-MNIST: every registered scheme's attack runs through the same loop and scorer, the
cross-scheme table's "N at which images are recognisable / exact" columns read the runs right,
a stopped evaluation resumes run by run, and the command writes its tables with their
provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import security_eval  # noqa: E402
from security.data import Setting  # noqa: E402
from security.runs import KEY_SEED, REGIMES, RunsFile, group_of, run_group, scheme_key  # noqa: E402
from security.tables import aggregate, summary  # noqa: E402

from timm_ppconvmixer import encrypt  # noqa: E402
from timm_ppconvmixer.attacks import score_images  # noqa: E402
from timm_ppconvmixer.attacks.registry import SCHEME_ATTACKS  # noqa: E402

SAMPLE = REGIMES["sample"]


@pytest.fixture(scope="module")
def small_setting(fmnist):
    from timm_ppconvmixer.data import fashion_mnist_arrays

    x, y, test = fmnist  # the provider's data: training images; the prior: the public test split
    test_y = fashion_mnist_arrays("test")[1]
    data = np.random.default_rng(0).permutation(len(x))[:600]
    return Setting("fmnist28_4", x=x[data], y=y[data], ref=test[:2000], ref_y=test_y[:2000])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier")  # one small classifier for the module


# What each scheme's attack reaches in the last run (N = 300; PE with a fresh key per image:
# every image alone), with a margin: the reconstructions' SSIM, the smallest share of a key part
# the owner's scorer finds, and the top-1 of the plain-domain classifier on the
# reconstructions above its top-1 on the encrypted images. Measured: SSIM 1.0, the whole key and
# the plain images' top-1 (0.705) for blockwise, EtC, LE and PE; ELE: SSIM 0.25, key parts 0.50
# (nibble order) to 0.98, top-1 0.375; PE per image: SSIM 0.61, top-1 0.675. The encrypted
# images: SSIM 0.04 at most, top-1 0.07 to 0.11.
REACHED = {
    "blockwise": (0.99, 0.99),
    "ele": (0.18, 0.4),
    "etc": (0.99, 0.99),
    "le": (0.99, 0.99),
    "pe": (0.99, 0.99),
    "pe-per-image": (0.5, None),
}


@pytest.mark.parametrize("scheme", sorted(SCHEME_ATTACKS))
def test_every_scheme_runs_through_the_same_runner(scheme, small_setting, cache):
    rows = run_group(scheme, small_setting, SAMPLE, keys=1, ns=[1, 300], cache=cache)
    attack = SCHEME_ATTACKS[scheme]
    per_image = attack.score_key is None  # no shared key: one run, every image alone
    ns = [1] if per_image else [1, 300]
    assert [r["N"] for r in rows] == ns
    assert rows[-1]["scored_images"] == 600  # every image of the sample, at every N
    for r in rows:
        assert r["scheme"] == scheme and 0.0 <= r["exact_images"] <= 1.0
        assert (r["regime"], r["prior"], r["setting"]) == ("sample", "reference", "fmnist28_4")
        assert 0.0 <= r["top1_reconstruction"] <= 1.0
        if attack.score_key is not None:
            assert set(attack.key_parts) <= set(r["key"]), r["key"]
    assert rows[-1]["top1_plain"] > 0.5  # the classifier is a real one (300 images)
    last, (ssim_at_least, key_at_least) = rows[-1], REACHED[scheme]
    # the mean SSIM of the 600 scored images, left encrypted: out of reach of the bound
    key = scheme_key(scheme, small_setting, KEY_SEED)
    encrypted = encrypt(small_setting.x, key, layout="CHW")
    assert score_images(encrypted, small_setting.x)["ssim"] < ssim_at_least - 0.1
    assert last["ssim"] >= ssim_at_least, last
    assert last["top1_reconstruction"] >= last["top1_encrypted"] + 0.2, last
    if key_at_least is not None:
        assert min(last["key"][part] for part in attack.key_parts) >= key_at_least, last["key"]
    if scheme == "le":  # the 4-bit picture of the upper halves alone
        assert {"upper_psnr", "upper_top1"} <= set(rows[-1]) and rows[-1]["ssim"] == 1.0
        assert 0.5 < rows[-1]["upper_ssim"] < 1.0  # recognisable, not exact
    if scheme == "pe-per-image":  # values right, and the fold anyone reads off the ciphertext
        assert 0.5 < rows[0]["values_exact"] <= rows[0]["values_up_to_inversion"] <= 1.0
        assert rows[0]["ssim_fold"] < rows[0]["ssim"]  # the attack beats the fold
    table = aggregate(rows)
    assert [e["N"] for e in table] == ns and table[0]["keys"] == 1


def test_the_blockwise_attack_reads_as_recognisable_and_exact_at_300(small_setting, cache):
    rows = run_group("blockwise", small_setting, SAMPLE, keys=1, ns=[1, 300], cache=cache)
    # docs/security.md: 300 images at 28/4 give the whole key; one image gives nothing
    assert rows[-1]["exact_images"] == 1.0 and rows[0]["exact_images"] < 0.1
    (row,) = summary(aggregate(rows), {})
    assert row["recognisable_N"] == 300 and row["exact_N"] == 300 and row["largest_N"] == 300


def test_summary_finds_the_first_n_of_each_column():
    def entry(n, exact, top1):
        return {
            "scheme": "x", "setting": "fmnist28_4", "prior": "reference", "N": n, "keys": 5,
            "exact_images": (exact, exact), "ssim": (exact, exact), "seconds": (1.0, 2.0),
            "psnr": (20.0, 20.0), "top1_reconstruction": (top1, top1), "top1_plain": (0.9, 0.9),
            "key": {},
        }  # fmt: skip

    table = [entry(1, 0.0, 0.1), entry(10, 0.2, 0.86), entry(100, 0.995, 0.9)]
    (row,) = summary(table, {"x": {"top1": 0.8, "model": "m", "row": "r", "seeds": 1}})
    assert (row["recognisable_N"], row["exact_N"], row["largest_N"]) == (10, 100, 100)
    (never,) = summary([entry(1, 0.0, 0.1), entry(10, 0.5, 0.84)], {})
    assert never["recognisable_N"] is None and never["exact_N"] is None
    # the generic prior's runs of Fashion-MNIST are not the cross-scheme row
    assert summary([dict(entry(1, 1.0, 0.9), prior="generic")], {}) == []


def test_a_stopped_evaluation_resumes_run_by_run(small_setting, cache):
    # an attack of minutes per run (ELE on photographs) must not be measured twice: the runs
    # already saved are kept as they are, only the missing (key, N) are measured, and every new
    # run is saved as soon as it is done
    saved: list[list[dict]] = []

    def save(rows):
        saved.append(list(rows))

    run = dict(regime=SAMPLE, ns=[1, 3], cache=cache, save=save)
    first = run_group("pe", small_setting, keys=1, **run)
    assert [len(s) for s in saved] == [1, 2]
    saved.clear()
    second = run_group("pe", small_setting, keys=2, done=first[:1], **run)
    assert [(r["key_seed"], r["N"]) for r in second] == [(1000, 1), (1000, 3), (1001, 1), (1001, 3)]
    assert second[0] is first[0]  # kept, not measured again
    assert second[1] is not first[1] and second[1]["N"] == 3  # the missing run was measured
    assert [len(s) for s in saved] == [2, 3, 4]
    saved.clear()
    # a run of another regime or prior is another measurement: not reused
    other = run_group("pe", small_setting, keys=1, done=second, prior="generic", **run)
    assert [len(s) for s in saved] == [1, 2] and other[0]["prior"] == "generic"


def test_an_n_above_the_scored_images_attacks_all_n(small_setting, cache):
    # N = 60,000 means the attack sees 60,000 images, though 2,000 are scored: the scored ones
    # are the first of the attacked
    (row,) = run_group(
        "blockwise", small_setting, SAMPLE, keys=1, ns=[300], cache=cache, scored=100
    )
    assert row["attacked_images"] == 300 and row["scored_images"] == 100
    assert row["exact_images"] == 1.0  # 300 images give the whole key, measured


def test_the_attacked_regime_judges_the_attacked_images_only(small_setting, cache):
    rows = run_group(
        "blockwise", small_setting, REGIMES["attacked"], keys=1, ns=[1, 300], cache=cache
    )
    assert [(r["attacked_images"], r["scored_images"]) for r in rows] == [(1, 1), (300, 300)]


def test_runs_recorded_without_regime_or_prior_resume(small_setting, cache, tmp_path):
    # runs files of the cross-scheme runner name their setting "fmnist28" and record no regime,
    # prior or images-judged count: they are sample-regime runs with the setting's own prior
    rows = run_group("blockwise", small_setting, SAMPLE, keys=1, ns=[1], cache=cache)
    recorded = [dict(r, setting="fmnist28") for r in rows]
    for r in recorded:
        for field in ("regime", "prior", "scored", "measured"):
            del r[field]
    path = tmp_path / "runs_blockwise.json"
    path.write_text(json.dumps(recorded))
    store = RunsFile(path)
    assert [group_of(r) for r in store.rows] == [group_of(rows[0])]
    calls = []
    again = run_group(
        "blockwise", small_setting, SAMPLE, keys=1, ns=[1], cache=cache,
        done=store.rows, save=calls.append,
    )  # fmt: skip
    assert calls == [] and again[0]["exact_images"] == rows[0]["exact_images"]


@pytest.fixture(scope="module")
def command_run(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("security_eval")
    argv = [
        "--schemes", "blockwise", "le", "--settings", "fmnist28", "--regime", "attacked",
        "--ns", "1", "100", "--keys", "1", "--extras", "known-plaintext", "--out", str(out),
    ]  # fmt: skip
    return out, argv, security_eval.main(argv)


def test_the_command_writes_its_tables_with_provenance(command_run):
    out, argv, result = command_run
    saved = json.loads((out / "security_eval.json").read_text())
    prov = saved["provenance"]
    assert prov["argv"][1:] == argv
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert prov["commit"] == head.stdout.strip() and isinstance(prov["dirty"], bool)
    assert prov["command"].startswith("python ") and prov["machine"]["torch_threads"] >= 1
    assert prov["date"].endswith("+00:00")
    assert {"platform", "cpu_count", "torch", "timm"} <= set(prov["machine"])
    assert [(e["scheme"], e["N"]) for e in saved["table"]] == [
        ("blockwise", 1), ("blockwise", 100), ("le", 1), ("le", 100),
    ]  # fmt: skip
    assert saved["table"][1]["exact_images"] == [1.0, 1.0]  # 100 images: the whole key
    runs = json.loads((out / "runs_le.json").read_text())
    assert runs["provenance"]["argv"][1:] == argv and len(runs["runs"]) == 2
    assert all(r["measured"]["commit"] == prov["commit"] for r in runs["runs"])
    md = (out / "security_eval.md").read_text()
    for header in (
        "| setting | N | K1 % | K2 % | K3 % | exact images % | PSNR dB | SSIM | top-1 rec. %",
        "| setting | pairs | K1 % | K2 % | K3 % | other images exact % |",
        "| setting | N | keys | upper halves placed | upper-only PSNR dB |",
        "| scheme | setting | N | keys | key parts (median) |",
    ):
        assert header in md
    assert "Across schemes" not in md  # the cross-scheme table judges the sample regime
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_the_command_resumes_every_run(command_run, capsys):
    out, argv, result = command_run
    again = security_eval.main(argv)
    assert "key 0 N=" not in capsys.readouterr().out  # no run measured again
    assert again["runs"] == json.loads(json.dumps(result["runs"]))
