"""Security across schemes (issue 18): every scheme's attack, measured the same way.

``python benchmarks/security_eval.py --schemes all --out OUT`` (or ``--schemes le ele``) runs,
for each scheme of ``timm_ppconvmixer.attacks.SCHEME_ATTACKS``, its ciphertext-only attack in
two settings:

* ``fmnist28``: the 60,000 Fashion-MNIST training images (what the provider holds), 28x28, 1
  channel, block 4 (the pixel-wise schemes: block 1); the prior and the plain-domain classifier
  use the public test split;
* ``photo224``: random crops of the offline photographs (``security_eval.photo_crops``), 224x224
  RGB, block 16 (pixel-wise: 1).

For each, N from 1 to the data size, ``--keys`` seeded keys (``generate_key(scheme,
seed=1000 + k)``; ``pe-per-image`` draws a fresh key per image), each with its own random
sample of the data (the N images of a smaller N among those of a larger one). Scored exactly as
the blockwise evaluation: the scheme's own key parts (``score_key`` of its registry entry),
exact images, PSNR and SSIM of the reconstructions, the classifier's top-1 on them, time. The
reconstructions scored at every N are the first ``SCORED`` images of the key's sample: the N
attacked images and, below that many, further images under the same key decrypted with the
estimate (what the provider then reads of the rest of the data); ``pe-per-image`` has no key
to reuse, so its attack runs once per key sample on ``SCORED_PER_IMAGE`` images, each alone
(recorded as N = 1: more images do not help it).

Runs are kept per scheme in ``OUT/runs_<scheme>.json``, written after every run and resumed run
by run (a stopped evaluation goes on where it stopped; runs measured in another checkout can be
copied in); ``--ns`` measures other N than a setting's list. ``OUT/security_schemes.md`` and
``.json`` hold the cross-scheme table, with the top-1 of each scheme's Table I reproduction row
read from ``--table1``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from timm_ppconvmixer import encrypt
from timm_ppconvmixer.attacks import GenericPrior, ReferencePrior, score_images
from timm_ppconvmixer.attacks.evaluation.classifier import cached_classifier, top1
from timm_ppconvmixer.attacks.registry import SCHEME_ATTACKS, attack_for, reconstruct
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.schemes import (
    ENCRYPT_ONLY_SCHEMES,
    PIXEL_WISE,
    generate_key,
    per_image_encryption,
)

SCORED = {"fmnist28": 2000, "photo224": 100}  # images scored at every N (module doc)
# without a shared key each image is attacked alone (seconds per photograph), once per key
SCORED_PER_IMAGE = {"fmnist28": 2000, "photo224": 10}
NS = {
    "fmnist28": [1, 2, 3, 5, 10, 30, 100, 300, 1000, 10000, 60000],
    "photo224": [1, 2, 3, 5, 10, 30, 100],
}
QUICK_NS = {"fmnist28": [1, 3, 10, 100, 1000], "photo224": [1, 3, 10]}
RECOGNISABLE_POINTS = 0.05  # classifier top-1 within 5 points of its top-1 on plain images
EXACT_SHARE = 0.99  # "exact images": at least 99 % of the reconstructions equal the plain ones


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def scheme_names(requested: list[str]) -> list[str]:
    """``all`` or names of registered attacks, in the registry's order."""
    if requested == ["all"]:
        return list(SCHEME_ATTACKS)
    for name in requested:
        attack_for(name)  # one clear error for an unknown scheme
    return [n.removeprefix("ppconvmixer-") for n in requested]


def setting_data(name: str, quick: bool, photo_crops) -> dict[str, Any]:
    """The images, labels, prior data and N of one setting."""
    ns = (QUICK_NS if quick else NS)[name]
    if name == "fmnist28":
        x, y = fashion_mnist_arrays("train")
        ref, ref_y = fashion_mnist_arrays("test")
        return dict(x=x[:, None], y=y, ref=ref[:, None], ref_y=ref_y, block=4, ns=ns)
    # a pool three times the largest N, so every key draws its own sample
    return dict(x=photo_crops(3 * max(ns), seed=1), y=None, ref=None, ref_y=None, block=16, ns=ns)


def _key(scheme: str, x: np.ndarray, block: int, seed: int):
    c, h, _ = x.shape[1:]
    if scheme in ENCRYPT_ONLY_SCHEMES:
        return per_image_encryption(h, c)
    size = 1 if scheme in PIXEL_WISE else block
    return generate_key(scheme, image_size=h, block_size=size, channels=c, seed=seed)


def _numbers(score: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready scalars of a scorer's dict (no arrays: never key material)."""
    return {k: v for k, v in score.items() if isinstance(v, (bool, int, float, str))}


def run_scheme_setting(
    scheme: str,
    setting: str,
    s: dict,
    keys: int,
    cache: Path,
    *,
    done: list[dict] = (),
    save=None,
    scored: int | None = None,
) -> list[dict[str, Any]]:
    """Every (key, N) run of one scheme in one setting; the runs in ``done`` are kept, not
    measured again, and ``save(rows)`` is called after every new run (an attack of minutes is
    never lost to a stop); ``scored``: images scored per run instead of the setting's."""
    attack = attack_for(scheme)
    x = s["x"]
    block = 1 if scheme in PIXEL_WISE else s["block"]
    prior = ReferencePrior(s["ref"]) if s["ref"] is not None else GenericPrior()
    model = None
    if s["ref_y"] is not None:
        model = cached_classifier(cache / f"classifier_{x.shape[-1]}", s["ref"], s["ref_y"])
    per_image = attack.score_key is None
    scored = scored or (SCORED_PER_IMAGE if per_image else SCORED)[setting]
    # one key per image: N does not help the attacker, so one run per key (recorded as N = 1)
    ns = s["ns"][:1] if per_image else s["ns"]
    rows = [r for r in done if r["N"] in ns and r["key_seed"] < 1000 + keys]
    have = {(r["key_seed"], r["N"]) for r in rows}
    for k in range(keys):
        key = _key(scheme, x, s["block"], 1000 + k)
        order = np.random.default_rng(1000 + k).permutation(len(x))
        for n in ns:
            if (1000 + k, n) in have:
                continue  # resumed
            # scored: the first images of this key's sample, the N attacked ones among them;
            # below ``scored`` images the estimate also decrypts further images under the
            # same key, so every N is judged on as many images (one image says little)
            sample = order[: max(n, scored)]  # the N attacked images, at least ``scored``
            shown = sample[:scored]
            plain = x[shown]
            enc_sample = encrypt(x[sample], key, layout="CHW")
            enc = enc_sample[:scored]
            attacked = enc_sample[:n]  # all N of them, also where N > scored
            if per_image:
                attacked = enc  # every scored image, each alone
            t = time.perf_counter()
            result = attack.recover(attacked, block, prior=prior)
            seconds = time.perf_counter() - t
            if per_image:
                rec = reconstruct(result, attacked)
            else:
                rec = reconstruct(result, enc)
            row: dict[str, Any] = {
                "scheme": scheme,
                "setting": setting,
                "N": n,
                "key_seed": 1000 + k,
                "seconds": seconds,
            }
            row["confidence"] = _numbers(result.confidence)
            if attack.score_key is not None:
                row["key"] = _numbers(attack.score_key(key, result.key, plain))
            row["attacked_images"] = len(attacked)
            row["scored_images"] = len(plain)
            row.update(score_images(rec, plain))
            if model is not None:
                labels = s["y"][shown]
                row["top1_plain"] = top1(model, plain, labels)
                row["top1_reconstruction"] = top1(model, rec, labels)
                row["top1_encrypted"] = top1(model, enc, labels)
            rows.append(row)
            if save is not None:
                save(rows)
            parts = " ".join(f"{p} {row['key'].get(p, 0):.3f}" for p in attack.key_parts
                             if isinstance(row.get("key", {}).get(p), (int, float)))  # fmt: skip
            print(
                f"{scheme} {setting} key {k} N={n}: {parts} exact {row['exact_images']:.3f} "
                f"PSNR {row['psnr']:.1f} SSIM {row['ssim']:.3f} ({seconds:.1f} s)",
                flush=True,
            )
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Median and worst over keys per (scheme, setting, N)."""
    table = []
    for scheme, setting, n in dict.fromkeys((r["scheme"], r["setting"], r["N"]) for r in rows):
        rs = [r for r in rows if (r["scheme"], r["setting"], r["N"]) == (scheme, setting, n)]
        e: dict[str, Any] = {"scheme": scheme, "setting": setting, "N": n, "keys": len(rs)}
        for f in ("exact_images", "psnr", "ssim", "top1_reconstruction", "seconds"):
            if f in rs[0]:
                v = np.array([r[f] for r in rs], dtype=float)
                worst = v.max() if f == "seconds" else v.min()
                e[f] = (float(np.median(v)), float(worst))
        for f in ("top1_plain", "top1_encrypted"):
            if f in rs[0]:
                e[f] = float(np.median([r[f] for r in rs]))
        parts = attack_for(scheme).key_parts
        e["key"] = {
            p: float(np.median([r["key"][p] for r in rs]))
            for p in parts
            if all(isinstance(r.get("key", {}).get(p), (int, float)) for r in rs)
        }
        table.append(e)
    return table


def _first_n(entries: list[dict], test) -> int | None:
    for e in sorted(entries, key=lambda e: e["N"]):
        if test(e):
            return e["N"]
    return None


def table1_top1(path: Path | None) -> dict[str, dict[str, Any]]:
    """Per scheme, the best Table I reproduction row (mean top-1 with the key over seeds)."""
    if path is None or not Path(path).is_file():
        return {}
    rows = json.loads(Path(path).read_text())["rows"]
    best: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["row"] for r in rows):
        rs = [r for r in rows if r["row"] == name and r.get("top1_key") is not None]
        if not rs:
            continue
        entry = {
            "row": name,
            "model": rs[0]["model"],
            "top1": float(np.mean([r["top1_key"] for r in rs])),
            "seeds": len(rs),
        }
        scheme = rs[0]["scheme"]
        if scheme not in best or entry["top1"] > best[scheme]["top1"]:
            best[scheme] = entry
    return best


def summary(table: list[dict], table1: dict[str, dict]) -> list[dict[str, Any]]:
    """The cross-scheme row of each scheme (docs/security.md, README)."""
    out = []
    for scheme in dict.fromkeys(e["scheme"] for e in table):
        fm = [e for e in table if e["scheme"] == scheme and e["setting"] == "fmnist28"]
        ph = [e for e in table if e["scheme"] == scheme and e["setting"] == "photo224"]
        row: dict[str, Any] = {"scheme": scheme, "table1": table1.get(scheme)}
        if fm:
            last = max(fm, key=lambda e: e["N"])
            row["recognisable_N"] = _first_n(
                fm,
                lambda e: (
                    "top1_reconstruction" in e
                    and e["top1_reconstruction"][0] >= e["top1_plain"] - RECOGNISABLE_POINTS
                ),
            )
            row["exact_N"] = _first_n(fm, lambda e: e["exact_images"][0] >= EXACT_SHARE)
            row["largest_N"] = last["N"]
            row["ssim_largest_N"] = last["ssim"]
            row["top1_largest_N"] = last.get("top1_reconstruction")
            row["top1_plain"] = last.get("top1_plain")
            row["seconds_largest_N"] = last["seconds"]
        if ph:
            row["photo"] = {e["N"]: {"psnr": e["psnr"], "ssim": e["ssim"]} for e in ph}
            row["photo_exact_N"] = _first_n(ph, lambda e: e["exact_images"][0] >= EXACT_SHARE)
        out.append(row)
    return out


def _mw(v, pct: bool = True, digits: int = 1) -> str:
    if v is None:
        return "-"
    med, worst = v
    if pct:
        return f"{100 * med:.{digits}f} ({100 * worst:.{digits}f})"
    return f"{med:.{digits}f} ({worst:.{digits}f})"


def markdown(table: list[dict], rows: list[dict[str, Any]]) -> str:
    """The cross-scheme table, then every (scheme, setting, N) entry."""
    never = "not reached"
    lines = [
        "| scheme | top-1 (Table I reproduction, Fashion-MNIST) | N: recognisable (classifier "
        "within 5 points of plain) | N: exact images | SSIM at the largest N | attack s at the "
        "largest N | photographs 224: PSNR / SSIM at N = 2, 3, 5, 10 | photographs: N for "
        "exact images |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t1 = r["table1"]
        acc = f"{100 * t1['top1']:.2f} % ({t1['row']})" if t1 else "-"
        photo = r.get("photo", {})
        per_image = attack_for(r["scheme"]).score_key is None  # N does not matter
        cells = []
        for n in (2, 3, 5, 10):
            p = photo.get(1 if per_image else n)
            cells.append("-" if p is None else f"{p['psnr'][0]:.1f} / {p['ssim'][0]:.2f}")
        if per_image and photo:
            cells = [f"each image alone: {cells[0]}"]
        rec, exact = r.get("recognisable_N"), r.get("exact_N")
        rec, exact = (never if v is None else v for v in (rec, exact))
        photo_exact = "-" if not photo else r.get("photo_exact_N") or never
        if per_image:
            rec, exact, photo_exact = (
                v if v in (never, "-") else "any (each image alone)"
                for v in (rec, exact, photo_exact)
            )
        lines.append(
            f"| {r['scheme']} | {acc} | {rec} | {exact} | "
            f"{_mw(r.get('ssim_largest_N'), False, 3)} (N = {r.get('largest_N', '-')}) | "
            f"{_mw(r.get('seconds_largest_N'), False, 2)} | {'; '.join(cells)} | {photo_exact} |"
        )
    lines += [
        "",
        "Median (worst) over keys. Per scheme, setting and N:",
        "",
        "| scheme | setting | N | keys | key parts (median) | exact images % | PSNR dB | SSIM | "
        "top-1 rec. % (plain / enc.) | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in table:
        parts = ", ".join(f"{p} {100 * v:.1f} %" for p, v in e["key"].items()) or "-"
        top = "-"
        if "top1_reconstruction" in e:
            top = (
                f"{_mw(e['top1_reconstruction'])} ({100 * e['top1_plain']:.1f} / "
                f"{100 * e['top1_encrypted']:.1f})"
            )
        lines.append(
            f"| {e['scheme']} | {e['setting']} | {e['N']} | {e['keys']} | {parts} | "
            f"{_mw(e['exact_images'])} | {_mw(e['psnr'], False)} | {_mw(e['ssim'], False, 3)} "
            f"| {top} | {_mw(e['seconds'], False, 2)} |"
        )
    return "\n".join(lines) + "\n"


def run(
    schemes: list[str],
    out: Path,
    *,
    keys: int,
    quick: bool,
    settings: list[str],
    table1: Path | None,
    photo_crops,
    table_only: bool = False,
    ns: list[int] | None = None,
) -> dict[str, Any]:
    """Measure (or resume, run by run) every scheme in every setting; write the table; return
    it. ``table_only``: measure nothing, tabulate the runs ``out`` already holds; ``ns``: these
    N instead of each setting's list (runs at other N already in ``out`` are tabulated too)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data: dict[str, dict] = {}
    rows: list[dict] = []
    for scheme in scheme_names(schemes):
        runs_file = out / f"runs_{scheme}.json"
        done = json.loads(runs_file.read_text()) if runs_file.exists() else []
        mine = [r for r in done if r["setting"] in settings]
        for setting in settings:
            wanted = list(ns) if ns else (QUICK_NS if quick else NS)[setting]
            if attack_for(scheme).score_key is None:
                wanted = wanted[:1]  # per-image schemes: one run per key (run_scheme_setting)
            have = [r for r in mine if r["setting"] == setting]
            measured = {(r["key_seed"], r["N"]) for r in have}
            todo = {(1000 + k, n) for k in range(keys) for n in wanted}
            if table_only or todo <= measured:
                continue  # resumed: every run measured with the same keys and N
            if setting not in data:
                data[setting] = setting_data(setting, quick, photo_crops)
                if ns:
                    data[setting]["ns"] = list(ns)
            others = [r for r in mine if r["setting"] != setting]
            kept = [r for r in have if (r["key_seed"], r["N"]) not in todo]

            def save(new_rows, others=others, kept=kept, runs_file=runs_file):
                _write_atomic(runs_file, json.dumps(others + kept + new_rows, indent=1))

            # every row it returns is one of ``todo`` (its N are ``wanted``), and it has saved
            # them after its last run
            new_rows = run_scheme_setting(
                scheme, setting, data[setting], keys, out, done=have, save=save
            )
            mine = others + kept + new_rows
        rows += mine
    table = aggregate(rows)
    cross = summary(table, table1_top1(table1))
    result = {
        "summary": cross,
        "table": table,
        "seconds": time.perf_counter() - t0,
        "note": f"median (worst) over keys; {SCORED} images of each key's sample scored at every N",
    }
    (out / "security_schemes.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(table, cross)
    (out / "security_schemes.md").write_text(md)
    print(md)
    return result
