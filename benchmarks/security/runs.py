"""The keys/samples loop of the security runner, the scoring of one run, and its runs files.

A run is one scheme's ciphertext-only attack (its entry of
``timm_ppconvmixer.attacks.registry.SCHEME_ATTACKS``) under one seeded key
(``generate_key(scheme, seed=1000 + k)``; ``pe-per-image`` draws a fresh key per image) on the
first N images of that key's own random sample (the N images of a smaller N among those of a
larger one: the attack is equivariant to the key, so the same images under every key would
mostly repeat one experiment). A regime says which images are judged:

* ``sample``: every N on the same first S images of the key's sample (2,000 Fashion-MNIST
  images, 100 photographs): the N attacked ones and, below S, further images under the same
  key decrypted with the estimate (what the provider then reads of the rest of the data);
* ``attacked``: the attacked images themselves, the first S of them (2,000 / 200);
* ``few-images``: every attacked image, scored strictly and up to the one global symmetry,
  channel order and inversion that fits best (what no ciphertext-only attacker can resolve
  without a prior); samples seeded 5000 + k, and for photographs ``max(N)`` fresh crops per key
  (seed 5000 + k, in the order drawn).

A scheme without a shared key (``pe-per-image``) has nothing to reuse: its attack runs once per
key sample on S images (2,000 Fashion-MNIST images, 10 photographs), each alone, recorded as
N = 1. Each run is scored with the scheme's own key scorer, exact images, PSNR, SSIM and the
plain-domain classifier's top-1 on the reconstructions (plain and encrypted as references);
LE runs also score the 4-bit picture of the upper halves alone, ``pe-per-image`` runs the
values right and the key-invariant fold ``min(v, 255 - v)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from timm_ppconvmixer import encrypt
from timm_ppconvmixer.attacks import score_images
from timm_ppconvmixer.attacks.ciphertext_only.le import upper_only_images
from timm_ppconvmixer.attacks.ciphertext_only.pe import score_pe_reconstruction
from timm_ppconvmixer.attacks.evaluation.classifier import top1
from timm_ppconvmixer.attacks.evaluation.scoring import psnr
from timm_ppconvmixer.attacks.registry import SCHEME_ATTACKS, attack_for, reconstruct
from timm_ppconvmixer.attacks.solvers.blocks import apply_symmetry, valid_symmetries
from timm_ppconvmixer.schemes import (
    ENCRYPT_ONLY_SCHEMES,
    PIXEL_WISE,
    generate_key,
    per_image_encryption,
)

from .data import DEFAULT_PRIOR, Setting, canonical
from .provenance import read_json, write_json

KEY_SEED = 1000  # key k: generate_key(scheme, seed=KEY_SEED + k)
SCORED_PER_IMAGE = {"fmnist": 2000, "photo": 10}  # no shared key: images attacked, each alone


@dataclass(frozen=True)
class Regime:
    """Which images a run attacks and judges (module doc), and its default N."""

    name: str
    scored: dict[str, int | None]  # images judged per run, per kind of data (None: all N)
    beyond_n: bool  # below S images, also judge further images of the key's sample
    sample_seed: int  # key k's sample: seeded sample_seed + k
    fresh_photos: bool  # photographs: max(N) new crops per key instead of a shared pool
    up_to_symmetry: bool  # also score after the best global symmetry, channel order, inversion
    ns: dict[str, list[int]]  # per data (kind and side)
    quick_ns: dict[str, list[int]]


REGIMES = {
    "sample": Regime(
        "sample",
        {"fmnist": 2000, "photo": 100},
        True,
        KEY_SEED,
        False,
        False,
        {
            "fmnist28": [1, 2, 3, 5, 10, 30, 100, 300, 1000, 10000, 60000],
            "fmnist56": [1, 2, 3, 5, 10, 30, 100, 300, 1000, 10000],
            "photo224": [1, 2, 3, 5, 10, 30, 100],
        },
        {
            "fmnist28": [1, 3, 10, 100, 1000],
            "fmnist56": [1, 3, 10, 100, 1000],
            "photo224": [1, 3, 10],
        },
    ),  # fmt: skip
    "attacked": Regime(
        "attacked",
        {"fmnist": 2000, "photo": 200},
        False,
        KEY_SEED,
        False,
        False,
        {
            "fmnist28": [1, 10, 100, 1000, 10000, 60000],
            "fmnist56": [1, 10, 100, 1000, 10000],
            "photo224": [1, 10, 100, 1000],
        },
        {"fmnist28": [1, 10, 100, 1000], "fmnist56": [1, 10, 100, 1000], "photo224": [1, 10, 100]},
    ),
    "few-images": Regime(
        "few-images",
        {"fmnist": None, "photo": None},
        False,
        5000,
        True,
        True,
        {
            "fmnist28": [1, 2, 3, 5, 10, 100],
            "fmnist56": [1, 2, 3, 5, 10, 100],
            "photo224": [2, 3, 5, 10],
        },
        {"fmnist28": [1, 2, 3, 5, 10], "fmnist56": [1, 2, 3, 5, 10], "photo224": [2, 3, 5]},
    ),  # fmt: skip
}


def scheme_names(requested: list[str]) -> list[str]:
    """``all`` or names of registered attacks, in the registry's order."""
    if requested == ["all"]:
        return list(SCHEME_ATTACKS)
    for name in requested:
        attack_for(name)  # one clear error for an unknown scheme
    return [n.removeprefix("ppconvmixer-") for n in requested]


def is_per_image(scheme: str) -> bool:
    return attack_for(scheme).score_key is None


def default_ns(regime: Regime, setting: str, quick: bool = False) -> list[int]:
    data = canonical(setting).split("_")[0]  # fmnist28, fmnist56, photo224
    return list((regime.quick_ns if quick else regime.ns)[data])


def scored_images(regime: Regime, setting: Setting, scheme: str, override: int | None = None):
    """Images judged per run (None: every attacked image)."""
    if override is not None:
        return override
    if is_per_image(scheme):
        return SCORED_PER_IMAGE[setting.kind]
    return regime.scored[setting.kind]


def run_ns(scheme: str, ns: list[int]) -> list[int]:
    """The N measured: a scheme without a shared key runs once per key (N = 1)."""
    return [1] if is_per_image(scheme) else list(ns)


def scheme_key(scheme: str, setting: Setting, seed: int):
    c, h = setting.channels, setting.side
    if scheme in ENCRYPT_ONLY_SCHEMES:
        return per_image_encryption(h, c)
    block = 1 if scheme in PIXEL_WISE else setting.block
    return generate_key(scheme, image_size=h, block_size=block, channels=c, seed=seed)


def _numbers(score: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready scalars of a scorer's dict (no arrays: never key material)."""
    return {k: v for k, v in score.items() if isinstance(v, (bool, int, float, str))}


def up_to_symmetry(rec: np.ndarray, plain: np.ndarray, grid: tuple[int, int]) -> dict:
    """Image scores after the one global symmetry, channel order and inversion that fits best
    (chosen by PSNR; the ones no ciphertext-only attacker can resolve without a prior)."""
    best, best_psnr = None, -np.inf
    for g in valid_symmetries(grid, 1):
        moved = np.ascontiguousarray(apply_symmetry(rec, g))
        for order in permutations(range(rec.shape[1])):
            for inv in (False, True):
                cand = moved[:, list(order)]
                cand = 255 - cand if inv else cand
                value = float(psnr(cand, plain).mean())
                if value > best_psnr:
                    best, best_psnr = cand, value
    return {f"{k}_sym": v for k, v in score_images(best, plain).items()}


def measure(
    scheme: str,
    key,
    x: np.ndarray,
    y: np.ndarray | None,
    sample: np.ndarray,
    n: int,
    scored: int | None,
    block: int,
    prior,
    model=None,
    *,
    symmetry: bool = False,
) -> dict[str, Any]:
    """One run: encrypt ``x[sample]`` under ``key``, attack its first ``n`` images (a scheme
    without a shared key: every judged image, each alone), judge the first ``scored`` of the
    sample (None: all). The one scoring path of every table."""
    attack = attack_for(scheme)
    per_image = attack.score_key is None
    shown = sample[:scored]
    plain = x[shown]
    enc_sample = encrypt(x[sample], key, layout="CHW")
    enc = enc_sample[: len(shown)]
    attacked = enc if per_image else enc_sample[:n]
    t = time.perf_counter()
    result = attack.recover(attacked, block, prior=prior)
    seconds = time.perf_counter() - t
    rec = reconstruct(result, enc)
    row: dict[str, Any] = {"seconds": seconds, "confidence": _numbers(result.confidence)}
    mode = result.details.get("mode", "exact" if scheme == "blockwise" else None)
    if isinstance(mode, str):  # the block-wise attack's solver: exact, or its few-images mode
        row["mode"] = mode
    if not per_image:
        row["key"] = _numbers(attack.score_key(key, result.key, plain))
    row["attacked_images"] = len(attacked)
    row["scored_images"] = len(plain)
    row.update(score_images(rec, plain))
    labels = None if model is None else y[shown]
    if model is not None:
        row["top1_plain"] = top1(model, plain, labels)
        row["top1_reconstruction"] = top1(model, rec, labels)
        row["top1_encrypted"] = top1(model, enc, labels)
    if scheme == "le":  # the attacker's 4-bit picture: upper halves, lower halves set to 8
        up = upper_only_images(enc, result.key)
        row.update({f"upper_{q}": v for q, v in score_images(up, plain).items()})
        if model is not None:
            row["upper_top1"] = top1(model, up, labels)
    if scheme == "pe-per-image":  # no key: the values it gets right, and the fold
        row.update(score_pe_reconstruction(rec, plain))
        fold = np.minimum(plain, 255 - plain)  # key-invariant: what any observer gets for free
        row["ssim_fold"] = score_images(fold, plain)["ssim"]
        if model is not None:
            row["top1_fold"] = top1(model, fold, labels)
    if symmetry:
        row.update(up_to_symmetry(rec, plain, (x.shape[-2] // block, x.shape[-1] // block)))
    return row


def group_of(row: dict[str, Any]) -> tuple:
    """What runs of one table entry share: scheme, setting, regime, prior, images judged."""
    return (row["scheme"], row["setting"], row["regime"], row["prior"], row["scored"])


def run_group(
    scheme: str,
    setting: Setting,
    regime: Regime,
    *,
    keys: int,
    ns: list[int],
    cache: Path,
    prior: str | None = None,
    scored: int | None = None,
    done: list[dict] = (),
    save=None,
    stamp: dict | None = None,
) -> list[dict[str, Any]]:
    """Every (key, N) run of one scheme in one setting under one regime and prior, in key then
    N order. Runs of ``done`` with the same group, key and N are kept as they are, not measured
    again; ``save(rows)`` is called after every new run (an attack of minutes is never lost to
    a stop). ``scored``: images judged per run instead of the regime's; ``stamp``: recorded in
    every new run as ``measured`` (commit and date)."""
    prior = prior or setting.default_prior
    cap = scored_images(regime, setting, scheme, scored)
    gid = (scheme, setting.name, regime.name, prior, cap)
    have = {(r["key_seed"], r["N"]): r for r in done if group_of(r) == gid}
    per_image = is_per_image(scheme)
    drawn = list(ns) + ([cap] if per_image and cap else [])  # fresh crops: enough for a sample
    ns = run_ns(scheme, ns)
    block = 1 if scheme in PIXEL_WISE else setting.block
    prior_obj = model = None
    rows: list[dict[str, Any]] = []
    for k in range(keys):
        seed = KEY_SEED + k
        if all((seed, n) in have for n in ns):
            rows += [have[(seed, n)] for n in ns]
            continue
        if prior_obj is None:
            prior_obj, model = setting.prior(prior), setting.classifier(cache)
        key = scheme_key(scheme, setting, seed)
        x, y, order = setting.draw(regime.sample_seed + k, drawn, regime.fresh_photos)
        for n in ns:
            if (seed, n) in have:
                rows.append(have[(seed, n)])  # resumed
                continue
            if per_image:
                sample = order[:cap]
            elif regime.beyond_n and cap is not None:
                sample = order[: max(n, cap)]  # the N attacked images, at least ``cap``
            else:
                sample = order[:n]
            row: dict[str, Any] = {
                "scheme": scheme,
                "setting": setting.name,
                "regime": regime.name,
                "prior": prior,
                "scored": cap,
                "N": n,
                "key_seed": seed,
            }
            row.update(
                measure(
                    scheme, key, x, y, sample, n, cap, block, prior_obj, model,
                    symmetry=regime.up_to_symmetry,
                )
            )  # fmt: skip
            row["measured"] = dict(stamp or {}, date=datetime.now(timezone.utc).isoformat())
            rows.append(row)
            if save is not None:
                save(rows)
            _print(row, k)
    return rows


def _print(row: dict, k: int) -> None:
    key = row.get("key", {})
    parts = " ".join(
        f"{p} {key[p]:.3f}"
        for p in attack_for(row["scheme"]).key_parts
        if isinstance(key.get(p), (int, float))
    )
    sym = f" (sym {row['psnr_sym']:.1f} / {row['ssim_sym']:.3f})" if "psnr_sym" in row else ""
    print(
        f"{row['scheme']} {row['setting']} [{row['regime']}, {row['prior']} prior] key {k} "
        f"N={row['N']}: {parts} exact {row['exact_images']:.3f} PSNR {row['psnr']:.1f} "
        f"SSIM {row['ssim']:.3f}{sym} ({row['seconds']:.1f} s)",
        flush=True,
    )


class RunsFile:
    """``OUT/runs_<scheme>.json``: every run of one scheme measured in OUT, whatever its
    setting, regime or prior, written after every new run (atomically) and read back to
    resume run by run; runs measured in another checkout can be copied in."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        data = read_json(self.path) if self.path.exists() else {"runs": []}
        runs = data if isinstance(data, list) else data["runs"]
        self.rows = [_complete(r) for r in runs]

    def group(self, gid: tuple) -> list[dict]:
        return [r for r in self.rows if group_of(r) == gid]

    def replace(self, gid: tuple, rows: list[dict], provenance: dict) -> None:
        """Put ``rows`` (runs of group ``gid``) in place of the runs of that group with the same
        key and N, keep every other run, and write the file."""
        ids = {(r["key_seed"], r["N"]) for r in rows}
        keep = [r for r in self.rows if group_of(r) != gid or (r["key_seed"], r["N"]) not in ids]
        self.rows = keep + list(rows)
        write_json(self.path, {"provenance": provenance, "runs": self.rows})


def _complete(row: dict) -> dict:
    """A run recorded without a regime, prior or images-judged count: the cross-scheme
    ``sample`` regime with the setting's own prior (the short setting names included)."""
    row = dict(row)
    row["setting"] = canonical(row["setting"])
    kind = row["setting"].split("_")[0].rstrip("0123456789")
    row.setdefault("regime", "sample")
    row.setdefault("prior", DEFAULT_PRIOR[kind])
    if "scored" not in row:
        per_image = is_per_image(row["scheme"])
        row["scored"] = (SCORED_PER_IMAGE if per_image else REGIMES["sample"].scored)[kind]
    return row
