"""``ppconvmixer card-numbers TAG``: a shipped card's numbers measured again from its tag, with
its PUBLIC key, on the real Fashion-MNIST test split (timm_ppconvmixer/cli/hub_commands.py,
timm_ppconvmixer/hub/evaluate.py). The tests measure a subset (``--limit``); the full run is
the one docs/zoo.md describes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

import timm_ppconvmixer  # noqa: F401  (registers the models with timm)
from timm_ppconvmixer.cli import main
from timm_ppconvmixer.data import FASHION_MNIST_DIR
from timm_ppconvmixer.hub import METRIC_LABELS
from timm_ppconvmixer.hub.evaluate import CARD_TOLERANCE, compare_with_card
from timm_ppconvmixer.hub.model_card import card_metrics
from timm_ppconvmixer.keyed.pretrained import generate_zoo_key
from timm_ppconvmixer.keyed.shipped import SHIPPED_WEIGHTS

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist)",
)
LIMIT = 300


def card_of(tag: str) -> str:
    return (SHIPPED_WEIGHTS[tag] / "README.md").read_text()


def run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["card-numbers", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def shown(out: str) -> dict[str, tuple[str, str]]:
    """label -> (card's, measured) as the command prints them."""
    rows = re.findall(
        r"^(.+?)\s+([0-9.]+) %\s+([0-9.]+) %\s+[0-9.]+ pp\s+(?:ok|DISAGREES)$", out, re.M
    )
    return {label: (card, got) for label, card, got in rows}


def test_card_numbers_measures_a_zoo_tag_again_beside_its_card(capsys, tmp_path):
    tag = "ppconvmixer_128_8_fmnist.zoo_pe"
    rc, out, err = run([tag, "--limit", str(LIMIT), "--output", str(tmp_path / "r.json")], capsys)
    assert rc == 0, err
    stated = card_metrics(card_of(tag))
    assert set(stated) == {"top1_key", "top1_plain", "top1_wrong_key"}
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_examples"] == LIMIT
    # the tag's PUBLIC zoo key, and the card's fixed wrong key (the one metrics.json records)
    metrics = json.loads((SHIPPED_WEIGHTS[tag] / "metrics.json").read_text())
    assert report["key_fingerprint"] == metrics["key_fingerprint"]
    assert report["wrong_key_fingerprint"] == metrics["wrong_key_fingerprint"]
    assert report["wrong_key_fingerprint"] == generate_zoo_key("pe", 2000).fingerprint
    rows = shown(out)
    assert rows == {
        METRIC_LABELS[k]: (f"{100 * v:.2f}", f"{100 * report['eval'][k]:.2f}")
        for k, v in stated.items()
    }
    assert report["eval"]["top1_key"] > 0.8 and report["eval"]["top1_plain"] < 0.25
    assert "all 3 numbers of the card agree within their tolerance" in out


def test_card_numbers_of_the_plain_entry_and_the_demo(capsys):
    rc, out, err = run(["ppconvmixer_128_8_fmnist.zoo_plain", "--limit", str(LIMIT)], capsys)
    assert rc == 0, err
    assert "plain images, no key" in out and list(shown(out)) == [METRIC_LABELS["top1_plain"]]
    rc, out, err = run(["ppconvmixer_256_8_fmnist.demo", "--limit", str(LIMIT)], capsys)
    assert rc == 0, err
    assert "the PUBLIC demo key" in out and len(shown(out)) == 3


def test_card_numbers_exits_1_when_a_card_states_other_numbers(capsys, tmp_path):
    tag = "ppconvmixer_128_8_fmnist.zoo_blockwise_p"
    card = card_of(tag)
    meta = yaml.safe_load(card.split("---\n")[1])
    value = meta["model-index"][0]["results"][0]["metrics"][0]["value"]  # top1_key
    wrong = tmp_path / "README.md"
    wrong.write_text(card.replace(f"value: {value}\n", "value: 0.5\n", 1))
    rc, out, err = run([tag, "--limit", str(LIMIT), "--card", str(wrong)], capsys)
    assert rc == 1
    (line,) = err.strip().splitlines()
    assert line == f"error: the card's numbers are not reproduced: {METRIC_LABELS['top1_key']}"
    assert "DISAGREES" in out and shown(out)[METRIC_LABELS["top1_key"]][0] == "50.00"


def test_card_numbers_refuses_a_tag_that_does_not_ship(capsys):
    rc, _, err = run(["ppconvmixer_768_32.in1k"], capsys)
    assert rc == 1
    assert err.startswith("error: ppconvmixer_768_32.in1k is not a shipped tag; shipped: ")
    rc, _, err = run(["ppconvmixer_128_8_fmnist.zoo_pe", "--limit", "0"], capsys)
    assert rc == 1 and "--limit must be a positive number" in err


def test_the_tolerance_is_the_stated_one():
    card = card_of("ppconvmixer_128_8_fmnist.zoo_pe")
    stated = card_metrics(card)
    exact = compare_with_card(stated, card, 10_000, 10_000)
    assert all(r["agrees"] and r["tolerance"] == CARD_TOLERANCE for r in exact)
    off = {k: v + 1.5 * CARD_TOLERANCE for k, v in stated.items()}
    assert not any(r["agrees"] for r in compare_with_card(off, card, 10_000, 10_000))
    p, n = stated["top1_key"], 400
    (row,) = [r for r in compare_with_card(off, card, n, 10_000) if r["metric"] == "top1_key"]
    assert row["tolerance"] == pytest.approx(CARD_TOLERANCE + 4 * math.sqrt(p * (1 - p) / n))
    assert row["agrees"]  # a subset's sampling spread on top
    missing = compare_with_card({"top1_key": p}, card, 10_000, 10_000)
    assert [r["agrees"] for r in missing] == [True, False, False]


def test_the_docs_describe_the_command():
    root = Path(__file__).resolve().parents[1]
    zoo = (root / "docs" / "zoo.md").read_text()
    cli = (root / "docs" / "cli.md").read_text()
    assert "ppconvmixer card-numbers ppconvmixer_128_8_fmnist.zoo_pe" in zoo
    assert "`card-numbers`" in cli and "--limit N" in cli
