"""Encrypting image folder trees for the cloud provider, and decrypting them for the owner.

An image folder tree (timm's ImageFolder layout ``class/xxx.jpg``, optionally below split
folders such as ``train/`` and ``validation/``) becomes the same relative tree of encrypted
images. Each image is converted to the key's channels, brought to the key's size (the paper's
Sec. III-A encrypts H x W images with H and W multiples of M; see ``RESIZE_POLICIES``),
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
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing
import os
import secrets
import signal
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from timm.data.readers.img_extensions import get_img_extensions
from tqdm.auto import tqdm

from .cipher import decrypt as decrypt_image
from .cipher import encrypt as encrypt_image
from .data import prepare_for_key
from .key import BlockKey

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MANIFEST_NAME",
    "RESIZE_POLICIES",
    "BadImage",
    "BadImagesError",
    "FolderError",
    "FolderReport",
    "add_folder_parsers",
    "decrypt_folder",
    "encrypt_folder",
    "run_folder_command",
]

RESIZE_POLICIES = ("shorter-center-crop", "stretch", "exact")
"""How an image is brought to the key's size: ``shorter-center-crop`` resizes the shorter side
and centre-crops (what ``ppconvmixer encrypt-image`` does), ``stretch`` resizes to exactly
H x W (aspect ratio not kept), ``exact`` refuses (as a bad file) any image of another size."""

MANIFEST_NAME = "ENCRYPTION.json"
_LOSSY_FORMATS = {"jpeg", "jpg", "webp", "jp2", "jpx", "gif", "heic", "heif", "avif"}
_TMP_SUFFIX = ".ppcm-part"  # temporary files are ".<output name>.<random>.ppcm-part"
_MODES = {1: "L", 3: "RGB"}
_MAX_LISTED = 20  # paths named in one error line; the exception holds all of them
_MAX_CHUNK = 64  # files per worker task: large enough to hide the inter-process hand-off
_LOCK_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# PIL's decoders signal a broken file with any of these (truncated data, bad headers, bombs).
_UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class FolderError(ValueError):
    """A folder cannot be encrypted or decrypted as asked; the message says what to do."""


class BadImage(NamedTuple):
    """An input image that could not be used, and why."""

    path: str
    reason: str


class BadImagesError(FolderError):
    """Some images could not be read; every other image was written. ``report`` has them all."""

    def __init__(self, report: FolderReport) -> None:
        self.report = report
        bad = report.bad
        listed = "; ".join(f"{b.path} ({b.reason})" for b in bad[:_MAX_LISTED])
        more = f"; and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        super().__init__(
            f"{len(bad)} image(s) could not be used: {listed}{more}. Every other image was "
            "written; fix or remove these files and run again, or pass skip_bad=True "
            "(--skip-bad) to accept the dataset without them"
        )


@dataclass
class FolderReport:
    """What a folder run did. ``images`` = ``written`` + ``skipped_existing`` + ``len(bad)``."""

    direction: str
    src: str
    dst: str
    images: int = 0
    written: int = 0
    skipped_existing: int = 0
    bad: list[BadImage] = field(default_factory=list)
    ignored: int = 0
    ignored_examples: list[str] = field(default_factory=list)
    stale_temp_removed: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images written per second of the whole run."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "direction": self.direction,
            "src": self.src,
            "dst": self.dst,
            "images": self.images,
            "written": self.written,
            "skipped_existing": self.skipped_existing,
            "bad": [b._asdict() for b in self.bad],
            "ignored": self.ignored,
            "ignored_examples": self.ignored_examples,
            "stale_temp_removed": self.stale_temp_removed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
        }


@dataclass(frozen=True)
class _Job:
    key: BlockKey
    src: Path
    dst: Path
    resize: str
    decrypt: bool


class _UnusableImageError(Exception):
    """This one input file cannot be used (reported, never fatal by itself)."""


# -- public API -------------------------------------------------------------------------------


def encrypt_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: BlockKey,
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
        _check_source_manifest(src, key)
    report = FolderReport("decrypt" if decrypt else "encrypt", str(src), str(dst))
    _survey(src, report)  # before touching DST: name collisions fail here
    start = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    with _exclusive(dst):
        if not decrypt:
            _claim_destination(dst, key, resize)
        report.stale_temp_removed = _remove_stale_temp_files(dst)
        _run(_Job(key, src, dst, resize, decrypt), report, workers, progress)
    report.seconds = time.perf_counter() - start
    if report.bad and not skip_bad:
        raise BadImagesError(report)
    return report


def decrypt_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: BlockKey,
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


def _output_name(name: str) -> str:
    return os.path.splitext(name)[0] + ".png"


def _survey(src: Path, report: FolderReport) -> None:
    """Count images and ignored files, and refuse inputs that map to one output name."""
    collisions: list[str] = []
    for folder in _scan(src):
        report.images += len(folder.images)
        report.ignored += len(folder.others)
        room = _MAX_LISTED - len(report.ignored_examples)
        report.ignored_examples += [str(folder.rel / n) for n in folder.others[:room]]
        first: dict[str, str] = {}
        for name in folder.images:
            out = _output_name(name)
            if out in first:
                collisions.append(f"{folder.rel / first[out]} and {folder.rel / name}")
            first.setdefault(out, name)
    if collisions:
        listed = "; ".join(collisions[:_MAX_LISTED])
        raise FolderError(
            f"{len(collisions)} pair(s) of images in {src} would be written to the same output "
            f"file (the output name is the input name with .png): {listed}. Rename one of each "
            "pair and run again; nothing was written"
        )


class _Folder(NamedTuple):
    rel: Path
    images: list[str]
    others: list[str]


def _scan(root: Path) -> Iterator[_Folder]:
    """The folders below ``root`` one at a time, in sorted order, with their image files.

    Only one folder's listing is held at a time, so memory does not grow with the dataset.
    Hidden entries (dot files: ``.DS_Store``, our own temporary files) are skipped, the
    manifest at the root is not an input, and only regular files can be images (a FIFO named
    ``x.png`` would block a reader forever). Symbolic links are followed, as timm's folder
    reader does, each real folder once.
    """
    extensions = get_img_extensions(as_set=True)
    seen: set[tuple[int, int]] = set()
    stack = [Path()]
    while stack:
        rel = stack.pop()
        info = os.stat(root / rel)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(root / rel) as entries:
                visible = sorted((e for e in entries if not e.name.startswith(".")), key=_name)
        except OSError as e:
            raise FolderError(f"cannot list {root / rel}: {e.strerror or e}") from None
        subfolders = [e.name for e in visible if e.is_dir()]
        images, others = [], []
        for e in visible:
            if e.is_dir() or (rel == Path() and e.name == MANIFEST_NAME):
                continue
            is_image = e.is_file() and os.path.splitext(e.name)[1].lower() in extensions
            (images if is_image else others).append(e.name)
        yield _Folder(rel, images, others)
        stack.extend(rel / name for name in reversed(subfolders))


def _name(entry: os.DirEntry) -> str:
    return entry.name


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FolderError(f"{path} is unreadable ({e}); restore or delete it") from None
    if not isinstance(data, dict):
        raise FolderError(f"{path} is not an {MANIFEST_NAME} manifest; restore or delete it")
    return data


def _claim_destination(dst: Path, key: BlockKey, resize: str) -> None:
    """Write DST's manifest, or check that an existing one belongs to this key and policy.

    One dataset, one key: resuming into a DST made with another key or policy would mix images
    that no single model can learn from.
    """
    path = dst / MANIFEST_NAME
    if path.exists():
        have = _read_manifest(path)
        if have.get("fingerprint") != key.fingerprint:
            raise FolderError(
                f"{dst} holds images encrypted with key {have.get('fingerprint')}, not with "
                f"{key.fingerprint}; use a new DST folder for another key"
            )
        if have.get("resize") != resize:
            raise FolderError(
                f"{dst} was made with --resize {have.get('resize')}, not {resize}; use the "
                "same policy to resume, or a new DST folder"
            )
        return
    if any(not name.startswith(".") for name in os.listdir(dst)):
        raise FolderError(
            f"{dst} is not empty and has no {MANIFEST_NAME}; encrypt into a new or empty folder"
        )
    manifest = {**key.describe(), "format": "png", "resize": resize}
    _write_bytes_atomic(dst / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def _check_source_manifest(src: Path, key: BlockKey) -> None:
    path = src / MANIFEST_NAME
    if path.exists():
        made_with = _read_manifest(path).get("fingerprint")
        if made_with != key.fingerprint:
            raise FolderError(
                f"{src} was encrypted with key {made_with}, not with {key.fingerprint}; "
                "decrypt it with the key it was made with"
            )


@contextlib.contextmanager
def _exclusive(dst: Path) -> Iterator[None]:
    """Hold an exclusive lock on the DST folder while a run writes into it.

    The clean-up of stale temporary files must never delete the files of a run that is still
    alive. Waiting a little is normal: the workers of a killed run die a moment after it
    (see :func:`_die_with_parent`) and hold the lock until then.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(dst, os.O_RDONLY)
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FolderError(
                        f"another run is writing to {dst}; wait for it to end (or stop it), "
                        "then run again"
                    ) from None
                time.sleep(0.05)
            except OSError:  # a file system without flock (some network mounts): no lock
                break
        yield
    finally:
        os.close(fd)


def _remove_stale_temp_files(dst: Path) -> int:
    """Delete the temporary files a killed run left; outputs that exist are complete."""
    removed = 0
    for folder, _, files in os.walk(dst):
        for name in files:
            if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


# -- the run ----------------------------------------------------------------------------------


def _run(job: _Job, report: FolderReport, workers: int, progress: bool) -> None:
    """Stream the work through the workers and fill in ``report``."""
    size = max(1, min(_MAX_CHUNK, report.images // (4 * workers)))
    chunks = _chunks(_tasks(job, report), size)
    verb = "decrypting" if job.decrypt else "encrypting"
    with tqdm(total=report.images, unit="img", desc=verb, disable=not progress) as bar:
        for written, bad in _results(job, chunks, workers):
            report.written += written
            report.bad.extend(bad)
            bar.update(report.written + len(report.bad) + report.skipped_existing - bar.n)
        bar.update(report.images - bar.n)


def _tasks(job: _Job, report: FolderReport) -> Iterator[tuple[str, str]]:
    """(input, output) paths relative to SRC and DST for every image still to do.

    Creates the output folders (in this process, so workers only write files) and skips the
    outputs that exist: they are complete, because every output is renamed into place whole.
    """
    for folder in _scan(job.src):
        out_dir = job.dst / folder.rel
        out_dir.mkdir(parents=True, exist_ok=True)
        done = set(os.listdir(out_dir))
        for name in folder.images:
            out = _output_name(name)
            if out in done:
                report.skipped_existing += 1
            else:
                yield str(folder.rel / name), str(folder.rel / out)


def _chunks(items: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class _ChunkResult(NamedTuple):
    written: int
    bad: list[BadImage]


def _results(job: _Job, chunks: Iterator[list], workers: int) -> Iterator[_ChunkResult]:
    if workers == 1:
        for chunk in chunks:
            yield _process_chunk(job, chunk)
    else:
        yield from _pool_results(job, chunks, workers)


def _pool_results(job: _Job, chunks: Iterator[list], workers: int) -> Iterator[_ChunkResult]:
    """Results of ``chunks`` run in ``workers`` processes, at most ``2 * workers`` in flight.

    Submitting lazily keeps memory flat however many files there are (``Executor.map`` would
    queue a future per chunk up front).
    """
    # fork: workers start at once and share the loaded modules; no pickling of the key.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(job, os.getpid())
    )
    pending: set[Future] = set()
    try:
        for chunk in chunks:
            pending.add(pool.submit(_worker_chunk, chunk))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    except BrokenProcessPool:
        raise FolderError(
            "a worker process died (killed, or out of memory); every finished file is kept: "
            "run the same command again to resume"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job, parent_pid: int) -> None:
    global _WORKER_JOB
    _die_with_parent(parent_pid)
    # One process per core already. This also keeps the cipher off its thread pool, which,
    # if the parent had started one, did not survive the fork.
    torch.set_num_threads(1)
    _WORKER_JOB = job


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker die with the run that started it (Linux: ``PR_SET_PDEATHSIG``).

    An orphaned worker of a killed run would go on writing into DST while the next run
    cleans it up and resumes.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _worker_chunk(chunk: list[tuple[str, str]]) -> _ChunkResult:
    assert _WORKER_JOB is not None, "worker used without _init_worker"
    return _process_chunk(_WORKER_JOB, chunk)


def _process_chunk(job: _Job, chunk: list[tuple[str, str]]) -> _ChunkResult:
    written, bad = 0, []
    for src_rel, dst_rel in chunk:
        path = job.src / src_rel
        try:
            image = _convert(job, path)
        except (_UnusableImageError, *_UNREADABLE) as e:
            bad.append(BadImage(str(path), _one_line(e)))
            continue
        _write_image_atomic(image, job.dst / dst_rel)
        written += 1
    return _ChunkResult(written, bad)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, _UnusableImageError) else f"cannot read image: {text}"


def _convert(job: _Job, path: Path) -> Image.Image:
    """Read one image and encrypt (or decrypt) it (paper Sec. III-A)."""
    with Image.open(path) as opened:
        opened.load()
        image = opened
    if job.decrypt:
        return decrypt_image(_check_encrypted(image, path, job.key), job.key)
    return encrypt_image(_fit(image, job.key, job.resize), job.key)


def _fit(image: Image.Image, key: BlockKey, resize: str) -> Image.Image:
    """Convert to the key's channels and bring to the key's size by the ``resize`` policy.

    RGBA and LA lose their alpha channel (PIL's ``convert``; not composited on a background).
    """
    if resize != "exact":
        return prepare_for_key(image, key, resize)
    mode, (h, w) = _MODES[key.channels], key.image_size
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (w, h):
        raise _UnusableImageError(
            f"image is {image.width}x{image.height}, the key needs {w}x{h} (resize policy "
            "'exact'); use resize 'shorter-center-crop' or 'stretch', or resize it yourself"
        )
    return image


def _check_encrypted(image: Image.Image, path: Path, key: BlockKey) -> Image.Image:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise _UnusableImageError(
            "JPEG is lossy and cannot hold an encrypted image exactly; use the PNG"
        )
    mode, (h, w) = _MODES[key.channels], key.image_size
    if image.mode != mode or image.size != (w, h):
        raise _UnusableImageError(
            f"is a {image.width}x{image.height} {image.mode} image, but images encrypted with "
            f"this key are {w}x{h} {mode}"
        )
    return image


def _write_image_atomic(image: Image.Image, path: Path) -> None:
    """Write a PNG under a temporary name in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FolderError(f"cannot write {path}: {e}") from None
        raise


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- command line -----------------------------------------------------------------------------


def add_folder_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``encrypt`` and ``decrypt`` subcommands to the ``ppconvmixer`` command."""
    p = subparsers.add_parser(
        "encrypt",
        help="encrypt an image folder tree (ImageFolder layout) into PNG files",
        description="Encrypt every image below SRC into the same relative tree below DST, as "
        "PNG (class/x.jpg -> class/x.png): converted to the key's channels, resized to the "
        "key's size, encrypted. Runs in parallel; an interrupted run resumes where it stopped "
        "when run again. DST gets ENCRYPTION.json with the key's fingerprint, never the key. "
        "Unreadable images fail the run after all others are written, unless --skip-bad.",
    )
    _add_common_arguments(p)
    p.add_argument(
        "--resize",
        choices=RESIZE_POLICIES,
        default=RESIZE_POLICIES[0],
        help="shorter-center-crop (default): resize the shorter side, crop the centre; "
        "stretch: resize to exactly the key's size; exact: refuse images of another size",
    )
    p.add_argument("--format", default="png", help="output format; only png (lossless)")
    p.set_defaults(func=run_folder_command, decrypt=False)

    p = subparsers.add_parser(
        "decrypt",
        help="decrypt an encrypted folder tree (owner only)",
        description="Decrypt every image below SRC (as written by 'ppconvmixer encrypt') into "
        "the same relative tree below DST, as PNG. Images must have the key's size.",
    )
    _add_common_arguments(p)
    p.set_defaults(func=run_folder_command, decrypt=True, resize=RESIZE_POLICIES[0], format="png")


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="key file")
    p.add_argument("src", help="input folder tree")
    p.add_argument("dst", help="output folder (created; resumed if an earlier run stopped)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument(
        "--skip-bad", action="store_true", help="list unreadable images instead of failing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_folder_command(args: argparse.Namespace) -> None:
    """Handler of ``ppconvmixer encrypt`` / ``decrypt``: prints the report as JSON.

    Errors end as one ``CLIError`` line (after one line per bad image on stderr).
    """
    from .cli import CLIError  # imported here: the CLI imports this module

    key = BlockKey.load(args.key)
    try:
        report = encrypt_folder(
            args.src,
            args.dst,
            key,
            workers=args.workers,
            resize=args.resize,
            skip_bad=args.skip_bad,
            decrypt=args.decrypt,
            progress=not args.no_progress,
            output_format=args.format,
        )
    except BadImagesError as e:
        for bad in e.report.bad:
            print(f"bad image: {bad.path}: {bad.reason}", file=sys.stderr)
        raise CLIError(str(e)) from None
    except FolderError as e:
        raise CLIError(str(e)) from None
    except KeyboardInterrupt:
        raise CLIError(
            "interrupted; every finished file is kept: run the same command again to resume"
        ) from None
    print(json.dumps(report.to_dict(), indent=2))
