"""Typed results that commands return and the UI renders (human text or JSON)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from modelsync.errors import EXIT_FAILED, EXIT_OK
from modelsync.reconcile import Unmanaged


class Status(StrEnum):
    OK = "ok"
    DOWNLOADED = "downloaded"
    REPAIRED = "repaired"
    LINKED = "linked"
    FAILED = "failed"
    SKIPPED = "skipped"
    PENDING = "pending"
    MISSING = "missing"
    CORRUPT = "corrupt"
    UNPINNED = "unpinned"  # plan/verify: in place, but no hash pins it (see `modelsync lock`)


BAD = {Status.FAILED, Status.MISSING, Status.CORRUPT}


@dataclass(frozen=True)
class EntryResult:
    name: str
    path: str | None
    action: str
    status: Status
    size: int | None = None
    bytes_downloaded: int = 0
    error: str | None = None
    detail: str = ""  # human-only explanation (why an action was chosen)
    cause: str | None = None  # a failure in aria2's own words, for `apply --verbose`


@dataclass(frozen=True)
class Report:
    command: str
    root: Path
    entries: tuple[EntryResult, ...]
    unmanaged: tuple[Unmanaged, ...] = ()
    download_bytes: int = 0
    free_bytes: int = 0
    unknown_sizes: int = 0  # downloads of unknown size: download_bytes is a lower bound
    warnings: tuple[str, ...] = ()
    elapsed: float = 0.0
    pruned: tuple[str, ...] = field(default=())
    optional: frozenset[str] = frozenset()  # names whose failure does not fail the run

    @property
    def failed(self) -> bool:
        return any(e.status in BAD and e.name not in self.optional for e in self.entries)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def count(self, status: Status) -> int:
        return sum(1 for e in self.entries if e.status is status)


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(os.fspath(existing_ancestor(path))).free


def existing_ancestor(path: Path) -> Path:
    """`path` itself when it exists, else its nearest existing parent (a root to be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
