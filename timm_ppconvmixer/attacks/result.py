"""What an attack returns (:class:`AttackResult`) and the one error it raises on bad input.

An attack produces a key *estimate* of the attacked scheme (a
:class:`~timm_ppconvmixer.schemes.SchemeKey`; for the paper's scheme a
:class:`~timm_ppconvmixer.key.BlockKey` with K1 ``block_perm``, K2 ``pixel_perm``, K3 ``np_mask``,
docs/design.md section 2 "Encryption") that the project's :func:`~timm_ppconvmixer.decrypt`
accepts as it is. A scheme with no shared key (``pe-per-image``: a fresh key per image) gives
no key, only the attacker's ``reconstruction`` of the images it was handed. The result
also says how sure the attack is of each part, how long each step took and which ambiguities
no attacker can resolve from the data alone (and which prior, if any, was used to pick one).

Nothing here prints or serialises key material: :meth:`AttackResult.to_dict` holds numbers,
notes and the estimate's public fingerprint only. Write the estimate with ``result.key.save``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schemes.base import SchemeKey

__all__ = ["AttackInputError", "AttackResult"]


class AttackInputError(ValueError):
    """The data handed to an attack cannot be attacked as given; the message says what was wrong
    and what to do (mixed sizes, not block-encrypted data, too few images, ...)."""


@dataclass
class AttackResult:
    """A key estimate and what the attack knows about its quality.

    Attributes:
        key: the estimate, a valid key of the attacked scheme (``decrypt(x, result.key)``
            works), or ``None`` when the scheme shares no key between images.
        confidence: per key part (``"K1"``, ``"K2"``, ``"K3"``; other schemes name their
            fields, e.g. ``"nibble_perm"``) a number in [0, 1] computed from
            the ciphertext alone (no true key): how consistent the data are with the estimate.
        timings: seconds per step (``"K3"``, ``"K2"``, ``"K1"``, ``"prior"``, ``"total"``).
        ambiguities: what the data cannot decide and how it was decided (a stated prior) or
            left (reported), in words.
        details: further numbers (per-position confidences, costs, chosen symmetry, ...), all
            key-free.
        method: which attack produced it.
        scheme: the attacked scheme's short name (``"blockwise"``, ``"le"``, ...).
        reconstruction: the attacker's reconstruction of the attacked images, (N, C, H, W)
            uint8, when there is no key to decrypt with (``key is None``); else ``None``.

    Example:
        >>> from timm_ppconvmixer import BlockKey
        >>> r = AttackResult(BlockKey.generate(8, 4, 1, seed=0), {"K1": 1.0}, {}, [], {}, "demo")
        >>> sorted(r.to_dict())
        ['ambiguities', 'confidence', 'details', 'fingerprint', 'method', 'scheme', 'timings']
    """

    key: SchemeKey | None
    confidence: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ambiguities: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    scheme: str = "blockwise"
    reconstruction: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary without key material (only the estimate's public fingerprint)."""
        return {
            "method": self.method,
            "scheme": self.scheme,
            "fingerprint": None if self.key is None else self.key.fingerprint,
            "confidence": {k: _plain(v) for k, v in self.confidence.items()},
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
            "ambiguities": list(self.ambiguities),
            "details": {k: _plain(v) for k, v in self.details.items()},
        }


def _plain(value: Any) -> Any:
    """numpy scalars and small arrays to JSON types (summaries only: never a permutation)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
