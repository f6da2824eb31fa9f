"""The leak guard: scan files about to be shared for key material (the block and pixel
permutations, their inverses, the negative-positive mask, copies of the key file, weights
that state the key's block order, model arguments that hold or locate key material, and
weights converted from a public checkpoint) and refuse them.

:func:`scan_for_key_material` lists what it finds; :func:`assert_no_key_material` raises
:class:`~timm_ppconvmixer.hub.errors.KeyMaterialError` on it. How secrets are recognised lives
in :mod:`.key_patterns`, how each kind of file is read in :mod:`.file_scan`; the model arguments
of ``config.json`` / ``args.yaml`` are judged here (:func:`key_material_in_model_args`). What the
guard detects and what it cannot is listed in ``docs/hub.md``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..key import SchemeKey
from ..models.permutation import PERMUTATION_INITS
from .errors import KeyMaterialError
from .file_scan import files_to_scan, scan_file
from .key_patterns import Finding, key_secrets

__all__ = [
    "CONVERTED_FROM",
    "PublicStemFinding",
    "assert_no_key_material",
    "key_material_in_model_args",
    "scan_for_key_material",
]

# config.json's record of the public checkpoint a key-bound tag converted (timm's
# ``save_for_hf`` writes extra ``model_config`` entries at the top level, where timm's loader
# ignores them); :func:`~.model_folder.save_model_folder` writes it, the guard reads it
CONVERTED_FROM = "converted_from"
# Where configs keep a model's constructor arguments: timm's config.json (``model_args``), timm
# train.py's args.yaml (``model_kwargs``, from --model-kwargs)
_MODEL_ARGS_FIELDS = ("model_args", "model_kwargs")
_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
_CONFIG_MAX_BYTES = 1 << 24  # configs are small; a larger file is data, scanned as bytes only
# Shorter orders are too few to be a key's (a 2x2 grid has 4 blocks) and too common as options
_MIN_ORDER_LENGTH = 4


@dataclass(frozen=True)
class PublicStemFinding(Finding):
    """Weights converted from a public plain checkpoint under the key (a key-bound tag such as
    ``ppconvmixer_768_32.in1k``), fine-tuned or not: their stem, set side by side with the
    public one, gives the pixel shuffling and flips back (K2, K3; Sec. III-B's conversion
    ``W' = W A^-1``, :mod:`timm_ppconvmixer.attacks.model_leak`). Refused unless the owner
    accepts it with ``allow_public_stem_leak=True``."""


def _is_block_order(value: Any) -> bool:
    """A list of ints that is a permutation of 0..n-1, n >= 4, and no arithmetic progression
    (the identity and its reverse state nothing), as the key patterns judge runs."""
    if not isinstance(value, (list, tuple)) or len(value) < _MIN_ORDER_LENGTH:
        return False
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return False
    steps = {b - a for a, b in zip(value, value[1:], strict=False)}
    return sorted(value) == list(range(len(value))) and len(steps) > 1


def _orders_in(value: Any, where: str) -> Iterator[str]:
    if _is_block_order(value):
        yield where
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _orders_in(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _orders_in(v, f"{where}[{i}]")


def key_material_in_model_args(args: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(argument, what)`` for every model argument that holds or locates key material, with
    or without the key to compare against: ``key`` (timm ``train.py``'s ``--model-kwargs
    key=...``: a key file's path, or the key), a ``permutation_init`` other than a named init
    (``PERMUTATION_INITS``: a block order, or a file holding one), and any value that is a
    permutation of 0..n-1 (n >= 4, not the identity): a block order by its shape alone.

    Example:
        >>> key_material_in_model_args({"dim": 32, "permutation_init": [2, 0, 3, 1]})
        [('permutation_init', 'a block order given as the initial value of P (permutation_init)')]
    """
    found = []
    for name, value in args.items():
        if name == "key":
            found.append((name, "a key given as a model argument (key=: a key file's path or "
                                "the key; record key_fingerprint= instead)"))  # fmt: skip
        elif name == "permutation_init" and not (
            isinstance(value, str) and value in PERMUTATION_INITS
        ):
            found.append((name, "a block order given as the initial value of P (permutation_init)"))
        else:
            found += [(where, "a permutation of 0..n-1, a block order by its shape")
                      for where in _orders_in(value, name)]  # fmt: skip
    return found


def _parsed_config(path: Path) -> Any:
    """A JSON or YAML file's content, or None where it is none (other files, bad syntax)."""
    if path.suffix.lower() not in _CONFIG_SUFFIXES or path.stat().st_size > _CONFIG_MAX_BYTES:
        return None
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError):
        return None


def _model_arg_sections(doc: Any, where: str = "") -> Iterator[tuple[str, Mapping]]:
    """Every ``model_args`` / ``model_kwargs`` mapping of a parsed config, at any depth."""
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            here = f"{where}.{k}" if where else str(k)
            if k in _MODEL_ARGS_FIELDS and isinstance(v, Mapping):
                yield here, v
            else:
                yield from _model_arg_sections(v, here)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _model_arg_sections(v, f"{where}[{i}]")


def _scan_config(path: Path, file: str) -> list[Finding]:
    doc = _parsed_config(path)
    findings: list[Finding] = [
        Finding(file, what, f"{section}.{arg}")
        for section, args in _model_arg_sections(doc)
        for arg, what in key_material_in_model_args(args)
    ]
    source = doc.get(CONVERTED_FROM) if isinstance(doc, Mapping) else None
    if source:
        what = (
            f"weights a key-bound tag converted from the public checkpoint {source}, fine-tuned "
            f"or not: beside {source}'s stem they give the key back (pixel shuffling and flips; "
            "the block order from P)"
        )
        findings.append(PublicStemFinding(file, what, f"{CONVERTED_FROM} = {source}"))
    return findings


def scan_for_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike], key: SchemeKey | None
) -> list[Finding]:
    """Look for ``key``'s secrets in files: for the blockwise scheme the block and pixel
    permutations (and their inverses) and the negative-positive mask, for the other schemes
    every secret field of theirs (:mod:`.key_patterns`), and the key's salt: as JSON or text
    numbers (any separators or brackets, also inside binary files), raw integers of 1, 2, 4 or 8
    bytes and floats of 2, 4 or 8 bytes (either byte order, any alignment), hex and base64 of
    those, safetensors tensors of any dtype and safetensors metadata, pickled values of ``.pth``
    files, decoded Parquet columns, PNG text chunks, the mask as a 0/1 string or packed bits,
    and copies of the key file (the forms are listed in ``docs/hub.md``). A leak is
    ``PERM_WINDOW`` consecutive entries (the whole permutation if shorter) or ``MASK_WINDOW``
    mask bits; arithmetic progressions never count. A model tensor that is exactly the key's
    block permutation matrix is reported with ``key_derived_weights=True``. With or without
    ``key``: key files, exact permutation matrices, model arguments that hold or locate key
    material (``config.json``'s ``model_args``, ``args.yaml``'s ``model_kwargs``:
    :func:`key_material_in_model_args`), and a ``config.json`` that records a conversion from a
    public checkpoint (:class:`PublicStemFinding`).

    Example:
        >>> findings = scan_for_key_material("out/tiny", key)  # doctest: +SKIP
        >>> [str(f) for f in findings]  # doctest: +SKIP
        ['config.json: 16+ consecutive values of pixel_perm (K2) (numbers in text at line 12)']
    """
    secrets = key_secrets(key) if key is not None else []
    findings: list[Finding] = []
    for path, name in files_to_scan(paths_or_folder):
        findings += scan_file(path, name, key, secrets)
        findings += _scan_config(path, name)
    return findings


def _accepted(f: Finding, allow_key_derived_weights: bool, allow_public_stem_leak: bool) -> bool:
    if isinstance(f, PublicStemFinding):
        return allow_public_stem_leak
    return f.warning or (allow_key_derived_weights and f.key_derived_weights)


def assert_no_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
    key: SchemeKey | None,
    *,
    allow_key_derived_weights: bool = False,
    allow_public_stem_leak: bool = False,
) -> list[Finding]:
    """:func:`scan_for_key_material`, raising :class:`KeyMaterialError` on any finding but the
    ones the owner accepts (the key-derived P with ``allow_key_derived_weights=True``, the
    weights converted from a public checkpoint with ``allow_public_stem_leak=True``) and
    warnings, which are returned; warnings are also issued as Python ``UserWarning`` so they
    are seen. The message names each file and what was found in it, on one line.

    Example:
        >>> assert_no_key_material("out/tiny", key)  # doctest: +SKIP
    """
    findings = scan_for_key_material(paths_or_folder, key)
    refused = [
        f for f in findings if not _accepted(f, allow_key_derived_weights, allow_public_stem_leak)
    ]
    if refused:
        raise KeyMaterialError(_refusal_message(refused), refused)
    for finding in findings:
        if finding.warning:
            warnings.warn(str(finding), UserWarning, stacklevel=2)
    return findings


_KEY_DERIVED_ADVICE = (
    "the weights state the key's block order (a converted model, or a hardened P): publishing "
    "them reveals that part of the key; pass allow_key_derived_weights=True "
    "(--allow-key-derived-weights) only if you knowingly publish such a model"
)
_PUBLIC_STEM_ADVICE = (
    "pass allow_public_stem_leak=True (--allow-public-stem-leak) only if you accept that "
    "whoever holds that public checkpoint reads the key (timm_ppconvmixer.attacks.model_leak), "
    "or share a model trained from scratch on the encrypted data"
)
_REMOVE_ADVICE = (
    "remove it from those files: keys, permutations and masks never go into configs, cards, "
    "metadata or extra files (only the fingerprint may)"
)


def _refusal_message(findings: list[Finding]) -> str:
    shown = "; ".join(str(f) for f in findings[:6])
    more = f"; and {len(findings) - 6} more" if len(findings) > 6 else ""
    public = [f for f in findings if isinstance(f, PublicStemFinding)]
    derived = [f for f in findings if f.key_derived_weights]
    advice = [_PUBLIC_STEM_ADVICE] if public else []
    advice += [_KEY_DERIVED_ADVICE] if derived else []
    if len(public) + len(derived) < len(findings):
        advice.append(_REMOVE_ADVICE)
    return f"refusing to share: key material found: {shown}{more}; {'; '.join(advice)}"
