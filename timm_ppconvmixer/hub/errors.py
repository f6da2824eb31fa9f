"""Errors of model and data sharing: one base class for every refusal on the way to the Hub."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .key_patterns import Finding

__all__ = ["HubError", "KeyMaterialError"]


class HubError(ValueError):
    """Exporting, checking or uploading a model failed; the message says what to do."""


class KeyMaterialError(HubError):
    """The leak guard found key material in a file about to be shared."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings
