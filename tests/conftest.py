"""Shared fixtures: real image files on disk (PNG/JPEG written with PIL), and an independent
search for key material in bytes (not the package's leak guard)."""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image


def write_image_folder(root, classes=("cat", "dog"), per_class=4, size=(40, 52), seed=0):
    """An ImageFolder tree of real PNG files with smooth random content."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (size[0] // 4 + 1, size[1] // 4 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            img.save(root / c / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


# -- an independent look for key material (not the package's leak guard) ----------------------
#
# A key's secret is in some data if one of its *forms* is: a byte string, searched as it is.
# The forms are windows of each secret, placed so that every run the leak guard claims to
# catch (docs/hub.md: 16 entries of a permutation, 64 mask bits, 64 bits of any other secret
# sequence; the whole secret where shorter) holds a whole window, each written in every
# encoding the guard reads. Encodings that wrap other data (hex, base64, text inside binary
# files, string escapes, parquet pages) are undone first, as *views* of the data, so the forms
# need not be multiplied by them. Nothing here calls the package's guard.

_RAW_DTYPES = ("u1", "<u2", ">u2", "<u4", ">u4", "<u8", ">u8", "<f2", ">f2", "<bf16", ">bf16",
               "<f4", ">f4", "<f8", ">f8")  # fmt: skip
# "-" and "\n- ": YAML block lists, whitespace removed and as written
_SEPARATORS = (", ", ",", " ", ";", "\n", "\t", "-", "\n- ")
_MIN_SECRET_BITS = 32.0  # the guard's floor (docs/hub.md): smaller secrets are brute-forced


def _claimed_run(field, length: int) -> tuple[int, float]:
    """(entries, bits of secret) of the shortest run of a field the guard claims to catch."""
    if field.kind == "bits":
        run = min(64, length)
        return run, float(run)
    if field.kind == "perm" and len(field.shape) == 1:
        run = min(16, length)
        return run, sum(math.log2(length - i) for i in range(run))
    bits = field.entropy_per_value()
    run = min(length, math.ceil(64 / bits)) if bits > 0 else length
    return run, bits * run


def _windows(seq: np.ndarray, run: int) -> Iterator[np.ndarray]:
    """Windows of ``seq`` such that every ``run``-long stretch of it holds one whole: width
    ``run - stride + 1`` every ``stride`` entries. Arithmetic runs (0, 1, 2, ...; constant
    bits) prove nothing and are left out."""
    stride = max(1, run // 4)
    width = run - stride + 1
    for start in range(0, len(seq) - width + 1, stride):
        w = seq[start : start + width]
        if len(set(np.diff(w).tolist())) > 1:
            yield w


def _raw(w: np.ndarray, dtype: str) -> bytes:
    if dtype.endswith("bf16"):  # bfloat16: the upper half of a float32
        return (w.astype("<f4").view("<u4") >> 16).astype(dtype[0] + "u2").tobytes()
    return w.astype(dtype).tobytes()


def _packed_forms(bits: np.ndarray, run: int) -> set[bytes]:
    """The mask packed 8 to a byte (either bit order) at any bit phase: a ``run``-bit stretch
    packed from any bit holds ``full`` whole bytes, every ``stride``-th byte start of which
    is a form of ``width`` bytes. Under 5 bytes a form would occur by chance: none then."""
    full = (run - 7) // 8
    stride = max(1, min(full - 4, full // 3))
    width = full - stride + 1
    forms: set[bytes] = set()
    if width < 5:
        return forms
    for start in range(len(bits) - 8 * width + 1):
        if (start // 8) % stride == 0:
            chunk = bits[start : start + 8 * width]
            if 0 < chunk.sum() < len(chunk):
                forms |= {np.packbits(chunk, bitorder=o).tobytes() for o in ("big", "little")}
    return forms


def _value_forms(w: np.ndarray, is_bits: bool) -> set[bytes]:
    forms = {_raw(w, dt) for dt in _RAW_DTYPES if dt != "u1" or w.max() < 256}
    words = [map(str, w.tolist())]
    if is_bits:
        words.append("true" if b else "false" for b in w.tolist())
        words.append("True" if b else "False" for b in w.tolist())
        forms.add("".join(map(str, w.tolist())).encode())
    for tokens in map(list, words):
        forms |= {sep.join(tokens).encode() for sep in _SEPARATORS}
    forms |= {".0, ".join(map(str, w.tolist())).encode(), ".0,".join(map(str, w.tolist())).encode()}
    # a Python list pickled (torch.save): BININT1 / BININT2 items, BINFLOAT items, bools
    forms.add(b"".join(b"K" + bytes([x]) if x < 256 else b"M" + x.to_bytes(2, "little")
                       for x in w.tolist()))  # fmt: skip
    forms.add(b"".join(b"G" + struct.pack(">d", x) for x in w.tolist()))
    if is_bits:
        forms.add(bytes(0x88 if b else 0x89 for b in w.tolist()))
    return forms


@functools.lru_cache(maxsize=64)
def _encodings(key_json: str, key) -> dict[str, frozenset[bytes]]:
    found: dict[str, frozenset[bytes]] = {"key file": frozenset({key_json.encode()})}
    for field, values in key.secret_items():
        v = np.asarray(values).astype(np.int64)
        flat = v.reshape(-1)
        run, bits = _claimed_run(field, len(flat))
        if bits < _MIN_SECRET_BITS:
            continue
        seqs = [(field.name, flat)]
        if field.kind == "perm":  # and the inverse of each row
            inverse = np.argsort(flat.reshape(-1, field.shape[-1]), axis=1).reshape(-1)
            seqs.append((f"{field.name} inverse", inverse))
        for label, seq in seqs:
            forms: set[bytes] = set()
            for w in _windows(seq, run):
                forms |= _value_forms(w, field.kind == "bits")
            if field.kind == "bits":
                forms |= _packed_forms(seq.astype(np.uint8), run)
            found[label] = frozenset(forms)
    salt = bytes.fromhex(json.loads(key_json).get("salt", ""))
    if salt:
        b64 = base64.b64encode(salt)
        found["salt"] = frozenset({salt, salt.hex().encode(), salt.hex().upper().encode(), b64})
    return found


def key_encodings(key) -> dict[str, set[bytes]]:
    """Every form of every secret of a key of any scheme (``key.secret_items()``: permutations
    and the inverse of each row, masks, codes; and the salt and the key file), as byte strings:
    the secret is in some data if one of its forms is. Search data with
    :func:`holds_key_material`, which also undoes the encodings that wrap other data (hex,
    base64, text in binary files, string escapes, whitespace, parquet)."""
    return {label: set(forms) for label, forms in _encodings(key.to_json(), key).items()}


class _Matcher:
    """Finds which of many byte strings occur in data, in one vectorised pass per anchor
    width: each form is known by 8 (or 4) of its bytes, its anchor; every word of the data at
    every byte offset is looked up in a bit table of the anchors' hashes, and only the few
    words that pass are compared with the forms in full."""

    _TABLE_BITS = 22
    _MULT = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, encodings: dict[str, frozenset[bytes]]) -> None:
        entries = [(form, label) for label, forms in encodings.items() for form in forms]
        self.short = [(form, label) for form, label in entries if len(form) < 4]
        self.groups = []
        for width, dtype in ((8, "<u8"), (4, "<u4")):
            by_length: dict[int, list[tuple[bytes, str]]] = {}
            for form, label in entries:
                if len(form) >= width and (width == 8 or len(form) < 8):
                    by_length.setdefault(len(form), []).append((form, label))
            by_anchor: dict[int, list[tuple[bytes, int, str]]] = {}
            for length, same in by_length.items():
                rows = np.frombuffer(b"".join(f for f, _ in same), np.uint8).reshape(-1, length)
                at = self._anchor_offsets(rows, width)
                picked = rows[np.arange(len(rows))[:, None], at[:, None] + np.arange(width)]
                anchors = np.ascontiguousarray(picked).view(dtype).ravel().tolist()
                for (form, label), offset, anchor in zip(same, at.tolist(), anchors, strict=True):
                    by_anchor.setdefault(anchor, []).append((form, offset, label))
            anchors = np.array(sorted(by_anchor), dtype=np.uint64)
            table = np.zeros(1 << self._TABLE_BITS, dtype=bool)
            table[self._hash(anchors)] = True
            self.groups.append((width, dtype, anchors, table, by_anchor))

    @staticmethod
    def _anchor_offsets(rows: np.ndarray, width: int) -> np.ndarray:
        """For each form (a row), where its ``width`` bytes with the fewest zeros start: such
        an anchor is rarer in data."""
        nonzero = np.cumsum(np.pad(rows != 0, ((0, 0), (1, 0))), axis=1)
        return np.argmax(nonzero[:, width:] - nonzero[:, :-width], axis=1)

    def _hash(self, words: np.ndarray) -> np.ndarray:
        return (words.astype(np.uint64) * self._MULT) >> np.uint64(64 - self._TABLE_BITS)

    def labels_in(self, view: bytes, found: set[str]) -> None:
        found.update(label for form, label in self.short if form in view)
        chunk_size = 1 << 24
        for width, dtype, anchors, table, by_anchor in self.groups:
            if not len(anchors):
                continue
            for start in range(0, len(view), chunk_size):
                chunk = view[start : start + chunk_size + width - 1]
                for r in range(width):
                    count = (len(chunk) - r) // width
                    if count <= 0:
                        continue
                    words = np.frombuffer(chunk, dtype, count=count, offset=r)
                    maybe = np.flatnonzero(table[self._hash(words)])
                    for j in maybe.tolist():
                        pos = start + r + width * j
                        for form, at, label in by_anchor.get(int(words[j]), ()):
                            if label not in found and view.startswith(form, pos - at):
                                found.add(label)


@functools.lru_cache(maxsize=64)
def _matcher(key_json: str, key) -> _Matcher:
    return _Matcher(_encodings(key_json, key))


_PRINTABLE_RUN = re.compile(rb"[\t\n\r\x20-\x7e]{7,}")
# \n, \t, \r inside JSON or YAML strings; a YAML line continuation (backslash, line break)
_ESCAPE = re.compile(rb"\\[ntr]")
_CONTINUATION = re.compile(rb"\\\r?\n[ \t]*")
_BRACKETS = re.compile(rb"[\[\]()]")
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{10,}")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{7,}={0,2}")


def _text_of(data: bytes) -> bytes:
    """The data if it is UTF-8 text, else its printable runs (text inside binary files)."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return b"\n\x00\n".join(_PRINTABLE_RUN.findall(data))


def _decoded(collapsed: bytes, stripped: bytes) -> bytes:
    """Hex and base64 runs decoded from every phase (a run may start mid-value)."""
    pieces = []
    for run in _HEX_RUN.findall(collapsed):
        pieces += [bytes.fromhex(run[k : k + (len(run) - k) // 2 * 2].decode()) for k in (0, 1)]
    for run in _BASE64_RUN.findall(stripped):
        run = run.replace(b"-", b"+").replace(b"_", b"/")
        for k in range(4):
            body = run[k:].rstrip(b"=")
            body = body[:-1] if len(body) % 4 == 1 else body  # a lone character: no byte
            pieces.append(base64.b64decode(body + b"=" * (-len(body) % 4)))
    return b"\n\x00\xff\n".join(pieces)


def _parquet_views(data: bytes) -> list[bytes]:
    """A parquet file's values, decoded (its pages are encoded and compressed): numbers as
    float64 bytes and as text, binary and string values as they are, and the schema metadata."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError):
        return []
    leaves: list = []

    def flatten(arr) -> None:
        if isinstance(arr, pa.ChunkedArray):
            for chunk in arr.chunks:
                flatten(chunk)
        elif pa.types.is_dictionary(arr.type):
            flatten(arr.dictionary_decode())
        elif pa.types.is_struct(arr.type):
            for i in range(arr.type.num_fields):
                flatten(arr.field(i))
        elif (
            pa.types.is_list(arr.type)
            or pa.types.is_large_list(arr.type)
            or (pa.types.is_fixed_size_list(arr.type))
        ):
            flatten(arr.flatten())
        else:
            leaves.append(arr)

    for column in table.columns:
        flatten(column)
    views = [json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                         for k, v in (table.schema.metadata or {}).items()}).encode()]  # fmt: skip
    for leaf in leaves:
        values = [v for v in leaf.to_pylist() if v is not None]
        if pa.types.is_binary(leaf.type) or pa.types.is_large_binary(leaf.type):
            views.append(b"\n\x00\xff\n".join(values))
        elif pa.types.is_string(leaf.type) or pa.types.is_large_string(leaf.type):
            views.append("\n\x00\n".join(values).encode())
        elif values and isinstance(values[0], (bool, int, float)):
            views += [np.asarray(values, dtype="<f8").tobytes(), json.dumps(values).encode()]
    return views


def holds_key_material(data: bytes, key) -> list[str]:
    """Which secrets of ``key`` (labels of :func:`key_encodings`) occur in ``data``: as it is,
    its text (printable runs of binary data) with string escapes undone, whitespace collapsed
    and removed (JSON or YAML written with any indent), brackets removed (nested lists), hex
    and base64 runs decoded, and the decoded values of a parquet file."""
    matcher = _matcher(key.to_json(), key)
    views = [data] + (_parquet_views(data) if data[:4] == b"PAR1" else [])
    found: set[str] = set()
    for view in views:
        text = _ESCAPE.sub(b" ", _CONTINUATION.sub(b"", _text_of(view)))
        collapsed, stripped = re.sub(rb"\s+", b" ", text), re.sub(rb"\s+", b"", text)
        unbracketed = _BRACKETS.sub(b"", collapsed)  # rows of a nested list run on: [[3, 1], [4
        for v in {view, text, collapsed, stripped, unbracketed, _decoded(collapsed, stripped)}:
            matcher.labels_in(v, found)
    return sorted(found)


@pytest.fixture(scope="module")
def fmnist():
    """Real Fashion-MNIST (the Debian package): ``(train (60000, 1, 28, 28) uint8, train
    labels, test (10000, 1, 28, 28) uint8)``; the attacks' data (train) and public prior (test)."""
    from timm_ppconvmixer.data import DatasetUnavailableError, fashion_mnist_arrays

    try:
        train, labels = fashion_mnist_arrays("train")
        test, _ = fashion_mnist_arrays("test")
    except DatasetUnavailableError as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(f"Fashion-MNIST not installed ({e}); apt-get install dataset-fashion-mnist")
    return train[:, None], labels, test[:, None]
