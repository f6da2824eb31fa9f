"""The main job behind ``ppconvmixer demo``: the project end to end on its embedded defaults.

Steps (each writes into ``out``): a fresh secret key from the OS CSPRNG (kept in ``out/owner.key``
with mode 0600, never copied into anything else), a real photograph (matplotlib's bundled
``grace_hopper.jpg``) and real Fashion-MNIST images encrypted and decrypted, with a figure of
plain / encrypted / decrypted pictures and a short Markdown report saying where everything went.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from .cipher import decrypt, encrypt
from .cli import prepare_image
from .key import BlockKey

SAMPLE_PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _side_by_side(images: list[Image.Image], labels: list[str]) -> Image.Image:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
    for ax, img, label in zip(axes, images, labels, strict=True):
        ax.imshow(img, cmap="gray" if img.mode == "L" else None, vmin=0, vmax=255)
        ax.set_title(label)
        ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return Image.fromarray(rgba[..., :3].copy())


def encryption_demo(out: Path, key: BlockKey, photo: Path = SAMPLE_PHOTO) -> dict:
    """Encrypt and decrypt a real photograph with ``key``; write the three pictures."""
    plain = prepare_image(Image.open(photo), key)
    enc = encrypt(plain, key)
    dec = decrypt(enc, key)
    exact = bool(np.array_equal(np.asarray(plain), np.asarray(dec)))
    for name, img in (("plain", plain), ("encrypted", enc), ("decrypted", dec)):
        img.save(out / f"photo_{name}.png")
    figure = out / "photo_plain_encrypted_decrypted.png"
    _side_by_side(
        [plain, enc, dec],
        ["plain", f"encrypted (M={key.block_size})", "decrypted" + (" (exact)" if exact else "")],
    ).save(figure)
    return {"figure": str(figure), "decryption_exact": exact}


def run_demo(out: str | Path) -> dict:
    """Run the demo; returns (and writes to ``out/summary.json``) what was produced."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "owner.key"
    key = BlockKey.generate(224, 16, channels=3)
    key.save(key_path, overwrite=True)
    summary = {
        "key_file": str(key_path),
        "key": key.describe(),
        "photo": encryption_demo(out, key),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
