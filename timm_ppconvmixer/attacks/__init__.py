"""Attacks on the block-wise encryption, the way the cloud provider (or anyone holding
encrypted images, a plain/encrypted pair, or a shared model) could run them.

docs/security.md holds the measured results, the threat model and the literature. Main entry
points:

* :func:`recover_key` -- ciphertext-only: K3, K2, K1 from N encrypted images (one key);
* :func:`known_plaintext_attack` -- from plain/encrypted pairs;
* :func:`key_from_converted_model`, :func:`block_order_from_p`, :func:`shuffle_from_stem` --
  from a shared model;
* :func:`score_key`, :func:`score_images` -- the owner's scoring with the true key;
* :func:`run_attack` -- the whole attack on an encrypted folder or dataset, as a report;
* ``SCHEME_ATTACKS``, :func:`attack_for` -- each scheme's ciphertext-only attack and scorer.

The modules are grouped by role: :mod:`.solvers` (generic pieces), :mod:`.ciphertext_only` (one
attack per scheme), :mod:`.known_plaintext` and :mod:`.model_leak` (the other threat models),
:mod:`.evaluation` (scoring), :mod:`.registry` and :mod:`.report`.

Example:
    >>> from timm_ppconvmixer.attacks import recover_key, AttackInputError
    >>> import numpy as np
    >>> try:
    ...     recover_key(np.zeros((1, 1, 4, 4), dtype=np.uint8), 4)
    ... except AttackInputError as e:
    ...     print(e)
    a 4x4 image is a single 4x4 block: there is no block order to recover
"""

from .ciphertext_only.blockwise import recover_key
from .ciphertext_only.ele import recover_ele_key, score_ele_key
from .ciphertext_only.etc import recover_etc_key, score_etc_key
from .ciphertext_only.le import recover_le_key, score_le_key
from .ciphertext_only.pe import recover_pe_key, recover_pe_per_image, score_pe_key
from .evaluation.scoring import score_images, score_key
from .known_plaintext import known_plaintext_attack
from .model_leak import block_order_from_p, key_from_converted_model, shuffle_from_stem
from .registry import SCHEME_ATTACKS, attack_for
from .report import run_attack
from .result import AttackInputError, AttackResult
from .solvers.priors import GenericPrior, ReferencePrior

__all__ = [
    "SCHEME_ATTACKS",
    "AttackInputError",
    "AttackResult",
    "GenericPrior",
    "ReferencePrior",
    "block_order_from_p",
    "key_from_converted_model",
    "known_plaintext_attack",
    "recover_ele_key",
    "recover_etc_key",
    "recover_key",
    "recover_pe_key",
    "recover_pe_per_image",
    "recover_le_key",
    "run_attack",
    "score_ele_key",
    "score_etc_key",
    "score_images",
    "score_key",
    "score_pe_key",
    "score_le_key",
    "attack_for",
    "shuffle_from_stem",
]
