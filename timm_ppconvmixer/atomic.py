"""Writing files so that a reader never sees half of one: the package's one atomic writer.

Every file the package writes (key files, encrypted images, manifests, exported models, recipe
logs) goes through :func:`atomic_write`, and every folder that must appear whole (a model
folder, an export) through :func:`atomic_folder`: the content is written to a temporary
file in the destination's own folder and then moved into place with one ``rename`` (or, when
the destination must not exist yet, one ``link``), so an existing file is always complete and
an interrupted write leaves at most a hidden temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "TEMP_SUFFIX",
    "atomic_folder",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "is_temp_file",
]

TEMP_SUFFIX = ".ppcm-part"
"""Temporary files are named ``.<final name>.<random>.ppcm-part`` beside the final file, so a
run that resumes after a kill can find and remove the ones a dead writer left."""


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is a temporary file left by :func:`atomic_write`."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    *,
    binary: bool = True,
    mode: int | None = None,
    overwrite: bool = True,
    fsync: bool = False,
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit move it to ``path`` in one step.

    Args:
        path: the final file. Its folder must exist.
        binary: open the temporary file in binary (default) or UTF-8 text mode.
        mode: permission bits to set before any content is written (``0o600`` for secrets,
            so the content is never readable by others, not even for an instant).
        overwrite: replace an existing ``path`` (``rename``). With ``False`` the file is
            linked into place, which fails with :class:`FileExistsError` if ``path`` exists;
            there is no window between a check and the write.
        fsync: flush the content to disk before it appears under ``path`` (key files).

    On any error (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left
    as it was.

    Example:
        >>> with atomic_write("report.json", binary=False) as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked for
        text = {} if binary else {"encoding": "utf-8"}
        with os.fdopen(fd, "wb" if binary else "w", **text) as f:
            fd = -1  # owned by the file object from here on
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if mode is None:
            os.chmod(tmp, 0o666 & ~_UMASK)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-exclusive: FileExistsError if path exists
            os.unlink(tmp)
    except FileExistsError:
        _discard(fd, tmp)
        raise FileExistsError(f"{path} exists; refusing to overwrite it") from None
    except BaseException:
        _discard(fd, tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_folder(
    out_dir: str | os.PathLike, overwrite: bool = False, mode: int | None = None
) -> Iterator[Path]:
    """The folder form of :func:`atomic_write`: yield a temporary folder next to ``out_dir`` and
    rename it into place only if the block finishes without error, so an interrupted or
    refused write (an export, a saved model) leaves nothing half written. An existing
    ``out_dir`` is replaced only with ``overwrite``, and kept until the new one is in place.
    The folder keeps mkdtemp's owner-only mode unless ``mode`` is given.

    Example:
        >>> with atomic_folder("outputs/model", overwrite=True) as tmp:  # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        if out.exists():
            os.replace(out, old)  # keep the old folder until the new one is in place
        os.replace(tmp, out)
        if old.exists():
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():  # put the previous folder back
            os.replace(old, out)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **options) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write` (same options); returns the path."""
    with atomic_write(path, **options) as f:
        f.write(data)
    return Path(path)


def atomic_save(path: str | os.PathLike, save: Callable[[IO], object], **options) -> Path:
    """Call ``save(file_object)`` inside :func:`atomic_write` (for PIL, torch, safetensors)."""
    with atomic_write(path, **options) as f:
        save(f)
    return Path(path)


def _discard(fd: int, tmp: Path) -> None:
    if fd >= 0:
        os.close(fd)
    tmp.unlink(missing_ok=True)


def _read_umask() -> int:
    # os.umask can only be read by setting it; read once at import, before any worker thread
    # exists, so files get the permissions an ordinary open() would give them.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()
