"""Security evaluation of PE, both forms (issue 18): the numbers of docs/security_pe.md.

    python benchmarks/pe_security_eval.py --out outputs/pe_security_eval [--quick]

* ``pe`` (one key): Fashion-MNIST 28x28 grey, the 60,000 training images, N in {1, 10, 100,
  1000, 10000, 60000}, the public test split as the attacker's reference prior; photographs
  224x224 RGB (``security_eval.photo_crops``), N in {1, 2, 3, 5, 10, 100}, generic prior.
  5 seeded keys, each with its own random sample of images.
* ``pe-per-image`` (a fresh key per image, so N does not matter): 5 random samples of 2,000
  Fashion-MNIST training images (reference prior, and generic prior); 5 photographs
  (``--photos``; generic prior, and a reference prior from 200 other photograph crops).

``--only`` runs some of the four parts (each writes its own JSON).

Image metrics on at most 2,000 (Fashion-MNIST) / 200 (photographs) images; classifier top-1
from the plain-domain classifier trained on the test split (``attacks.classifier``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from timm_ppconvmixer import decrypt, encrypt
from timm_ppconvmixer.attacks import GenericPrior, ReferencePrior, score_images
from timm_ppconvmixer.attacks.ciphertext_only.pe import (
    recover_pe_key,
    recover_pe_per_image,
    score_pe_key,
    score_pe_reconstruction,
)
from timm_ppconvmixer.attacks.evaluation.classifier import cached_classifier, top1
from timm_ppconvmixer.data import fashion_mnist_arrays
from timm_ppconvmixer.schemes import generate_key, per_image_encryption

sys.path.insert(0, str(Path(__file__).parent))
from security_eval import photo_crops  # noqa: E402

SCORED = {"fmnist": 2000, "photo": 200}


def pe_rows(name, x, y, ns, prior, model, keys) -> list[dict]:
    rows = []
    c, h, w = x.shape[1:]
    for seed in range(keys):
        key = generate_key("pe", image_size=(h, w), channels=c, seed=1000 + seed)
        order = np.random.default_rng(1000 + seed).permutation(len(x))
        scored = SCORED["fmnist" if name.startswith("fmnist") else "photo"]
        for n in ns:
            # judged on the first images of the key's sample (the N attacked ones among them,
            # the rest decrypted with the estimate), as benchmarks/security_schemes.py does:
            # one image's top-1 says nothing
            idx = order[: max(n, scored)]
            shown = idx[:scored]
            plain = x[idx]
            enc = encrypt(plain, key, layout="CHW")
            t = time.perf_counter()
            result = recover_pe_key(enc[:n], 1, prior=prior)
            seconds = time.perf_counter() - t
            rec = decrypt(enc[:scored], result.key, layout="CHW")
            row = {"scheme": "pe", "setting": name, "N": n, "key_seed": 1000 + seed}
            row["seconds"] = seconds
            row["scored_images"] = len(shown)
            row.update(score_pe_key(key, result.key))
            row.update(score_images(rec, plain[:scored]))
            if model is not None:
                row["top1_plain"] = top1(model, plain[:scored], y[shown])
                row["top1_reconstruction"] = top1(model, rec, y[shown])
                row["top1_encrypted"] = top1(model, enc[:scored], y[shown])
            rows.append(row)
            print(
                f"pe {name} key {seed} N={n}: pixels {row['pixels']:.4f} "
                f"(exact {row['pixels_exact']:.4f}, {row['global']}) "
                f"images {row['exact_images']:.3f} PSNR {row['psnr']:.1f} SSIM {row['ssim']:.3f}"
                f" top1 {row.get('top1_reconstruction', float('nan')):.3f} ({seconds:.1f} s)",
                flush=True,
            )
    return rows


def per_image_rows(name, x, y, count, priors, model, samples) -> list[dict]:
    rows = []
    c, h, w = x.shape[1:]
    for s in range(samples):
        idx = np.random.default_rng(2000 + s).permutation(len(x))[:count]
        plain = x[idx]
        enc = encrypt(plain, per_image_encryption((h, w), c), layout="CHW")
        for pname, prior in priors.items():
            t = time.perf_counter()
            result = recover_pe_per_image(enc, 1, prior=prior)
            seconds = time.perf_counter() - t
            rec = result.reconstruction
            row = {"scheme": "pe-per-image", "setting": name, "prior": pname, "sample": s}
            row.update({"images": count, "seconds": seconds})
            row.update(score_pe_reconstruction(rec, plain))
            row.update(score_images(rec, plain))
            # the key-invariant fold min(v, 255 - v), what any observer gets for free
            fold = np.minimum(plain, 255 - plain)
            row["ssim_fold"] = score_images(fold, plain)["ssim"]
            if model is not None:
                row["top1_plain"] = top1(model, plain, y[idx])
                row["top1_reconstruction"] = top1(model, rec, y[idx])
                row["top1_encrypted"] = top1(model, enc, y[idx])
                row["top1_fold"] = top1(model, fold, y[idx])
            rows.append(row)
            print(
                f"pe-per-image {name} sample {s} prior {pname}: values "
                f"{row['values_exact']:.3f} PSNR {row['psnr']:.1f} SSIM {row['ssim']:.3f} "
                f"top1 {row.get('top1_reconstruction', float('nan')):.3f} ({seconds:.1f} s)",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/pe_security_eval")
    ap.add_argument("--quick", action="store_true", help="N up to 1000, 2 keys")
    parts = ("pe-fmnist", "pe-photo", "per-image-fmnist", "per-image-photo")
    ap.add_argument("--only", choices=parts, nargs="+", default=list(parts))
    ap.add_argument("--photos", type=int, default=5, help="photographs for pe-per-image")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, labels = fashion_mnist_arrays("train")
    test, test_labels = fashion_mnist_arrays("test")
    train, test = train[:, None], test[:, None]
    model = cached_classifier(out / "classifier_28", test, test_labels)
    keys = 2 if args.quick else 5
    f_ns = [1, 10, 100, 1000] if args.quick else [1, 2, 3, 5, 10, 100, 1000, 10000, 60000]
    p_ns = [1, 2, 3, 5, 10] if args.quick else [1, 2, 3, 5, 10, 100]
    photos = photo_crops(max(p_ns + [args.photos]), seed=1)
    ref_photos = photo_crops(200, seed=7)  # other crops: a public reference of photographs
    rows: list[dict] = []
    fmnist_ref = ReferencePrior(test)
    if "pe-fmnist" in args.only:
        rows += pe_rows("fmnist28", train, labels, f_ns, fmnist_ref, model, keys)
    if "pe-photo" in args.only:
        rows += pe_rows("photo224", photos, None, p_ns, GenericPrior(), None, keys)
    if "per-image-fmnist" in args.only:
        priors = {"reference": fmnist_ref, "generic": GenericPrior()}
        rows += per_image_rows("fmnist28", train, labels, 2000, priors, model, keys)
    if "per-image-photo" in args.only:
        priors = {"generic": GenericPrior(), "reference": ReferencePrior(ref_photos)}
        rows += per_image_rows("photo224", photos, None, args.photos, priors, None, 1)
    name = "pe_security_eval_" + "_".join(args.only)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out / name}.json ({len(rows)} rows)")


if __name__ == "__main__":
    main()
