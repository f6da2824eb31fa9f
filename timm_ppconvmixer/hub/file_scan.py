"""Reading each kind of file the leak guard scans: key files, UTF-8 text, safetensors
(tensors and metadata) and any other file as raw bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from ..key import SchemeKey, scheme_file_names
from ..permutation import block_order_recovery, permutation_closeness
from .errors import HubError
from .key_patterns import (
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


def _permutation_of_tensor(name: str, t: torch.Tensor) -> np.ndarray | None:
    """The block order a model tensor states outright: P as an exact 0/1 permutation matrix
    (``P[i, order[i]] = 1``), or a hardened P's gather index (``<module>.source``)."""
    if name.endswith(".source") and t.ndim == 1 and not t.is_floating_point():
        source = t.to(torch.int64).numpy()
        if np.array_equal(np.sort(source), np.arange(len(source))):
            return np.argsort(source)  # P[source[j], j] = 1
        return None
    return permutation_of_matrix(t)


def _scan_permutation_tensor(
    name: str, t: torch.Tensor, key: SchemeKey | None, file: str
) -> tuple[bool, list[Finding]]:
    """(is a permutation P, findings). With a key: flag P equal to the key's block order (or
    its inverse). Without one: flag any P that is not the identity, which cannot be checked."""
    order = _permutation_of_tensor(name, t)
    if order is None:
        return False, []
    where = f"safetensors tensor {name!r}"
    block = _block_order(key)
    if block is not None:
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


# A learned P with more than this share of its energy on one (non-identity) permutation gets a
# warning: it states most of its block order (about 3/n for an untrained Kaiming-uniform P).
P_CLOSENESS_WARNING = 0.5


def _closeness_warning(
    name: str, t: torch.Tensor, key: SchemeKey | None, file: str
) -> list[Finding]:
    """Warn about a square float tensor close to a permutation that is not the identity, as a
    dense P (its values) or as Sinkhorn logits (their row softmax). With the key, say how much
    of the key's block order its largest entries state."""
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 4 or not t.is_floating_point():
        return []
    values = t.detach().double()
    candidates = (values, torch.softmax(values, dim=1))
    closeness, matrix = max(((permutation_closeness(m), m) for m in candidates), key=_first)
    if closeness < P_CLOSENESS_WARNING:
        return []
    n = t.shape[0]
    if torch.equal(matrix.abs().argmax(1), torch.arange(n)):
        return []  # close to the identity: no block order in it
    what = (
        f"a learned {n}x{n} P close to a permutation ({100 * closeness:.0f} % of its energy on "
        "one): it states much of a block order"
    )
    block = _block_order(key)
    if block is not None and len(block) == n:
        share = block_order_recovery(matrix, torch.from_numpy(block))
        what += f", {100 * share:.0f} % of this key's (K1)"
    where = f"safetensors tensor {name!r}; see docs/permutation.md for the trade-off"
    return [Finding(file, what, where, warning=True)]


def _first(pair: tuple) -> float:
    return pair[0]


def _tensor_values(t: torch.Tensor) -> np.ndarray | None:
    if t.is_complex():
        return None
    if t.dtype == torch.bool:
        return t.numpy().astype(np.int64).ravel()
    if t.is_floating_point():
        return float_to_ints(t.double().numpy().ravel())
    return t.to(torch.int64).numpy().ravel()


def _scan_safetensors(
    header: dict, tensors: dict[str, torch.Tensor], secrets: list[Secret], key, file: str
) -> list[Finding]:
    """Each tensor at its own dtype (floats holding integers too), byte tensors also as raw
    encodings, the header, and every metadata string."""
    layout = {k: v for k, v in header.items() if k != "__metadata__"}
    findings = scan_text(json.dumps(layout), secrets, file, "safetensors header: ")
    for k, v in (header.get("__metadata__") or {}).items():
        findings += scan_text(str(v), secrets, file, f"safetensors metadata {k!r}: ")
        findings += _scan_key_file(str(v).encode(), key, file)
    for name, t in tensors.items():
        is_perm, found = _scan_permutation_tensor(name, t, key, file)
        findings += found if is_perm else _closeness_warning(name, t, key, file)
        values = None if is_perm else _tensor_values(t)
        if values is None:
            continue
        where = f"safetensors tensor {name!r} ({str(t.dtype).removeprefix('torch.')})"
        found = scan_values(values, secrets, file, lambda i, w=where: f"{w} at element {i}")
        if t.element_size() == 1:  # a byte tensor may hold any other encoding
            found += scan_raw(t.view(torch.uint8).numpy().tobytes(), secrets, file, f"{where}: ")
        findings += first_per_secret(found)
    return findings


def scan_file(path: Path, file: str, key: SchemeKey | None, secrets: list[Secret]) -> list:
    data = path.read_bytes()
    findings = _scan_key_file(data, key, file)
    parsed = _read_safetensors(data)
    if parsed is not None:
        return findings + _scan_safetensors(*parsed, secrets, key, file)
    findings += scan_raw(data, secrets, file)
    text = _utf8(data)
    if text is not None:
        findings += scan_text(text, secrets, file)
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
