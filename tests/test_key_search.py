"""Self-test of the two searches for key material: the suite's own (``holds_key_material`` in
``tests/conftest.py``, which the "no key material in this file" tests rely on) and the
package's leak guard (``scan_for_key_material``).

For a key of every scheme, every form of key material the guard claims to detect (docs/hub.md,
"The leak guard") is planted, as the shortest run it claims to catch (16 entries of a
permutation, 64 mask bits, 64 bits of any other secret sequence; the whole secret where it is
shorter), in random bytes and in each kind of file the package writes or ships, written with
the real libraries. Both searches must find every planted secret; neither may find anything in
the same file holding another key's material in the same forms, or in real model weights.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml
from conftest import holds_key_material
from PIL import Image, PngImagePlugin

import timm_ppconvmixer  # noqa: F401  (registers the models with timm)
from timm_ppconvmixer.hub import scan_for_key_material
from timm_ppconvmixer.schemes import generate_key

datasets.disable_progress_bars()

SPECS = [
    (scheme, size, 1 if scheme == "pe" else 4)
    for scheme in ("blockwise", "le", "ele", "etc", "pe")
    for size in (28, 32)
]


def spec_id(spec) -> str:
    return f"{spec[0]}-{spec[1]}x{spec[1]}-M{spec[2]}"


# The file formats are checked with keys of three kinds of secret: one-row permutations and a
# short mask (blockwise), row-wise permutations and a long mask (ELE, slow), codes (EtC, slow).
FORMAT_SPECS = [
    pytest.param(spec, id=spec_id(spec), marks=[pytest.mark.slow] if spec[0] != "blockwise" else [])
    for spec in [("blockwise", 32, 4), ("ele", 28, 4), ("etc", 28, 4)]
]


@functools.cache
def make_key(scheme: str, size: int, block: int, seed: int = 11):
    return generate_key(scheme, image_size=size, block_size=block, channels=3, seed=seed)


# -- what is planted: the shortest window of each secret the guard claims to catch -----------


@dataclass(frozen=True)
class Material:
    name: str  # how the test search names it (conftest: field name, "<name> inverse", "salt")
    label: str  # how the guard names it (Field.label, "inverse of <label>", "salt")
    kind: str  # "values" (integers), "bits" (a 0/1 mask), "salt" (bytes)
    values: np.ndarray  # the planted window (the salt: its 16 bytes as uint8)


def _window(flat: np.ndarray, length: int, rng, bits: bool) -> np.ndarray:
    for _ in range(100):  # constant runs and progressions are never claimed: draw another
        start = int(rng.integers(0, len(flat) - length + 1))
        w = flat[start : start + length]
        if (bits and 0 < w.sum() < len(w)) or (not bits and np.any(np.diff(w, 2) != 0)):
            return w
    raise AssertionError("no secret-looking window")  # pragma: no cover


def materials(key, seed: int = 0) -> list[Material]:
    """A window of every secret of ``key`` (and of each permutation's inverse), and the salt.

    Window lengths as docs/hub.md states them: 16 entries of a permutation, 64 mask bits,
    enough entries of any other sequence for 64 bits of secret; the whole secret if shorter.
    """
    rng = np.random.default_rng(seed)
    out = []
    for field, values in key.secret_items():
        flat = values.reshape(-1)
        if field.kind == "bits":
            w = _window(flat, min(64, len(flat)), rng, bits=True)
            out.append(Material(field.name, field.label, "bits", w))
            continue
        if field.kind == "perm" and len(field.shape) == 1:
            length = min(16, len(flat))
            inverse = np.argsort(flat)
        else:
            length = min(len(flat), math.ceil(64 / field.entropy_per_value()))
            rows = values.reshape(-1, field.shape[-1])
            inverse = np.argsort(rows, axis=1).reshape(-1) if field.kind == "perm" else None
        out.append(Material(field.name, field.label, "values", _window(flat, length, rng, False)))
        if inverse is not None and not np.array_equal(inverse, flat):
            w = _window(inverse, length, rng, False)
            out.append(Material(f"{field.name} inverse", f"inverse of {field.label}", "values", w))
    salt = bytes.fromhex(json.loads(key.to_json())["salt"])
    out.append(Material("salt", "salt", "salt", np.frombuffer(salt, np.uint8)))
    return out


# -- the forms ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One planted form: its bytes, and how a file format would hold it natively."""

    data: bytes
    text: str | None = None  # text forms: the same as a string
    array: np.ndarray | None = None  # numeric little-endian forms: a tensor/column of this
    bfloat16: bool = False  # ``array`` holds float32 values meant as a bfloat16 tensor
    listing: list | None = None  # JSON/YAML list forms: the list itself


def _bf16(values: np.ndarray, order: str) -> bytes:
    top = (values.astype("<f4").view("<u4") >> 16).astype("<u2")
    return top.astype(order + "u2").tobytes()


RAW = [  # (form, numpy dtype); "bf16" is the top half of a float32
    ("uint8", "u1"),
    ("int16 LE", "<i2"),
    ("int16 BE", ">i2"),
    ("int32 LE", "<i4"),
    ("int32 BE", ">i4"),
    ("int64 LE", "<i8"),
    ("int64 BE", ">i8"),
    ("float16 LE", "<f2"),
    ("float16 BE", ">f2"),
    ("bfloat16 LE", "<bf16"),
    ("bfloat16 BE", ">bf16"),
    ("float32 LE", "<f4"),
    ("float32 BE", ">f4"),
    ("float64 LE", "<f8"),
    ("float64 BE", ">f8"),
]


def raw_bytes(values: np.ndarray, dtype: str) -> bytes:
    return _bf16(values, dtype[0]) if dtype.endswith("bf16") else values.astype(dtype).tobytes()


def _raw_form(dtype: str) -> Callable[[np.ndarray, object], Encoded]:
    def encode(v, rng):
        native = dtype[0] in "<u" and not dtype.endswith("bf16")
        if dtype.endswith("bf16") and dtype[0] == "<":
            return Encoded(raw_bytes(v, dtype), array=v.astype(np.float32), bfloat16=True)
        return Encoded(raw_bytes(v, dtype), array=v.astype(dtype) if native else None)

    return encode


def _text(text: str, listing: list | None = None) -> Encoded:
    return Encoded(text.encode(), text=text, listing=listing)


def _hex(encode_raw, upper=False):
    return lambda v, rng: _text(
        (lambda h: h.upper() if upper else h)(encode_raw(v, rng).data.hex())
    )


def _b64(encode_raw):
    return lambda v, rng: _text(base64.b64encode(encode_raw(v, rng).data).decode())


def _packed(order: str):
    """The bits packed 8 to a byte, at a random bit phase inside a longer packed array."""

    def encode(v, rng):
        before, after = rng.integers(0, 2, int(rng.integers(1, 8))), rng.integers(0, 2, 16)
        bits = np.concatenate([before, v, after]).astype(np.uint8)
        return Encoded(np.packbits(bits, bitorder=order).tobytes())

    return encode


def _seps(sep):
    return lambda v, rng: _text(sep.join(map(str, v.tolist())))


VALUE_FORMS: dict[str, Callable] = {name: _raw_form(dt) for name, dt in RAW}
VALUE_FORMS |= {
    "text comma": _seps(","),
    "text comma space": _seps(", "),
    "text space": _seps(" "),
    "text newline": _seps("\n"),
    "text tab": _seps("\t"),
    "text semicolon": _seps(";"),
    "text floats": lambda v, rng: _text(", ".join(f"{x}.0" for x in v.tolist())),
    "JSON list": lambda v, rng: _text(json.dumps(v.tolist()), listing=v.tolist()),
}
VALUE_FORMS |= {f"hex of {name}": _hex(_raw_form(dt)) for name, dt in RAW}
VALUE_FORMS |= {f"base64 of {name}": _b64(_raw_form(dt)) for name, dt in RAW}
VALUE_FORMS |= {
    "HEX of uint8": _hex(_raw_form("u1"), upper=True),
    "HEX of int64 LE": _hex(_raw_form("<i8"), upper=True),
}
BIT_FORMS: dict[str, Callable] = {
    "0/1 string": lambda v, rng: _text("".join(map(str, v.tolist()))),
    "JSON booleans": lambda v, rng: _text(
        json.dumps([bool(b) for b in v]), listing=[bool(b) for b in v]
    ),
    "packed bits, big bit order": _packed("big"),
    "packed bits, little bit order": _packed("little"),
    "hex of packed bits": _hex(_packed("big")),
    "base64 of packed bits": _b64(_packed("little")),
}
SALT_FORMS: dict[str, Callable] = {
    "salt raw": lambda v, rng: Encoded(v.tobytes()),
    "salt hex": lambda v, rng: _text(v.tobytes().hex()),
    "salt HEX": lambda v, rng: _text(v.tobytes().hex().upper()),
    "salt base64": lambda v, rng: _text(base64.b64encode(v.tobytes()).decode()),
}
FORMS = list(VALUE_FORMS) + list(BIT_FORMS) + list(SALT_FORMS)


def encoded(material: Material, form: str, rng) -> Encoded | None:
    """``material`` in ``form``, or None where the form does not apply to it."""
    if material.kind == "salt":
        table = SALT_FORMS
    elif form in BIT_FORMS:
        table = BIT_FORMS if material.kind == "bits" else {}
    else:
        table = VALUE_FORMS if material.kind != "salt" else {}
    return table[form](material.values, rng) if form in table else None


# -- the containers: random bytes and every file format we write or ship ------------------------


@functools.cache
def model_state(size: int) -> dict[str, torch.Tensor]:
    """A real PPConvMixer's state dict, random init (its P is a learned P, not key material)."""
    torch.manual_seed(size)
    model = timm.create_model("ppconvmixer_256_8", dim=32, depth=2, img_size=size, num_classes=10)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _tensor(e: Encoded) -> torch.Tensor:
    if e.bfloat16:
        return torch.from_numpy(e.array).to(torch.bfloat16)
    if e.array is not None:
        return torch.from_numpy(e.array.copy())
    return torch.frombuffer(bytearray(e.data), dtype=torch.uint8)


def write_random_bytes(items: list[Encoded], out: Path, rng) -> Path:
    """4 KB of random bytes with each form at a random offset; text ends where binary data
    begins (a NUL on either side), as in any file that holds text among binary data."""
    cuts = np.sort(rng.integers(0, 4096, len(items)))
    noise = rng.integers(0, 256, 4096 + 64 * len(items), dtype=np.uint8).tobytes()
    parts, at = [], 0
    for i, (cut, e) in enumerate(zip(cuts.tolist(), items, strict=True)):
        parts.append(noise[at : cut + 64 * i])
        parts.append(b"\0" + e.data + b"\0" if e.text is not None else e.data)
        at = cut + 64 * i
    out.write_bytes(b"".join([*parts, noise[at:]]))
    return out


def write_safetensors_tensor(items, out: Path, rng, size: int) -> Path:
    tensors = dict(model_state(size))
    tensors |= {f"extra.{i}": _tensor(e) for i, e in enumerate(items)}
    safetensors.torch.save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out / "model.safetensors"


def write_safetensors_metadata(items, out: Path, rng, size: int) -> Path:
    metadata = {"format": "pt"} | {f"note{i}": e.text for i, e in enumerate(items)}
    safetensors.torch.save_file(model_state(size), out / "model.safetensors", metadata=metadata)
    return out / "model.safetensors"


def write_pth(items, out: Path, rng, size: int) -> Path:
    """A checkpoint: lists as Python lists, text as strings, anything else as a tensor (bytes
    objects pickle as latin-1 text under torch's protocol 2)."""
    extra = {
        f"extra{i}": e.listing if e.listing is not None else e.text if e.text else _tensor(e)
        for i, e in enumerate(items)
    }
    torch.save({"state_dict": model_state(size), "extra": extra}, out / "checkpoint.pth")
    return out / "checkpoint.pth"


def _dataset(items: list[Encoded]) -> datasets.Dataset:
    """One column per planted form, holding it natively: a list of its dtype (float16 too),
    a string for text forms, binary for the rest; beside a label column."""
    columns, features = {"label": [3, 1]}, {"label": datasets.Value("int64")}
    for i, e in enumerate(items):
        name = f"m{i}"
        if e.text is not None:
            columns[name], features[name] = [e.text, ""], datasets.Value("string")
        elif e.array is not None and not e.bfloat16:
            value = datasets.Value(str(e.array.dtype))
            columns[name], features[name] = [e.array.tolist(), []], datasets.Sequence(value)
        else:
            columns[name], features[name] = [e.data, b""], datasets.Value("binary")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def write_arrow(items, out: Path, rng, size: int) -> Path:
    _dataset(items).save_to_disk(str(out / "arrow"))
    return out / "arrow"


def write_parquet(items, out: Path, rng, size: int) -> Path:
    _dataset(items).to_parquet(str(out / "train-00000-of-00001.parquet"))
    return out / "train-00000-of-00001.parquet"


def _value(e: Encoded):
    return e.listing if e.listing is not None else e.text


def write_config_json(items, out: Path, rng, size: int) -> Path:
    config = {
        "architecture": "ppconvmixer_256_8",
        "num_classes": 10,
        "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.5, 0.5, 0.5]},
        "extra": {f"note{i}": _value(e) for i, e in enumerate(items)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out / "config.json"


def write_args_yaml(items, out: Path, rng, size: int) -> Path:
    args = {"model": "ppconvmixer_256_8", "lr": 0.002, "epochs": 3, "img_size": size}
    args |= {f"note{i}": _value(e) for i, e in enumerate(items)}
    (out / "args.yaml").write_text(yaml.safe_dump(args), encoding="utf-8")
    return out / "args.yaml"


def write_png_text(items, out: Path, rng, size: int) -> Path:
    info = PngImagePlugin.PngInfo()
    for i, e in enumerate(items):
        info.add_text(f"note{i}", e.text)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out / "image.png", pnginfo=info)
    return out / "image.png"


FORMATS = {
    "safetensors tensor": (write_safetensors_tensor, False),  # (writer, text forms only)
    "safetensors metadata": (write_safetensors_metadata, True),
    "torch .pth": (write_pth, False),
    "arrow (datasets)": (write_arrow, False),
    "parquet (datasets)": (write_parquet, False),
    "config.json": (write_config_json, True),
    "args.yaml": (write_args_yaml, True),
    "PNG text chunk": (write_png_text, True),
}


# -- what each search reports ------------------------------------------------------------------

_GUARD_WHAT = re.compile(r"^(?:the whole |\d+\+ consecutive (?:values|bits) of )(.*)$")


def guard_found(path: Path, key) -> set[str]:
    """Labels of the secrets the leak guard reports in ``path`` (warnings about a learned P
    are not findings of key material)."""
    found = set()
    for f in scan_for_key_material(path, key):
        if f.warning:
            continue
        m = _GUARD_WHAT.match(f.what)
        found.add(m.group(1) if m else f.what)
    return found


def test_search_found(path: Path, key) -> set[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {label for p in files for label in holds_key_material(p.read_bytes(), key)}


test_search_found.__test__ = False  # a helper, not a test


def _guard_names(m: Material) -> set[str]:
    return {"the key's salt"} if m.kind == "salt" else {m.label}


def misses(path: Path, key, planted: list[Material]) -> list[str]:
    """Which planted secrets each search fails to find in ``path``."""
    guard, ours = guard_found(path, key), test_search_found(path, key)
    out = [f"guard missed {m.label}" for m in planted if not (_guard_names(m) & guard)]
    return out + [f"test search missed {m.name}" for m in planted if m.name not in ours]


def plant(key, form: str, rng) -> tuple[list[Material], list[Encoded]]:
    """Every secret of ``key`` that ``form`` applies to, encoded in it."""
    pairs = [(m, encoded(m, form, rng)) for m in materials(key)]
    pairs = [(m, e) for m, e in pairs if e is not None]
    return [m for m, _ in pairs], [e for _, e in pairs]


def _forms_for(text_only: bool, key) -> list[str]:
    rng = np.random.default_rng(0)
    return [
        f
        for f in FORMS
        if any(
            (e := encoded(m, f, rng)) is not None and (e.text is not None or not text_only)
            for m in materials(key)
        )
    ]


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_both_searches_find_every_form_in_random_bytes(spec, tmp_path):
    key = make_key(*spec)
    rng = np.random.default_rng(1)
    missed = []
    for i, form in enumerate(FORMS):
        planted, items = plant(key, form, rng)
        if not planted:
            continue
        path = write_random_bytes(items, tmp_path / f"blob{i}.bin", rng)
        missed += [f"{form}: {m}" for m in misses(path, key, planted)]
    assert missed == []


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("spec", FORMAT_SPECS)
def test_both_searches_find_every_form_in_every_file_format(spec, fmt, tmp_path):
    key = make_key(*spec)
    writer, text_only = FORMATS[fmt]
    rng = np.random.default_rng(2)
    missed = []
    for i, form in enumerate(_forms_for(text_only, key)):
        planted, items = plant(key, form, rng)
        kept = [(m, e) for m, e in zip(planted, items, strict=True) if e.text or not text_only]
        out = tmp_path / str(i)
        out.mkdir()
        path = writer([e for _, e in kept], out, rng, spec[1])
        missed += [f"{form}: {m}" for m in misses(path, key, [m for m, _ in kept])]
    assert missed == []


def _decoys(key, text_only: bool, rng) -> list[Encoded]:
    """Another key's material (same scheme and geometry) in every form, in one file."""
    other = make_key(key.scheme, key.image_size[0], key.block_size, seed=12)
    items = []
    for form in FORMS:
        _, encs = plant(other, form, rng)
        items += [e for e in encs if e.text is not None or not text_only]
    return items


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_neither_search_finds_another_keys_material_in_random_bytes(spec, tmp_path):
    key = make_key(*spec)
    rng = np.random.default_rng(3)
    path = write_random_bytes(_decoys(key, False, rng), tmp_path / "blob.bin", rng)
    assert guard_found(path, key) == set() and test_search_found(path, key) == set()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("spec", FORMAT_SPECS)
def test_neither_search_finds_another_keys_material_in_any_file_format(spec, fmt, tmp_path):
    key = make_key(*spec)
    writer, text_only = FORMATS[fmt]
    rng = np.random.default_rng(4)
    path = writer(_decoys(key, text_only, rng), tmp_path, rng, spec[1])
    assert guard_found(path, key) == set() and test_search_found(path, key) == set()


@pytest.mark.parametrize("size", [28, 32])
def test_real_model_weights_hold_no_key_material(size, tmp_path):
    """A real PPConvMixer (random init, its learned P included) in safetensors and .pth, and
    1 MB of random bytes: nothing of any key, for either search."""
    path = write_safetensors_tensor([], tmp_path, None, size)
    write_pth([], tmp_path, None, size)
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(size).bytes(1_000_000))
    for spec in (s for s in SPECS if s[1] == size):
        key = make_key(*spec)
        assert scan_for_key_material(tmp_path, key) == [], spec
        assert test_search_found(tmp_path, key) == set(), spec
    assert path.exists()


def test_a_p_hardened_to_the_keys_order_is_key_derived_weights(tmp_path):
    """P set to the key's block order (what conversion makes) states K1: the guard reports it
    as key-derived weights, the one finding an owner may accept; the same model with a learned
    P is clean (test above)."""
    from timm_ppconvmixer.keyed.convert import encrypt_model

    key = make_key("blockwise", 32, 4)
    torch.manual_seed(0)
    plain = timm.create_model(
        "ppconvmixer_256_8", dim=32, depth=2, num_classes=10, permutation=False
    )
    converted = encrypt_model(plain.eval(), key)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in converted.state_dict().items()}, path
    )
    findings = [f for f in scan_for_key_material(path, key) if not f.warning]
    assert findings and all(f.key_derived_weights for f in findings)
