"""How a key's secrets look inside a file: windows of its permutations and masks (and of any
other secret sequence of a scheme), found in numbers written as text and in raw integers or
floats of every width, byte order and alignment.

Every scheme's key lists its secret fields (``SchemeKey.secret_items``). A one-row
permutation is found by its successor relation (and so is its inverse); a 0/1 mask by its
packed windows; any other secret sequence (several permutations stored row after row, such as
ELE's per-block shuffles or EtC's channel orders, and codes such as EtC's rotations) by a hash
of every window long enough to hold 64 bits of secret (the inverses of such row-wise
permutations are not looked for).

Used by the leak guard (:mod:`timm_ppconvmixer.hub.leak_guard`); what it detects and what it
cannot is listed in ``docs/hub.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..key import SchemeKey

__all__ = ["MASK_WINDOW", "MIN_WINDOW_BITS", "PERM_WINDOW", "Finding"]

# Consecutive entries of a permutation that count as a leak (the whole permutation if shorter),
# and of the negative-positive mask: 16 entries of a permutation of n >= 16 values carry at
# least 44 bits, 64 mask bits 64 bits, so a chance match in real weights is out of reach.
PERM_WINDOW = 16
MASK_WINDOW = 64
# A window with less information than this matches by chance somewhere; a secret that small
# (a block permutation of <= 12 blocks, a mask shorter than 32) is brute-forced anyway.
MIN_WINDOW_BITS = 32.0
# Secret bits in a window of any other secret sequence (the mask's 64, for the same reason).
SEQUENCE_WINDOW_BITS = 64.0
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: windows of small integers hash apart

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
    is exactly the key's block permutation (a converted model, or a hardened P). ``warning``
    marks a finding that is reported but never refuses a share: a learned P close to a
    permutation, which states much of the block order without being exactly it.
    """

    file: str
    what: str
    where: str
    key_derived_weights: bool = False
    warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        return f"{prefix}{self.file}: {self.what} ({self.where})"


@dataclass(frozen=True)
class Secret:
    """One key sequence and how to recognise ``window`` consecutive entries of it."""

    name: str
    values: np.ndarray
    window: int
    successor: np.ndarray | None = None  # permutations: value -> next value, -2 after the last
    codes: np.ndarray | None = None  # the mask: every window packed into a uint64
    hashes: np.ndarray | None = None  # other sequences: a hash of every window, sorted

    @property
    def is_mask(self) -> bool:
        return self.codes is not None

    @property
    def is_sequence(self) -> bool:
        return self.hashes is not None

    @property
    def alphabet(self) -> int:
        """Secret values lie in 0..alphabet-1."""
        return 2 if self.is_mask else int(self.values.max(initial=0)) + 1


def _permutation_bits(length: int, window: int) -> float:
    return sum(math.log2(length - i) for i in range(window))


def _permutation_secret(name: str, perm: np.ndarray) -> Secret | None:
    window = min(PERM_WINDOW, len(perm))
    if _permutation_bits(len(perm), window) < MIN_WINDOW_BITS:
        return None
    # -2, not -1: -1 stands for "not an integer" in the scanned values and must never follow
    successor = np.full(len(perm), -2, dtype=np.int64)
    successor[perm[:-1]] = perm[1:]
    return Secret(name, perm, window, successor=successor)


def _pack_windows(bits: np.ndarray, window: int) -> np.ndarray:
    """Every ``window``-long run of 0/1 values as one uint64 (bit j = entry j)."""
    bits = bits.astype(np.uint64)
    count = len(bits) - window + 1
    packed = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(window):
        packed |= bits[j : j + count] << np.uint64(j)
    return packed


def _mask_secret(name: str, mask: np.ndarray) -> Secret | None:
    window = min(MASK_WINDOW, len(mask))
    if window < MIN_WINDOW_BITS:
        return None
    codes = _pack_windows(mask, window)
    full = np.uint64((1 << window) - 1) if window < 64 else np.uint64(2**64 - 1)
    codes = codes[(codes != 0) & (codes != full)]  # constant runs are not secret
    if codes.size == 0:
        return None
    return Secret(name, mask, window, codes=np.unique(codes))


def _window_hashes(values: np.ndarray, window: int) -> np.ndarray:
    """A 64-bit polynomial hash of every ``window``-long run of ``values`` (wrapping)."""
    v = values.astype(np.uint64)
    count = len(v) - window + 1
    hashes = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(window):
        hashes = hashes * _HASH_BASE + v[j : j + count]
    return hashes


def _progression_starts(values: np.ndarray, window: int) -> np.ndarray:
    """Which windows are arithmetic progressions (constant runs included): not secret."""
    if window < 3:
        return np.zeros(len(values) - window + 1, dtype=bool)
    bends = np.concatenate(([0], np.cumsum(np.diff(values, 2) != 0)))
    return bends[window - 2 :] - bends[: len(values) - window + 1] == 0


def _sequence_secret(name: str, values: np.ndarray, bits_per_value: float) -> Secret | None:
    if bits_per_value <= 0 or bits_per_value * len(values) < MIN_WINDOW_BITS:
        return None
    window = min(len(values), math.ceil(SEQUENCE_WINDOW_BITS / bits_per_value))
    hashes = _window_hashes(values, window)[~_progression_starts(values, window)]
    if hashes.size == 0:
        return None
    return Secret(name, values, window, hashes=np.unique(hashes))


def _field_secrets(field, values: np.ndarray) -> list[Secret | None]:
    flat = values.reshape(-1)
    if field.kind == "bits":
        return [_mask_secret(field.label, flat)]
    if field.kind == "perm" and len(field.shape) == 1:
        return [
            _permutation_secret(field.label, flat),
            _permutation_secret(f"inverse of {field.label}", np.argsort(flat)),
        ]
    return [_sequence_secret(field.label, flat, field.entropy_per_value())]


def key_secrets(key: SchemeKey) -> list[Secret]:
    """What the leak guard looks for, for a key of any scheme (none for pe-per-image)."""
    if key.per_image:
        return []
    candidates = [s for f, values in key.secret_items() for s in _field_secrets(f, values)]
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


def _permutation_hits(values: np.ndarray, secret: Secret) -> list[int]:
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


def _mask_hits(values: np.ndarray, secret: Secret) -> list[int]:
    hits = []
    for start, end in _true_runs((values == 0) | (values == 1), secret.window):
        packed = _pack_windows(values[start:end], secret.window)
        found = np.flatnonzero(np.isin(packed, secret.codes))
        if found.size:
            hits.append(start + int(found[0]))
    return hits


def _sequence_hits(values: np.ndarray, secret: Secret) -> list[int]:
    hits = []
    inside = (values >= 0) & (values < secret.alphabet)  # hash only runs that could match
    for start, end in _true_runs(inside, secret.window):
        hashes = _window_hashes(values[start:end], secret.window)
        found = np.flatnonzero(np.isin(hashes, secret.hashes))
        if found.size:
            hits.append(start + int(found[0]))
    return hits


def _hits(values: np.ndarray, secret: Secret) -> list[int]:
    if secret.is_mask:
        return _mask_hits(values, secret)
    if secret.is_sequence:
        return _sequence_hits(values, secret)
    return _permutation_hits(values, secret)


def _what(secret: Secret) -> str:
    if secret.window == len(secret.values):
        return f"the whole {secret.name}"
    unit = "bits" if secret.is_mask else "values"
    return f"{secret.window}+ consecutive {unit} of {secret.name}"


def float_to_ints(values: np.ndarray) -> np.ndarray:
    """Integer-valued floats as int64 (5.0 -> 5); anything else -1, which no key holds."""
    with np.errstate(invalid="ignore"):  # raw bytes read as floats hold signalling NaNs
        values = values.astype(np.float64, copy=False)
    out = np.full(values.shape, -1, dtype=np.int64)
    ok = np.isfinite(values) & (np.abs(values) < 2**53)
    ok[ok] = values[ok] == np.round(values[ok])
    out[ok] = values[ok].astype(np.int64)  # only finite, exact integers are cast
    return out


def scan_values(
    values: np.ndarray, secrets: list[Secret], file: str, where: Callable[[int], str]
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
        return float_to_ints((halves.astype(np.uint32) << 16).view(np.float32))
    width = np.dtype(dtype).itemsize
    view = np.frombuffer(data, dtype=dtype, offset=offset, count=_count(data, width, offset))
    return float_to_ints(view) if view.dtype.kind == "f" else view.astype(np.int64)


def _count(data: bytes, width: int, offset: int) -> int:
    return max((len(data) - offset) // width, 0)


def scan_raw(data: bytes, secrets: list[Secret], file: str, what: str = "") -> list[Finding]:
    """Read the bytes as integers and floats of every common width, order and alignment."""
    first: dict[str, tuple[int, str]] = {}  # secret -> (byte position, encoding)
    for dtype, label in _RAW_INT_VIEWS + _RAW_FLOAT_VIEWS:
        width = 2 if dtype.endswith("bf16") else np.dtype(dtype).itemsize
        # bytes hold only values below 256: skip permutations that do not fit in them
        usable = [s for s in secrets if width > 1 or s.alphabet <= 256]
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


def first_per_secret(findings: list[Finding]) -> list[Finding]:
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


def scan_text(text: str, secrets: list[Secret], file: str, what: str = "") -> list[Finding]:
    """Numbers written as text, and the mask as a string of 0 and 1 characters."""
    findings = []
    for values, positions in _text_sequences(text):
        if len(values) < 2:
            continue
        findings += scan_values(
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
    return first_per_secret(findings)
