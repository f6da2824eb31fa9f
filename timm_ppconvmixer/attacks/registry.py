"""Which ciphertext-only attack, and which scorer, belongs to each encryption scheme.

Every scheme of :mod:`timm_ppconvmixer.schemes` has one entry here: the attack a provider that
holds N images encrypted with it would run (``recover``), and the owner's scorer of the
estimate against the true key (``score_key``; ``None`` where no key is shared between images).
:func:`~.report.run_attack`, ``ppconvmixer attack`` and ``benchmarks/security_eval.py`` look the
scheme up here, by the name the data's ``ENCRYPTION.json`` or dataset card records (never
guessed from a key).

The contract of an entry:

* ``recover(encrypted, block_size, *, prior=None, seed=0) -> AttackResult``: ``encrypted`` is
  (N, C, H, W) uint8, ``block_size`` the scheme's (1 for the pixel-wise schemes); the result's
  ``key`` is an estimate of the scheme's key (or ``None`` with a ``reconstruction``), every
  ambiguity the data cannot decide is named in ``ambiguities``, and no key material goes
  into ``details``.
* ``score_key(true_key, estimate, plain=None) -> dict``: shares of each key part recovered (in
  [0, 1], up to what no attacker can tell apart, also reported exactly), JSON-ready, key-free.

Example:
    >>> attack_for("blockwise").key_parts
    ('K1', 'K2', 'K3')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cipher import decrypt
from .ciphertext_only.blockwise import recover_key
from .ciphertext_only.ele import recover_ele_key, score_ele_key
from .ciphertext_only.etc import recover_etc_key, score_etc_key
from .ciphertext_only.le import recover_le_key, score_le_key
from .ciphertext_only.pe import recover_pe_key, recover_pe_per_image, score_pe_key
from .evaluation.scoring import score_key
from .result import AttackInputError, AttackResult

__all__ = ["SCHEME_ATTACKS", "SchemeAttack", "attack_for", "reconstruct"]


@dataclass(frozen=True)
class SchemeAttack:
    """The provider's attack on one scheme and the owner's scorer of its key estimate."""

    scheme: str
    recover: Callable[..., AttackResult]
    score_key: Callable[..., dict[str, Any]] | None
    key_parts: tuple[str, ...]
    summary: str


SCHEME_ATTACKS: dict[str, SchemeAttack] = {
    "blockwise": SchemeAttack(
        "blockwise",
        recover_key,
        score_key,
        ("K1", "K2", "K3"),
        "K3 from correlation signs, K2 from correlation geometry, K1 by the pooled jigsaw solver",
    ),
    "le": SchemeAttack(
        "le",
        recover_le_key,
        score_le_key,
        ("nibble_perm", "nibble_mask"),
        "upper halves by correlation strength, placed and inverted as K2/K3 (pooled over all "
        "blocks), lower halves paired with their pixel's upper half, orientation by continuity",
    ),
    "ele": SchemeAttack(
        "ele",
        recover_ele_key,
        score_ele_key,
        ("block_perm", "nibble_perm", "nibble_mask"),
        "each position's LE key from statistics pooled over the N images, then the block order, "
        "orientation and inversion by an oriented jigsaw solver pooled over the N images",
    ),
    "etc": SchemeAttack(
        "etc",
        recover_etc_key,
        score_etc_key,
        ("block_perm", "orientation", "inversion", "channel_order"),
        "extended jigsaw solver over pieces of unknown orientation, inversion and channel "
        "order, edge costs pooled over the images; a prior for the global transform",
    ),
    "pe": SchemeAttack(
        "pe",
        recover_pe_key,
        score_pe_key,
        ("channel_perm", "np_mask"),
        "per-pixel channel order and inversion by synchronising neighbours over the N images",
    ),
    "pe-per-image": SchemeAttack(
        "pe-per-image",
        recover_pe_per_image,
        None,
        (),
        "one image at a time: channel order from folded neighbours, bright sides by a min cut",
    ),
}


def attack_for(scheme: str) -> SchemeAttack:
    """The entry of ``scheme`` (short name or key-file name, e.g. ``ppconvmixer-le``)."""
    name = scheme.removeprefix("ppconvmixer-")
    if name not in SCHEME_ATTACKS:
        raise AttackInputError(
            f"no attack for the {scheme!r} scheme; the attacks cover "
            f"{', '.join(sorted(SCHEME_ATTACKS))}"
        )
    return SCHEME_ATTACKS[name]


def reconstruct(result: AttackResult, encrypted: np.ndarray) -> np.ndarray:
    """The attacker's reconstruction of ``encrypted`` (N, C, H, W): decrypted with the key
    estimate, or the result's own reconstruction when the scheme shares no key."""
    if result.key is None:
        if result.reconstruction is None or result.reconstruction.shape != encrypted.shape:
            raise AttackInputError(
                "this attack recovered no key and holds no reconstruction of these images"
            )
        return result.reconstruction
    return decrypt(encrypted, result.key, layout="CHW")
