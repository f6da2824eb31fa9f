"""Reading each kind of file the leak guard scans: key files, UTF-8 text, safetensors
(tensors and metadata), parquet (decoded columns and metadata), PNG text chunks, pickles
(torch checkpoints; read opcode by opcode, never unpickled) and any file as raw bytes (with
the text inside binary files)."""

from __future__ import annotations

import io
import json
import os
import pickletools
import zipfile
import zlib
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from ..key import SchemeKey, scheme_file_names
from ..models.permutation import (
    BlockOrderRecovery,
    HardPermutation,
    block_order_of,
    block_order_recovery,
    effective_matrix,
    permutation_closeness,
)
from .errors import HubError
from .key_patterns import (
    SEPARATOR,
    Finding,
    Secret,
    first_per_secret,
    float_to_ints,
    scan_raw,
    scan_text,
    scan_values,
)

__all__ = ["files_to_scan", "scan_file"]


def _scan_key_file(data: bytes, key: SchemeKey | None, file: str) -> list[Finding]:
    """A copy of the key file (or of any scheme's key file, even without ``key``)."""
    if key is not None and not key.per_image and key.to_json().encode() in data:
        return [Finding(file, "a copy of the key file", "key.to_json() verbatim")]
    for scheme, names in scheme_file_names().items():
        if scheme.encode() in data and all(f'"{name}"'.encode() in data for name in names):
            fields = ", ".join(("scheme", *names))
            return [Finding(file, f"a {scheme} key file", f"fields {fields}")]
    return []


def _block_order(key: SchemeKey | None) -> np.ndarray | None:
    """The key's block permutation, for the schemes that have one (blockwise, ELE, EtC)."""
    if key is None or key.per_image:
        return None
    items = {f.name: values for f, values in key.secret_items()}
    return items.get("block_perm")


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


def permutation_of_matrix(t: torch.Tensor) -> np.ndarray | None:
    """For an exact 0/1 permutation matrix, the column of each row's 1; else None."""
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2 or t.is_complex():
        return None
    a = t.detach().cpu().double().numpy()
    if not np.isin(a, (0.0, 1.0)).all():
        return None
    if not ((a.sum(0) == 1).all() and (a.sum(1) == 1).all()):
        return None
    return a.argmax(1)


def _permutation_of_tensor(name: str, t: torch.Tensor) -> torch.Tensor | None:
    """The 0/1 matrix of a tensor that states a block order outright: P as an exact
    permutation matrix, or a hardened P's gather index (``<module>.source``:
    ``P[source[j], j] = 1``, as ``HardPermutation.matrix()``)."""
    if name.endswith(".source") and t.ndim == 1 and not t.is_floating_point():
        source = t.to(torch.int64)
        if not torch.equal(source.sort().values, torch.arange(len(source))):
            return None
        return HardPermutation(source, (len(source), 1)).matrix()
    order = permutation_of_matrix(t)
    return None if order is None else torch.eye(len(order))[torch.as_tensor(order)]


def _key_order_share(matrix: torch.Tensor, key: SchemeKey | None) -> BlockOrderRecovery | None:
    """How much of the key's block order ``matrix`` states (it or its transpose, exact and up
    to the grid's symmetries), or None without a key of that size."""
    block = _block_order(key)
    if block is None or len(block) != matrix.shape[0]:
        return None
    truth = torch.from_numpy(np.asarray(block))
    shares = [block_order_recovery(m, truth, key.grid_size) for m in (matrix, matrix.T)]
    return max(shares, key=lambda r: (r.up_to_symmetry, r.exact))


def _shares(r: BlockOrderRecovery) -> str:
    return (
        f"{100 * r.exact:.0f} % of this key's block order (K1) exactly, "
        f"{100 * r.up_to_symmetry:.0f} % up to the grid's symmetries"
    )


def _scan_permutation_tensor(
    name: str, t: torch.Tensor, key: SchemeKey | None, file: str
) -> tuple[bool, list[Finding]]:
    """(is a permutation P, findings). With a key: flag P holding the key's block order (or
    its inverse, or either up to the grid's rotations and mirrors). Without one: flag any P
    that is not the identity, which cannot be checked."""
    matrix = _permutation_of_tensor(name, t)
    if matrix is None:
        return False, []
    where = f"safetensors tensor {name!r}"
    share = _key_order_share(matrix, key)
    if share is not None:
        if share.up_to_symmetry < 1.0:
            return True, []
        what = f"an exact permutation P (or hardened gather) stating {_shares(share)}"
        return True, [Finding(file, what, where, key_derived_weights=True)]
    if key is None and torch.equal(matrix, torch.eye(len(matrix))):
        return True, []
    if key is not None:  # another size than the key's grid: not this key's block order
        return True, []
    what = "an exact (non-identity) permutation matrix P, possibly the key's block order"
    return True, [Finding(file, what, f"{where}; no key given to check", key_derived_weights=True)]


# A learned P with more than this share of its energy on one (non-identity) permutation gets a
# warning: it states most of its block order (about 3/n for an untrained Kaiming-uniform P).
# With the key, so does a P whose nearest permutation states this share of the key's order.
P_CLOSENESS_WARNING = 0.5
# Below this many blocks, chance agreement with the key's order is too likely to warn on it.
_MIN_BLOCKS_FOR_ORDER_WARNING = 16


def _candidate_matrices(name: str, t: torch.Tensor, tensors: dict, model_args: dict) -> list:
    """What a square float tensor may be, as the matrix a model uses: its values (dense P),
    their row softmax, and the effective matrix of the P that ``config.json``'s model args
    describe (gain, Sinkhorn at the stored step's temperature; ``effective_matrix``). A
    tensor stored with a ``num_updates`` beside it is a Sinkhorn P's logits."""
    values = t.detach().double()
    found = [values, torch.softmax(values, dim=1)]
    if name.endswith(".weight"):
        num_updates = tensors.get(f"{name.removesuffix('.weight')}.num_updates")
        args = dict(model_args)
        if num_updates is not None:
            args.setdefault("permutation_param", "sinkhorn")
        found.append(effective_matrix(values.float(), args, num_updates).double())
    return found


def _closeness_warning(
    name: str, t: torch.Tensor, key: SchemeKey | None, file: str, candidates: list
) -> list[Finding]:
    """Warn about a square float tensor whose effective matrix is close to a permutation that
    is not the identity, or (with the key) whose nearest permutation states much of the key's
    block order; say how much of it, exactly and up to the grid's symmetries."""
    n = t.shape[0]
    closeness, matrix = max(((permutation_closeness(m), m) for m in candidates), key=_first)
    shares = [r for r in (_key_order_share(m, key) for m in candidates) if r is not None]
    share = max(shares, key=lambda r: (r.up_to_symmetry, r.exact)) if shares else None
    states_order = (
        share is not None
        and n >= _MIN_BLOCKS_FOR_ORDER_WARNING
        and share.up_to_symmetry >= P_CLOSENESS_WARNING
    )
    if closeness < P_CLOSENESS_WARNING and not states_order:
        return []
    if not states_order and torch.equal(block_order_of(matrix), torch.arange(n)):
        return []  # close to the identity: no block order in it
    what = (
        f"a learned {n}x{n} P close to a permutation ({100 * closeness:.0f} % of its effective "
        "matrix's energy on one): it states much of a block order"
        if closeness >= P_CLOSENESS_WARNING
        else f"a learned {n}x{n} P whose nearest permutation states much of a block order "
        f"({100 * closeness:.0f} % of its effective matrix's energy on one permutation)"
    )
    if share is not None:
        what += f", {_shares(share)}"
    where = f"safetensors tensor {name!r}; see docs/permutation.md for the trade-off"
    return [Finding(file, what, where, warning=True)]


def _first(pair: tuple) -> float:
    return pair[0]


def _is_p_candidate(t: torch.Tensor) -> bool:
    return t.ndim == 2 and t.shape[0] == t.shape[1] and t.shape[0] >= 4 and t.is_floating_point()


def _tensor_values(t: torch.Tensor) -> np.ndarray | None:
    if t.is_complex():
        return None
    if t.dtype == torch.bool:
        return t.numpy().astype(np.int64).ravel()
    if t.is_floating_point():
        return float_to_ints(t.double().numpy().ravel())
    return t.to(torch.int64).numpy().ravel()


def _scan_safetensors(
    header: dict,
    tensors: dict[str, torch.Tensor],
    secrets: list[Secret],
    key,
    file: str,
    model_args: dict,
) -> list[Finding]:
    """Each tensor at its own dtype (floats holding integers too), byte tensors also as raw
    encodings, the header, and every metadata string; square float tensors also as the
    effective P that ``model_args`` (``config.json``'s) make of them."""
    layout = {k: v for k, v in header.items() if k != "__metadata__"}
    findings = scan_text(json.dumps(layout), secrets, file, "safetensors header: ")
    for k, v in (header.get("__metadata__") or {}).items():
        findings += scan_text(str(v), secrets, file, f"safetensors metadata {k!r}: ")
        findings += _scan_key_file(str(v).encode(), key, file)
    for name, t in tensors.items():
        is_perm, found = _scan_permutation_tensor(name, t, key, file)
        if not is_perm and _is_p_candidate(t):
            candidates = _candidate_matrices(name, t, tensors, model_args)
            found = _closeness_warning(name, t, key, file, candidates)
        findings += found
        values = None if is_perm else _tensor_values(t)
        if values is None:
            continue
        where = f"safetensors tensor {name!r} ({str(t.dtype).removeprefix('torch.')})"
        found = scan_values(values, secrets, file, lambda i, w=where: f"{w} at element {i}")
        if t.element_size() == 1:  # a byte tensor may hold any other encoding
            found += scan_raw(t.view(torch.uint8).numpy().tobytes(), secrets, file, f"{where}: ")
        findings += first_per_secret(found)
    return findings


def _model_args(weights: Path) -> dict:
    """``model_args`` of the ``config.json`` beside a weights file (timm's Hub layout), or {}."""
    try:
        config = json.loads(weights.with_name("config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    args = config.get("model_args") if isinstance(config, dict) else None
    return args if isinstance(args, dict) else {}


def _leaf_arrays(array) -> list:
    """The primitive arrays under an Arrow array: lists flattened, struct fields, dictionaries
    decoded (an image column's bytes and paths, a list column's values)."""
    import pyarrow as pa

    t = array.type
    if pa.types.is_dictionary(t):
        return _leaf_arrays(array.dictionary_decode())
    if pa.types.is_struct(t):
        return [leaf for i in range(t.num_fields) for leaf in _leaf_arrays(array.field(i))]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_arrays(array.flatten())
    return [array]


def _scan_arrow_leaf(leaf, secrets: list[Secret], file: str, where: str) -> list[Finding]:
    import pyarrow as pa

    t, leaf = leaf.type, leaf.drop_null()
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        values = leaf.to_numpy(zero_copy_only=False)
        values = float_to_ints(values) if values.dtype.kind == "f" else values.astype(np.int64)
        return scan_values(values, secrets, file, lambda i: f"{where} at value {i}")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return scan_text("\n".join(leaf.to_pylist()), secrets, file, f"{where}: ")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        values = leaf.to_pylist()
        joined = SEPARATOR.join(values)  # no secret reads across two values
        texts = "\n".join(text for v in values for _, text in png_texts(v))
        found = scan_text(texts, secrets, file, f"{where}: PNG text: ") if texts else []
        return found + scan_raw(joined, secrets, file, f"{where}: ")
    return []


def _scan_parquet(data: bytes, secrets: list[Secret], file: str) -> list[Finding]:
    """A parquet file's values, decoded: its pages are encoded (dictionaries, bit packing) and
    compressed, so its raw bytes need not show them. Each column's values (lists flattened)
    as numbers, bytes or text, row group by row group, and the schema's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except (pa.ArrowException, OSError):
        return []  # not a parquet file after all: its raw bytes are scanned anyway
    findings = []
    for k, v in (parquet.schema_arrow.metadata or {}).items():
        name = k.decode(errors="replace")
        findings += scan_text(v.decode(errors="replace"), secrets, file, f"parquet {name!r}: ")
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        for name, column in zip(table.column_names, table.columns, strict=True):
            where = f"parquet column {name!r} (row group {group})"
            for chunk in column.chunks:
                for leaf in _leaf_arrays(chunk):
                    findings += _scan_arrow_leaf(leaf, secrets, file, where)
    return first_per_secret(findings)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_INFLATED = 1 << 26  # a compressed text chunk is read up to 64 MB


def _inflate(data: bytes) -> bytes:
    return zlib.decompressobj().decompress(data, _MAX_INFLATED)


def png_texts(data: bytes) -> list[tuple[str, str]]:
    """(keyword, text) of a PNG's text chunks: tEXt, zTXt and iTXt (compressed or not)."""
    if not data.startswith(_PNG_SIGNATURE):
        return []
    out, pos = [], len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        keyword, _, rest = body.partition(b"\0")
        try:
            if kind == b"tEXt":
                text = rest.decode("latin-1")
            elif kind == b"zTXt":
                text = _inflate(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                compressed, rest = rest[:1] == b"\1", rest[2:]
                rest = rest.partition(b"\0")[2].partition(b"\0")[2]  # language, translation
                text = (_inflate(rest) if compressed else rest).decode("utf-8", "replace")
            else:
                continue
        except zlib.error:
            continue
        out.append((keyword.decode("latin-1"), text))
    return out


def _scan_png(data: bytes, secrets: list[Secret], file: str) -> list[Finding]:
    findings = []
    for keyword, text in png_texts(data):
        findings += scan_text(text, secrets, file, f"PNG text chunk {keyword!r}: ")
    return first_per_secret(findings)


_PICKLE_INTS = {"INT", "LONG", "BININT", "BININT1", "BININT2", "LONG1", "LONG4"}
_PICKLE_FLOATS = {"FLOAT", "BINFLOAT"}
_PICKLE_BOOLS = {"NEWTRUE": 1, "NEWFALSE": 0}
_PICKLE_IN_A_LIST = {"MARK", "APPEND", "APPENDS"}  # between a list's items: the run goes on
_PICKLE_TEXT = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                "SHORT_BINUNICODE", "BINUNICODE8"}  # fmt: skip
_PICKLE_BYTES = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}


def _pickle_parts(data: bytes) -> tuple[np.ndarray, list[str], list[bytes]]:
    """A pickle's numbers (lists' items in order, -1 between runs), strings and bytes, read
    opcode by opcode with ``pickletools`` (nothing is unpickled: no code runs)."""
    numbers: list[float] = []
    texts: list[str] = []
    blobs: list[bytes] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in _PICKLE_INTS or op.name in _PICKLE_FLOATS:
                numbers.append(arg)
            elif op.name in _PICKLE_BOOLS:
                numbers.append(_PICKLE_BOOLS[op.name])
            elif op.name in _PICKLE_IN_A_LIST:
                continue
            else:
                numbers.append(-1)
                if op.name in _PICKLE_TEXT:
                    texts.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                elif op.name in _PICKLE_BYTES:
                    blobs.append(bytes(arg))
    except Exception:  # noqa: BLE001 - a malformed pickle: what was read so far is scanned
        pass
    values = np.asarray(numbers, dtype=np.float64) if numbers else np.zeros(0)
    return float_to_ints(values), texts, blobs


def _pickles(data: bytes) -> list[tuple[str, bytes]]:
    """(name, pickle) of a torch checkpoint's pickles (zip members ``*.pkl``, compressed or
    not), or of the file itself if it is a pickle."""
    if len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5:  # PROTO 2 to 5
        return [("", data)]
    if not data.startswith(b"PK\x03\x04"):
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [
                (f"{info.filename}: ", archive.read(info)[:_MAX_INFLATED])
                for info in archive.infolist()
                if info.filename.endswith(".pkl") and info.file_size <= _MAX_INFLATED
            ]
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return []


def _scan_pickles(data: bytes, secrets: list[Secret], file: str) -> list[Finding]:
    """Numbers, strings and bytes pickled in a checkpoint (Python lists, args, notes); the
    storages of its tensors are raw bytes in the zip, scanned with the rest of the file."""
    findings = []
    for name, pickle in _pickles(data):
        values, texts, blobs = _pickle_parts(pickle)
        where = f"{name}pickled numbers"
        findings += scan_values(values, secrets, file, lambda i, w=where: f"{w} at item {i}")
        findings += scan_text("\n".join(texts), secrets, file, f"{name}pickled text: ")
        # protocol 2 (torch's) pickles bytes as their latin-1 text
        raw = blobs + [t.encode("latin-1") for t in texts if max(t, default="\0") < "\u0100"]
        findings += scan_raw(SEPARATOR.join(raw), secrets, file, f"{name}pickled bytes: ")
    return first_per_secret(findings)


def scan_file(path: Path, file: str, key: SchemeKey | None, secrets: list[Secret]) -> list:
    data = path.read_bytes()
    findings = _scan_key_file(data, key, file)
    parsed = _read_safetensors(data)
    if parsed is not None:
        return findings + _scan_safetensors(*parsed, secrets, key, file, _model_args(path))
    text = _utf8(data)
    findings += scan_raw(data, secrets, file, text=text is None)  # text files: scan_text
    if text is not None:
        findings += scan_text(text, secrets, file)
    if secrets and data[:4] == data[-4:] == b"PAR1":
        findings += _scan_parquet(data, secrets, file)
    if secrets:
        findings += _scan_png(data, secrets, file) + _scan_pickles(data, secrets, file)
    return findings


def files_to_scan(paths_or_folder) -> list[tuple[Path, str]]:
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
