"""Where a new key's secrets come from: the OS CSPRNG, or a seeded generator for tests.

Example:
    >>> KeyRandom(seed=0).permutation(4).tolist()
    [2, 0, 1, 3]
"""

from __future__ import annotations

import itertools
import os
import secrets

import numpy as np

__all__ = ["SALT_BYTES", "KeyRandom", "uniform_below"]

SALT_BYTES = 16


class KeyRandom:
    """Where a new key's secrets come from: the OS CSPRNG, or a seeded generator for tests.

    A seed makes the key reproducible by anyone who knows it: tests and demos only.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._gen = None if seed is None else np.random.Generator(np.random.PCG64(seed))
        self._system = secrets.SystemRandom()

    @property
    def seeded(self) -> bool:
        return self._gen is not None

    def permutation(self, n: int) -> np.ndarray:
        if self._gen is not None:
            return self._gen.permutation(n)
        values = list(range(n))
        self._system.shuffle(values)
        return np.asarray(values, dtype=np.int64)

    def permutations(self, rows: int, n: int) -> np.ndarray:
        """``rows`` independent permutations of ``0..n-1``, shape ``(rows, n)``."""
        if n <= 5:  # few possible rows (n!): draw codes into a table, vectorised
            table = np.asarray(list(itertools.permutations(range(n))), dtype=np.int64)
            return table[self.integers(len(table), rows)]
        return np.stack([self.permutation(n) for _ in range(rows)]).reshape(rows, n)

    def integers(self, bound: int, count: int) -> np.ndarray:
        """``count`` uniform integers in ``0..bound-1``."""
        if self._gen is not None:
            return self._gen.integers(0, bound, size=count)
        return uniform_below(bound, count)

    def bits(self, count: int) -> np.ndarray:
        return self.integers(2, count)

    def salt(self) -> bytes:
        return self._gen.bytes(SALT_BYTES) if self._gen is not None else os.urandom(SALT_BYTES)


def uniform_below(bound: int, count: int) -> np.ndarray:
    """``count`` integers uniform in ``0..bound-1`` from the OS CSPRNG, vectorised.

    32-bit draws at or above the largest multiple of ``bound`` are rejected (no modulo bias).
    """
    limit = (1 << 32) // bound * bound
    out = np.empty(0, dtype=np.int64)
    while out.size < count:
        need = count - out.size
        draws = np.frombuffer(os.urandom(4 * (need + need // 8 + 8)), dtype="<u4")
        out = np.concatenate([out, (draws[draws < limit] % bound).astype(np.int64)])
    return out[:count]
