"""Key-bound pretrained tags (timm_ppconvmixer/keyed/zoo.py) and `ppconvmixer convert --model TAG`.

The plain checkpoints are random weights in timm's Hub layout (model.safetensors +
config.json), of shallow variants of timm's ConvMixers (depth 2, dim 32) where the model kwargs
can say so, and of the full convmixer_768_32 where only timm's own entry point builds the model
(the CLI). They reach timm's loader through ``pretrained_cfg_overlay=dict(file=...)`` in this
process, and as ``timm/convmixer_*`` repos of the local Hub double (tests/local_hub.py) over
HTTP in fresh interpreters (the client reads HF_ENDPOINT at import), then offline from the cache.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml
from local_hub import LocalHub, make_ref
from PIL import Image
from timm.models import get_pretrained_cfg, save_for_hf
from timm.models.convmixer import ConvMixer
from torch import nn
from torchvision.transforms import Normalize

import timm_ppconvmixer
from timm_ppconvmixer import KEY_BOUND_TAGS, BlockKey, KeyBoundError, encrypt
from timm_ppconvmixer.hub import export, save_model_folder, scan_for_key_material
from timm_ppconvmixer.hub.key_patterns import key_secrets, scan_text
from timm_ppconvmixer.hub.leak_guard import PublicStemFinding
from timm_ppconvmixer.keyed.convert import encrypt_model

REPO_ROOT = Path(__file__).resolve().parents[1]
# timm's convmixer_* architectures: kernel, patch (= the key's block size), activation
ARCH = {
    "convmixer_768_32": dict(kernel_size=7, patch_size=7, act_layer=nn.ReLU),
    "convmixer_1024_20_ks9_p14": dict(kernel_size=9, patch_size=14, act_layer=nn.GELU),
    "convmixer_1536_20": dict(kernel_size=9, patch_size=7, act_layer=nn.GELU),
}
SHALLOW = dict(dim=32, depth=2)


def plain_model(arch: str, seed: int = 0, **shape) -> ConvMixer:
    """timm's ConvMixer ``arch`` (or a variant of it) with random weights and BN statistics."""
    model = ConvMixer(**{**dict(dim=768, depth=32), **ARCH[arch], **shape})
    model.pretrained_cfg = get_pretrained_cfg(f"{arch}.in1k").to_dict()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def hub_layout(model: ConvMixer, folder: Path) -> Path:
    """The plain checkpoint as timm publishes it: model.safetensors + config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), folder / "model.safetensors")
    cfg = dict(model.pretrained_cfg)
    config = {"architecture": cfg.pop("architecture"), "num_classes": 1000, "pretrained_cfg": cfg}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def block_for(tag: str) -> int:
    return ARCH[KEY_BOUND_TAGS[tag].split(".")[0]]["patch_size"]


@pytest.fixture(scope="module")
def keys() -> dict[int, BlockKey]:
    return {m: BlockKey.generate(224, m, seed=19 + m) for m in (7, 14)}


@pytest.fixture(scope="module")
def plain_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plain")
    return {
        tag: hub_layout(plain_model(KEY_BOUND_TAGS[tag].split(".")[0], **SHALLOW), root / tag)
        / "model.safetensors"
        for tag in KEY_BOUND_TAGS
    }


def reference(tag: str, file: Path) -> ConvMixer:
    """The plain model, read from the file without timm's loader or our code."""
    arch = KEY_BOUND_TAGS[tag].split(".")[0]
    model = ConvMixer(**{**ARCH[arch], **SHALLOW})
    model.load_state_dict(safetensors.torch.load_file(file))
    model.pretrained_cfg = get_pretrained_cfg(KEY_BOUND_TAGS[tag]).to_dict()
    return model.eval()


def key_bound(tag: str, key, file: Path, **kwargs) -> nn.Module:
    overlay = dict(file=str(file))
    return timm.create_model(
        tag, pretrained=True, key=key, pretrained_cfg_overlay=overlay, **SHALLOW, **kwargs
    )


def images(key: BlockKey, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (n, 3, *key.image_size), dtype=torch.uint8, generator=gen)


def normalise(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    return Normalize(cfg["mean"], cfg["std"])(x.float() / 255)


# -- the tags ----------------------------------------------------------------------------------


def test_list_pretrained_lists_the_key_bound_tags():
    listed = timm.list_pretrained("ppconvmixer*")
    assert set(KEY_BOUND_TAGS) <= set(listed)
    # random architectures are not "pretrained"; timm's own plain tags are what they convert
    assert "ppconvmixer_768_32" not in listed
    assert set(KEY_BOUND_TAGS.values()) <= set(timm.list_pretrained("convmixer*"))


@pytest.mark.parametrize("tag", sorted(KEY_BOUND_TAGS))
def test_key_bound_tag_is_encrypt_model_of_timms_weights_exactly(tag, keys, plain_files):
    key, file = keys[block_for(tag)], plain_files[tag]
    model = key_bound(tag, key, file).eval()
    plain = reference(tag, file)
    expected = encrypt_model(plain, key)
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.key_fingerprint == key.fingerprint
    assert model.pretrained_cfg["architecture"] == tag.split(".")[0]
    x = images(key)
    with torch.no_grad():
        on_encrypted = model(normalise(encrypt(x, key), model.pretrained_cfg))
        on_plain = plain(normalise(x, plain.pretrained_cfg))
    torch.testing.assert_close(on_encrypted, on_plain, atol=1e-4, rtol=0)


def test_key_file_path_and_fine_tuning_options(keys, plain_files, tmp_path):
    tag = "ppconvmixer_768_32.in1k"
    key = keys[7]
    path = key.save(tmp_path / "owner.key")
    by_object = key_bound(tag, key, plain_files[tag])
    for spec in (str(path), path):
        by_path = key_bound(tag, spec, plain_files[tag])
        assert all(
            torch.equal(v, by_path.state_dict()[k]) for k, v in by_object.state_dict().items()
        )
    # a new head (timm drops the pretrained one) and P's training options are honoured
    torch.manual_seed(0)
    tuned = key_bound(tag, path, plain_files[tag], num_classes=10, penalty_weight=0.0)
    assert tuned.num_classes == 10 and tuned.penalty_weight == 0.0
    stem = tuned.state_dict()["stem.0.weight"]
    assert torch.equal(stem, by_object.state_dict()["stem.0.weight"])
    assert "key" not in tuned._model_args and tuned._model_args["num_classes"] == 10


@pytest.mark.parametrize(
    ("tag", "size", "block", "hint"),
    [
        ("ppconvmixer_768_32.in1k", 224, 16, "--image-size 224 --block-size 7"),
        ("ppconvmixer_1536_20.in1k", 112, 7, "--image-size 224 --block-size 7"),
        ("ppconvmixer_1024_20_ks9_p14.in1k", 224, 7, "--image-size 224 --block-size 14"),
    ],
)
def test_a_key_of_the_wrong_geometry_is_refused_naming_the_key_to_make(
    tag, size, block, hint, plain_files
):
    wrong = BlockKey.generate(size, block, seed=1)
    with pytest.raises(KeyBoundError, match="ppconvmixer keygen KEY " + hint) as e:
        key_bound(tag, wrong, plain_files[tag])
    assert wrong.fingerprint in str(e.value)
    assert not scan_text(str(e.value), key_secrets(wrong), "message")


def test_no_key_and_misplaced_keys_are_refused(keys, plain_files, tmp_path):
    tag = "ppconvmixer_768_32.in1k"
    with pytest.raises(KeyBoundError, match=r"pass key=.*ppconvmixer keygen KEY --image-size 224"):
        key_bound(tag, None, plain_files[tag])
    with pytest.raises(FileNotFoundError, match="no-such.key"):
        key_bound(tag, tmp_path / "no-such.key", plain_files[tag])
    with pytest.raises(KeyBoundError, match="key= is taken only with pretrained=True"):
        timm.create_model(tag, key=keys[7], **SHALLOW)  # random weights need no key
    with pytest.raises(KeyBoundError, match="key= is taken only"):
        timm.create_model("ppconvmixer_256_8", key=keys[7])
    # without pretrained=True the architecture is the random model it always was
    model = timm.create_model("ppconvmixer_768_32", num_classes=3, **SHALLOW)
    assert model.key_fingerprint is None and model.num_classes == 3


# -- nothing key-derived leaves by a side door ---------------------------------------------------


def _encodings(values: np.ndarray) -> list[bytes]:
    """Byte patterns of a key array as serialisers would write it: raw integers of every width
    and byte order, and numbers in text with the usual separators (first 32 entries)."""
    head = values[:32].astype(np.int64)
    raw = [
        head.astype(f"{order}{kind}{w}").tobytes()
        for order in "<>"
        for kind, w in (("i", 8), ("i", 4), ("i", 2))
    ]
    raw.append(head.astype(np.uint8).tobytes()) if head.max() < 256 else None
    text = [sep.join(map(str, head.tolist())).encode() for sep in (",", ", ", " ", "\n")]
    return raw + text


def independent_leak_search(path: Path, key: BlockKey) -> list[str]:
    """Look for the key's arrays in ``path`` without the project's leak guard."""
    data = path.read_bytes()
    perms = {"block_perm": key.block_perm.numpy(), "pixel_perm": key.pixel_perm.numpy()}
    perms.update({f"{k}^-1": np.argsort(v) for k, v in list(perms.items())})
    mask = key.np_mask.numpy().astype(np.uint8)
    found = [name for name, v in perms.items() if any(p in data for p in _encodings(v))]
    bits = "".join(map(str, mask[:64].tolist()))
    if bits.encode() in data or np.packbits(mask[:64]).tobytes() in data:
        found.append("np_mask")
    if key.to_json().encode()[:64] in data or base64.b64encode(key.to_json().encode())[:32] in data:
        found.append("key file")
    return found


def test_every_file_the_model_can_be_saved_to_is_free_of_key_material(
    keys, plain_files, tmp_path, caplog
):
    tag = "ppconvmixer_768_32.in1k"
    # 56x56 (64 blocks): the same path as 224x224, a P the leak guard scans in seconds
    key = BlockKey.generate(56, 7, seed=5)
    with caplog.at_level(logging.DEBUG):
        key_file = key.save(tmp_path / "owner.key")
        model = key_bound(tag, key_file, plain_files[tag], img_size=56).eval()
    files = []
    hf = tmp_path / "save_for_hf"
    save_for_hf(model, hf, safe_serialization="both")  # model.safetensors, pytorch_model.bin
    files += sorted(hf.iterdir())
    files += sorted(save_model_folder(model, tmp_path / "folder").iterdir())
    # converted from timm's public weights: sharing it needs both flags (docs/hub.md)
    shared = export(
        model,
        tmp_path / "export",
        key=key,
        allow_key_derived_weights=True,
        allow_public_stem_leak=True,
    )
    files += sorted(shared.iterdir())
    torch.save(model.state_dict(), tmp_path / "state_dict.pth")
    torch.save(model, tmp_path / "whole_model.pth")  # the module pickled, attributes and all
    (tmp_path / "pretrained_cfg.json").write_text(json.dumps(model.pretrained_cfg))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    files += [tmp_path / n for n in ("state_dict.pth", "whole_model.pth", "pretrained_cfg.json")]
    files.append(tmp_path / "model.pkl")
    for path in files:
        found = scan_for_key_material([path], key)
        # config.json names the public checkpoint the weights were converted from (not key
        # material itself: what makes the stem give the key back against timm's public stem)
        findings = [f for f in found if not isinstance(f, PublicStemFinding)]
        if len(findings) < len(found):
            assert path.suffix == ".json", path  # config.json, the dumped pretrained_cfg
        # the one key-derived thing, by design: P is the key's block order (README)
        assert all(f.key_derived_weights for f in findings), (path, findings)
        if path.suffix in (".json", ".md"):
            assert not findings, (path, findings)
        assert independent_leak_search(path, key) == [], path
    weights = [f for f in scan_for_key_material([hf / "model.safetensors"], key)]
    assert weights and all(f.key_derived_weights for f in weights)  # the guard does see P
    assert "block_perm" in independent_leak_search(key_file, key)  # and so does the search
    config = json.loads((hf / "config.json").read_text())
    assert "key" not in config["model_args"] and "key" not in config["pretrained_cfg"]
    assert config["model_args"]["key_fingerprint"] == key.fingerprint
    assert "owner.key" not in (hf / "config.json").read_text()
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert not scan_text(log, key_secrets(key), "log") and "owner.key" not in log
    state = model.state_dict()
    assert "owner" not in repr(getattr(state, "_metadata", {}))


def test_saved_folder_reloads_with_local_dir_without_the_key(keys, plain_files, tmp_path):
    tag = "ppconvmixer_768_32.in1k"
    model = key_bound(tag, keys[7], plain_files[tag])
    folder = save_model_folder(model, tmp_path / "mine")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert loaded.key_fingerprint == keys[7].fingerprint
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_model_trained_from_the_random_architecture_reloads_without_a_key(tmp_path):
    """Its cfg is the architecture's default, the key-bound tag's (as timm's convmixer_*
    default to .in1k), but a saved folder holds its own weights: local-dir needs no key."""
    model = timm.create_model("ppconvmixer_768_32", img_size=56, num_classes=4, **SHALLOW)
    folder = save_model_folder(model, tmp_path / "scratch")
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["tag"] == "in1k"
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_full_size_tag_equals_timms_own_loader_then_encrypt_model(keys, tmp_path):
    """The issue's identity verbatim, at full size: timm's own convmixer_768_32.in1k entry."""
    file = hub_layout(plain_model("convmixer_768_32"), tmp_path / "plain") / "model.safetensors"
    overlay = dict(file=str(file))
    key = keys[7]
    ours = timm.create_model(
        "ppconvmixer_768_32.in1k", pretrained=True, key=key, pretrained_cfg_overlay=overlay
    )
    plain = timm.create_model(
        "convmixer_768_32.in1k", pretrained=True, pretrained_cfg_overlay=overlay
    )
    theirs = encrypt_model(plain, key).state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


# -- through the Hub: timm's loader over HTTP, then offline from its cache -------------------------


def seed_repo(hub: LocalHub, repo_id: str, folder: Path) -> None:
    """Publish ``folder``'s files as model repo ``repo_id`` straight into the server's store
    (the timm namespace is not the test user's to push to)."""
    store = hub.store
    ref = make_ref("model", *repo_id.split("/"))
    store.create_repo(ref, private=False)
    lines = [{"key": "header", "value": {"summary": "plain weights"}}]
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            oid = hashlib.sha256(data).hexdigest()
            store.lfs_store(oid, [data])
            lines.append(
                {"key": "lfsFile", "value": {"path": path.name, "oid": oid, "size": len(data)}}
            )
        else:
            lines.append({"key": "file", "value": {"path": path.name, "content": data.decode()}})
    store.commit(ref, "main", lines, create_pr=False)


def run_client(hub: LocalHub, home: Path, code: str, offline: bool = False, *args: str):
    env = {**os.environ, **hub.client_env(home=home), "PYTHONPATH": str(REPO_ROOT)}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    script = home.parent / "client.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home.parent,
    )


CLIENT = """
import json, sys, timm, torch, timm_ppconvmixer
from timm_ppconvmixer import BlockKey
model = timm.create_model(
    "ppconvmixer_768_32.in1k", pretrained=True, key=sys.argv[1], dim=32, depth=2
)
torch.save(model.state_dict(), sys.argv[2])
print("FINGERPRINT", model.key_fingerprint)
"""


def test_through_the_local_hub_then_offline_from_timms_cache(keys, plain_files, tmp_path):
    tag = "ppconvmixer_768_32.in1k"
    key_file = keys[7].save(tmp_path / "owner.key")
    with LocalHub(tmp_path / "hub") as hub:
        seed_repo(hub, "timm/convmixer_768_32.in1k", plain_files[tag].parent)
        home = tmp_path / "client" / "hf"
        home.mkdir(parents=True)
        online = run_client(hub, home, CLIENT, False, str(key_file), str(tmp_path / "a.pth"))
        assert online.returncode == 0, online.stderr
        uploads = hub.store.lfs_uploads
        repos = sorted(p.name for p in (tmp_path / "hub").rglob("meta.json"))
    assert uploads == 1 and len(repos) == 1  # only the seeded plain weights: nothing went up
    # the server is gone: timm's loader reads its cache (HF_HUB_OFFLINE=1)
    offline = run_client(hub, home, CLIENT, True, str(key_file), str(tmp_path / "b.pth"))
    assert offline.returncode == 0, offline.stderr
    expected = encrypt_model(reference(tag, plain_files[tag]), keys[7]).state_dict()
    for name in ("a.pth", "b.pth"):
        got = torch.load(tmp_path / name)
        assert all(torch.equal(v, got[k]) for k, v in expected.items())
    assert f"FINGERPRINT {keys[7].fingerprint}" in online.stdout


# -- the command line ------------------------------------------------------------------------


CONVERT = """
import sys
from timm_ppconvmixer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_cli_converts_timms_tag_and_the_folder_loads_with_local_dir(keys, tmp_path):
    """`ppconvmixer convert --key owner.key --model convmixer_768_32.in1k OUT` with timm's
    full-size entry point (its kwargs cannot make it shallow), served by the local Hub."""
    plain = plain_model("convmixer_768_32")
    hub_layout(plain, tmp_path / "plain")
    key_file = keys[7].save(tmp_path / "owner.key")
    out = tmp_path / "OUT"
    with LocalHub(tmp_path / "hub") as hub:
        seed_repo(hub, "timm/convmixer_768_32.in1k", tmp_path / "plain")
        home = tmp_path / "client" / "hf"
        home.mkdir(parents=True)
        args = ["convert", "--key", str(key_file), "--model", "convmixer_768_32.in1k", str(out)]
        proc = run_client(hub, home, CONVERT, False, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    expected = encrypt_model(plain, keys[7]).state_dict()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in expected.items())
    assert loaded.key_fingerprint == keys[7].fingerprint
    assert timm_ppconvmixer.__version__  # the plugin registered the architecture it names


# -- fine-tuning with timm's train.py, then pushing its checkpoint ---------------------------------

TRAIN_PY = os.environ.get("TIMM_TRAIN_PY", "")
# CI (.ci/run) sets PPCM_REQUIRE_TIMM_TRAIN=1: there a missing train.py fails instead of skipping
# (as in tests/test_timm_train.py).
REQUIRE_TRAIN_PY = os.environ.get("PPCM_REQUIRE_TIMM_TRAIN") == "1"
# Flags that keep timm's augmentation from breaking the block grid (recipes/timm_train.md).
KEY_FREE_FLAGS = ["--no-aug", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--crop-pct", "1.0"]

PUSH_AND_PULL = """
import json, sys, timm, torch
import timm_ppconvmixer
from timm_ppconvmixer.cli import main
ckpt, key, ema = sys.argv[1:4]
flags = ["--ema"] if ema == "1" else []
refused = main(["push", ckpt, "tester/ft", "--key", key, *flags])  # converted from timm's
code = main(["push", ckpt, "tester/ft", "--key", key, "--allow-public-stem-leak", *flags])
model = timm.create_model("hf-hub:tester/ft", pretrained=True)
torch.save(model.state_dict(), sys.argv[4])
print("RESULT", json.dumps({"refused": refused, "code": code, "fingerprint": model.key_fingerprint,
                            "num_classes": model.num_classes}))
"""


def encrypted_folder(root: Path, key: BlockKey, per_class: int = 4) -> Path:
    gen = np.random.default_rng(0)
    for split in ("train", "validation"):
        for cls in (0, 1):
            folder = root / split / f"class{cls}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                plain = gen.integers(0, 256, (*key.image_size, 3), dtype=np.uint8)
                encrypt(Image.fromarray(plain, "RGB"), key).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_train_py_fine_tunes_the_key_bound_tag_and_push_takes_its_checkpoint(plain_files, tmp_path):
    """timm's train.py fine-tunes ppconvmixer_768_32.in1k (shallow, 56x56) on encrypted images
    with a new number of classes (key= through --model-kwargs, the plain weights through
    --pretrained-path); `ppconvmixer push` takes last.pth.tar and its EMA weights."""
    if not os.path.isfile(TRAIN_PY):
        why = "set TIMM_TRAIN_PY to the train.py of timm's GitHub repository"
        if REQUIRE_TRAIN_PY:
            pytest.fail(f"TIMM_TRAIN_PY={TRAIN_PY!r} is not a file; CI requires it: {why}")
        pytest.skip(why)
    tag = "ppconvmixer_768_32.in1k"
    key = BlockKey.generate(56, 7, seed=11)
    key_file = key.save(tmp_path / "owner.key")
    data = encrypted_folder(tmp_path / "data", key, per_class=8)  # two steps: EMA moves
    out = tmp_path / "out"
    cmd = [
        sys.executable, TRAIN_PY, "--data-dir", str(data), "--device-modules", "timm_ppconvmixer",
        "--model", tag, "--pretrained", "--pretrained-path", str(plain_files[tag]),
        "--model-kwargs", f"key={key_file}", "dim=32", "depth=2", "img_size=56",
        "--num-classes", "2", "--input-size", "3", "56", "56", "--model-ema",
        "--model-ema-decay", "0.5",
        "--device", "cpu", "--no-prefetcher", "--workers", "0", "--epochs", "1",
        "--batch-size", "8", "--validation-batch-size", "8", "--opt", "sgd", "--lr", "1e-3",
        "--weight-decay", "0", "--sched", "cosine", "--warmup-epochs", "0", "--smoothing", "0",
        "--seed", "0", "--output", str(out), "--experiment", "run", "--checkpoint-hist", "1",
        *KEY_FREE_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = out / "run" / "last.pth.tar"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]["head.weight"].shape == (2, 32)  # the new head
    start = key_bound(tag, key, plain_files[tag], img_size=56).state_dict()
    for name in ("stem.0.weight", "stem.3.weight", "blocks.1.1.weight"):  # one small step
        torch.testing.assert_close(ckpt["state_dict"][name], start[name], rtol=0, atol=1e-2)
    # the EMA weights (decay 0.5) are not the trained ones: push must pick the right ones
    assert not all(torch.equal(v, ckpt["state_dict_ema"][k]) for k, v in ckpt["state_dict"].items())
    # train.py records its arguments in args.yaml: the key's path, never the key's secrets
    args_text = (out / "run" / "args.yaml").read_text()
    assert yaml.safe_load(args_text)["model_kwargs"] == {
        "key": str(key_file), "dim": 32, "depth": 2, "img_size": 56,
    }  # fmt: skip
    assert scan_text(args_text, key_secrets(key), "args.yaml") == []
    with LocalHub(tmp_path / "hub") as hub:
        home = tmp_path / "client" / "hf"
        home.mkdir(parents=True)
        for ema, which in (("0", "state_dict"), ("1", "state_dict_ema")):
            pulled = tmp_path / f"pulled{ema}.pth"
            push = run_client(hub, home, PUSH_AND_PULL, False, str(last), str(key_file), ema,
                              str(pulled))  # fmt: skip
            assert push.returncode == 0, push.stdout + push.stderr
            # the leak guard ran against the key: fine-tuned, P is no longer exactly the key's
            # block order, so it warns (docs/hub.md) rather than refuses
            assert "P close to a permutation" in push.stdout + push.stderr
            result = json.loads(push.stdout.split("RESULT ")[-1])
            # refused until the owner accepts that timm's public stem gives the key back
            assert "allow-public-stem-leak" in push.stdout + push.stderr
            assert result == {
                "refused": 1, "code": 0, "fingerprint": key.fingerprint, "num_classes": 2
            }  # fmt: skip
            got = torch.load(pulled)
            assert all(torch.equal(v, got[k]) for k, v in ckpt[which].items()), which
        shared = sorted(p.name for p in (tmp_path / "hub").rglob("*") if p.is_file())
    assert not any(n.endswith((".pth.tar", ".yaml")) for n in shared)  # no optimizer, no args


@pytest.mark.slow
def test_the_recipe_fine_tunes_the_key_bound_tag_under_data_key(plain_files, tmp_path):
    """recipes/train.py with model.pretrained=ppconvmixer_768_32.in1k: the key-bound tag is
    converted under data.key at load, fine-tuned with a new number of classes on images the
    recipe encrypts with that key, and exported with the key's fingerprint only."""
    tag = "ppconvmixer_768_32.in1k"
    key = BlockKey.generate(56, 7, seed=13)
    key_file = key.save(tmp_path / "owner.key")
    gen = np.random.default_rng(1)
    for split in ("train", "validation"):
        for cls in (0, 1):
            folder = tmp_path / "images" / split / f"class{cls}"
            folder.mkdir(parents=True)
            for i in range(4):
                plain = gen.integers(0, 256, (56, 56, 3), dtype=np.uint8)
                Image.fromarray(plain, "RGB").save(folder / f"{i}.png")
    kwargs = "{dim: 32, depth: 2, img_size: 56, num_classes: 2, pretrained_cfg_overlay: {file: %s}}"
    out = tmp_path / "run"
    cmd = [
        sys.executable, str(REPO_ROOT / "recipes" / "train.py"), "model.name=ppconvmixer_768_32",
        f"model.pretrained={tag}", f"model.kwargs={kwargs % plain_files[tag]}",
        "data.source=imagefolder", f"data.name={tmp_path / 'images'}", f"data.key={key_file}",
        "data.train_split=train", "data.val_split=validation", "data.num_workers=0",
        "train.cpu=true", "train.batch_size=4", "train.max_steps=2", "augment.mixup=0",
        "augment.cutmix=0", f"output={out}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["key_fingerprint"] == key.fingerprint
    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert model.num_classes == 2 and model.key_fingerprint == key.fingerprint
    for path in [*(out / "model").iterdir(), out / "final_metrics.json"]:
        found = scan_for_key_material([path], key)
        # config.json names timm's checkpoint it was converted from: the guard refuses to
        # share it unless the owner accepts the public-stem leak
        stem = [f for f in found if isinstance(f, PublicStemFinding)]
        assert bool(stem) == (path.name == "config.json"), (path, found)
        findings = [f for f in found if not isinstance(f, PublicStemFinding)]
        # only P states the block order (the converted start, fine-tuned: a warning)
        assert all(f.file == "model.safetensors" and f.warning for f in findings), findings
        assert independent_leak_search(path, key) == [], path


# -- the zoo manifest ----------------------------------------------------------------------------


def test_the_manifest_lists_every_key_bound_tag_as_converted_on_the_users_machine(tmp_path, capsys):
    publish = importlib.import_module("hub.publish")
    entries = publish.load_manifest(REPO_ROOT / "hub" / "zoo.yaml")
    bound = {e.name: e.converts for e in entries if e.key_bound}
    assert bound == KEY_BOUND_TAGS
    assert all(e.weights is None and e.repo_id is None for e in entries if e.key_bound)
    manifest = tmp_path / "zoo.yaml"
    tag = "ppconvmixer_768_32.in1k"
    entry = {"name": tag, "kind": "key-bound", "converts": KEY_BOUND_TAGS[tag]}
    for bad, message in (
        ({"weights": "w"}, "publishes nothing"),  # nothing key-derived is ever uploaded
        ({"converts": "convmixer_1536_20.in1k"}, "not a registered key-bound tag"),
    ):
        manifest.write_text(yaml.safe_dump({"version": 1, "models": [{**entry, **bad}]}))
        with pytest.raises(publish.ManifestError, match=message):
            publish.load_manifest(manifest)
    manifest.write_text(yaml.safe_dump({"version": 1, "models": [entry]}))
    assert publish.main(["--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "converted on the user's machine" in out and "0 ready, 0 not ready, 1 key-bound" in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert publish.main(["--manifest", str(manifest), "--push"]) == 0  # uploads nothing
    assert "pushed 0 model(s)" in capsys.readouterr().out


def test_timms_eval_preparation_then_encryption_gives_the_plain_models_logits(keys, plain_files):
    """The published accuracy carries over: create_transform(key, crop_pct=0.96) prepares an
    image exactly as timm's eval transform does (resize 233 bicubic, centre crop 224) before it
    encrypts, and the key-bound model's logits on it are the plain model's on timm's."""
    from timm_ppconvmixer import decrypt
    from timm_ppconvmixer.transforms import create_transform

    tag = "ppconvmixer_768_32.in1k"
    key = keys[7]
    model = key_bound(tag, key, plain_files[tag]).eval()
    plain = reference(tag, plain_files[tag])
    yy, xx = np.mgrid[0:260, 0:300]  # gradients and a checkerboard: every crop differs
    pixels = np.stack([xx * 255 / 299, yy * 255 / 259, (xx // 20 + yy // 20) % 2 * 255], -1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    cfg = timm.data.resolve_data_config(model=plain)
    unit = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # [0, 1] pixels, to compare
    prepared = decrypt(create_transform(key, crop_pct=0.96, **unit)(image), key)
    torch.testing.assert_close(prepared, timm.data.create_transform(**{**cfg, **unit})(image))
    with torch.no_grad():
        expected = plain(timm.data.create_transform(**cfg)(image).unsqueeze(0))
        got = model(create_transform(key, crop_pct=0.96)(image).unsqueeze(0))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
