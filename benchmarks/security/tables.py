"""Aggregation over keys and every markdown table of the security runner.

``aggregate`` gives, per (scheme, setting, regime, prior, N), the median and worst over keys of
every figure (worst: the lowest, for seconds the highest), the means (``mean``) and how many
keys ended with the true global orientation. The tables, each where its runs are present:

* cross-scheme (``sample`` regime): per scheme the first N at which images are recognisable
  and exact, SSIM and time at the largest N, the photographs' PSNR / SSIM at N = 2, 3, 5, 10,
  and the top-1 of its Table I reproduction row (docs/security.md "Across schemes", README);
* per scheme, setting and N: key parts, exact images, PSNR, SSIM, top-1, seconds (every regime;
  docs/security_le.md, docs/security_ele.md, docs/security_etc.md);
* blockwise: K1/K2/K3, exact images, PSNR, SSIM, top-1, whether the prior chose the true
  orientation, seconds; known plaintext, sample variation, the demo model's leak
  (docs/security.md "Measured results");
* few-images: key parts, PSNR/SSIM strict and up to symmetry, top-1 (docs/security_few_images.md);
* PE: one key (pixels, exact / global, channel orders, inversion bits, images, top-1) and one
  key per image (values right, the fold, both priors) (docs/security_pe.md);
* LE: the 4-bit picture of the upper halves alone (docs/security_le.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from timm_ppconvmixer.attacks.registry import attack_for

from .data import DEFAULT_PRIOR

FMNIST, PHOTO = "fmnist28_4", "photo224_16"  # the cross-scheme table's two settings
RECOGNISABLE_POINTS = 0.05  # classifier top-1 within 5 points of its top-1 on plain images
EXACT_SHARE = 0.99  # "exact images": at least 99 % of the reconstructions equal the plain ones
_IDS = ("key_seed", "N", "scored")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats(values: list[float], field: str) -> tuple[float, float]:
    v = np.array(values, dtype=float)
    return float(np.median(v)), float(v.max() if field == "seconds" else v.min())


def _default_prior(setting: str) -> str:
    return DEFAULT_PRIOR[setting.split("_")[0].rstrip("0123456789")]


def aggregate(rows: list[dict]) -> list[dict]:
    """Median and worst over keys per (scheme, setting, regime, prior, N), N ascending."""
    blocks: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        b = (r["scheme"], r["setting"], r.get("regime"), r.get("prior"))
        blocks.setdefault(b, {}).setdefault(r["N"], []).append(r)
    table = []
    for (scheme, setting, regime, prior), by_n in blocks.items():
        for n in sorted(by_n):
            rs = by_n[n]
            e: dict[str, Any] = {
                "scheme": scheme, "setting": setting, "regime": regime, "prior": prior,
                "N": n, "keys": len(rs),
            }  # fmt: skip
            fields = [f for f, v in rs[0].items() if _number(v) and f not in _IDS]
            for f in fields:
                if all(_number(r.get(f)) for r in rs):
                    e[f] = _stats([r[f] for r in rs], f)
            if all("key" in r for r in rs):
                parts = [p for p, v in rs[0]["key"].items() if _number(v)]
                e["key"] = {
                    p: _stats([r["key"][p] for r in rs], p)
                    for p in parts
                    if all(_number(r["key"].get(p)) for r in rs)
                }
                # keys whose estimate needs no global element undone: the prior chose the true
                # orientation (symmetry, inversion, channel order) for the parts it could see
                e["orientation_right"] = sum(
                    r["key"].get("symmetry", "identity") == "identity"
                    and r["key"].get("global", "identity") == "identity"
                    and not r["key"].get("inverted", False)
                    for r in rs
                )
            flat = [{**r.get("key", {}), **r} for r in rs]
            e["mean"] = {
                f: float(np.mean([r[f] for r in flat]))
                for f, v in flat[0].items()
                if _number(v) and f not in _IDS and all(_number(r.get(f)) for r in flat)
            }
            e["seconds_max"] = float(max(r["seconds"] for r in rs))
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
    """The cross-scheme row of each scheme (docs/security.md, README), from the entries of
    ``fmnist28_4`` and ``photo224_16`` with their own prior."""
    out = []
    own = [e for e in table if e.get("prior") in (None, _default_prior(e["setting"]))]
    for scheme in dict.fromkeys(e["scheme"] for e in own):
        fm = [e for e in own if e["scheme"] == scheme and e["setting"] == FMNIST]
        ph = [e for e in own if e["scheme"] == scheme and e["setting"] == PHOTO]
        row: dict[str, Any] = {"scheme": scheme, "table1": table1.get(scheme)}
        if fm:
            last = max(fm, key=lambda e: e["N"])
            row["recognisable_N"] = _first_n(
                fm,
                lambda e: (
                    "top1_reconstruction" in e
                    and e["top1_reconstruction"][0] >= e["top1_plain"][0] - RECOGNISABLE_POINTS
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
        if fm or ph:
            out.append(row)
    return out


def _mw(v, pct: bool = True, digits: int = 1) -> str:
    """``median (worst)``, in percent or as is."""
    if v is None:
        return "-"
    med, worst = v
    if pct:
        return f"{100 * med:.{digits}f} ({100 * worst:.{digits}f})"
    return f"{med:.{digits}f} ({worst:.{digits}f})"


def _label(e: dict) -> str:
    """The setting, with the prior where it is not the setting's own."""
    prior = e.get("prior")
    if prior is None or prior == _default_prior(e["setting"]):
        return e["setting"]
    return f"{e['setting']} ({prior} prior)"


def _top1(e: dict) -> str:
    if "top1_reconstruction" not in e:
        return "-"
    return (
        f"{_mw(e['top1_reconstruction'])} ({100 * e['top1_plain'][0]:.1f} / "
        f"{100 * e['top1_encrypted'][0]:.1f})"
    )


def _table(header: list[str], rows: list[list[Any]], rule: str = " --- ") -> str:
    """A markdown table: ``header``, the separator line it implies, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cross_scheme_markdown(rows: list[dict[str, Any]]) -> str:
    """The cross-scheme table (one row per scheme)."""
    never = "not reached"
    header = [
        "scheme", "top-1 (Table I reproduction, Fashion-MNIST)",
        "N: recognisable (classifier within 5 points of plain)", "N: exact images",
        "SSIM at the largest N", "attack s at the largest N",
        "photographs 224: PSNR / SSIM at N = 2, 3, 5, 10", "photographs: N for exact images",
    ]  # fmt: skip
    out = []
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
        ssim = f"{_mw(r.get('ssim_largest_N'), False, 3)} (N = {r.get('largest_N', '-')})"
        seconds = _mw(r.get("seconds_largest_N"), False, 2)
        out.append([r["scheme"], acc, rec, exact, ssim, seconds, "; ".join(cells), photo_exact])
    return _table(header, out)


def entries_markdown(table: list[dict]) -> str:
    """Every (scheme, setting, N) entry: the scheme's key parts (median), images, top-1, s."""
    header = [
        "scheme", "setting", "N", "keys", "key parts (median)", "exact images %", "PSNR dB",
        "SSIM", "top-1 rec. % (plain / enc.)", "s",
    ]  # fmt: skip
    out = []
    for e in table:
        key = e.get("key", {})
        parts = attack_for(e["scheme"]).key_parts
        cells = ", ".join(f"{p} {100 * key[p][0]:.1f} %" for p in parts if p in key) or "-"
        out.append([
            e["scheme"], _label(e), e["N"], e["keys"], cells, _mw(e["exact_images"]),
            _mw(e["psnr"], False), _mw(e["ssim"], False, 3), _top1(e), _mw(e["seconds"], False, 2),
        ])  # fmt: skip
    return _table(header, out)


def blockwise_markdown(table: list[dict]) -> str:
    """The block-wise scheme per setting and N (docs/security.md "Measured results")."""
    header = [
        "setting", "N", "K1 %", "K2 %", "K3 %", "exact images %", "PSNR dB", "SSIM",
        "top-1 rec. % (plain / enc.)", "prior right", "time s (max)",
    ]  # fmt: skip
    out = []
    for e in table:
        k = e["key"]
        out.append([
            _label(e), e["N"], _mw(k["K1"]), _mw(k["K2"]), _mw(k["K3"]), _mw(e["exact_images"]),
            _mw(e["psnr"], False), _mw(e["ssim"], False, 3), _top1(e),
            f"{e['orientation_right']}/{e['keys']}",
            f"{e['seconds'][0]:.1f} ({e['seconds'][1]:.1f})",
        ])  # fmt: skip
    return _table(header, out)


def known_plaintext_markdown(kp: list[dict]) -> str:
    fields = ("K1_exact", "K2_exact", "K3_exact", "other_images_exact")
    out = []
    for name in dict.fromkeys(r["setting"] for r in kp):
        for pairs in (1, 2):
            rs = [r for r in kp if r["setting"] == name and r["pairs"] == pairs]
            out.append(
                [name, pairs, *(f"{100 * np.median([r[f] for r in rs]):.1f}" for f in fields)]
            )
    return _table(["setting", "pairs", "K1 %", "K2 %", "K3 %", "other images exact %"], out)


def variation_markdown(rows: list[dict]) -> str:
    out = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        for n in dict.fromkeys(r["N"] for r in rows if r["setting"] == name):
            rs = [r for r in rows if r["setting"] == name and r["N"] == n]
            full = sum(r["key"]["K1"] == r["key"]["K2"] == r["key"]["K3"] == 1.0 for r in rs)
            ex = np.array([r["exact_images"] for r in rs])
            exact = f"{100 * np.median(ex):.1f} %, {100 * ex.min():.1f} %"
            out.append([name, n, len(rs), f"{full}/{len(rs)}", exact])
    header = ["setting", "N", "draws", "key recovered (up to symmetry)"]
    return _table([*header, "images exact (median, worst)"], out)


def few_images_markdown(table: list[dict]) -> str:
    """One scheme in the few-images regime (docs/security_few_images.md)."""
    parts = list(attack_for(table[0]["scheme"]).key_parts)
    fields = [*parts, "psnr", "ssim", "psnr_sym", "ssim_sym", "top1_reconstruction"]
    header = [
        "setting", "N", "keys", *(f"{p} %" for p in parts), "PSNR dB", "SSIM", "PSNR sym",
        "SSIM sym", "top-1 rec. %", "time s",
    ]  # fmt: skip
    out = []
    for e in table:
        cells = []
        for f in fields:
            v = e.get("key", {}).get(f) if f in parts else e.get(f)
            if v is None:
                cells.append("-")
                continue
            pct = f in parts or f == "top1_reconstruction"
            fmt = "{:.1f} ({:.1f})" if pct or f.startswith("psnr") else "{:.3f} ({:.3f})"
            scale = 100 if pct else 1
            cells.append(fmt.format(scale * v[0], scale * v[1]))
        out.append([_label(e), e["N"], e["keys"], *cells, f"{e['seconds'][0]:.1f}"])
    return _table(header, out)


def pe_markdown(table: list[dict]) -> str:
    """PE with one key, per setting (docs/security_pe.md)."""
    header = [
        "N", "pixels (order + bits)", "exact / global", "channel orders", "inversion bits",
        "exact images", "PSNR dB", "SSIM", "top-1 recon / plain %", "seconds",
    ]  # fmt: skip
    parts = []
    for label in dict.fromkeys(_label(e) for e in table):
        out = []
        for e in (e for e in table if _label(e) == label):
            k = e["key"]
            top = "-"
            if "top1_reconstruction" in e:
                top = f"{_mw(e['top1_reconstruction'])} / {_mw(e['top1_plain'])}"
            exact = (
                f"{_mw(k['pixels_exact'], False, 3)}, identity {e['orientation_right']}/{e['keys']}"
            )
            out.append([
                e["N"], _mw(k["pixels"], False, 3), exact,
                _mw(k["channel_perm"], False, 3), _mw(k["np_mask"], False, 3),
                f"{_mw(e['exact_images'])} %", _mw(e["psnr"], False), _mw(e["ssim"], False, 3),
                top, _mw(e["seconds"], False),
            ])  # fmt: skip
        parts.append(f"{label}, median (worst) over keys:\n\n" + _table(header, out, "---"))
    return "\n".join(parts)


def pe_per_image_markdown(table: list[dict]) -> str:
    """PE with a fresh key per image, per setting and prior (docs/security_pe.md)."""
    header = [
        "data", "prior", "images", "values right", "values right up to inversion", "PSNR dB",
        "SSIM", "SSIM of the fold", "top-1 recon / fold / plain %", "seconds per image",
    ]  # fmt: skip
    out = []
    for e in table:
        top = "-"
        if "top1_reconstruction" in e:
            top = " / ".join(_mw(e[f]) for f in ("top1_reconstruction", "top1_fold", "top1_plain"))
        images = int(e["scored_images"][0])
        out.append([
            e["setting"], e["prior"], f"{images} x {e['keys']} samples",
            _mw(e["values_exact"], False, 3), _mw(e["values_up_to_inversion"], False, 3),
            _mw(e["psnr"], False), _mw(e["ssim"], False, 3), _mw(e["ssim_fold"], False, 3), top,
            f"{e['seconds'][0] / images:.3f}",
        ])  # fmt: skip
    return _table(header, out, "---")


def le_upper_markdown(table: list[dict]) -> str:
    """LE: the 4-bit picture of the upper halves alone, means over keys (docs/security_le.md)."""
    header = [
        "setting", "N", "keys", "upper halves placed", "upper-only PSNR dB", "upper-only SSIM",
        "upper-only top-1", "plain top-1", "all halves: PSNR dB", "SSIM", "s (mean / max)",
    ]  # fmt: skip
    out = []
    for e in table:
        m = e["mean"]
        pct = {f: f"{100 * m[f]:.1f} %" if f in m else "-" for f in ("upper_top1", "top1_plain")}
        out.append([
            _label(e), e["N"], e["keys"], f"{100 * m['upper_placed']:.1f} %",
            f"{m['upper_psnr']:.1f}", f"{m['upper_ssim']:.3f}", pct["upper_top1"],
            pct["top1_plain"], f"{m['psnr']:.1f}", f"{m['ssim']:.3f}",
            f"{m['seconds']:.1f} / {e['seconds_max']:.1f}",
        ])  # fmt: skip
    return _table(header, out)


def report(
    table: list[dict],
    regime: str,
    *,
    cross: list[dict] | None = None,
    kp: list[dict] | None = None,
    variation: list[dict] | None = None,
    demo: dict | None = None,
) -> str:
    """Every table the runs and extras call for, as one markdown document."""
    out = [f"Regime: {regime}. Median (worst) over keys unless a table says otherwise.", ""]

    def section(title: str, body: str) -> None:
        out.extend([f"### {title}", "", body])

    if cross:
        section("Across schemes", cross_scheme_markdown(cross))
    if table:
        section("Per scheme, setting and N", entries_markdown(table))
    block = [e for e in table if e["scheme"] == "blockwise"]
    if block and regime != "few-images":
        section("Block-wise scheme", blockwise_markdown(block))
    if kp:
        section("Known plaintext (block-wise, median over keys)", known_plaintext_markdown(kp))
    if demo:
        section("Shipped demo model", json.dumps(demo) + "\n")
    if variation:
        section("Sample variation (block-wise, one key)", variation_markdown(variation))
    if regime == "few-images":
        for scheme in dict.fromkeys(e["scheme"] for e in table):
            rows = [e for e in table if e["scheme"] == scheme]
            section(f"Few-images regime: {scheme}", few_images_markdown(rows))
    pe = [e for e in table if e["scheme"] == "pe"]
    if pe:
        section("PE, one key", pe_markdown(pe))
    per_image = [e for e in table if e["scheme"] == "pe-per-image"]
    if per_image:
        section("PE, a fresh key per image", pe_per_image_markdown(per_image))
    le = [e for e in table if e["scheme"] == "le"]
    if le:
        section("LE: the upper halves alone (means over keys)", le_upper_markdown(le))
    return "\n".join(out)
