"""``run_attack``: the provider's attack on an encrypted dataset, as a report.

For N = 1, 10, 100, ... up to the data size (nested random samples), it recovers the key from the
ciphertext alone with the attack of the scheme the data record (:mod:`.schemes`; for the paper's
scheme :func:`~.ciphertext_only.recover_key`), decrypts with the estimate, and draws
plain / encrypted / reconstruction side by side. With the owner's key (or plain images) it
scores itself (:mod:`.scoring`, :mod:`.classifier`). Writes ``report.md``, ``result.json``,
``figures/`` and the final estimate as ``recovered.key`` (0600, never overwritten); neither
report holds key material, only public fingerprints. For a scheme without a shared key
(``pe-per-image``) N does not help: one step attacks every image alone, and no key is written.

Example:
    >>> run_attack("fmnist-enc/", "attack-report/", key="owner.key")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..cipher import decrypt
from ..schemes import ENCRYPT_ONLY_SCHEMES, PIXEL_WISE, SchemeKey, load_key
from .ciphertext_only.blockwise import check_encrypted_batch
from .evaluation.classifier import cached_classifier, top1
from .evaluation.inputs import MANIFEST, load_images, scheme_of
from .evaluation.scoring import score_images
from .registry import attack_for, reconstruct
from .result import AttackInputError
from .solvers.priors import GenericPrior, ReferencePrior

__all__ = ["KEY_FILE", "run_attack"]

KEY_FILE = "recovered.key"
_SAMPLES = 4  # images per figure


def _steps(n: int) -> list[int]:
    steps = [10**k for k in range(0, 12) if 10**k < n]
    return steps + [n]


def _load_key(key: SchemeKey | str | Path | None, images: np.ndarray, scheme: str):
    """The owner's key, checked against the data's geometry and recorded scheme."""
    if key is None:
        return None
    if scheme in ENCRYPT_ONLY_SCHEMES:
        raise AttackInputError(
            f"{scheme} data have no key (every image got its own, never stored): score the "
            "attack with --plain instead of --key"
        )
    key = key if isinstance(key, SchemeKey) else load_key(key)
    if key.scheme != scheme:
        raise AttackInputError(
            f"the key is a {key.scheme} key, the data record the {scheme} scheme: not the key "
            "of these images"
        )
    if (key.channels, *key.image_size) != images.shape[1:]:
        raise AttackInputError(
            f"the key is for {key.channels}x{key.image_size[0]}x{key.image_size[1]} images, the "
            f"data are {'x'.join(map(str, images.shape[1:]))}: not the key of these images"
        )
    return key


def _reference(reference: str | Path | None, shape: tuple[int, ...]):
    """A :class:`ReferencePrior` from public plain images, or the generic prior."""
    if reference is None:
        return GenericPrior()
    if str(reference) == "fashion-mnist":
        from PIL import Image

        from ..data.datasets import fashion_mnist_arrays

        x = fashion_mnist_arrays("test")[0]
        c, h, w = shape
        if c != 1:
            raise AttackInputError("the fashion-mnist reference is grayscale; the data are not")
        if (h, w) != x.shape[1:]:
            x = np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.BICUBIC)) for a in x])
        return ReferencePrior(x[:, None])
    ref = load_images(reference, encrypted=False).images
    if ref.shape[1:] != shape:
        raise AttackInputError(f"reference images are {ref.shape[1:]}, the data {shape}")
    return ReferencePrior(ref)


def _figure(path: Path, plain, encrypted, recon, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("plain", plain), ("encrypted", encrypted), ("attacker's reconstruction", recon)]
    cols = [(name, x) for name, x in cols if x is not None]
    rows = min(len(x) for _, x in cols)
    fig, axes = plt.subplots(rows, len(cols), figsize=(2.2 * len(cols), 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c, (name, x) in enumerate(cols):
            img = x[r].transpose(1, 2, 0)
            axes[r, c].imshow(
                img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255
            )
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_attack(
    encrypted_source: str | Path,
    out_dir: str | Path,
    *,
    key: SchemeKey | str | Path | None = None,
    plain: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    reference: str | Path | None = None,
    block_size: int | None = None,
    scheme: str | None = None,
) -> dict[str, Any]:
    """Attack ``encrypted_source`` (folder with ENCRYPTION.json, or saved dataset) and report.

    The attack is the one of the scheme the data record (``ENCRYPTION.json``, or the dataset
    card's ``ppconvmixer`` block), looked up in :data:`~.schemes.SCHEME_ATTACKS`.

    Args:
        encrypted_source: what the provider holds.
        out_dir: report folder (created); must not already hold a ``recovered.key``.
        key: the owner's key (object or file) to score the attack; never written anywhere.
        plain: the plain images in the same order/names, to score without (or with) the key.
        limit: attack a seeded random subset of ``limit`` images.
        progress: show a tqdm progress bar over the N steps.
        reference: public plain images of the same kind for the orientation prior (a folder,
            a saved dataset, or ``"fashion-mnist"`` for the public test split); default: the
            data-free generic prior.
        block_size: M when the source has no record of it (saved datasets).
        scheme: the scheme when the source has no record of it (default: ``blockwise``);
            refused when it contradicts the record.

    Returns:
        The content of ``result.json``.
    """
    out = Path(out_dir)
    if (out / KEY_FILE).exists():
        raise AttackInputError(
            f"{out / KEY_FILE} exists; a recovered key is never overwritten: use a new --out folder"
        )
    batch = load_images(encrypted_source, limit)
    name = scheme_of(batch, scheme)
    attack = attack_for(name)
    images = batch.images
    m = block_size or batch.manifest.get("block_size") or (1 if name in PIXEL_WISE else None)
    if m is None:
        raise AttackInputError(
            f"{encrypted_source} has no {MANIFEST} saying the block size; pass block_size "
            "(the model's patch size)"
        )
    if name in PIXEL_WISE:
        n, c, h, w = images.shape
    else:
        n, c, h, w = check_encrypted_batch(images, int(m), block_order=name != "le")
    # N = 1, 10, ... are random samples of the data (seeded), not the first files of a tree
    # sorted by class
    order = np.random.default_rng(0).permutation(n)
    images = images[order]
    labels = None if batch.labels is None else batch.labels[order]
    owner_key = _load_key(key, images, name)
    plain_images = None
    if plain is not None:
        plain_images = load_images(plain, limit, encrypted=False).images
        if plain_images.shape == images.shape:
            plain_images = plain_images[order]
        else:
            raise AttackInputError(
                f"plain images {plain_images.shape} do not match the encrypted ones "
                f"{images.shape}; pass the same images in the same order (same --limit)"
            )
    elif owner_key is not None:
        plain_images = decrypt(images, owner_key, layout="CHW")  # the owner can decrypt
    prior = _reference(reference, (c, h, w))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    result = recon = None
    # without a shared key, N does not help the attacker: one step over every image
    counts = [n] if attack.score_key is None else _steps(n)
    for count in tqdm(counts, desc="attack (N images)", disable=not progress):
        t = time.perf_counter()
        result = attack.recover(images[:count], int(m), prior=prior)
        step: dict[str, Any] = {"N": count, "seconds": round(time.perf_counter() - t, 3)}
        step.update(result.to_dict())
        del step["fingerprint"]  # a fresh random salt per step: meaningless to compare
        recon = reconstruct(result, images[:count])
        if owner_key is not None and attack.score_key is not None:
            step["key_recovered"] = attack.score_key(owner_key, result.key, plain_images[:count])
        if plain_images is not None:
            step["images"] = score_images(recon, plain_images[:count])
        fig = f"figures/reconstruction_N{count}.png"
        k = min(_SAMPLES, count)
        show = None if plain_images is None else plain_images[:k]
        _figure(out / fig, show, images[:k], recon[:k], f"{name}, N = {count} images")
        step["figure"] = fig
        steps.append(step)
    report: dict[str, Any] = {
        "source": str(encrypted_source),
        "scheme": name,
        "attack": attack.summary,
        "key_parts": list(attack.key_parts),
        "images": n,
        "geometry": {"channels": c, "image_size": [h, w], "block_size": int(m)},
        "prior": prior.name,
        "steps": steps,
        "recovered_key_file": None if result.key is None else KEY_FILE,
        "recovered_key_fingerprint": None if result.key is None else result.key.fingerprint,
        "owner_key_fingerprint": None if owner_key is None else owner_key.fingerprint,
    }
    if plain_images is not None and labels is not None and n >= 20:
        if result.key is not None:
            recon = decrypt(images, result.key, layout="CHW")  # the last estimate, every image
        report["classifier"] = _classifier(out, images, recon, plain_images, labels)
    if result.key is not None:
        result.key.save(out / KEY_FILE)  # 0600, refuses to overwrite
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _classifier(out: Path, images, recon, plain, labels) -> dict[str, Any]:
    """Train on even-indexed plain images, evaluate on the odd ones (disjoint)."""
    train, test = np.arange(0, len(images), 2), np.arange(1, len(images), 2)
    model = cached_classifier(out / "classifier", plain[train][:20000], labels[train][:20000])
    return {
        "trained_on": "even-indexed plain images (at most 20000), cached in classifier/",
        "evaluated_on": f"{len(test)} odd-indexed images",
        "top1_plain": top1(model, plain[test], labels[test]),
        "top1_reconstruction": top1(model, recon[test], labels[test]),
        "top1_encrypted": top1(model, images[test], labels[test]),
    }


def _markdown(r: dict[str, Any]) -> str:
    g, parts = r["geometry"], r["key_parts"]
    where = (
        f"The recovered key is in `{r['recovered_key_file']}` (fingerprint "
        f"{r['recovered_key_fingerprint']}); this report holds no key material."
        if r["recovered_key_file"]
        else "The scheme shares no key between images: the attack reconstructs each image alone."
    )
    header = ["N", "seconds", *(f"conf {k}" for k in parts), *parts]
    header += ["exact images", "PSNR", "SSIM"]
    lines = [
        "# Ciphertext-only attack report",
        "",
        f"Source: `{r['source']}`, {r['images']} images of {g['channels']}x"
        f"{g['image_size'][0]}x{g['image_size'][1]}, block {g['block_size']}, encrypted with "
        f"the {r['scheme']} scheme. Attack: {r['attack']}. Prior for the symmetries: "
        f"{r['prior']}. {where}",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]

    def f(d: dict, name: str, pct: bool = True) -> str:
        v = d.get(name)
        if not isinstance(v, (int, float)):
            return "-"
        return f"{100 * v:.1f} %" if pct else f"{v:.2f}"

    for s in r["steps"]:
        k, im, cf = s.get("key_recovered", {}), s.get("images", {}), s["confidence"]
        cells = [str(s["N"]), f"{s['seconds']:.1f}", *(f(cf, p) for p in parts)]
        cells += [f(k, p) for p in parts]
        cells += [f(im, "exact_images"), f(im, "psnr", False), f(im, "ssim", False)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"conf: the attack's own confidence (no key). {', '.join(parts) or 'Key parts'}: share "
        "recovered, up to the symmetries the data cannot decide (docs/security.md defines "
        "them); needs the owner's key.",
        "",
    ]
    last = r["steps"][-1]
    if last["ambiguities"]:
        lines += ["Ambiguities at the last step:", ""]
        lines += [f"- {a}" for a in last["ambiguities"]] + [""]
    if "classifier" in r:
        c = r["classifier"]
        lines += [
            f"Plain-domain classifier ({c['trained_on']}; {c['evaluated_on']}): top-1 "
            f"{100 * c['top1_plain']:.1f} % on plain images, "
            f"{100 * c['top1_reconstruction']:.1f} % on the attacker's reconstructions, "
            f"{100 * c['top1_encrypted']:.1f} % on the encrypted images.",
            "",
        ]
    lines += [f"![N = {s['N']}]({s['figure']})" for s in r["steps"]] + [""]
    return "\n".join(lines)
