"""How a key's secrets look inside a file: windows of its permutations and masks (and of any
other secret sequence of a scheme), found in numbers written as text, in raw integers or
floats of every width, byte order and alignment, in masks packed 8 bits to a byte, and in hex
and base64 text of any of these; and the key's salt, raw, as hex or as base64.

Every scheme's key lists its secret fields (``SchemeKey.secret_items``). A one-row
permutation is found by its successor relation (and so is its inverse); a 0/1 mask by its
windows packed into integers (as values, and as the bytes ``numpy.packbits`` makes of them,
either bit order, at any bit phase); any other secret sequence (several permutations stored
row after row, such as ELE's per-block shuffles or EtC's channel orders, their row-wise
inverses, and codes such as EtC's rotations) by a hash of every window long enough to hold 64
bits of secret.

Used by the leak guard (:mod:`timm_ppconvmixer.hub.leak_guard`); what it detects and what it
cannot is listed in ``docs/hub.md``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..key import SchemeKey

__all__ = ["MASK_WINDOW", "MIN_WINDOW_BITS", "PERM_WINDOW", "Finding"]

SALT_WHAT = "the key's salt"

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
# Packed mask bits: a run of MASK_WINDOW bits packed from any bit phase holds 7 whole bytes
# (the whole bytes of a shorter mask); their bits are looked for, if there are 40 or more (a
# shorter byte pattern occurs by chance in a large file).
MIN_PACKED_BITS = 40

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
# \n, \t, \r as JSON and YAML write them inside strings: separators, like the characters
_ESCAPE_RE = re.compile(r"\\[ntr]")
# Hex and base64 text (standard or URL-safe; lines may be broken, also as \n escapes), long
# enough to hold the shortest secret the guard finds in bytes: 5 bytes of packed mask bits.
_HEX_RE = re.compile(rb"[0-9a-fA-F]{10,}")
_BASE64_RE = re.compile(rb"[A-Za-z0-9+/_-]{7,}(?:(?:\r?\n|\\n)[A-Za-z0-9+/_-]{4,})*={0,2}")
# Text inside a binary file (PNG text chunks, pickled strings, string columns): printable runs
# as long as the shortest of those.
_PRINTABLE_RE = re.compile(rb"[\t\n\r\x20-\x7e]{7,}")
_LINE_BREAK_RE = re.compile(rb"\r?\n|\\n|=")
SEPARATOR = b"\xff" * 8  # between decoded pieces: no secret value reads through it


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
    packed: np.ndarray | None = None  # the mask: ``packed_bits``-bit windows as packbits makes
    packed_bits: int = 0  # them (either bit order), read as big-endian integers, sorted
    salt: bytes | None = None  # the key's salt, found as bytes

    @property
    def is_mask(self) -> bool:
        return self.codes is not None

    @property
    def is_sequence(self) -> bool:
        return self.hashes is not None

    @property
    def is_salt(self) -> bool:
        return self.salt is not None

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


def _byte_packed_windows(bits: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-bit run of ``bits`` (``width`` a multiple of 8, at most 64) as the bytes
    ``numpy.packbits`` makes of it, big and little bit order, read as one big-endian integer."""
    bits = bits.astype(np.uint64)
    count = len(bits) - width + 1
    big = np.zeros(max(count, 0), dtype=np.uint64)
    little = np.zeros_like(big)
    for j in range(width):
        run = bits[j : j + count]
        big |= run << np.uint64(width - 1 - j)
        little |= run << np.uint64(width - 8 * (j // 8 + 1) + j % 8)
    return np.concatenate([big, little])


def _mask_secret(name: str, mask: np.ndarray) -> Secret | None:
    window = min(MASK_WINDOW, len(mask))
    if window < MIN_WINDOW_BITS:
        return None
    codes = _pack_windows(mask, window)
    full = np.uint64((1 << window) - 1) if window < 64 else np.uint64(2**64 - 1)
    codes = codes[(codes != 0) & (codes != full)]  # constant runs are not secret
    if codes.size == 0:
        return None
    width = 8 * ((window - 7) // 8)  # whole bytes of a window packed from any bit phase
    packed = None
    if width >= MIN_PACKED_BITS:
        packed = _byte_packed_windows(mask, width)
        ones = np.uint64((1 << width) - 1)
        packed = np.unique(packed[(packed != 0) & (packed != ones)])
    return Secret(name, mask, window, codes=np.unique(codes), packed=packed, packed_bits=width)


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
    bits = field.entropy_per_value()
    found = [_sequence_secret(field.label, flat, bits)]
    if field.kind == "perm":  # several permutations row after row: each row's inverse too
        inverse = np.argsort(values.reshape(-1, field.shape[-1]), axis=1).reshape(-1)
        found.append(_sequence_secret(f"inverse of {field.label}", inverse, bits))
    return found


def _salt_of(key: SchemeKey) -> bytes:
    # the key file is the one public way to the salt (it is as secret as the rest of the file)
    return bytes.fromhex(json.loads(key.to_json()).get("salt", ""))


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
    salt = _salt_of(key)
    if salt:
        secrets.append(Secret("salt", np.frombuffer(salt, np.uint8), len(salt), salt=salt))
    return secrets


def _true_runs(flags: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of the maximal runs of True at least ``min_len`` long, end exclusive."""
    return _index_runs(np.flatnonzero(flags), min_len)  # few in most data: work on those


def _index_runs(at: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of the maximal runs of consecutive integers in sorted ``at``."""
    if at.size < max(min_len, 1):
        return []
    breaks = np.flatnonzero(np.diff(at) != 1)
    starts = np.concatenate((at[:1], at[breaks + 1]))
    ends = np.concatenate((at[breaks], at[-1:])) + 1
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
    follows = inside[secret.successor[a[inside]] == b[inside]]  # a is followed by its successor
    hits = []
    for start, end in _index_runs(follows, secret.window - 1):
        run = values[start : end + 1]
        # an arithmetic progression (0, 1, 2, ...) is not secret even where the key has one
        if np.any(np.diff(run, 2) != 0):
            hits.append(start)
    return hits


_FILTER_BITS = 20
_FILTER_MULT = np.uint64(0x9E3779B97F4A7C15)


def _in_sorted(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``np.isin(values, table)`` for a sorted, unique uint64 ``table`` (a secret's windows),
    without sorting it again on every call; many values first pass a bit filter of the
    table's hashes, so only the few that pass are looked up."""
    found = np.zeros(values.shape, dtype=bool)
    if table.size == 0 or values.size == 0:
        return found
    if values.size > 1 << 16:
        shift = np.uint64(64 - _FILTER_BITS)
        bits = np.zeros(1 << _FILTER_BITS, dtype=bool)
        bits[(table * _FILTER_MULT) >> shift] = True
        candidates = np.flatnonzero(bits[(values.astype(np.uint64) * _FILTER_MULT) >> shift])
    else:
        candidates = np.arange(values.size)
    chosen = values[candidates]
    at = np.searchsorted(table, chosen).clip(max=table.size - 1)
    found[candidates[table[at] == chosen]] = True
    return found


def _mask_hits(values: np.ndarray, secret: Secret) -> list[int]:
    hits = []
    for start, end in _true_runs((values == 0) | (values == 1), secret.window):
        packed = _pack_windows(values[start:end], secret.window)
        found = np.flatnonzero(_in_sorted(packed, secret.codes))
        if found.size:
            hits.append(start + int(found[0]))
    return hits


def _sequence_hits(values: np.ndarray, secret: Secret) -> list[int]:
    hits = []
    inside = (values >= 0) & (values < secret.alphabet)  # hash only runs that could match
    for start, end in _true_runs(inside, secret.window):
        hashes = _window_hashes(values[start:end], secret.window)
        found = np.flatnonzero(_in_sorted(hashes, secret.hashes))
        if found.size:
            hits.append(start + int(found[0]))
    return hits


def _hits(values: np.ndarray, secret: Secret) -> list[int]:
    if secret.is_salt:  # bytes, found in bytes (scan_raw)
        return []
    if secret.is_mask:
        return _mask_hits(values, secret)
    if secret.is_sequence:
        return _sequence_hits(values, secret)
    return _permutation_hits(values, secret)


def _what(secret: Secret) -> str:
    if secret.is_salt:
        return SALT_WHAT
    if secret.window == len(secret.values):
        return f"the whole {secret.name}"
    unit = "bits" if secret.is_mask else "values"
    return f"{secret.window}+ consecutive {unit} of {secret.name}"


def float_to_ints(values: np.ndarray) -> np.ndarray:
    """Non-negative integer-valued floats as int64 (5.0 -> 5); anything else -1 (negative
    values too: no key holds them)."""
    out = np.full(values.shape, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):  # raw bytes read as floats hold signalling NaNs
        finite = (values >= 0) & (values <= np.finfo(values.dtype).max)  # NaN compares False
        at = np.flatnonzero(finite)
        chosen = values.reshape(-1)[at].astype(np.float64)
    whole = (chosen == np.floor(chosen)) & (chosen < 2**53)
    out.reshape(-1)[at[whole]] = chosen[whole].astype(np.int64)  # only exact integers are cast
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


def _packed_hits(data: bytes, secret: Secret) -> list[int]:
    """Byte positions where ``packed_bits`` bits of the mask start, packed 8 to a byte."""
    width = secret.packed_bits // 8
    if secret.packed is None or len(data) < width:
        return []
    padded = data + bytes(8)  # every position gets a whole 8-byte word
    shift = np.uint64(64 - secret.packed_bits)
    last = len(data) - width  # the last position with ``width`` bytes of data
    hits = []
    for offset in range(8):
        words = np.frombuffer(padded, ">u8", offset=offset, count=(len(padded) - offset) // 8)
        tops = words >> shift
        found = offset + 8 * np.flatnonzero(_in_sorted(tops, secret.packed))
        found = found[found <= last]
        if found.size:
            hits.append(int(found[0]))
    return [min(hits)] if hits else []


def _scan_numbers(data: bytes, secrets: list[Secret]) -> dict[str, tuple[int, str]]:
    """The bytes as integers and floats of every width, order and alignment, packed mask
    bits, and the salt: secret name -> (first byte position, encoding)."""
    first: dict[str, tuple[int, str]] = {}  # secret -> (byte position, encoding)

    def note(secret: Secret, position: int, label: str) -> None:
        if position < first.get(secret.name, (len(data),))[0]:
            first[secret.name] = (position, label)

    for secret in secrets:
        if secret.is_salt and (position := data.find(secret.salt)) >= 0:
            note(secret, position, "raw bytes")
        elif secret.is_mask:
            for position in _packed_hits(data, secret):
                note(secret, position, "bits packed 8 to a byte")
    for dtype, label in _RAW_INT_VIEWS + _RAW_FLOAT_VIEWS:
        width = 2 if dtype.endswith("bf16") else np.dtype(dtype).itemsize
        # bytes hold only values below 256: skip permutations that do not fit in them
        usable = [s for s in secrets if not s.is_salt and (width > 1 or s.alphabet <= 256)]
        for offset in range(width):
            if not usable or _count(data, width, offset) < 2:
                continue
            values = _raw_view(data, dtype, offset)
            for secret in usable:
                hits = _hits(values, secret)
                # the earliest position names the encoding that was written, not a shifted
                # reading of it (big-endian int16 at byte 4 also reads as little-endian at 5)
                if hits:
                    note(secret, offset + hits[0] * width, f"raw {label} values")
    return first


def _unwrapped(data: bytes) -> tuple[bytes, bytes]:
    """(hex runs decoded, base64 runs decoded) of ``data``, each piece from every phase (a
    run may begin inside a value), pieces joined by a separator no secret reads through."""
    hexes, b64s = [], []
    for run in _HEX_RE.findall(data):
        hexes += [bytes.fromhex(run[k : k + (len(run) - k) // 2 * 2].decode()) for k in (0, 1)]
    for run in _BASE64_RE.findall(data):
        run = _LINE_BREAK_RE.sub(b"", run).replace(b"-", b"+").replace(b"_", b"/")
        for k in range(4):
            body = run[k:]
            if len(body) % 4 == 1:  # a lone character holds no whole byte
                body = body[:-1]
            b64s.append(base64.b64decode(body + b"=" * (-len(body) % 4)))
    return SEPARATOR.join(hexes), SEPARATOR.join(b64s)


def _scan_wrapped(data: bytes, secrets: list[Secret], file: str, what: str) -> list[Finding]:
    """Hex and base64 text in ``data``, decoded and read as raw numbers, bits and bytes."""
    if not secrets:
        return []
    findings = []
    for decoded, name in zip(_unwrapped(data), ("hex", "base64"), strict=True):
        found = _scan_numbers(decoded, secrets) if decoded else {}
        findings += [
            Finding(file, _what(s), f"{what}{name} text of {found[s.name][1]}")
            for s in secrets
            if s.name in found
        ]
    return first_per_secret(findings)


def printable_text(data: bytes) -> str | None:
    """The text inside binary data (printable runs, one per line), or None without any."""
    runs = _PRINTABLE_RE.findall(data)
    return b"\n".join(runs).decode("ascii") if runs else None


def scan_raw(
    data: bytes, secrets: list[Secret], file: str, what: str = "", *, text: bool = True
) -> list[Finding]:
    """Read the bytes as integers and floats of every common width, order and alignment, as
    packed mask bits and as the salt, and (``text=True``) the text inside them: numbers, hex
    and base64. Leave ``text`` off for UTF-8 data given to :func:`scan_text` as well."""
    first = _scan_numbers(data, secrets)
    findings = []
    for secret in (s for s in secrets if s.name in first):
        position, encoding = first[secret.name]
        findings.append(Finding(file, _what(secret), f"{what}{encoding} at byte {position}"))
    if text and (inside := printable_text(data)) is not None:
        where = f"{what}text inside binary data: "
        known = {f.what for f in findings}
        findings += [f for f in scan_text(inside, secrets, file, where) if f.what not in known]
    return findings


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
    """Numbers written as text, the mask as a string of 0 and 1 characters, and hex and
    base64 text of raw secrets (and of the salt)."""
    findings = []
    escaped = _ESCAPE_RE.sub("  ", text)  # same length: positions and lines stay
    for values, positions in _text_sequences(escaped):
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
    findings += _scan_wrapped(text.encode("utf-8", "surrogatepass"), secrets, file, what)
    return first_per_secret(findings)
