"""What a folder run reports: its counts, the images it could not use, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["BadImage", "BadImagesError", "FolderError", "FolderReport"]

_MAX_LISTED = 20  # paths named in one error line; the exception holds all of them


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
