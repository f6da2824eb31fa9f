"""Uploads and the leak guard's model checks: what a push leaves in the repository (exactly its
own files, private unless asked), which key fingerprint a pushed model carries (its own, or
none), dataset pushes to a branch, key material in model arguments (config.json's
``model_args``, timm train.py's ``args.yaml`` / ``--model-kwargs``), and weights a key-bound
tag converted from a public checkpoint.

Real parts throughout: the local Hub double (tests/local_hub.py) answering the real
``huggingface_hub`` client in fresh interpreters, real timm models and checkpoints written the
way timm's ``CheckpointSaver`` writes them, real Fashion-MNIST images, and timm's own train.py
where TIMM_TRAIN_PY names it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import timm
import torch
import yaml
from local_hub import LocalHub
from timm.models import save_for_hf
from timm.models.convmixer import ConvMixer
from torch import nn

import timm_ppconvmixer  # noqa: F401  (registers the models with timm)
from timm_ppconvmixer import BlockKey
from timm_ppconvmixer.hub import (
    HubError,
    KeyMaterialError,
    PublicStemFinding,
    assert_no_key_material,
    export,
    key_material_in_model_args,
    load_model,
    save_model_folder,
    scan_for_key_material,
    upload_model_folder,
)

TAG = "ppconvmixer_768_32.in1k"  # a key-bound tag: timm's convmixer_768_32.in1k, converted
SHALLOW = dict(dim=32, depth=2, img_size=56)
TRAIN_PY = os.environ.get("TIMM_TRAIN_PY", "")
REQUIRE_TRAIN_PY = os.environ.get("PPCM_REQUIRE_TIMM_TRAIN") == "1"

PRELUDE = """\
import json, sys
from pathlib import Path
ARGS = json.loads(sys.argv[1])

def emit(**result):
    print("RESULT " + json.dumps(result), flush=True)

"""


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("hub-root")) as server:
        yield server


def run_client(hub: LocalHub, tmp_path: Path, code: str, **args: Any) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter wired to ``hub`` (the client reads HF_ENDPOINT at
    import); return what it ``emit``-ted."""
    home = tmp_path / f"hf-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    script = home / "client.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(args)],
        env={**os.environ, **hub.client_env(home=home)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=home,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, f"client emitted nothing:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(results[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def key() -> BlockKey:
    return BlockKey.generate(16, 4, channels=3, seed=0)


def tiny_model(fingerprint: str | None, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3, **kwargs).eval()
    model.key_fingerprint = fingerprint
    return model


def write_train_checkpoint(
    path: Path, model: nn.Module, arch: str, model_kwargs: dict, **args: Any
) -> Path:
    """A checkpoint as timm's CheckpointSaver writes it: arch, train.py's args, state dict."""
    defaults = dict(pretrained=False, num_classes=None, in_chans=None, input_size=None, gp=None)
    namespace = argparse.Namespace(model=arch, model_kwargs=model_kwargs, **{**defaults, **args})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": 0, "arch": arch, "state_dict": state, "args": namespace}, path)
    return path


def plain_convmixer_file(folder: Path) -> Path:
    """timm's ConvMixer (convmixer_768_32's kind: kernel 7, patch 7, ReLU), shallow, with
    random weights, as a safetensors file: the public checkpoint of the tests."""
    torch.manual_seed(1)
    plain = ConvMixer(dim=32, depth=2, kernel_size=7, patch_size=7, act_layer=nn.ReLU)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(plain.state_dict(), folder / "model.safetensors")
    return folder / "model.safetensors"


def fine_tune_step(model: nn.Module) -> nn.Module:
    """One SGD step on random images: the weights, P included, move off the conversion."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, *model.img_size, generator=gen)
    y = torch.randint(0, model.num_classes, (4,), generator=gen)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model loaded from the key-bound tag with key=, then fine-tuned; its key and key file,
    and the public checkpoint it was converted from."""
    root = tmp_path_factory.mktemp("converted")
    plain = plain_convmixer_file(root / "plain")
    key = BlockKey.generate(56, 7, seed=11)  # 64 blocks of 7x7, the tag's patch size
    key_file = key.save(root / "owner.key")
    model = timm.create_model(TAG, pretrained=True, key=key,
                              pretrained_cfg_overlay=dict(file=str(plain)), **SHALLOW)  # fmt: skip
    return {"model": fine_tune_step(model), "key": key, "key_file": key_file, "plain": plain}


# -- what a model push leaves in the repository ----------------------------------------------


def test_a_model_push_leaves_exactly_its_own_files(hub: LocalHub, key: BlockKey, tmp_path: Path):
    first = export(tiny_model(key.fingerprint), tmp_path / "first", key=key)
    (first / "extra").mkdir()
    (first / "extra" / "notes.txt").write_text("only in the first push\n")
    (first / "labels.txt").write_text("a\nb\nc\n")
    second = export(tiny_model(key.fingerprint), tmp_path / "second", key=key, model_name="v2")
    pushed = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi, hf_hub_download
        from timm_ppconvmixer import BlockKey
        from timm_ppconvmixer.hub import upload_model_folder

        key = BlockKey.load(ARGS["key"])
        for folder in (ARGS["first"], ARGS["second"]):
            for revision in (None, "dev"):
                upload_model_folder(folder, "tester/stale", key=key, revision=revision, log=None)
        api = HfApi()
        emit(main=api.list_repo_files("tester/stale"),
             dev=api.list_repo_files("tester/stale", revision="dev"),
             card=Path(hf_hub_download("tester/stale", "README.md", revision="dev")).read_text())
        """,
        key=str(key.save(tmp_path / "owner.key")),
        first=str(first),
        second=str(second),
    )
    expected = [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert sorted(pushed["main"]) == expected, pushed["main"]
    assert sorted(pushed["dev"]) == expected, pushed["dev"]
    assert "# v2" in pushed["card"]  # the second push's files, not the first's


def test_a_model_push_is_private_unless_asked(hub: LocalHub, key: BlockKey, tmp_path: Path):
    src = save_model_folder(tiny_model(key.fingerprint), tmp_path / "src")
    result = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi
        from timm_ppconvmixer import BlockKey
        from timm_ppconvmixer.cli import main
        from timm_ppconvmixer.hub import load_model, push_to_hub

        key = BlockKey.load(ARGS["key"])
        model = load_model(ARGS["src"])
        push_to_hub(model, "tester/default", key=key, log=None)
        push_to_hub(model, "tester/open", key=key, private=False, log=None)
        codes = [main(["push", ARGS["src"], "tester/cli-default", "--key", ARGS["key"]]),
                 main(["push", ARGS["src"], "tester/cli-public", "--key", ARGS["key"], "--public"]),
                 main(["push", ARGS["src"], "tester/cli-private", "--key", ARGS["key"],
                       "--private"])]
        api = HfApi()
        names = ("default", "open", "cli-default", "cli-public", "cli-private")
        emit(codes=codes, private={n: api.model_info(f"tester/{n}").private for n in names})
        """,
        key=str(key.save(tmp_path / "owner.key")),
        src=str(src),
    )
    assert result["codes"] == [0, 0, 0]
    assert result["private"] == {
        "default": True, "open": False, "cli-default": True, "cli-public": False,
        "cli-private": True,
    }  # fmt: skip


# -- the fingerprint a pushed model carries --------------------------------------------------


def test_export_of_a_plain_image_model_with_a_key_records_no_fingerprint(key, tmp_path: Path):
    with pytest.warns(UserWarning, match="records no key fingerprint"):
        out = export(tiny_model(None), tmp_path / "out", key=key)
    config = json.loads((out / "config.json").read_text())
    assert "key_fingerprint" not in config["model_args"]
    assert key.fingerprint not in (out / "README.md").read_text()
    # a model that records another key's fingerprint is still refused
    with pytest.raises(HubError, match="made for key"):
        export(tiny_model("ppcm1-0123456789abcdef0123456789abcdef"), tmp_path / "o2", key=key)


def test_push_keeps_the_models_own_fingerprint_and_stamps_none(hub, key, tmp_path: Path):
    plain = save_model_folder(tiny_model(None), tmp_path / "plain")
    plain_ckpt = write_train_checkpoint(
        tmp_path / "plain.pth.tar", tiny_model(None), "ppconvmixer_256_8", {"img_size": 16},
        num_classes=3,
    )  # fmt: skip
    # a run that recorded its key's fingerprint: --model-kwargs key_fingerprint=FP
    bound_ckpt = write_train_checkpoint(
        tmp_path / "bound.pth.tar", tiny_model(key.fingerprint), "ppconvmixer_256_8",
        {"key_fingerprint": key.fingerprint, "img_size": 16}, num_classes=3,
    )  # fmt: skip
    result = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import hf_hub_download
        from timm_ppconvmixer.cli import main

        pushed = {}
        for name in ("plain", "plain_ckpt", "bound_ckpt"):
            repo = f"tester/fp-{name.replace('_', '-')}"
            code = main(["push", ARGS[name], repo, "--key", ARGS["key"]])
            config = json.loads(Path(hf_hub_download(repo, "config.json")).read_text())
            card = Path(hf_hub_download(repo, "README.md")).read_text()
            pushed[name] = [code, config["model_args"].get("key_fingerprint"), card]
        emit(**pushed)
        """,
        key=str(key.save(tmp_path / "owner.key")),
        plain=str(plain),
        plain_ckpt=str(plain_ckpt),
        bound_ckpt=str(bound_ckpt),
    )
    for name in ("plain", "plain_ckpt"):  # trained on plain images: no key, none stamped
        code, fingerprint, card = result[name]
        assert code == 0 and fingerprint is None, name
        assert key.fingerprint not in card, name
    code, fingerprint, card = result["bound_ckpt"]
    assert code == 0 and fingerprint == key.fingerprint and key.fingerprint in card


# -- a dataset push to a branch -----------------------------------------------------------------


def test_a_dataset_push_honours_a_revision(hub: LocalHub, tmp_path: Path):
    key = BlockKey.generate(28, 4, channels=1, seed=5)
    result = run_client(
        hub,
        tmp_path,
        """
        import datasets
        from huggingface_hub import HfApi
        from timm_ppconvmixer import BlockKey
        from timm_ppconvmixer.data import load_fashion_mnist
        from timm_ppconvmixer.hub import dataset_key_fingerprint, push_encrypted_dataset

        datasets.disable_progress_bars()
        key = BlockKey.load(ARGS["key"])
        api = HfApi()
        repo = "tester/enc-branch"
        shards = []
        for n in (96, 32):  # the second push has fewer shards: the first's must go
            plain = datasets.DatasetDict({"train": load_fashion_mnist("train", limit=n)})
            url = push_encrypted_dataset(plain, repo, key=key, encrypt=True, revision="dev",
                                         max_shard_size="20KB", log=None)
            shards.append(sorted(f for f in api.list_repo_files(repo, repo_type="dataset",
                                                                 revision="dev")
                                 if f.endswith(".parquet")))
        pulled = datasets.load_dataset(repo, revision="dev", split="train")
        emit(url=url, shards=shards, rows=len(pulled),
             main=api.list_repo_files(repo, repo_type="dataset"),
             fingerprint=dataset_key_fingerprint(f"hfds/{repo}", revision="dev"),
             main_fingerprint=dataset_key_fingerprint(f"hfds/{repo}"))
        """,
        key=str(key.save(tmp_path / "owner.key")),
    )
    first, second = result["shards"]
    assert len(first) > len(second) >= 1 and not set(first) & set(second)
    assert result["rows"] == 32 and result["url"].endswith("/datasets/tester/enc-branch/tree/dev")
    assert result["main"] == [".gitattributes"]  # main untouched
    assert result["fingerprint"] == key.fingerprint and result["main_fingerprint"] is None


# -- key material in model arguments -------------------------------------------------------------


def test_the_guard_refuses_a_block_order_in_config_model_args_without_the_key(tmp_path: Path):
    order = BlockKey.generate(16, 4, seed=3).block_perm.tolist()
    model = tiny_model(None, permutation_init=order)
    with torch.no_grad():  # trained on: P is no longer the exact matrix of the order
        model.permutation.weight.add_(0.2 * torch.randn(model.permutation.weight.shape))
    # config.json as timm's own save_for_hf writes it: timm records the factory's arguments
    save_for_hf(model, tmp_path / "folder", safe_serialization=True)
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert config["model_args"]["permutation_init"] == order
    found = [f for f in scan_for_key_material(tmp_path / "folder", None) if not f.warning]
    assert [(f.file, f.where) for f in found] == [("config.json", "model_args.permutation_init")]
    with pytest.raises(KeyMaterialError, match="config.json: a block order"):
        assert_no_key_material(tmp_path / "folder", None)
    # our export records no order: the weights overwrite P's initial value on every rebuild
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # P close to a permutation: warned, not refused
        out = export(model, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["model_args"]["permutation_init"] == (
        "kaiming"
    )


def _args_yaml(path: Path, **model_kwargs: Any) -> Path:
    """args.yaml as timm's train.py writes it (yaml.safe_dump of its parsed arguments)."""
    args = argparse.Namespace(model="ppconvmixer_256_8", data_dir="data", lr=0.1,
                              model_kwargs=model_kwargs)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(args.__dict__, default_flow_style=False))
    return path


def test_the_guard_refuses_key_material_in_train_py_model_kwargs(tmp_path: Path):
    order = [5, 0, 7, 2, 6, 1, 4, 3]  # any permutation: a block order by its shape alone
    cases = {
        "order": ({"permutation_init": order, "dim": 32}, "model_kwargs.permutation_init"),
        "order_file": ({"permutation_init": "order.json"}, "model_kwargs.permutation_init"),
        "key": ({"key": str(tmp_path / "owner.key"), "dim": 32}, "model_kwargs.key"),
        "nested": ({"extra": {"blocks": order}}, "model_kwargs.extra.blocks"),
    }
    for name, (kwargs, where) in cases.items():
        path = _args_yaml(tmp_path / name / "args.yaml", **kwargs)
        with pytest.raises(KeyMaterialError, match="args.yaml") as err:
            assert_no_key_material(path.parent, None, allow_key_derived_weights=True)
        assert [f.where for f in err.value.findings] == [where], name
    fine = {"key_fingerprint": "ppcm1-00", "permutation_init": "identity", "dim": 32,
            "img_size": [16, 16], "out_indices": [0, 1, 2, 3]}  # fmt: skip
    assert assert_no_key_material(_args_yaml(tmp_path / "fine" / "args.yaml", **fine), None) == []
    assert key_material_in_model_args({"order": list(range(8))[::-1]}) == []  # a progression


# -- weights converted from a public checkpoint ----------------------------------------------


def test_a_fine_tuned_key_bound_model_is_refused_unless_accepted(converted, tmp_path: Path):
    model, key = converted["model"], converted["key"]
    assert model.pretrained_cfg["converted_from"] == "convmixer_768_32.in1k"
    with pytest.raises(KeyMaterialError, match="allow_public_stem_leak=True") as err:
        export(model, tmp_path / "out", key=key)
    assert err.value.findings and all(isinstance(f, PublicStemFinding) for f in err.value.findings)
    assert not (tmp_path / "out").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # P close to the key's order: a warning
        out = export(model, tmp_path / "out", key=key, allow_public_stem_leak=True)
    assert json.loads((out / "config.json").read_text())["converted_from"] == (
        "convmixer_768_32.in1k"
    )
    with pytest.raises(KeyMaterialError, match="--allow-public-stem-leak"):
        upload_model_folder(out, "tester/never", key=key, log=None)  # refused before any upload
    # the owner's private copy keeps the record, and a model loaded from it is refused too
    copy = load_model(save_model_folder(model, tmp_path / "copy"))
    assert copy.pretrained_cfg["converted_from"] == "convmixer_768_32.in1k"
    with pytest.raises(KeyMaterialError, match="allow_public_stem_leak=True"):
        export(copy, tmp_path / "out2", key=key)


def test_push_refuses_a_train_py_checkpoint_of_the_key_bound_tag(converted, hub, tmp_path: Path):
    key_file = str(converted["key_file"])
    # train.py --model TAG --pretrained --pretrained-path PLAIN --model-kwargs key=KEY_FILE ...
    ckpt = write_train_checkpoint(
        tmp_path / "last.pth.tar", converted["model"], TAG, {"key": key_file, **SHALLOW},
        pretrained=True, pretrained_path=str(converted["plain"]),
    )  # fmt: skip
    rebuilt = load_model(ckpt)
    assert rebuilt.key_fingerprint == converted["key"].fingerprint  # the key file's
    assert rebuilt.pretrained_cfg["converted_from"] == "convmixer_768_32.in1k"
    result = run_client(
        hub,
        tmp_path,
        """
        import contextlib, io, warnings
        from huggingface_hub import HfApi, hf_hub_download
        from timm_ppconvmixer.cli import main

        warnings.simplefilter("ignore")
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            refused = main(["push", ARGS["ckpt"], "tester/ft", "--key", ARGS["key"]])
        exists = HfApi().repo_exists("tester/ft")
        accepted = main(["push", ARGS["ckpt"], "tester/ft", "--key", ARGS["key"],
                         "--allow-public-stem-leak"])
        config = json.loads(Path(hf_hub_download("tester/ft", "config.json")).read_text())
        emit(refused=refused, error=stderr.getvalue(), exists=exists, accepted=accepted,
             config=config)
        """,
        ckpt=str(ckpt),
        key=key_file,
    )
    assert result["refused"] == 1 and not result["exists"]
    assert result["error"].startswith("error: ") and result["error"].count("\n") == 1
    assert "--allow-public-stem-leak" in result["error"] and key_file not in result["error"]
    assert result["accepted"] == 0
    assert result["config"]["converted_from"] == "convmixer_768_32.in1k"
    assert result["config"]["model_args"]["key_fingerprint"] == converted["key"].fingerprint
    assert "key" not in result["config"]["model_args"]


# -- timm train.py's guard -------------------------------------------------------------------------


def _encrypted_folder(root: Path, fingerprint: str) -> Path:
    root.mkdir(parents=True)
    (root / "ENCRYPTION.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return root


AS_TRAIN_PY = """
import argparse, json, sys
def _parse_args():  # what timm's train.py defines in __main__, with the provider's arguments
    return argparse.Namespace(dataset="", data_dir=sys.argv[1], model=sys.argv[2],
                              model_kwargs=json.loads(sys.argv[3]), pretrained_path=None), None
import timm_ppconvmixer.hub.train_guard
print("not stopped")
"""


def test_the_train_guard_refuses_a_key_in_model_kwargs(tmp_path: Path):
    key = BlockKey.generate(56, 7, seed=11)
    key_file = str(key.save(tmp_path / "owner.key"))
    data = _encrypted_folder(tmp_path / "enc", key.fingerprint)

    def guard(**model_kwargs) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", AS_TRAIN_PY, str(data), TAG, json.dumps(model_kwargs)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    passed = guard(key_fingerprint=key.fingerprint)
    assert passed.returncode == 0 and "not stopped" in passed.stdout, passed.stderr[-2000:]
    for kwargs, says in (
        ({"key": key_file, "key_fingerprint": key.fingerprint}, "--model-kwargs key: "),
        ({"key_fingerprint": key.fingerprint, "permutation_init": [1, 0, 3, 2]},
         "--model-kwargs permutation_init: "),
    ):  # fmt: skip
        proc = guard(**kwargs)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "not stopped" not in proc.stdout, proc.stderr[-2000:]
        assert lines[-1].startswith(f"error: {says}") and "Traceback" not in proc.stderr
        assert "key_fingerprint=FP" in lines[-1] and key_file not in proc.stderr


def test_the_train_guard_stops_train_py_on_an_args_yaml_with_a_key(tmp_path: Path):
    """timm's own train.py, reading its arguments from an args.yaml (--config), stops before
    it builds anything when --model-kwargs names a key file."""
    if not os.path.isfile(TRAIN_PY):
        why = "set TIMM_TRAIN_PY to the train.py of timm's GitHub repository"
        if REQUIRE_TRAIN_PY:
            pytest.fail(f"TIMM_TRAIN_PY={TRAIN_PY!r} is not a file; CI requires it: {why}")
        pytest.skip(why)
    key = BlockKey.generate(56, 7, seed=11)
    key_file = str(key.save(tmp_path / "owner.key"))
    data = _encrypted_folder(tmp_path / "enc", key.fingerprint)
    config = tmp_path / "args.yaml"
    config.write_text(yaml.safe_dump({"model": TAG, "pretrained": True,
                                      "model_kwargs": {"key": key_file, **SHALLOW}}))  # fmt: skip
    cmd = [sys.executable, TRAIN_PY, "--config", str(config), "--data-dir", str(data),
           "--device-modules", "timm_ppconvmixer", "timm_ppconvmixer.hub.train_guard",
           "--device", "cpu", "--output", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("error: --model-kwargs key: ") and "Traceback" not in proc.stderr
    assert key_file not in proc.stderr and not (tmp_path / "out").exists()
