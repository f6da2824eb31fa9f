"""Scoring an attack, for the owner who holds the true key.

Definitions (docs/security.md uses them):

* **Symmetry group.** Decrypting with ``(g o K1, g o K2, K3 xor i)`` gives ``g(x)`` (or its
  inverse ``255 - g(x)`` when ``i = 1``) for every image ``x``, for each of the dihedral
  symmetries ``g`` that map the image onto itself (8 for square images, 4 otherwise) and
  ``i`` in {0, 1}. A ciphertext-only attacker cannot separate these keys without a prior, so
  key parts are scored *up to* the element ``(g, i)`` that fits the estimate best, which is
  reported; "exact" numbers use ``g = identity, i = 0``.
* **K1 share**: share of encrypted blocks ``b`` with ``est.block_perm[b] == g(block_perm[b])``.
  With plain images, ``K1 (content)`` also counts a block as recovered when the block it was put
  in and its true block hold the same content in every scored image (blank corners are
  interchangeable and harmless).
* **K2 share**: share of in-block positions ``j`` with ``est.pixel_perm[j] == g(pixel_perm[j])``.
* **K3 share**: share of positions ``j`` with ``est.np_mask[j] == np_mask[j] xor i``.
* **Images**: share decrypted exactly, mean PSNR (dB; identical images count as 100 dB) and mean
  SSIM (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 13(4), 2004: 11x11 Gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03, valid region, per channel, averaged) of the attacker's
  reconstruction against the plain image, exactly as the attacker sees it (no symmetry undone).

Example:
    >>> from timm_ppconvmixer import BlockKey
    >>> key = BlockKey.generate(28, 4, 1, seed=0)
    >>> score_key(key, key)["K1"], score_key(key, key)["symmetry"]
    (1.0, 'identity')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from ...cipher import decrypt, encrypt
from ...key import BlockKey
from ..solvers.blocks import position_map, symmetry_index_map, to_blocks, valid_symmetries

__all__ = ["psnr", "score_images", "score_key", "ssim"]


def score_key(
    true_key: BlockKey, estimate: BlockKey, plain: np.ndarray | None = None
) -> dict[str, Any]:
    """Shares of K1/K2/K3 recovered, up to the best symmetry (and exactly); see module doc."""
    if (true_key.image_size, true_key.block_size, true_key.channels) != (
        estimate.image_size,
        estimate.block_size,
        estimate.channels,
    ):
        raise ValueError("the estimate's geometry differs from the key's")
    grid, m, c = true_key.grid_size, true_key.block_size, true_key.channels
    bp, pp, mask = (k.numpy() for k in (true_key.block_perm, true_key.pixel_perm, true_key.np_mask))
    ebp, epp, emask = (
        k.numpy() for k in (estimate.block_perm, estimate.pixel_perm, estimate.np_mask)
    )
    best = None
    exact = None
    for g in valid_symmetries(grid, m):
        gb, gp = symmetry_index_map(g, *grid), position_map(g, c, m)
        k1 = float((ebp == gb[bp]).mean())
        k2 = float((epp == gp[pp]).mean())
        for inv in (False, True):
            k3 = float((emask == (mask ^ inv)).mean())
            row = {"K1": k1, "K2": k2, "K3": k3, "symmetry": g.name, "inverted": inv}
            if g.name == "identity" and not inv:
                exact = row
            if best is None or k1 + k2 + k3 > best["K1"] + best["K2"] + best["K3"]:
                best = row
    out: dict[str, Any] = dict(best)
    out.update({f"{k}_exact": exact[k] for k in ("K1", "K2", "K3")})
    if plain is not None:
        out["K1_content"] = _k1_content(true_key, estimate, plain)
    return out


def _k1_content(true_key: BlockKey, estimate: BlockKey, plain: np.ndarray) -> float:
    """Share of blocks whose content, after decrypting with the estimate, is right in every image
    (the true K2/K3 are used so that only the block order is judged)."""
    c, m = true_key.channels, true_key.block_size
    hybrid = BlockKey(
        true_key.image_size, m, c, estimate.block_perm, true_key.pixel_perm, true_key.np_mask
    )
    rec = decrypt(encrypt(plain, true_key, layout="CHW"), hybrid, layout="CHW")
    same = (to_blocks(rec, m) == to_blocks(plain, m)).all(axis=(0, 2))
    return float(same.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 batches ``(N, C, H, W)`` (100 dB where identical)."""
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(255.0**2 / err)
    return np.where(err == 0, 100.0, value)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Valid-region Gaussian filtering as two 1-D passes (a 2-D kernel's im2col needs 11x11
    copies of every image)."""
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1))
    return F.conv2d(x, g.view(1, 1, 1, k))


def ssim(a: np.ndarray, b: np.ndarray, batch: int = 16) -> np.ndarray:
    """Per-image mean SSIM of uint8 batches ``(N, C, H, W)`` (Wang et al. 2004; module doc)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, w = a.shape[-2:]
    g = _gaussian(min(11, h, w))
    out = []
    for s in range(0, len(a), batch):
        x = torch.from_numpy(a[s : s + batch].astype(np.float64))
        y = torch.from_numpy(b[s : s + batch].astype(np.float64))
        n, ch = x.shape[:2]
        x, y = x.reshape(n * ch, 1, h, w), y.reshape(n * ch, 1, h, w)
        mx, my = _blur(x, g), _blur(y, g)
        sxx = _blur(x * x, g) - mx * mx
        syy = _blur(y * y, g) - my * my
        sxy = _blur(x * y, g) - mx * my
        num = (2 * mx * my + c1) * (2 * sxy + c2)
        den = (mx * mx + my * my + c1) * (sxx + syy + c2)
        out.append((num / den).reshape(n, -1).mean(1).numpy())
    return np.concatenate(out)


def score_images(recon: np.ndarray, plain: np.ndarray) -> dict[str, float]:
    """Exact share, mean PSNR and mean SSIM of reconstructions against plain images."""
    exact = (recon.reshape(len(recon), -1) == plain.reshape(len(plain), -1)).all(1)
    return {
        "exact_images": float(exact.mean()),
        "psnr": float(psnr(recon, plain).mean()),
        "ssim": float(ssim(recon, plain).mean()),
    }
