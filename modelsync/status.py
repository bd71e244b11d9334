"""The status file an apply keeps in `<root>/.modelsync/status.json`, and reading it back
for `modelsync status` in another terminal.

apply rewrites it atomically at most once a second and removes it when it ends (also
after Ctrl-C or an error). A file that is still there although its pid is not a running
modelsync was left by a killed apply: it is stale, not a running one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsync.atomic import write_text_atomic
from modelsync.events import Live, utc_iso
from modelsync.layout import Layout

SCHEMA = 1
INTERVAL = 1.0
STATUS_FILE = "status.json"


def status_path(layout: Layout) -> Path:
    return layout.own / STATUS_FILE


class StatusFile:
    interval = INTERVAL

    def __init__(self, layout: Layout, manifest: Path) -> None:
        self.path = status_path(layout)
        self.root = layout.root
        self.manifest = manifest
        self.pid = os.getpid()
        self.pid_started = process_start(self.pid)

    def write(self, live: Live, final: bool) -> None:
        if final:
            self.path.unlink(missing_ok=True)
            return
        # A view for other terminals: a full disk must not stop the apply it shows.
        with contextlib.suppress(OSError):
            write_text_atomic(self.path, json.dumps(self.document(live)) + "\n")

    def document(self, live: Live) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "command": live.command,
            "root": str(self.root),
            "manifest": str(self.manifest),
            "started": utc_iso(live.started),
            "updated": utc_iso(),
            "files_done": live.done_files,
            "files_total": live.files,
            "bytes_done": live.bytes_downloaded,
            "bytes_total": live.totals.total,
            "rate": live.rate,
            "active": [
                {"name": name, "path": a.path, "done": a.done, "total": a.size, "rate": a.rate}
                for name, a in live.active.items()
            ],
        }


@dataclass(frozen=True)
class ActiveFile:
    name: str
    path: str
    done: int
    total: int | None
    rate: int

    @property
    def eta(self) -> float | None:
        return _eta(self.done, self.total, self.rate)


@dataclass(frozen=True)
class ApplyStatus:
    """What `modelsync status` found on a root."""

    root: Path
    running: bool
    pid: int | None = None
    stale: bool = False  # a status file left by an apply that stopped without finishing
    started: str | None = None
    updated: str | None = None
    manifest: str | None = None
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    rate: int = 0
    active: tuple[ActiveFile, ...] = field(default=())

    @property
    def eta(self) -> float | None:
        return _eta(self.bytes_done, self.bytes_total, self.rate)


def _eta(done: int, total: int | None, rate: int) -> float | None:
    if not total or rate <= 0 or done > total:
        return None
    return (total - done) / rate


def read_status(root: Path) -> ApplyStatus:
    """The apply running on `root`, if any; a status file nobody can read counts as none."""
    path = status_path(Layout(root))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        pid = int(doc["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return ApplyStatus(root, running=False)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return ApplyStatus(root, running=False)
    if not _is_modelsync(pid) or process_start(pid) != doc.get("pid_started"):
        return ApplyStatus(root, running=False, pid=pid, stale=True, started=doc.get("started"))
    try:
        active = tuple(
            ActiveFile(str(a["name"]), str(a["path"]), int(a["done"]), a["total"], int(a["rate"]))
            for a in doc.get("active", [])
        )
        return ApplyStatus(
            root,
            running=True,
            pid=pid,
            started=doc.get("started"),
            updated=doc.get("updated"),
            manifest=doc.get("manifest"),
            files_done=int(doc["files_done"]),
            files_total=int(doc["files_total"]),
            bytes_done=int(doc["bytes_done"]),
            bytes_total=int(doc["bytes_total"]),
            rate=int(doc["rate"]),
            active=active,
        )
    except (KeyError, TypeError, ValueError):  # written by another version: running, no numbers
        return ApplyStatus(root, running=True, pid=pid, started=doc.get("started"))


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, Linux): the same pid with another start
    is another process. None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
        return int(fields[19])  # field 22 of stat(5), counted after the name
    except (OSError, IndexError, ValueError):
        return None


def _is_modelsync(pid: int) -> bool:
    """Alive, and a modelsync (a pid reused by another program is not our apply)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"modelsync" in f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): alive is the best we know
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True
