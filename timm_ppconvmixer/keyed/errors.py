"""The error of exact model conversion and hardening, in a module of its own so that
:mod:`.convert` and :mod:`.harden` both import it from below rather than from each other."""

from __future__ import annotations

__all__ = ["ConversionError"]


class ConversionError(ValueError):
    """The model and the key do not fit together, or the model is not a ConvMixer."""
