"""Encrypting image folder trees for the cloud provider, and decrypting them for the owner.

An image folder tree (timm's ImageFolder layout ``class/xxx.jpg``, optionally below split
folders such as ``train/`` and ``validation/``) becomes the same relative tree of encrypted
images. Each image is converted to the key's channels, brought to the key's size (the paper's
Sec. III-A encrypts H x W images with H and W multiples of M; see ``RESIZE_POLICIES`` and
:func:`timm_ppconvmixer.images.prepare_image`, the one image path every entry point shares),
encrypted (Sec. III-A, steps 1-5) and written losslessly as PNG: ``class/xxx.jpg`` becomes
``class/xxx.png``. Lossy formats are refused because their compression mixes pixel values
across the block borders and inside blocks, which the block structure does not survive.

What the files guarantee (docs/encrypted-data.md says more):

* **Atomic outputs.** Every file is written under a temporary name in its own folder and
  renamed into place, so an output that exists is complete. An interrupted run (Ctrl-C, kill,
  out of memory) is resumed by running it again: finished files are skipped, and the
  temporary files a killed run left behind are removed first.
* **Bad files do not stop the others.** Unreadable or corrupt images are collected with their
  paths; every good image is still written, then the run fails with :class:`BadImagesError`
  naming them, unless ``skip_bad=True``, which lists them in the report instead. Files that
  are not images (by extension, the set timm's ImageFolder reader loads:
  ``timm.data.get_img_extensions()``) are ignored and counted; hidden files are skipped.
* **Bounded memory.** File lists are streamed one folder at a time and images are processed
  one at a time per worker process; nothing grows with the size of the dataset except the list
  of bad files.
* **The key never lands in DST.** DST gets ``ENCRYPTION.json`` with the key's public facts
  (``BlockKey.describe()``: scheme, sizes, fingerprint) and the resize policy, nothing else. A
  second run into the same DST with another key or another resize policy is refused.

Example:
    >>> from timm_ppconvmixer import BlockKey
    >>> key = BlockKey.generate(224, 16)  # doctest: +SKIP
    >>> report = encrypt_folder("imagenette/", "imagenette-enc/", key, workers=8)  # doctest: +SKIP
    >>> report.written, report.bad  # doctest: +SKIP
    (13394, [])

The package's modules: :mod:`.scan` (walking the tree), :mod:`.manifest` (the manifest, the
lock, crash clean-up), :mod:`.pool` (worker processes, atomic outputs), :mod:`.report` (counts
and errors); this module is the public API.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ...images import RESIZE_POLICIES
from ...key import SchemeKey
from .manifest import (
    MANIFEST_NAME,
    check_source_manifest,
    claim_destination,
    exclusive,
    remove_stale_temp_files,
)
from .pool import Job, run
from .report import BadImage, BadImagesError, FolderError, FolderReport
from .scan import survey

__all__ = [
    "MANIFEST_NAME",
    "RESIZE_POLICIES",
    "BadImage",
    "BadImagesError",
    "FolderError",
    "FolderReport",
    "decrypt_folder",
    "encrypt_folder",
]

_LOSSY_FORMATS = {"jpeg", "jpg", "webp", "jp2", "jpx", "gif", "heic", "heif", "avif"}


def encrypt_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: SchemeKey,
    *,
    workers: int = 2,
    resize: str = "shorter-center-crop",
    skip_bad: bool = False,
    decrypt: bool = False,
    progress: bool = True,
    output_format: str = "png",
) -> FolderReport:
    """Encrypt every image below ``src`` into the same relative tree below ``dst`` (PNG).

    Args:
        src: the plain image tree (ImageFolder layout; any split folders above the class
            folders are mirrored as they are).
        dst: where the encrypted tree goes: a new or empty folder, or the DST of an earlier,
            interrupted run with the same key and resize policy (which is then resumed).
        key: the owner's secret key; only its fingerprint is written to ``dst``.
        workers: worker processes (1 runs in this process).
        resize: one of :data:`RESIZE_POLICIES`; ignored (must stay default) for decryption.
        skip_bad: list unreadable images in the report instead of failing at the end.
        decrypt: decrypt an encrypted tree instead (owner only; see :func:`decrypt_folder`).
        progress: show a progress bar on stderr.
        output_format: ``"png"``; lossy formats (JPEG, WebP...) are refused.

    Returns:
        A :class:`FolderReport` (counts, bad and ignored files, timing).

    Raises:
        FolderError: bad arguments, two inputs that map to the same output name, a DST made
            with another key, a failed write or a worker that died. Nothing is lost: run
            again after fixing the cause and finished files are kept.
        BadImagesError: some images could not be read (unless ``skip_bad``); all others were
            written.
    """
    src, dst = Path(src), Path(dst)
    _check_arguments(src, dst, workers, resize, decrypt, output_format)
    if decrypt:
        check_source_manifest(src, key)
    report = FolderReport("decrypt" if decrypt else "encrypt", str(src), str(dst))
    survey(src, report)  # before touching DST: name collisions fail here
    start = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    with exclusive(dst):
        if not decrypt:
            claim_destination(dst, key, resize)
        report.stale_temp_removed = remove_stale_temp_files(dst)
        run(Job(key, src, dst, resize, decrypt), report, workers, progress)
    report.seconds = time.perf_counter() - start
    if report.bad and not skip_bad:
        raise BadImagesError(report)
    return report


def decrypt_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: SchemeKey,
    *,
    workers: int = 2,
    skip_bad: bool = False,
    progress: bool = True,
) -> FolderReport:
    """Decrypt an encrypted tree (owner only): the inverse of :func:`encrypt_folder`.

    Inputs must be images of exactly the key's size and mode (what :func:`encrypt_folder`
    writes); anything else, and JPEG files (lossy, so no longer decryptable), are bad files.
    If ``src`` has an ``ENCRYPTION.json`` naming another key, the run is refused.
    """
    return encrypt_folder(
        src, dst, key, workers=workers, skip_bad=skip_bad, decrypt=True, progress=progress
    )


# -- checks before any work -------------------------------------------------------------------


def _check_arguments(
    src: Path, dst: Path, workers: int, resize: str, decrypt: bool, output_format: str
) -> None:
    fmt = output_format.lower().lstrip(".")
    if fmt in _LOSSY_FORMATS:
        raise FolderError(
            f"output format {output_format!r} is lossy: its compression mixes pixels across "
            "the encryption blocks and the images could no longer be decrypted or learned "
            "from as encrypted; use png"
        )
    if fmt != "png":
        raise FolderError(f"output format {output_format!r} is not supported; use png")
    if resize not in RESIZE_POLICIES:
        raise FolderError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    if decrypt and resize != RESIZE_POLICIES[0]:
        raise FolderError("decryption never resizes: encrypted images have the key's size")
    if not isinstance(workers, int) or workers < 1:
        raise FolderError(f"workers must be a positive integer, got {workers!r}")
    if not src.is_dir():
        raise FolderError(f"{src} is not a folder; pass the root of an image folder tree")
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise FolderError(
            f"{src} and {dst} overlap; the output tree must be outside the input tree"
        )
