"""Measurements of the block-wise scheme beside its ciphertext-only runs (docs/security.md).

* ``known-plaintext``: from 1 and 2 plain/encrypted pairs (``known_plaintext_attack``), per
  setting and key (seeds 2000 + k): the key parts recovered exactly and the share of 200 other
  images (disjoint from the pairs) decrypted exactly.
* ``sample-variation``: more draws of the images under one key (seed 3000) than the main
  table's one per key: 10 random draws of N images (photographs: 5), scored as every run.
* ``demo-model``: what the shipped demo model (trained from scratch on data encrypted with a
  PUBLIC key) reveals of that key through its P and its stem.
"""

from __future__ import annotations

import time

import numpy as np

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.attacks import known_plaintext_attack, score_images, score_key

from .data import Setting
from .runs import measure

EXTRAS = ("known-plaintext", "sample-variation", "demo-model")
VARIATION_PLAN = {"fmnist28_4": [100, 300, 1000], "fmnist56_4": [100, 1000], "photo224_16": [10]}


def known_plaintext_rows(settings: list[Setting], keys: int = 5) -> list[dict]:
    rows = []
    for s in settings:
        x, m = s.x, s.block
        for pairs in (1, 2):
            for seed in range(keys):
                key = BlockKey.generate(s.side, m, s.channels, seed=2000 + seed)
                pair = x[seed * 2 : seed * 2 + pairs]
                t = time.perf_counter()
                r = known_plaintext_attack(pair, encrypt(pair, key, layout="CHW"), block_size=m)
                sc = score_key(key, r.key, pair)
                others = x[len(x) // 2 :][:200]  # disjoint from the pairs
                dec = decrypt(encrypt(others, key, layout="CHW"), r.key, layout="CHW")
                rows.append(
                    {
                        "setting": s.name,
                        "pairs": pairs,
                        "key_seed": 2000 + seed,
                        "K1_exact": sc["K1_exact"],
                        "K2_exact": sc["K2_exact"],
                        "K3_exact": sc["K3_exact"],
                        "other_images_exact": score_images(dec, others)["exact_images"],
                        "seconds": time.perf_counter() - t,
                    }
                )
    return rows


def sample_variation(settings: list[Setting], draws: int = 10) -> list[dict]:
    """``draws`` random draws (photographs: 5) of N images under one key, for the settings and
    N of ``VARIATION_PLAN`` among ``settings``."""
    rows = []
    for s in settings:
        for n in VARIATION_PLAN.get(s.name, ()):
            key = BlockKey.generate(s.side, s.block, s.channels, seed=3000)
            for draw in range(draws if s.kind == "fmnist" else 5):
                idx = np.sort(np.random.default_rng(draw).choice(len(s.x), n, replace=False))
                row = measure("blockwise", key, s.x, None, idx, n, 200, s.block, s.prior(None))
                rows.append({"setting": s.name, "N": n, "draw": draw, **row})
                k = row["key"]
                print(
                    f"sample {s.name} N={n} draw {draw}: K1 {k['K1']:.3f} K2 {k['K2']:.3f} "
                    f"exact {row['exact_images']:.2f}",
                    flush=True,
                )
    return rows


def demo_model_rows() -> dict:
    """The shipped demo model was trained on data encrypted with a PUBLIC key: score what its
    weights reveal (a model trained from scratch)."""
    import timm

    from timm_ppconvmixer.attacks import block_order_from_p, shuffle_from_stem
    from timm_ppconvmixer.attacks.solvers.blocks import SYMMETRIES, position_map
    from timm_ppconvmixer.keyed.pretrained import demo_key

    model = timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True).eval()
    key = demo_key()
    est, conf = block_order_from_p(model)
    bp = key.block_perm.numpy()
    slot, mask = shuffle_from_stem(model)
    pp, true_mask = key.pixel_perm.numpy(), key.np_mask.numpy()
    k2 = max(float((slot == position_map(g, 1, key.block_size)[pp]).mean()) for g in SYMMETRIES)
    k3 = max(float((mask == true_mask).mean()), float((mask != true_mask).mean()))
    return {
        "model": "ppconvmixer_256_8_fmnist.demo (1 epoch, PUBLIC demo key)",
        "K1_from_P": float((est == bp).mean()),
        "K1_chance": 1.0 / len(bp),
        "P_rows_agreeing_with_hungarian": conf,
        "K2_from_stem_up_to_symmetry": k2,
        "K3_from_stem_up_to_inversion": k3,
    }
