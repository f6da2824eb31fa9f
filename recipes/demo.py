"""The project's main job, end to end on its embedded default (the real Fashion-MNIST):

1. the data owner generates a secret key (OS CSPRNG; ``owner/owner.key``, mode 0600);
2. encrypts the dataset with it (``datasets`` batched map) and saves only the encrypted copy
   (``encrypted_fashion_mnist/``, shareable: no key inside);
3. the provider trains ``ppconvmixer_256_8`` (28x28, block 4, one channel, with P) on the
   encrypted copy with the accelerate recipe, without being given the key;
4. the owner evaluates: top-1 with the key, on plain images and with a wrong key, and how much of
   the block permutation P recovered;
5. the model is exported in the Hub format (safetensors + config.json + key-free model card),
   and the provider's view is measured: the ciphertext-only attack of ``ppconvmixer attack``
   on the encrypted copy it holds, scored by the owner (``owner/attack/``);
6. a report (``report.md``) with the tables and figures says where everything went.

    python recipes/demo.py [--out outputs/demo] [--train-limit N]   (or: make demo)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import timm  # noqa: E402
from demo_figures import photo_figure, sample_grid, training_curve  # noqa: E402

import timm_ppconvmixer  # noqa: E402,F401
from timm_ppconvmixer import BlockKey  # noqa: E402
from timm_ppconvmixer.atomic import atomic_folder, atomic_write_bytes  # noqa: E402
from timm_ppconvmixer.data import encrypt_dataset, load_fashion_mnist  # noqa: E402


def encrypt_data(key: BlockKey, out: Path, train_limit: int | None) -> Path:
    import datasets

    train = load_fashion_mnist("train", limit=train_limit)
    test = load_fashion_mnist("test")
    encrypted = datasets.DatasetDict(
        {"train": encrypt_dataset(train, key), "test": encrypt_dataset(test, key)}
    )
    target = out / "encrypted_fashion_mnist"
    with atomic_folder(target, overwrite=True, mode=0o755) as tmp:  # shareable: key-free
        encrypted.save_to_disk(str(tmp))
        (tmp / "ENCRYPTION.json").write_text(json.dumps(key.describe(), indent=2))
    return target


def train(config: Path, data: Path, key_path: Path, out: Path, extra: list[str]) -> dict:
    import train as recipe

    overrides = [f"data.name={data}", f"data.key={key_path}", f"output={out}", *extra]
    return recipe.main(["--config", str(config), *overrides])


def export_model(model_dir: Path, key: BlockKey, metrics: dict, out: Path) -> Path:
    from timm_ppconvmixer import hub

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True)
    target = out / "export"
    hub.export(
        model,
        target,
        key=key,
        metrics=metrics,
        dataset="zalando-datasets/fashion_mnist",
        recipe="recipes/configs/demo_fashion_mnist.yaml (python recipes/demo.py)",
        overwrite=True,
    )
    return target


def attack_shared_data(data: Path, key: BlockKey, out: Path) -> dict:
    """The provider's view: the ciphertext-only attack on the encrypted dataset it was handed
    (with the public Fashion-MNIST test split as its orientation prior), scored by the owner.
    Its folder holds the recovered key, so it lives under ``owner/``."""
    from timm_ppconvmixer.attacks import run_attack

    target = out / "owner" / "attack"
    shutil.rmtree(target, ignore_errors=True)  # a rerun attacks again; keys are never overwritten
    result = run_attack(data, target, key=key, reference="fashion-mnist", progress=False)
    last = result["steps"][-1]
    return {
        "images": result["images"],
        "seconds": last["seconds"],
        "key_recovered": last["key_recovered"],
        "exact_images": last["images"]["exact_images"],
        "report": str(target / "report.md"),
    }


def report(out: Path, summary: dict) -> Path:
    e = summary["eval"]
    rows = "\n".join(
        f"| {label} | {100 * e[name]:.2f} |"
        for name, label in (
            ("top1_key", "encrypted test images, correct key"),
            ("top1_plain", "plain test images (no key)"),
            ("top1_wrong_key", "test images encrypted with a wrong key"),
        )
    )
    share = summary.get("permutation_recovery")
    recovery = (
        "The model has no P." if share is None else
        f"P states {100 * share['exact']:.1f} % of the key's block order exactly and "
        f"{100 * share['up_to_symmetry']:.1f} % up to the grid's rotations and mirrors (share "
        "of blocks that the nearest permutation to |P| sends back to their place; chance is "
        f"about {100 / summary['num_blocks']:.1f} %)."
    )  # fmt: skip
    a = summary["attack"]
    k = a["key_recovered"]
    attack = (
        f"The provider's view, after attacking the {a['images']:,} encrypted training images it "
        f"was given (ciphertext-only, {a['seconds']:.0f} s; `owner/attack/report.md`): it "
        f"recovered {100 * k['K1']:.0f} % of the block order, {100 * k['K2']:.0f} % of the pixel "
        f"shuffle and {100 * k['K3']:.0f} % of the flip mask, and decrypted "
        f"{100 * a['exact_images']:.1f} % of those images exactly. The encryption does not keep "
        "the images from the party that trains on them (docs/security.md)."
    )
    text = f"""# timm-ppconvmixer demo report

Key fingerprint: `{summary["key_fingerprint"]}` (the key itself: `owner/owner.key`, never shared).

| evaluation ({summary["test_images"]} Fashion-MNIST test images) | top-1 (%) |
| --- | --- |
{rows}

{recovery}

{attack}

Model: `{summary["model"]}` ({summary["params"]:,} parameters), trained
{summary["train_time_s"]} s on {summary["train_images"]} encrypted images.

Figures: `samples.png` (plain / encrypted / decrypted Fashion-MNIST), `photo.png` (a photograph
at 224x224, block 16), `training_curve.png`, `owner/p_vs_inverse_block_permutation.png` (owner
only: it shows the key's block order), `owner/attack/figures/` (plain / encrypted / the
provider's reconstruction at N = 1, 10, 100, ... images; owner only: beside the report lies the
recovered key).

Shareable: `encrypted_fashion_mnist/` (encrypted dataset), `export/` (model, config, card).
Owner only: `owner/`. Resumable checkpoints: `train/checkpoints/`.
Total time: {summary["total_time_s"]} s.
"""
    return atomic_write_bytes(out / "report.md", text.encode())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--train-limit", type=int, default=None, help="training images")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (section.field=value)")
    args = parser.parse_args(argv)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "owner" / "owner.key"
    if key_path.exists():  # a rerun continues with the owner's key (and its checkpoints)
        key = BlockKey.load(key_path)
    else:
        key = BlockKey.generate(28, 4, channels=1)  # OS CSPRNG: a real secret
        key.save(key_path)
    print(f"1/6 key {key.fingerprint} -> {key_path}", flush=True)
    data = encrypt_data(key, out, args.train_limit)
    print(f"2/6 encrypted dataset -> {data}", flush=True)
    from datasets import load_from_disk

    train_images = len(load_from_disk(str(data))["train"])
    config = HERE / "configs" / "demo_fashion_mnist.yaml"
    result = train(config, data, key_path, out / "train", args.overrides)
    print(f"3-4/6 trained and evaluated -> {out / 'train'}", flush=True)
    from timm_ppconvmixer.data import fashion_mnist_arrays

    images, _ = fashion_mnist_arrays("test")
    from PIL import Image

    samples = [Image.fromarray(images[i], "L") for i in range(8)]
    sample_grid(samples, key, out / "samples.png", "Fashion-MNIST, 28x28, block 4")
    photo_figure(out / "photo.png")
    training_curve(out / "train" / "metrics.jsonl", out / "training_curve.png")
    shutil.copy(out / "train" / "owner" / "p_vs_inverse_block_permutation.png", out / "owner")
    export = export_model(Path(result["model_folder"]), key, result["eval"], out)
    print(f"5/6 exported -> {export}", flush=True)
    attack = attack_shared_data(data, key, out)
    print(f"    provider's attack on the shared data -> {attack['report']}", flush=True)
    summary = {
        **result,
        "attack": attack,
        "train_images": train_images,
        "test_images": len(images),
        "num_blocks": key.num_blocks,
        "total_time_s": round(time.time() - started, 1),
    }
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    print(f"6/6 report -> {report(out, summary)}", flush=True)
    return summary


if __name__ == "__main__":
    main()
