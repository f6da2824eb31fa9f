"""Model and dataset cards read back with huggingface_hub's own parsers (timm_ppconvmixer/hub/
model_card.py, dataset_card.py): the Hub shows what the card says, each card is exactly what
the Hub's own writer gives back, nothing custom is left where the Hub's metadata does not
expect it, and no card holds key material."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import safetensors.torch
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
from local_hub import LocalHub, make_ref
from timm.models.convmixer import ConvMixer
from torch import nn

import timm_ppconvmixer
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.hub import (
    METRIC_LABELS,
    TAGS,
    HubError,
    dataset_card,
    export,
    fingerprint_from_card,
    model_card,
    model_index,
)
from timm_ppconvmixer.hub.dataset_card import CARD_BLOCK
from timm_ppconvmixer.hub.key_patterns import key_secrets, scan_text
from timm_ppconvmixer.hub.model_card import card_inputs
from timm_ppconvmixer.schemes import generate_key

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
    assert meta_tags[: len(TAGS)] == TAGS and meta_tags[-len(tags) :] == tags


# -- what a card says about the weights: licence, scheme tags, where they come from ----------

PRETRAINED = Path(timm_ppconvmixer.__file__).parent / "keyed" / "pretrained"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _plain_convmixer_file(folder: Path) -> Path:
    """A shallow random convmixer_768_32 checkpoint, as timm's loader reads a local copy."""
    torch.manual_seed(0)
    plain = ConvMixer(dim=32, depth=2, kernel_size=7, patch_size=7, act_layer=nn.ReLU)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(plain.state_dict(), folder / "model.safetensors")
    return folder / "model.safetensors"


@pytest.fixture(scope="module")
def key_bound(tmp_path_factory) -> tuple[torch.nn.Module, BlockKey]:
    """ppconvmixer_768_32.in1k through the key-bound loader (timm's plain weights, a local
    shallow copy, converted under a key at load)."""
    file = _plain_convmixer_file(tmp_path_factory.mktemp("plain"))
    key = BlockKey.generate(224, 7, seed=3)
    model = timm.create_model("ppconvmixer_768_32.in1k", pretrained=True, key=key, dim=32,
                              depth=2, pretrained_cfg_overlay=dict(file=str(file)))  # fmt: skip
    return model.eval(), key


def _details(card: str) -> dict[str, str]:
    rows = re.findall(
        r"^\| (.+?) \| (.+) \|$", card.split("## Model details")[1].split("##")[0], re.M
    )
    return dict(rows)


def test_card_license_is_the_weights_licence(key_bound, key):
    model, bound_key = key_bound
    timms = timm.models.get_pretrained_cfg("convmixer_768_32.in1k").license
    assert timms == "mit"  # timm's ConvMixer weights
    card = model_card(model, key=bound_key)
    assert front_matter(card)["license"] == timms == model.pretrained_cfg["license"]
    assert "convmixer_768_32.in1k" in _details(card)["weights"]  # and where they come from
    ours = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3).eval()
    assert front_matter(model_card(ours))["license"] == ours.pretrained_cfg["license"]
    assert front_matter(model_card(ours, license="cc-by-4.0"))["license"] == "cc-by-4.0"
    ours.pretrained_cfg = {k: v for k, v in ours.pretrained_cfg.items() if k != "license"}
    with pytest.raises(
        HubError, match="names no license, so the card cannot state one; pass license="
    ):
        model_card(ours)


def _scheme_model(key) -> torch.nn.Module:
    model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3).eval()
    model.key_fingerprint = key.fingerprint
    return model


@pytest.mark.parametrize(
    "scheme, scheme_tags",
    [
        ("blockwise", ["block-wise-encryption"]),
        ("etc", ["block-wise-encryption", "encryption-then-compression"]),
        ("pe", ["pixel-wise-encryption"]),
        (None, []),
    ],
)
def test_card_tags_name_the_scheme_actually_used(scheme, scheme_tags):
    if scheme is None:  # a plain baseline: nothing encrypted, nothing privacy-preserving
        model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3).eval()
        tags = front_matter(model_card(model, plain_images=True))["tags"]
        assert tags == [*TAGS, "convmixer"]
        return
    key = generate_key(scheme, image_size=16, block_size=1 if scheme == "pe" else 4, seed=0)
    tags = front_matter(model_card(_scheme_model(key), key=key))["tags"]
    assert tags == [*TAGS, "privacy-preserving", *scheme_tags, "convmixer"]
    assert (scheme == "pe") == ("block-wise-encryption" not in tags)


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("ppconvmixer_128_8_fmnist.zoo_pe", {"privacy-preserving", "pixel-wise-encryption"}),
        ("ppconvmixer_128_8_fmnist.zoo_plain", set()),
        (
            "ppconvmixer_128_8_fmnist.zoo_blockwise_p",
            {"privacy-preserving", "block-wise-encryption"},
        ),
    ],
)
def test_shipped_cards_carry_their_schemes_tags(tag, expected):
    tags = front_matter((PRETRAINED / tag / "README.md").read_text())["tags"]
    encryption = {"privacy-preserving", "block-wise-encryption", "pixel-wise-encryption"}
    assert set(tags) & encryption == expected


def test_only_the_key_bound_loader_makes_a_converted_card_and_config(key_bound, tmp_path):
    model, bound_key = key_bound
    assert model.pretrained_cfg["converted_from"] == "convmixer_768_32.in1k"
    out = export(
        model,
        tmp_path / "bound",
        key=bound_key,
        allow_key_derived_weights=True,
        allow_public_stem_leak=True,
    )  # the owner's private copy
    config = json.loads((out / "config.json").read_text())
    assert "converted_from" not in config["pretrained_cfg"]  # timm's PretrainedCfg refuses it
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)  # so timm reloads it
    assert reloaded.key_fingerprint == bound_key.fingerprint
    assert reloaded.pretrained_cfg["license"] == "mit"

    # the same architecture created without pretrained=True, trained here: not timm's weights
    torch.manual_seed(0)
    scratch = timm.create_model("ppconvmixer_768_32", dim=32, depth=1).eval()
    scratch.key_fingerprint = bound_key.fingerprint
    assert scratch.pretrained_cfg["tag"] == "in1k"  # timm's default cfg for the name
    out = export(scratch, tmp_path / "scratch", key=bound_key)
    shared = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert "tag" not in shared and "description" not in shared, shared
    assert "converted" not in json.dumps(shared)
    card = (out / "README.md").read_text()
    assert "weights" not in _details(card) and "convmixer_768_32.in1k" not in card
    assert timm.create_model(f"local-dir:{out}", pretrained=True).key_fingerprint == (
        bound_key.fingerprint
    )


def test_the_demo_card_says_its_key_is_public_and_how_to_get_it():
    from timm_ppconvmixer.keyed.pretrained import DEMO_KEY_FILE, demo_key

    card = (PRETRAINED / "ppconvmixer_256_8_fmnist.demo" / "README.md").read_text()
    notes = card_inputs(card)["notes"]  # under the title, before anything else
    assert notes and "PUBLIC" in notes and "never for real data" in notes
    assert "timm_ppconvmixer.keyed.pretrained.demo_key()" in notes
    assert DEMO_KEY_FILE.name in notes and "--key" in notes
    assert f"| key fingerprint | `{demo_key().fingerprint}` |" in card


def test_card_inputs_reads_back_the_notes_and_recipe(key):
    model = _scheme_model(key)
    for notes, recipe in (("**Note.** public", "python train.py --epochs 3"), (None, None)):
        card = model_card(model, key=key, notes=notes, recipe=recipe)
        assert card_inputs(card) == {"notes": notes, "recipe": recipe}
        again = model_card(model, key=key, **card_inputs(card))
        assert again == card


def _publish():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # `hub` is a top-level folder, not installed
    return importlib.import_module("hub.publish")


def test_the_shipped_cards_are_what_the_code_writes(tmp_path):
    """Each card that ships is the current code's card for its weights, key and metrics file
    (`python -m hub.publish --refresh-cards` writes them; `--push` uploads them as they are)."""
    publish = _publish()
    entries = [e for e in publish.load_manifest(REPO_ROOT / "hub" / "zoo.yaml") if not e.key_bound]
    shipped = [e for e in entries if publish.shipped_card(e) is not None]
    assert {e.weights.name for e in shipped} >= {
        p.parent.name for p in PRETRAINED.glob("*/README.md")
    }
    for entry in shipped:
        prepared = publish.prepare(entry, tmp_path, for_push=True)  # NotReadyError if stale
        assert (prepared.folder / "README.md").read_bytes() == publish.shipped_card(
            entry
        ).read_bytes()


def test_a_stale_shipped_card_is_not_published(tmp_path, capsys):
    publish = _publish()
    folder = Path(shutil.copytree(PRETRAINED / ZOO_PE, tmp_path / "w"))
    card = folder / "README.md"
    card.write_text(card.read_text().replace("- pixel-wise-encryption", "- block-wise-encryption"))
    manifest = _manifest(tmp_path, folder)
    assert publish.main(["--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "NOT READY" in out and "is not the card the code writes" in out
    assert "'- block-wise-encryption' where the code writes '- pixel-wise-encryption'" in out
    assert "0 ready, 1 not ready" in out
    # --refresh-cards writes it again, and then it is ready
    assert publish.main(["--manifest", str(manifest), "--refresh-cards", "--card-lines", "1"]) == 0
    assert "1 ready, 0 not ready" in capsys.readouterr().out
    assert (
        card.read_bytes()
        == (PRETRAINED / "ppconvmixer_128_8_fmnist.zoo_pe" / "README.md").read_bytes()
    )


ZOO_PE = "ppconvmixer_128_8_fmnist.zoo_pe"
ZOO_PE_REPO = f"timm-ppconvmixer/{ZOO_PE}"  # the repository the shipped card names


def _manifest(root: Path, weights: Path) -> Path:
    """A manifest of the shipped pe zoo entry, its weights in ``weights``."""
    from timm_ppconvmixer.keyed.pretrained import zoo_key, zoo_key_file

    entry = {
        "name": ZOO_PE,
        "repo_id": ZOO_PE_REPO,
        "weights": str(weights),
        "dataset": {
            "id": "zalando-datasets/fashion_mnist",
            "name": "Fashion-MNIST",
            "split": "test",
        },
        "key_fingerprint": zoo_key("pe").fingerprint,
        "key_file": str(zoo_key_file("pe")),
        "metrics": str(weights / "metrics.json"),
    }
    path = root / "zoo.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "root": "/", "models": [entry]}, sort_keys=False))
    return path


# -- cards on the Hub: what publish uploads, evaluation at a revision ------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("hub-root")) as server:
        yield server


def _client(hub: LocalHub, home: Path, args: list[str], ok: bool = True):
    """A fresh interpreter wired to ``hub`` (the client reads HF_ENDPOINT at import time)."""
    env = {**os.environ, **hub.client_env(home=home)}
    env["HF_DATASETS_CACHE"] = str(home / "datasets")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, *args], env=env, cwd=home.parent, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if ok:
        assert proc.returncode == 0, f"{args[:3]}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _hub_file(hub: LocalHub, repo_id: str, path: str, revision: str = "main") -> bytes:
    """A file as the server stores it (read from its store, not through the client)."""
    _, tree = hub.store.tree(make_ref("model", *repo_id.split("/")), revision)
    return hub.store.content_path(tree[path]).read_bytes()


def test_publish_uploads_the_card_that_ships(hub: LocalHub, tmp_path: Path):
    shipped = PRETRAINED / ZOO_PE
    manifest = _manifest(tmp_path, shipped)
    _client(hub, tmp_path / "hf", ["-m", "hub.publish", "--manifest", str(manifest), "--push"])
    assert _hub_file(hub, ZOO_PE_REPO, "README.md") == (shipped / "README.md").read_bytes()
    for name in ("config.json", "model.safetensors"):
        assert _hub_file(hub, ZOO_PE_REPO, name) == (shipped / name).read_bytes()


PUSH_TWO_BRANCHES = """
import sys, timm, torch, timm_ppconvmixer
from timm_ppconvmixer.hub import push_to_hub
from timm_ppconvmixer.key import BlockKey
key = BlockKey.load(sys.argv[1])
for revision, seed in ((None, 0), ("exp", 1)):
    torch.manual_seed(seed)
    model = timm.create_model("ppconvmixer_256_8_fmnist", dim=16, depth=1, num_classes=10,
                              key_fingerprint=key.fingerprint).eval()
    push_to_hub(model, sys.argv[2], key=key, revision=revision)
"""


def test_evaluate_at_a_revision_pushes_the_card_to_that_branch(hub: LocalHub, tmp_path: Path):
    from timm_ppconvmixer.data import load_fashion_mnist

    repo = "tester/rev-model"
    key = BlockKey.generate(28, 4, channels=1, seed=5)
    key.save(tmp_path / "owner.key")
    datasets.DatasetDict({"test": load_fashion_mnist("test", limit=24)}).save_to_disk(
        str(tmp_path / "fmnist")
    )
    home = tmp_path / "hf"
    _client(hub, home, ["-c", PUSH_TWO_BRANCHES, str(tmp_path / "owner.key"), repo])
    main_card = _hub_file(hub, repo, "README.md")
    assert "model-index" not in front_matter(main_card.decode())

    def evaluate(model: str, *extra: str, ok: bool = True):
        return _client(hub, home, ["-m", "timm_ppconvmixer.cli", "evaluate", model,
                                   str(tmp_path / "fmnist"), "--key", str(tmp_path / "owner.key"),
                                   "--push-card", "--dataset-id", "zalando-datasets/fashion_mnist",
                                   *extra], ok=ok)  # fmt: skip

    proc = evaluate(f"hf-hub:{repo}@exp")
    assert "updated the model card on branch exp" in proc.stdout
    results = json.loads(proc.stdout.split("\nupdated the model card")[0])
    assert results["num_examples"] == 24
    index = front_matter(_hub_file(hub, repo, "README.md", "exp").decode())["model-index"]
    values = [m["value"] for m in index[0]["results"][0]["metrics"]]
    assert values == list(results["eval"].values())
    assert _hub_file(hub, repo, "README.md") == main_card  # main is not touched

    # a commit cannot take a commit: refused before anything is evaluated, in one line
    sha = hub.store.meta(make_ref("model", *repo.split("/")))["branches"]["main"]
    proc = evaluate(f"hf-hub:{repo}@{sha}", ok=False)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "is not a branch" in line and "--revision" in line
    proc = evaluate(f"hf-hub:{repo}@{sha}", "--revision", "main")
    assert "updated the model card on branch main" in proc.stdout
    assert "model-index" in front_matter(_hub_file(hub, repo, "README.md").decode())
    proc = evaluate(f"hf-hub:{repo}", "--revision", "nope", ok=False)
    assert proc.returncode == 1 and "has no branch 'nope'" in proc.stderr
