"""Model and dataset cards read back with huggingface_hub's own parsers (timm_ppconvmixer/hub/
model_card.py, dataset_card.py): the Hub shows what the card says, each card is exactly what
the Hub's own writer gives back, nothing custom is left where the Hub's metadata does not
expect it, and no card holds key material."""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
import yaml
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    ModelCard,
    ModelCardData,
    metadata_eval_result,
)
from huggingface_hub.repocard_data import eval_results_to_model_index

import timm_ppconvmixer  # noqa: F401  (registers the models with timm)
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.hub import (
    METRIC_LABELS,
    TAGS,
    dataset_card,
    fingerprint_from_card,
    model_card,
    model_index,
)
from timm_ppconvmixer.hub.dataset_card import CARD_BLOCK
from timm_ppconvmixer.hub.key_patterns import key_secrets, scan_text

DATASET = {"id": "zalando-datasets/fashion_mnist", "name": "Fashion-MNIST", "split": "test"}
METRICS = {"top1_key": 0.8125, "top1_plain": 0.1016, "top1_wrong_key": 0.0977}


@pytest.fixture(scope="module")
def key() -> BlockKey:
    return BlockKey.generate(16, 4, seed=0)


@pytest.fixture(scope="module")
def card_text(key) -> str:
    model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3).eval()
    model.key_fingerprint = key.fingerprint
    return model_card(
        model, key=key, metrics=METRICS, dataset=DATASET, repo_id="tester/tiny", model_name="tiny"
    )


@pytest.fixture(scope="module")
def unmeasured_card_text(key) -> str:
    model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3).eval()
    model.key_fingerprint = key.fingerprint
    return model_card(model, key=key, repo_id="tester/tiny")


def hub_fields(card_data: type) -> set[str]:
    """The metadata fields a huggingface_hub CardData class names (its constructor's)."""
    return set(inspect.signature(card_data).parameters) - {"ignore_metadata_errors", "kwargs"}


def front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_parses_with_model_card_and_its_eval_results(card_text, key):
    card = ModelCard(card_text)
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-classification"
    assert data.datasets == [DATASET["id"]] and "privacy-preserving" in data.tags
    got = {r.metric_name: r.metric_value for r in data.eval_results}
    assert got == {f"Top-1 accuracy, {METRIC_LABELS[k]}": v for k, v in METRICS.items()}
    for result in data.eval_results:
        assert (result.task_type, result.dataset_type, result.dataset_name) == (
            "image-classification",
            DATASET["id"],
            DATASET["name"],
        )
        assert result.dataset_split == "test" and result.metric_type == "accuracy"
    assert key.fingerprint in card.text  # the fingerprint, in the body; never the key


@pytest.mark.parametrize("fixture", ["card_text", "unmeasured_card_text"])
def test_model_card_metadata_round_trips_and_holds_only_hub_keys(fixture, request):
    card_text = request.getfixturevalue(fixture)
    assert str(ModelCard(card_text)) == card_text  # exactly what the Hub's writer gives back
    meta = front_matter(card_text)
    # the keys ModelCardData writes: eval_results and model_name become model-index
    known = hub_fields(ModelCardData) - {"eval_results", "model_name"} | {"model-index"}
    assert set(meta) <= known, set(meta) - known  # no custom top-level keys
    assert ("model-index" in meta) == (fixture == "card_text")
    data = ModelCard(card_text).data
    if data.eval_results:  # the Hub's serialiser writes back exactly the card's model-index
        index = eval_results_to_model_index(data.model_name, data.eval_results)
        assert index == meta["model-index"]
    again = ModelCard(f"---\n{data.to_yaml()}\n---\n{ModelCard(card_text).text}").data
    assert again.to_dict() == data.to_dict()


def test_model_index_is_what_metadata_eval_result_writes():
    ours = model_index("tiny", {"top1_key": 0.9}, DATASET)
    theirs = metadata_eval_result(
        model_pretty_name="tiny",
        task_pretty_name="Image Classification",
        task_id="image-classification",
        metrics_pretty_name=f"Top-1 accuracy, {METRIC_LABELS['top1_key']}",
        metrics_id="accuracy",
        metrics_value=0.9,
        dataset_pretty_name=DATASET["name"],
        dataset_id=DATASET["id"],
        dataset_split="test",
    )["model-index"]
    # metadata_eval_result marks the metric unverified; the Hub treats a missing flag the same
    theirs[0]["results"][0]["metrics"][0].pop("verified")
    assert ours == theirs
    result = EvalResult(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=DATASET["id"],
        dataset_name=DATASET["name"],
        dataset_split="test",
        metric_type="accuracy",
        metric_value=0.9,
        metric_name=f"Top-1 accuracy, {METRIC_LABELS['top1_key']}",
    )
    assert eval_results_to_model_index("tiny", [result]) == ours


def test_dataset_card_round_trips_with_its_facts_under_one_documented_key(key):
    text = dataset_card(key, {"train": 60, "test": 10}, repo_id="tester/enc", class_names=["a"])
    card = DatasetCard(text)
    assert str(card) == text  # exactly what the Hub's writer gives back
    meta = card.data.to_dict()
    known = hub_fields(DatasetCardData) | {"tags"}  # a Hub dataset field it passes through
    # everything custom lives under `ppconvmixer:` (docs/hub.md), which DatasetCardData keeps
    assert set(meta) - known == {CARD_BLOCK}
    assert meta[CARD_BLOCK]["key_fingerprint"] == key.fingerprint
    public = {"scheme", "scheme_version", "image_size", "block_size", "channels", "num_blocks"}
    preparation = {"encrypted", "key_fingerprint", "resize", "image_column", "label_column"}
    assert set(meta[CARD_BLOCK]) == public | preparation  # the key's public facts, no more
    assert DatasetCardData(**meta).to_dict() == meta
    assert fingerprint_from_card(str(DatasetCard(str(card)))) == key.fingerprint
    assert card.data.task_categories == ["image-classification"]


def test_no_card_holds_key_material(card_text, unmeasured_card_text, key):
    data_card = dataset_card(key, {"train": 60}, repo_id="tester/enc")
    secrets = key_secrets(key)
    assert secrets  # the block order, the pixel shuffle and the flip mask (and inverses)
    for text in (card_text, unmeasured_card_text, data_card):
        assert scan_text(text, secrets, "README.md") == []  # the leak guard's text scan
        assert key.to_json() not in text and key.fingerprint in text  # only the fingerprint


@pytest.mark.parametrize(
    "name, tags",
    [
        ("ppconvmixer_256_8", ["convmixer"]),
        ("shakedrop_pyramidnet20_a48", ["pyramidnet", "shakedrop"]),
        ("adaptnet_le_shakedrop_pyramidnet20_a48", ["pyramidnet", "shakedrop", "adaptnet"]),
    ],
)
def test_card_tags_name_the_architecture_family(name, tags):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    meta_tags = front_matter(model_card(model))["tags"]
    assert meta_tags[: len(TAGS)] == TAGS and meta_tags[len(TAGS) :] == tags
