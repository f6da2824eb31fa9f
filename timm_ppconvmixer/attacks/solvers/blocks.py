"""Block views of encrypted batches and the symmetries no ciphertext-only attacker can undo.

Notation of docs/design.md section 2 "Encryption": an image ``(C, H, W)`` is cut into
``n = (H/M)(W/M)`` blocks numbered row-major; a block is the vector of its ``D = C*M*M`` values in
``(C, M, M)`` order. K1 moves blocks, K2 permutes the D positions of every block the same way,
K3 flips (``v -> 255 - v``) a fixed subset of the D positions.

A *dihedral symmetry* ``g`` (transpose, then flip rows, then flip columns) of the whole image is
the same as moving the blocks by ``g`` on the block grid and transforming every block's content
by ``g``. Decrypting with ``(g o K1, g o K2, K3)`` therefore yields ``g(x)`` for every image: an
attacker who sees only encrypted data of a statistically mirror- and rotation-symmetric source
cannot tell these keys apart. The same holds for global inversion (``K3`` complemented gives
``255 - x``). :data:`SYMMETRIES` lists the eight; only the four without transpose map a
non-square grid onto itself.

Example:
    >>> import numpy as np
    >>> x = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    >>> b = to_blocks(x, 2)
    >>> b.shape, bool((from_blocks(b, (1, 4, 4), 2) == x).all())
    ((2, 4, 4), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "SYMMETRIES",
    "Symmetry",
    "apply_symmetry",
    "position_map",
    "from_blocks",
    "symmetry_index_map",
    "to_blocks",
    "valid_symmetries",
]


class Symmetry(NamedTuple):
    """A dihedral symmetry of the image: transpose first, then flip rows, then flip columns."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool

    @property
    def name(self) -> str:
        parts = [n for n, on in zip(("transpose", "vflip", "hflip"), self, strict=True) if on]
        return "+".join(parts) or "identity"


SYMMETRIES: tuple[Symmetry, ...] = tuple(
    Symmetry(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)
)


def valid_symmetries(grid: tuple[int, int], block_size: int) -> tuple[Symmetry, ...]:
    """The symmetries that map the image (and its block grid) onto itself."""
    del block_size  # blocks are square: every symmetry maps a block onto itself
    return SYMMETRIES if grid[0] == grid[1] else tuple(s for s in SYMMETRIES if not s.transpose)


def to_blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, n, C*M*M)``: blocks row-major, positions in (C, M, M) order."""
    n_img, c, h, w = x.shape
    m = block_size
    gh, gw = h // m, w // m
    b = x.reshape(n_img, c, gh, m, gw, m).transpose(0, 2, 4, 1, 3, 5)
    return b.reshape(n_img, gh * gw, c * m * m)


def from_blocks(b: np.ndarray, chw: tuple[int, int, int], block_size: int) -> np.ndarray:
    """Inverse of :func:`to_blocks`."""
    c, h, w = chw
    m = block_size
    gh, gw = h // m, w // m
    x = b.reshape(b.shape[0], gh, gw, c, m, m).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b.shape[0], c, h, w)


def symmetry_index_map(g: Symmetry, rows: int, cols: int) -> np.ndarray:
    """Flat index map of ``g`` on a ``rows x cols`` grid: cell ``p`` goes to cell ``map[p]``."""
    y, x = np.divmod(np.arange(rows * cols), cols)
    out_rows, out_cols = rows, cols
    if g.transpose:
        y, x = x, y
        out_rows, out_cols = cols, rows
    if g.flip_rows:
        y = out_rows - 1 - y
    if g.flip_cols:
        x = out_cols - 1 - x
    return y * out_cols + x


def position_map(g: Symmetry, channels: int, block_size: int) -> np.ndarray:
    """Map of ``g`` on the ``C*M*M`` in-block positions (channels stay where they are)."""
    inner = symmetry_index_map(g, block_size, block_size)
    m2 = block_size * block_size
    return (np.arange(channels)[:, None] * m2 + inner[None, :]).reshape(-1)


def apply_symmetry(x: np.ndarray, g: Symmetry) -> np.ndarray:
    """``g`` applied to the last two axes of ``x`` (images ``(..., H, W)``)."""
    if g.transpose:
        x = np.swapaxes(x, -1, -2)
    if g.flip_rows:
        x = x[..., ::-1, :]
    if g.flip_cols:
        x = x[..., ::-1]
    return x
