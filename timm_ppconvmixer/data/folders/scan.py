"""Walking an image folder tree one folder at a time, and naming the outputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from timm.data.readers.img_extensions import get_img_extensions

from .manifest import MANIFEST_NAME
from .report import _MAX_LISTED, FolderError, FolderReport

__all__ = ["output_name", "scan", "survey"]


def output_name(name: str) -> str:
    return os.path.splitext(name)[0] + ".png"


def survey(src: Path, report: FolderReport) -> None:
    """Count images and ignored files, and refuse inputs that map to one output name."""
    collisions: list[str] = []
    for folder in scan(src):
        report.images += len(folder.images)
        report.ignored += len(folder.others)
        room = _MAX_LISTED - len(report.ignored_examples)
        report.ignored_examples += [str(folder.rel / n) for n in folder.others[:room]]
        first: dict[str, str] = {}
        for name in folder.images:
            out = output_name(name)
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


def scan(root: Path) -> Iterator[_Folder]:
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
