"""Security evaluation of the block-wise encryption (issue 10): attacks measured, not asserted.

One command runs every setting and writes ``OUT/security_eval.json`` and ``OUT/security_eval.md``
(a markdown table, also printed):

    python benchmarks/security_eval.py --out outputs/security_eval [--quick]
    python benchmarks/security_eval.py --schemes all --out outputs/security_schemes

(the second: every scheme's attack the same way, ``benchmarks/security_schemes.py``).

Settings (docs/security.md explains the choices):

* ``fmnist28_4``: Fashion-MNIST as in the demo (28x28, block 4, 1 channel); the attacked data are
  the 60,000 training images (what the provider holds); the attacker's prior uses the public
  test split; the plain-domain classifier is trained on the test split.
* ``fmnist56_4``, ``fmnist56_7``: Fashion-MNIST upscaled to 56x56 (bicubic), blocks 4 and 7.
* ``photo224_16``, ``photo224_32``: the paper's geometry, 224x224 RGB, blocks 16 and 32, on
  random crops (random scale, random left-right flip) of the natural photographs shipped by
  scikit-image (``skimage.data``: astronaut, chelsea, coffee, motorcycle_left, rocket) and by
  the Debian package ``mate-backgrounds`` (``/usr/share/backgrounds/mate/nature``, 12 photos).
* ``photo224_16_gray``: the same crops in grayscale (mitigation: no colour).

For each setting, N on a log scale up to the data size, and 5 seeded keys, each with its own
seeded random sample of the data (the N images of a smaller N among those of a larger one):
ciphertext-only attack (``recover_key``), key parts recovered up to the unavoidable symmetries,
share of images decrypted exactly, PSNR/SSIM of the reconstructions against the plain images,
classifier top-1 (Fashion-MNIST), attack time; median and worst over keys. Also known-plaintext
(1 and 2 pairs) and, for the shipped demo model (trained with its PUBLIC key), what its P and
stem reveal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from timm_ppconvmixer import BlockKey, decrypt, encrypt
from timm_ppconvmixer.attacks import (
    GenericPrior,
    ReferencePrior,
    known_plaintext_attack,
    recover_key,
    score_images,
    score_key,
)
from timm_ppconvmixer.attacks.evaluation.classifier import cached_classifier, top1
from timm_ppconvmixer.data import fashion_mnist_arrays

SCORED_IMAGES = {"fmnist": 2000, "photo": 200}  # image metrics on the first images only


def photo_paths() -> list[str]:
    paths = []
    try:
        import skimage.data

        d = skimage.data.data_dir
        names = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
        paths += [os.path.join(d, n) for n in names if os.path.exists(os.path.join(d, n))]
    except ImportError:
        pass
    paths += sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg"))
    return paths


def photo_crops(n: int, size: int = 224, seed: int = 0, gray: bool = False) -> np.ndarray:
    """``n`` random square crops (random scale, random mirror) resized to ``size``."""
    paths = photo_paths()
    if len(paths) < 5:
        sys.exit(
            "no photographs: pip install 'timm-ppconvmixer[security]' (scikit-image) and "
            "apt-get install mate-backgrounds"
        )
    rng = np.random.default_rng(seed)
    images = [Image.open(p).convert("L" if gray else "RGB") for p in paths]
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        w, h = im.size
        side = rng.uniform(size, min(w, h))
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        crop = im.resize(
            (size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        a = np.asarray(crop)
        out.append(a[None] if gray else a.transpose(2, 0, 1))
    return np.stack(out)


def upscale(x: np.ndarray, size: int) -> np.ndarray:
    return np.stack(
        [
            np.asarray(Image.fromarray(a[0]).resize((size, size), Image.Resampling.BICUBIC))
            for a in x
        ]
    )[:, None]


def settings(quick: bool) -> dict[str, dict]:
    train, labels = fashion_mnist_arrays("train")
    test, test_labels = fashion_mnist_arrays("test")
    train, test = train[:, None], test[:, None]
    f_ns = [1, 10, 100, 1000] if quick else [1, 10, 100, 1000, 10000, 60000]
    f56_ns = [1, 10, 100, 1000] if quick else [1, 10, 100, 1000, 10000]
    p_ns = [1, 10, 100] if quick else [1, 10, 100, 1000]
    n_photo = max(p_ns)
    photos = photo_crops(n_photo, seed=1)
    out = {
        "fmnist28_4": dict(x=train, y=labels, block=4, ns=f_ns, ref=test, ref_y=test_labels),
    }
    up_train = upscale(train[: max(f56_ns)], 56)
    up_test = upscale(test, 56)
    for m in (4, 7):
        out[f"fmnist56_{m}"] = dict(
            x=up_train, y=labels[: max(f56_ns)], block=m, ns=f56_ns, ref=up_test, ref_y=test_labels
        )
    for m in (16, 32):
        out[f"photo224_{m}"] = dict(x=photos, y=None, block=m, ns=p_ns, ref=None, ref_y=None)
    out["photo224_16_gray"] = dict(
        x=photo_crops(n_photo, seed=1, gray=True), y=None, block=16, ns=p_ns, ref=None, ref_y=None
    )
    return out


def run_setting(name: str, s: dict, keys: int, cache: Path) -> list[dict]:
    x, m = s["x"], s["block"]
    c, h, _ = x.shape[1:]
    prior = ReferencePrior(s["ref"]) if s["ref"] is not None else GenericPrior()
    scored = SCORED_IMAGES["fmnist" if name.startswith("fmnist") else "photo"]
    model = None
    if s["ref_y"] is not None:
        model = cached_classifier(cache / f"classifier_{x.shape[-1]}", s["ref"], s["ref_y"])
    rows = []
    for seed in range(keys):
        key = BlockKey.generate(h, m, c, seed=1000 + seed)
        # a fresh random sample of the data per key (seeded by the key's seed; the N images of
        # a smaller N are among those of a larger one): the attack is equivariant to the key,
        # so the same images under every key would mostly repeat one experiment
        order = np.random.default_rng(1000 + seed).permutation(len(x))
        for n in s["ns"]:
            idx = order[:n]
            plain = x[idx]
            enc = encrypt(plain, key, layout="CHW")
            t = time.perf_counter()
            result = recover_key(enc, m, prior=prior)
            seconds = time.perf_counter() - t
            k = min(n, scored)
            rec = decrypt(enc[:k], result.key, layout="CHW")
            row = {"setting": name, "N": n, "key_seed": 1000 + seed, "seconds": seconds}
            row.update({f"conf_{p}": v for p, v in result.confidence.items()})
            sc = score_key(key, result.key, plain[:k])
            row.update({p: sc[p] for p in ("K1", "K2", "K3", "K1_content", "symmetry", "inverted")})
            row.update({f"{p}_exact": sc[f"{p}_exact"] for p in ("K1", "K2", "K3")})
            row.update(score_images(rec, plain[:k]))
            if model is not None:
                labels = s["y"][idx]
                row["top1_plain"] = top1(model, plain[:k], labels[:k])
                row["top1_reconstruction"] = top1(model, rec, labels[:k])
                row["top1_encrypted"] = top1(model, enc[:k], labels[:k])
            rows.append(row)
            print(
                f"{name} key {seed} N={n}: K1 {row['K1']:.3f} K2 {row['K2']:.3f} "
                f"K3 {row['K3']:.3f} exact {row['exact_images']:.3f} PSNR {row['psnr']:.1f} "
                f"SSIM {row['ssim']:.3f} ({seconds:.1f} s)",
                flush=True,
            )
    return rows


def known_plaintext_rows(sets: dict[str, dict]) -> list[dict]:
    rows = []
    for name, s in sets.items():
        x, m = s["x"], s["block"]
        c, h, _ = x.shape[1:]
        for pairs in (1, 2):
            for seed in range(5):
                key = BlockKey.generate(h, m, c, seed=2000 + seed)
                pair = x[seed * 2 : seed * 2 + pairs]
                t = time.perf_counter()
                r = known_plaintext_attack(pair, encrypt(pair, key, layout="CHW"), block_size=m)
                sc = score_key(key, r.key, pair)
                others = x[len(x) // 2 :][:200]  # disjoint from the pairs
                dec = decrypt(encrypt(others, key, layout="CHW"), r.key, layout="CHW")
                rows.append(
                    {
                        "setting": name,
                        "pairs": pairs,
                        "K1_exact": sc["K1_exact"],
                        "K2_exact": sc["K2_exact"],
                        "K3_exact": sc["K3_exact"],
                        "other_images_exact": score_images(dec, others)["exact_images"],
                        "seconds": time.perf_counter() - t,
                    }
                )
    return rows


def sample_variation(sets: dict[str, dict], samples: int = 10) -> list[dict]:
    """More draws of the images under one key than the main table's one per key:
    ``samples`` random draws of N images each."""
    plan = {"fmnist28_4": (100, 300, 1000), "fmnist56_4": (100, 1000), "photo224_16": (10,)}
    rows = []
    for name, ns in plan.items():
        if name not in sets:
            continue
        s = sets[name]
        x, m = s["x"], s["block"]
        c, h, _ = x.shape[1:]
        prior = ReferencePrior(s["ref"]) if s["ref"] is not None else GenericPrior()
        key = BlockKey.generate(h, m, c, seed=3000)
        for n in ns:
            for draw in range(samples if name.startswith("fmnist") else 5):
                idx = np.sort(np.random.default_rng(draw).choice(len(x), n, replace=False))
                enc = encrypt(x[idx], key, layout="CHW")
                r = recover_key(enc, m, prior=prior)
                sc = score_key(key, r.key)
                k = min(n, 200)
                images = score_images(decrypt(enc[:k], r.key, layout="CHW"), x[idx][:k])
                rows.append({"setting": name, "N": n, "draw": draw, **sc, **images})
                print(
                    f"sample {name} N={n} draw {draw}: K1 {sc['K1']:.3f} K2 {sc['K2']:.3f} "
                    f"exact {images['exact_images']:.2f}",
                    flush=True,
                )
    return rows


def demo_model_rows() -> dict:
    """The shipped demo model was trained on data encrypted with a PUBLIC key: score what its
    weights reveal (a model trained from scratch)."""
    import timm

    import timm_ppconvmixer
    from timm_ppconvmixer.attacks import block_order_from_p, shuffle_from_stem
    from timm_ppconvmixer.attacks.solvers.blocks import SYMMETRIES, position_map

    model = timm.create_model("ppconvmixer_256_8_fmnist.demo", pretrained=True).eval()
    key_path = Path(timm_ppconvmixer.__file__).parent / "pretrained" / "fmnist28_demo.PUBLIC.key"
    key = BlockKey.load(key_path)
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


def aggregate(rows: list[dict]) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        for n in dict.fromkeys(r["N"] for r in rows if r["setting"] == name):
            rs = [r for r in rows if r["setting"] == name and r["N"] == n]
            entry = {"setting": name, "N": n, "keys": len(rs)}
            for f in ("K1", "K2", "K3", "exact_images", "psnr", "ssim", "top1_reconstruction"):
                if f in rs[0]:
                    v = np.array([r[f] for r in rs])
                    entry[f] = (float(np.median(v)), float(v.min()))
            for f in ("top1_plain", "top1_encrypted"):
                if f in rs[0]:
                    entry[f] = float(np.median([r[f] for r in rs]))
            t = np.array([r["seconds"] for r in rs])
            entry["seconds"] = (float(np.median(t)), float(t.max()))
            # keys whose estimate is the true key up to nothing: the prior chose the true
            # orientation (symmetry "identity", no inversion) for the key parts it could see
            entry["orientation_right"] = sum(
                r["symmetry"] == "identity" and not r["inverted"] for r in rs
            )
            table.append(entry)
    return table


def markdown(table: list[dict], kp: list[dict], demo: dict | None) -> str:
    def mw(v, pct=True):
        if v is None:
            return "-"
        med, worst = v
        return f"{100 * med:.1f} ({100 * worst:.1f})" if pct else f"{med:.1f} ({worst:.1f})"

    lines = [
        "| setting | N | K1 % | K2 % | K3 % | exact images % | PSNR dB | SSIM | top-1 rec. % "
        "(plain / enc.) | prior right | time s (max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in table:
        top = "-"
        if "top1_reconstruction" in e:
            top = (
                f"{mw(e['top1_reconstruction'])} ({100 * e['top1_plain']:.1f} / "
                f"{100 * e['top1_encrypted']:.1f})"
            )
        ssim = f"{e['ssim'][0]:.3f} ({e['ssim'][1]:.3f})"
        lines.append(
            f"| {e['setting']} | {e['N']} | {mw(e['K1'])} | {mw(e['K2'])} | {mw(e['K3'])} | "
            f"{mw(e['exact_images'])} | {mw(e['psnr'], False)} | {ssim} | {top} | "
            f"{e['orientation_right']}/{e['keys']} | "
            f"{e['seconds'][0]:.1f} ({e['seconds'][1]:.1f}) |"
        )
    lines += [
        "",
        "| setting | pairs | K1 % | K2 % | K3 % | other images exact % |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["setting"] for r in kp):
        for pairs in (1, 2):
            rs = [r for r in kp if r["setting"] == name and r["pairs"] == pairs]
            med = {
                f: float(np.median([r[f] for r in rs]))
                for f in rs[0]
                if f not in ("setting", "pairs")
            }
            lines.append(
                f"| {name} | {pairs} | {100 * med['K1_exact']:.1f} | {100 * med['K2_exact']:.1f} | "
                f"{100 * med['K3_exact']:.1f} | {100 * med['other_images_exact']:.1f} |"
            )
    if demo:
        lines += ["", "Shipped demo model: " + json.dumps(demo)]
    return "\n".join(lines) + "\n"


def variation_markdown(rows: list[dict]) -> str:
    lines = [
        "",
        "| setting | N | draws | key recovered (up to symmetry) | images exact (median, worst) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["setting"] for r in rows):
        for n in dict.fromkeys(r["N"] for r in rows if r["setting"] == name):
            rs = [r for r in rows if r["setting"] == name and r["N"] == n]
            full = sum(r["K1"] == r["K2"] == r["K3"] == 1.0 for r in rs)
            ex = np.array([r["exact_images"] for r in rs])
            lines.append(
                f"| {name} | {n} | {len(rs)} | {full}/{len(rs)} | "
                f"{100 * np.median(ex):.1f} %, {100 * ex.min():.1f} % |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/security_eval")
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller N (a smoke run)")
    p.add_argument("--only", nargs="*", help="run only these settings")
    p.add_argument(
        "--schemes",
        nargs="+",
        help="'all' or scheme names: the cross-scheme evaluation (benchmarks/security_schemes.py) "
        "instead of the blockwise settings above",
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=["fmnist28", "photo224"],
        choices=["fmnist28", "photo224"],
        help="with --schemes: which data",
    )
    p.add_argument(
        "--table1",
        default="outputs/table1/table1.json",
        help="with --schemes: the Table I reproduction's JSON, for each scheme's top-1",
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="with --schemes: measure nothing, tabulate the runs OUT holds (runs_<scheme>.json)",
    )
    p.add_argument(
        "--ns",
        nargs="+",
        type=int,
        help="with --schemes: measure these N instead of each setting's list",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.schemes:
        sys.path.insert(0, str(Path(__file__).parent))
        from security_schemes import run

        run(
            args.schemes,
            Path(args.out),
            keys=args.keys,
            quick=args.quick,
            settings=args.settings,
            table1=Path(args.table1),
            photo_crops=photo_crops,
            table_only=args.table_only,
            ns=args.ns,
        )
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sets = settings(args.quick)
    if args.only:
        sets = {k: v for k, v in sets.items() if k in args.only}
    runs_file = out / "security_eval_runs.json"
    done = json.loads(runs_file.read_text()) if runs_file.exists() else []
    rows = []
    for name, s in sets.items():
        # resume: a setting already measured with the same keys and N is kept as measured
        have = [r for r in done if r["setting"] == name]
        if len(have) == args.keys * len(s["ns"]) and {r["N"] for r in have} == set(s["ns"]):
            rows += have
            continue
        rows += run_setting(name, s, args.keys, out)
        runs_file.write_text(json.dumps(rows, indent=1, default=str))
    kp = known_plaintext_rows(sets)
    variation = sample_variation(sets)
    demo = demo_model_rows()
    table = aggregate(rows)
    result = {
        "table": table,
        "runs": rows,
        "known_plaintext": kp,
        "demo_model": demo,
        "sample_variation": variation,
        "seconds": time.perf_counter() - t0,
        "note": "median (worst) over keys; image metrics on the first "
        f"{SCORED_IMAGES['fmnist']} (Fashion-MNIST) / {SCORED_IMAGES['photo']} (photos) images",
    }
    (out / "security_eval.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(table, kp, demo) + variation_markdown(variation)
    (out / "security_eval.md").write_text(md)
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
