"""Running a folder job: streaming the file list through worker processes, one image at a time
per worker, and writing each output atomically."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import struct
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from tqdm.auto import tqdm

from ...atomic import atomic_save
from ...cipher import decrypt as decrypt_image
from ...cipher import encrypt as encrypt_image
from ...images import ImagePolicyError, mode_for_channels, prepare_image
from ...key import SchemeKey
from .report import BadImage, FolderError, FolderReport
from .scan import output_name, scan

__all__ = ["Job", "run"]

_MAX_CHUNK = 64  # files per worker task: large enough to hide the inter-process hand-off
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


@dataclass(frozen=True)
class Job:
    key: SchemeKey
    src: Path
    dst: Path
    resize: str
    decrypt: bool


class _UnusableImageError(Exception):
    """This one input file cannot be used (reported, never fatal by itself)."""


def run(job: Job, report: FolderReport, workers: int, progress: bool) -> None:
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


def _tasks(job: Job, report: FolderReport) -> Iterator[tuple[str, str]]:
    """(input, output) paths relative to SRC and DST for every image still to do.

    Creates the output folders (in this process, so workers only write files) and skips the
    outputs that exist: they are complete, because every output is renamed into place whole.
    """
    for folder in scan(job.src):
        out_dir = job.dst / folder.rel
        out_dir.mkdir(parents=True, exist_ok=True)
        done = set(os.listdir(out_dir))
        for name in folder.images:
            out = output_name(name)
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


def _results(job: Job, chunks: Iterator[list], workers: int) -> Iterator[_ChunkResult]:
    if workers == 1:
        for chunk in chunks:
            yield _process_chunk(job, chunk)
    else:
        yield from _pool_results(job, chunks, workers)


def _pool_results(job: Job, chunks: Iterator[list], workers: int) -> Iterator[_ChunkResult]:
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


_WORKER_JOB: Job | None = None


def _init_worker(job: Job, parent_pid: int) -> None:
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


def _process_chunk(job: Job, chunk: list[tuple[str, str]]) -> _ChunkResult:
    written, bad = 0, []
    for src_rel, dst_rel in chunk:
        path = job.src / src_rel
        try:
            image = _convert(job, path)
        except (_UnusableImageError, *_UNREADABLE) as e:
            bad.append(BadImage(str(path), _one_line(e)))
            continue
        _write_png(image, job.dst / dst_rel)
        written += 1
    return _ChunkResult(written, bad)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    readable = isinstance(error, (_UnusableImageError, ImagePolicyError))
    return text if readable else f"cannot read image: {text}"


def _convert(job: Job, path: Path) -> Image.Image:
    """Read one image and encrypt (or decrypt) it (paper Sec. III-A)."""
    with Image.open(path) as opened:
        opened.load()
        image = opened
    if job.decrypt:
        return decrypt_image(_check_encrypted(image, path, job.key), job.key)
    return encrypt_image(prepare_image(image, job.key, job.resize), job.key)


def _check_encrypted(image: Image.Image, path: Path, key: SchemeKey) -> Image.Image:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise _UnusableImageError(
            "JPEG is lossy and cannot hold an encrypted image exactly; use the PNG"
        )
    mode, (h, w) = mode_for_channels(key.channels), key.image_size
    if image.mode != mode or image.size != (w, h):
        raise _UnusableImageError(
            f"is a {image.width}x{image.height} {image.mode} image, but images encrypted with "
            f"this key are {w}x{h} {mode}"
        )
    return image


def _write_png(image: Image.Image, path: Path) -> None:
    try:
        atomic_save(path, lambda f: image.save(f, format="PNG"))
    except OSError as e:
        raise FolderError(f"cannot write {path}: {e}") from None
