"""A scheme's secret fields and the key geometry: what they are, how they are checked.

Every check names the field (or geometry value) it refuses, so a bad key file says what is
wrong with it.

Example:
    >>> f = Field("block_perm", "perm", (4,), "block_perm (K1)")
    >>> validated(f, [2, 0, 3, 1], "4 blocks").tolist()
    [2, 0, 3, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Field",
    "InvalidKeyError",
    "as_size",
    "check_geometry",
    "is_int",
    "parse_field",
    "validated",
]


class InvalidKeyError(ValueError):
    """A key, or a key file, is invalid or does not fit the data it is used with."""


@dataclass(frozen=True)
class Field:
    """One secret of a scheme.

    ``kind``: ``"perm"`` (every row of ``shape`` a permutation of ``0..shape[-1]-1``; one row
    when ``shape`` is 1-D), ``"bits"`` (0/1 values), ``"codes"`` (integers in ``0..bound-1``).
    ``label`` names the secret in leak-guard findings.
    """

    name: str
    kind: Literal["perm", "bits", "codes"]
    shape: tuple[int, ...]
    label: str
    bound: int = 0

    def entropy_per_value(self) -> float:
        """Bits of secret per stored value (the leak guard sizes its windows with it)."""
        if self.kind == "bits":
            return 1.0
        if self.kind == "codes":
            return float(np.log2(self.bound)) if self.bound > 1 else 0.0
        length = self.shape[-1]
        return float(sum(np.log2(np.arange(2, length + 1)))) / length if length > 1 else 0.0


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise InvalidKeyError(f"image_size must be an int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


def check_geometry(size: tuple[int, int], block_size: int, channels: int) -> None:
    if block_size < 1:
        raise InvalidKeyError(f"block_size must be a positive integer, got {block_size}")
    if channels < 1:
        raise InvalidKeyError(f"channels must be a positive integer, got {channels}")
    h, w = size
    if h < 1 or w < 1 or h % block_size or w % block_size:
        raise InvalidKeyError(
            f"image size {h}x{w} is not a positive multiple of block_size {block_size}; "
            f"resize or crop the images to a multiple of {block_size} first"
        )


def is_int(value: object) -> bool:
    # JSON gives 4.7 and true for an integer field as readily as 4; int() would accept both.
    return isinstance(value, int) and not isinstance(value, bool)


def parse_field(f: Field, value: object) -> np.ndarray:
    """A field's JSON value as an array, refusing anything but the exact JSON types."""
    if f.kind == "bits":
        if not isinstance(value, str) or set(value) - {"0", "1"}:
            raise InvalidKeyError(f"{f.name} must be a string of 0 and 1 characters")
        return np.frombuffer(value.encode(), dtype=np.uint8).astype(np.int64) - 48
    rows = value if f.kind == "perm" and len(f.shape) > 1 else [value]
    if not isinstance(value, list) or not all(isinstance(r, list) for r in rows):
        raise InvalidKeyError(f"{f.name} must be a list of integers")
    if not all(is_int(v) for r in rows for v in r):  # type: ignore[union-attr]
        raise InvalidKeyError(f"{f.name} must be a list of integers")
    if len({len(r) for r in rows}) > 1:  # type: ignore[arg-type]
        raise InvalidKeyError(f"{f.name} must have rows of equal length")
    if any(not -(2**63) <= v < 2**63 for r in rows for v in r):  # type: ignore[union-attr]
        raise InvalidKeyError(f"{f.name} holds an integer too large for any key field")
    return np.asarray(value, dtype=np.int64)


def validated(f: Field, value, geometry: str) -> torch.Tensor:
    """Check one secret against its field and return it as a tensor (bool for bits)."""
    a = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value)
    size = int(np.prod(f.shape))
    if f.kind == "bits":
        a = a.reshape(-1)
        if a.size != size or not np.isin(a, (0, 1)).all():
            raise InvalidKeyError(
                f"{f.name} must hold {size} values that are 0 or 1 ({geometry}), got {a.size}"
            )
        return torch.from_numpy(a.astype(bool).reshape(f.shape).copy())
    a = a.astype(np.int64)
    if f.kind == "codes":
        a = a.reshape(-1)
        if a.size != size or a.min(initial=0) < 0 or a.max(initial=0) >= f.bound:
            raise InvalidKeyError(
                f"{f.name} must hold {size} integers in 0..{f.bound - 1} ({geometry}), got {a.size}"
            )
        return torch.from_numpy(a.reshape(f.shape).copy())
    length = f.shape[-1]
    if a.ndim == 1 and len(f.shape) == 1:
        a = a.reshape(1, -1)
    rows = int(np.prod(f.shape[:-1]))
    if a.ndim != 2 or a.shape != (rows, length):
        raise InvalidKeyError(
            f"{f.name} must be {rows} permutation(s) of 0..{length - 1} ({geometry}), got shape "
            f"{tuple(np.shape(value))}"
        )
    outside = (a < 0) | (a >= length)
    if outside.any():
        bad = int(a[outside][0])
        raise InvalidKeyError(
            f"{f.name} must be {rows} permutation(s) of 0..{length - 1} ({geometry}); entry "
            f"{bad} is out of that range"
        )
    if not (np.sort(a, axis=1) == np.arange(length)).all():
        raise InvalidKeyError(
            f"{f.name} must be {rows} permutation(s) of 0..{length - 1} ({geometry}); some "
            "value repeats"
        )
    return torch.from_numpy(a.reshape(f.shape).copy())
