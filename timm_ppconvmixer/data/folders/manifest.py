"""A destination folder's manifest (public key facts only), its lock, and crash clean-up."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...atomic import atomic_write_bytes, is_temp_file
from ...key import SchemeKey
from .report import FolderError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MANIFEST_NAME",
    "check_source_manifest",
    "claim_destination",
    "exclusive",
    "remove_stale_temp_files",
]

MANIFEST_NAME = "ENCRYPTION.json"
_LOCK_WAIT_S = 10.0


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FolderError(f"{path} is unreadable ({e}); restore or delete it") from None
    if not isinstance(data, dict):
        raise FolderError(f"{path} is not an {MANIFEST_NAME} manifest; restore or delete it")
    return data


def claim_destination(dst: Path, key: SchemeKey, resize: str) -> None:
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
    atomic_write_bytes(dst / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def check_source_manifest(src: Path, key: SchemeKey) -> None:
    path = src / MANIFEST_NAME
    if path.exists():
        made_with = _read_manifest(path).get("fingerprint")
        if made_with != key.fingerprint:
            raise FolderError(
                f"{src} was encrypted with key {made_with}, not with {key.fingerprint}; "
                "decrypt it with the key it was made with"
            )


@contextlib.contextmanager
def exclusive(dst: Path) -> Iterator[None]:
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


def remove_stale_temp_files(dst: Path) -> int:
    """Delete the temporary files a killed run left; outputs that exist are complete."""
    removed = 0
    for folder, _, files in os.walk(dst):
        for name in files:
            if is_temp_file(name):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed
