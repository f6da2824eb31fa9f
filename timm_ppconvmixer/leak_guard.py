"""The leak guard: scan files about to be shared for key material (the block and pixel
permutations, their inverses, the negative-positive mask, copies of the key file, and weights
that state the key's block order) and refuse them.

:func:`scan_for_key_material` lists what it finds; :func:`assert_no_key_material` raises
:class:`KeyMaterialError` on it. :class:`HubError`, the base of every sharing error, is defined
here so the guard, the model card and :mod:`timm_ppconvmixer.hub` share it without import
cycles. What the guard detects and what it cannot is listed in ``docs/hub.md``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from .key import SCHEME, BlockKey

__all__ = [
    "Finding",
    "HubError",
    "KeyMaterialError",
    "assert_no_key_material",
    "scan_for_key_material",
]


class HubError(ValueError):
    """Exporting, checking or uploading a model failed; the message says what to do."""


class KeyMaterialError(HubError):
    """The leak guard found key material in a file about to be shared."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


# -- leak guard --------------------------------------------------------------------------------

# Consecutive entries of a permutation that count as a leak (the whole permutation if shorter),
# and of the negative-positive mask: 16 entries of a permutation of n >= 16 values carry at
# least 44 bits, 64 mask bits 64 bits, so a chance match in real weights is out of reach.
PERM_WINDOW = 16
MASK_WINDOW = 64
# A window with less information than this matches by chance somewhere; a secret that small
# (a block permutation of <= 12 blocks, a mask shorter than 32) is brute-forced anyway.
MIN_WINDOW_BITS = 32.0

# Raw numeric encodings the guard reads every non-safetensors file as, at every alignment.
_RAW_INT_VIEWS = (
    ("u1", "uint8"),
    ("<u2", "int16 little-endian"),
    (">u2", "int16 big-endian"),
    ("<u4", "int32 little-endian"),
    (">u4", "int32 big-endian"),
    ("<i8", "int64 little-endian"),
    (">i8", "int64 big-endian"),
)
_RAW_FLOAT_VIEWS = (
    ("<f2", "float16 little-endian"),
    (">f2", "float16 big-endian"),
    ("<f4", "float32 little-endian"),
    (">f4", "float32 big-endian"),
    ("<f8", "float64 little-endian"),
    (">f8", "float64 big-endian"),
    ("<bf16", "bfloat16 little-endian"),
    (">bf16", "bfloat16 big-endian"),
)
# Integers (also as floats such as 3.0) and JSON booleans, not inside words or dotted names.
_NUMBER_RE = re.compile(
    r"(?<!\w)(?<!\d\.)(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|True|False)(?!\w|\.\d)"
)
_WORDISH_RE = re.compile(r"[A-Za-z0-9_]")


@dataclass(frozen=True)
class Finding:
    """Key material found in a file.

    ``key_derived_weights`` marks the one finding an owner may knowingly accept: the model's P
    is exactly the key's block permutation (a converted model, or a hardened P).
    """

    file: str
    what: str
    where: str
    key_derived_weights: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.what} ({self.where})"


@dataclass(frozen=True)
class _Secret:
    """One key sequence and how to recognise ``window`` consecutive entries of it."""

    name: str
    values: np.ndarray
    window: int
    successor: np.ndarray | None = None  # permutations: value -> next value, -2 after the last
    codes: np.ndarray | None = None  # the mask: every window packed into a uint64

    @property
    def is_mask(self) -> bool:
        return self.codes is not None


def _permutation_bits(length: int, window: int) -> float:
    return sum(math.log2(length - i) for i in range(window))


def _permutation_secret(name: str, perm: np.ndarray) -> _Secret | None:
    window = min(PERM_WINDOW, len(perm))
    if _permutation_bits(len(perm), window) < MIN_WINDOW_BITS:
        return None
    # -2, not -1: -1 stands for "not an integer" in the scanned values and must never follow
    successor = np.full(len(perm), -2, dtype=np.int64)
    successor[perm[:-1]] = perm[1:]
    return _Secret(name, perm, window, successor=successor)


def _pack_windows(bits: np.ndarray, window: int) -> np.ndarray:
    """Every ``window``-long run of 0/1 values as one uint64 (bit j = entry j)."""
    bits = bits.astype(np.uint64)
    count = len(bits) - window + 1
    packed = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(window):
        packed |= bits[j : j + count] << np.uint64(j)
    return packed


def _mask_secret(mask: np.ndarray) -> _Secret | None:
    window = min(MASK_WINDOW, len(mask))
    if window < MIN_WINDOW_BITS:
        return None
    codes = _pack_windows(mask, window)
    full = np.uint64((1 << window) - 1) if window < 64 else np.uint64(2**64 - 1)
    codes = codes[(codes != 0) & (codes != full)]  # constant runs are not secret
    if codes.size == 0:
        return None
    return _Secret("np_mask (K3)", mask, window, codes=np.unique(codes))


def _secrets(key: BlockKey) -> list[_Secret]:
    block = key.block_perm.numpy()
    pixel = key.pixel_perm.numpy()
    candidates = [
        _permutation_secret("block_perm (K1)", block),
        _permutation_secret("inverse of block_perm (K1)", np.argsort(block)),
        _permutation_secret("pixel_perm (K2)", pixel),
        _permutation_secret("inverse of pixel_perm (K2)", np.argsort(pixel)),
        _mask_secret(key.np_mask.numpy().astype(np.int64)),
    ]
    secrets, seen = [], set()
    for s in candidates:
        if s is not None and s.values.tobytes() not in seen:  # an involution is its own inverse
            seen.add(s.values.tobytes())
            secrets.append(s)
    return secrets


def _true_runs(flags: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of the maximal runs of True at least ``min_len`` long, end exclusive."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= min_len
    return list(zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))


def _permutation_hits(values: np.ndarray, secret: _Secret) -> list[int]:
    """Start indices of runs of ``values`` that follow the secret's order for a whole window.

    A permutation has each value once, so ``window`` consecutive values match a window of it
    exactly when each value is followed by its successor: one vectorised pass, no hashing.
    """
    if len(values) < secret.window:
        return []
    a, b = values[:-1], values[1:]
    inside = np.flatnonzero((a >= 0) & (a < len(secret.values)))
    follows = np.zeros(len(a), dtype=bool)
    follows[inside] = secret.successor[a[inside]] == b[inside]
    hits = []
    for start, end in _true_runs(follows, secret.window - 1):
        run = values[start : end + 1]
        # an arithmetic progression (0, 1, 2, ...) is not secret even where the key has one
        if np.any(np.diff(run, 2) != 0):
            hits.append(start)
    return hits


def _mask_hits(values: np.ndarray, secret: _Secret) -> list[int]:
    hits = []
    for start, end in _true_runs((values == 0) | (values == 1), secret.window):
        packed = _pack_windows(values[start:end], secret.window)
        found = np.flatnonzero(np.isin(packed, secret.codes))
        if found.size:
            hits.append(start + int(found[0]))
    return hits


def _hits(values: np.ndarray, secret: _Secret) -> list[int]:
    return _mask_hits(values, secret) if secret.is_mask else _permutation_hits(values, secret)


def _what(secret: _Secret) -> str:
    if secret.window == len(secret.values):
        return f"the whole {secret.name}"
    unit = "bits" if secret.is_mask else "values"
    return f"{secret.window}+ consecutive {unit} of {secret.name}"


def _float_to_ints(values: np.ndarray) -> np.ndarray:
    """Integer-valued floats as int64 (5.0 -> 5); anything else -1, which no key holds."""
    values = values.astype(np.float64, copy=False)
    out = np.full(values.shape, -1, dtype=np.int64)
    ok = np.isfinite(values) & (np.abs(values) < 2**53)
    ok[ok] = values[ok] == np.round(values[ok])
    out[ok] = values[ok].astype(np.int64)
    return out


def _scan_values(
    values: np.ndarray, secrets: list[_Secret], file: str, where: Callable[[int], str]
) -> list[Finding]:
    findings = []
    for secret in secrets:
        hits = _hits(values, secret)
        if hits:
            findings.append(Finding(file, _what(secret), where(hits[0])))
    return findings


def _raw_view(data: bytes, dtype: str, offset: int) -> np.ndarray:
    if dtype.endswith("bf16"):  # numpy has no bfloat16: widen the 16 bits to a float32
        halves = np.frombuffer(
            data, dtype=dtype[0] + "u2", offset=offset, count=_count(data, 2, offset)
        )
        return _float_to_ints((halves.astype(np.uint32) << 16).view(np.float32))
    width = np.dtype(dtype).itemsize
    view = np.frombuffer(data, dtype=dtype, offset=offset, count=_count(data, width, offset))
    return _float_to_ints(view) if view.dtype.kind == "f" else view.astype(np.int64)


def _count(data: bytes, width: int, offset: int) -> int:
    return max((len(data) - offset) // width, 0)


def _scan_raw(data: bytes, secrets: list[_Secret], file: str, what: str = "") -> list[Finding]:
    """Read the bytes as integers and floats of every common width, order and alignment."""
    first: dict[str, tuple[int, str]] = {}  # secret -> (byte position, encoding)
    for dtype, label in _RAW_INT_VIEWS + _RAW_FLOAT_VIEWS:
        width = 2 if dtype.endswith("bf16") else np.dtype(dtype).itemsize
        # bytes hold only values below 256: skip permutations that do not fit in them
        usable = [s for s in secrets if width > 1 or s.is_mask or len(s.values) <= 256]
        for offset in range(width):
            if _count(data, width, offset) < 2:
                continue
            values = _raw_view(data, dtype, offset)
            for secret in usable:
                hits = _hits(values, secret)
                # the earliest position names the encoding that was written, not a shifted
                # reading of it (big-endian int16 at byte 4 also reads as little-endian at 5)
                if hits and offset + hits[0] * width < first.get(secret.name, (len(data),))[0]:
                    first[secret.name] = (offset + hits[0] * width, label)
    return [
        Finding(
            file,
            _what(secret),
            f"{what}raw {first[secret.name][1]} values at byte {first[secret.name][0]}",
        )
        for secret in secrets
        if secret.name in first
    ]


def _first_per_secret(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        if f.what not in seen:
            seen.add(f.what)
            out.append(f)
    return out


def _text_sequences(text: str) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Runs of numbers separated only by punctuation or space: ``[3, 1, 4]``, ``3 1 4``,
    ``3;1;4``, ``3.0, 1.0``, ``true, false``. Yields (values, character positions)."""
    values: list[int] = []
    positions: list[int] = []
    last_end = 0
    for m in _NUMBER_RE.finditer(text):
        if values and _WORDISH_RE.search(text, last_end, m.start()):
            yield np.asarray(values, dtype=np.int64), positions
            values, positions = [], []
        token = m.group(1)
        values.append(_token_value(token))
        positions.append(m.start())
        last_end = m.end()
    if values:
        yield np.asarray(values, dtype=np.int64), positions


def _token_value(token: str) -> int:
    if token in ("true", "True"):
        return 1
    if token in ("false", "False"):
        return 0
    number = float(token)
    return int(number) if number.is_integer() and abs(number) < 2**53 else -1


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _scan_text(text: str, secrets: list[_Secret], file: str, what: str = "") -> list[Finding]:
    """Numbers written as text, and the mask as a string of 0 and 1 characters."""
    findings = []
    for values, positions in _text_sequences(text):
        if len(values) < 2:
            continue
        findings += _scan_values(
            values,
            secrets,
            file,
            lambda i, p=positions: f"{what}numbers in text at line {_line(text, p[i])}",
        )
    for secret in (s for s in secrets if s.is_mask):
        for m in re.finditer(f"[01]{{{secret.window},}}", text):
            bits = np.frombuffer(m.group().encode(), dtype=np.uint8).astype(np.int64) - 48
            hits = _mask_hits(bits, secret)
            if hits:
                line = _line(text, m.start() + hits[0])
                findings.append(Finding(file, _what(secret), f"{what}0/1 string at line {line}"))
                break
    return _first_per_secret(findings)


def _scan_key_file(data: bytes, key: BlockKey | None, file: str) -> list[Finding]:
    """A copy of the key file (or of any key file of this scheme, even without ``key``)."""
    if key is not None and key.to_json().encode() in data:
        return [Finding(file, "a copy of the key file", "key.to_json() verbatim")]
    if SCHEME.encode() in data and b'"pixel_perm"' in data and b'"block_perm"' in data:
        return [Finding(file, f"a {SCHEME} key file", "fields scheme, block_perm, pixel_perm")]
    return []


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_safetensors(data: bytes) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(header, tensors) of a safetensors file, or None if ``data`` is not one."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + size])
        tensors = safetensors.torch.load(data)
    except Exception:  # noqa: BLE001 - any parse failure means "not safetensors": scan as raw
        return None
    return (header, tensors) if isinstance(header, dict) else None


def _permutation_of_matrix(t: torch.Tensor) -> np.ndarray | None:
    """For an exact 0/1 permutation matrix, the column of each row's 1; else None."""
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2 or t.is_complex():
        return None
    a = t.detach().cpu().double().numpy()
    if not np.isin(a, (0.0, 1.0)).all():
        return None
    if not ((a.sum(0) == 1).all() and (a.sum(1) == 1).all()):
        return None
    return a.argmax(1)


def _permutation_of_tensor(name: str, t: torch.Tensor) -> np.ndarray | None:
    """The block order a model tensor states outright: P as an exact 0/1 permutation matrix
    (``P[i, order[i]] = 1``), or a hardened P's gather index (``<module>.source``)."""
    if name.endswith(".source") and t.ndim == 1 and not t.is_floating_point():
        source = t.to(torch.int64).numpy()
        if np.array_equal(np.sort(source), np.arange(len(source))):
            return np.argsort(source)  # P[source[j], j] = 1
        return None
    return _permutation_of_matrix(t)


def _scan_permutation_tensor(
    name: str, t: torch.Tensor, key: BlockKey | None, file: str
) -> tuple[bool, list[Finding]]:
    """(is a permutation P, findings). With a key: flag P equal to the key's block order (or
    its inverse). Without one: flag any P that is not the identity, which cannot be checked."""
    order = _permutation_of_tensor(name, t)
    if order is None:
        return False, []
    where = f"safetensors tensor {name!r}"
    if key is not None:
        block = key.block_perm.numpy()
        if len(order) == len(block) and (
            np.array_equal(order, block) or np.array_equal(order, np.argsort(block))
        ):
            what = "the key's block permutation as an exact permutation matrix P"
            return True, [Finding(file, what, where, key_derived_weights=True)]
        return True, []
    if np.array_equal(order, np.arange(len(order))):
        return True, []
    what = "an exact (non-identity) permutation matrix P, possibly the key's block order"
    return True, [Finding(file, what, f"{where}; no key given to check", key_derived_weights=True)]


def _tensor_values(t: torch.Tensor) -> np.ndarray | None:
    if t.is_complex():
        return None
    if t.dtype == torch.bool:
        return t.numpy().astype(np.int64).ravel()
    if t.is_floating_point():
        return _float_to_ints(t.double().numpy().ravel())
    return t.to(torch.int64).numpy().ravel()


def _scan_safetensors(
    header: dict, tensors: dict[str, torch.Tensor], secrets: list[_Secret], key, file: str
) -> list[Finding]:
    """Each tensor at its own dtype (floats holding integers too), byte tensors also as raw
    encodings, the header, and every metadata string."""
    layout = {k: v for k, v in header.items() if k != "__metadata__"}
    findings = _scan_text(json.dumps(layout), secrets, file, "safetensors header: ")
    for k, v in (header.get("__metadata__") or {}).items():
        findings += _scan_text(str(v), secrets, file, f"safetensors metadata {k!r}: ")
        findings += _scan_key_file(str(v).encode(), key, file)
    for name, t in tensors.items():
        is_perm, found = _scan_permutation_tensor(name, t, key, file)
        findings += found
        values = None if is_perm else _tensor_values(t)
        if values is None:
            continue
        where = f"safetensors tensor {name!r} ({str(t.dtype).removeprefix('torch.')})"
        found = _scan_values(values, secrets, file, lambda i, w=where: f"{w} at element {i}")
        if t.element_size() == 1:  # a byte tensor may hold any other encoding
            found += _scan_raw(t.view(torch.uint8).numpy().tobytes(), secrets, file, f"{where}: ")
        findings += _first_per_secret(found)
    return findings


def _scan_file(path: Path, file: str, key: BlockKey | None, secrets: list[_Secret]) -> list:
    data = path.read_bytes()
    findings = _scan_key_file(data, key, file)
    parsed = _read_safetensors(data)
    if parsed is not None:
        return findings + _scan_safetensors(*parsed, secrets, key, file)
    findings += _scan_raw(data, secrets, file)
    text = _utf8(data)
    if text is not None:
        findings += _scan_text(text, secrets, file)
    return findings


def _files_to_scan(paths_or_folder) -> list[tuple[Path, str]]:
    """(path, display name): a folder's files recursively, named relative to it."""
    items = (
        [paths_or_folder]
        if isinstance(paths_or_folder, (str, os.PathLike))
        else list(paths_or_folder)
    )
    files = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file())
            files += [(p, p.relative_to(item).as_posix()) for p in found]
        elif item.is_file():
            files.append((item, item.name))
        else:
            raise HubError(f"nothing to scan at {item}: no such file or folder")
    return files


def scan_for_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike], key: BlockKey | None
) -> list[Finding]:
    """Look for ``key``'s secrets in files: the block and pixel permutations (and their
    inverses) and the negative-positive mask, as JSON or text numbers (any separators or
    brackets), raw integers of 1, 2, 4 or 8 bytes and floats of 2, 4 or 8 bytes (either byte
    order, any alignment), safetensors tensors of any dtype and safetensors metadata, the mask
    as a 0/1 string, and copies of the key file. A leak is ``PERM_WINDOW`` consecutive entries
    (the whole permutation if shorter) or ``MASK_WINDOW`` mask bits; arithmetic progressions
    never count. A model tensor that is exactly the key's block permutation matrix is reported
    with ``key_derived_weights=True``. Without ``key``, only key files and exact permutation
    matrices are found.

    Example:
        >>> findings = scan_for_key_material("out/tiny", key)  # doctest: +SKIP
        >>> [str(f) for f in findings]  # doctest: +SKIP
        ['config.json: 16+ consecutive values of pixel_perm (K2) (numbers in text at line 12)']
    """
    secrets = _secrets(key) if key is not None else []
    findings: list[Finding] = []
    for path, name in _files_to_scan(paths_or_folder):
        findings += _scan_file(path, name, key, secrets)
    return findings


def assert_no_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
    key: BlockKey | None,
    *,
    allow_key_derived_weights: bool = False,
) -> list[Finding]:
    """:func:`scan_for_key_material`, raising :class:`KeyMaterialError` on any finding (but
    the key-derived P an owner accepts with ``allow_key_derived_weights=True``, which is
    returned). The message names each file and what was found in it, on one line.

    Example:
        >>> assert_no_key_material("out/tiny", key)  # doctest: +SKIP
    """
    findings = scan_for_key_material(paths_or_folder, key)
    refused = [f for f in findings if not (allow_key_derived_weights and f.key_derived_weights)]
    if refused:
        raise KeyMaterialError(_refusal_message(refused), refused)
    return findings


def _refusal_message(findings: list[Finding]) -> str:
    shown = "; ".join(str(f) for f in findings[:6])
    more = f"; and {len(findings) - 6} more" if len(findings) > 6 else ""
    if all(f.key_derived_weights for f in findings):
        advice = (
            "the weights state the key's block order (a converted model, or a hardened P): "
            "publishing them reveals that part of the key; pass allow_key_derived_weights=True "
            "(--allow-key-derived-weights) only if you knowingly publish such a model"
        )
    else:
        advice = (
            "remove it from those files: keys, permutations and masks never go into configs, "
            "cards, metadata or extra files (only the fingerprint may)"
        )
    return f"refusing to share: key material found: {shown}{more}; {advice}"
