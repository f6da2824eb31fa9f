"""The leak guard: scan files about to be shared for key material (the block and pixel
permutations, their inverses, the negative-positive mask, copies of the key file, and weights
that state the key's block order) and refuse them.

:func:`scan_for_key_material` lists what it finds; :func:`assert_no_key_material` raises
:class:`~timm_ppconvmixer.hub.errors.KeyMaterialError` on it. How secrets are recognised lives
in :mod:`.key_patterns`, how each kind of file is read in :mod:`.file_scan`. What the guard
detects and what it cannot is listed in ``docs/hub.md``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

from ..key import SchemeKey
from .errors import KeyMaterialError
from .file_scan import files_to_scan, scan_file
from .key_patterns import Finding, key_secrets

__all__ = ["assert_no_key_material", "scan_for_key_material"]


def scan_for_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike], key: SchemeKey | None
) -> list[Finding]:
    """Look for ``key``'s secrets in files: for the blockwise scheme the block and pixel
    permutations (and their inverses) and the negative-positive mask, for the other schemes
    every secret field of theirs (:mod:`.key_patterns`), as JSON or text numbers (any separators or
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
    secrets = key_secrets(key) if key is not None else []
    findings: list[Finding] = []
    for path, name in files_to_scan(paths_or_folder):
        findings += scan_file(path, name, key, secrets)
    return findings


def assert_no_key_material(
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
    key: SchemeKey | None,
    *,
    allow_key_derived_weights: bool = False,
) -> list[Finding]:
    """:func:`scan_for_key_material`, raising :class:`KeyMaterialError` on any finding (but
    the key-derived P an owner accepts with ``allow_key_derived_weights=True``, and warnings,
    which are returned; warnings are also issued as Python ``UserWarning`` so they are seen).
    The message names each file and what was found in it, on one line.

    Example:
        >>> assert_no_key_material("out/tiny", key)  # doctest: +SKIP
    """
    findings = scan_for_key_material(paths_or_folder, key)
    refused = [
        f
        for f in findings
        if not f.warning and not (allow_key_derived_weights and f.key_derived_weights)
    ]
    if refused:
        raise KeyMaterialError(_refusal_message(refused), refused)
    for finding in findings:
        if finding.warning:
            warnings.warn(str(finding), UserWarning, stacklevel=2)
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
