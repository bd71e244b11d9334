"""What a run does, for whoever watches it: a JSON line per step (`--log-file`), the
numbers of a Prometheus textfile (`--metrics-file`, metrics.py) and the status file that
`modelsync status` reads (status.py).

The commands and the executor call `Events.emit` at each step. The hub stamps the time,
redacts secrets, keeps the run's live numbers (`Live`) and hands each line to the log.
The hot path (a progress poll every fraction of a second) only updates numbers in memory;
the snapshot files are written by a background ticker, the log line-buffered without
fsync: a watcher must never slow the downloads down.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from modelsync.progress import Reporter, Totals
from modelsync.redact import host_of, redact
from modelsync.results import EntryResult, Report, Status

if TYPE_CHECKING:
    from modelsync.reconcile import Plan
    from modelsync.workspace import Target, Workspace

TICK = 1.0  # seconds between two looks of the ticker at the snapshots


def utc_iso(epoch: float | None = None) -> str:
    """ISO-8601 in UTC with milliseconds, e.g. 2026-12-03T08:31:02.123Z."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ActiveFile:
    path: str
    size: int | None
    done: int = 0
    rate: int = 0


@dataclass
class Live:
    """The run's numbers so far; read by the snapshots under the hub's lock."""

    started: float = field(default_factory=time.time)
    command: str = ""
    files: int = 0  # entries the run works on (downloads, repairs, verifies)
    totals: Totals = field(default_factory=Totals)
    statuses: Counter[str] = field(default_factory=Counter)  # finished entries
    failures: Counter[str] = field(default_factory=Counter)  # by reason (metrics.REASONS)
    retries: int = 0
    verified: int = 0  # bytes hashed and found right
    downloaded: int = 0  # bytes fetched by finished entries
    active: dict[str, ActiveFile] = field(default_factory=dict)
    finished: bool = False
    succeeded: bool = False

    @property
    def bytes_downloaded(self) -> int:
        """Bytes fetched so far: finished entries, plus what the active ones hold."""
        running = sum(self.totals.done.get(name, 0) for name in self.active)
        return self.downloaded + running

    @property
    def rate(self) -> int:
        return sum(a.rate for a in self.active.values())

    @property
    def done_files(self) -> int:
        return sum(self.statuses.values())


class Snapshot(Protocol):
    """A file that shows `Live`: rewritten every `interval` seconds and once at the end."""

    interval: float

    def write(self, live: Live, final: bool) -> None: ...


class Events:
    """The run's event hub. Without a log and snapshots it only counts (cheaply)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(secrets)
        self.live = Live()
        self._lock = threading.Lock()
        self._log: TextIO | None = None
        self._snapshots: list[Snapshot] = []
        self._due: dict[int, float] = {}  # id(snapshot) → next monotonic write
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._download_began: dict[str, float] = {}  # entry → monotonic start of its download

    # ---- set-up ------------------------------------------------------------

    def add_secrets(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(dict.fromkeys((*self.secrets, *secrets)))

    def log_to(self, path: Path) -> None:
        """Append JSON lines to `path`, created 0600 (it names hosts and files)."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # Line-buffered: each line reaches the file whole when written, and a killed run
        # loses nothing it said; no fsync, which would stall the poll loop.
        self._log = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def watch(self, snapshot: Snapshot) -> None:
        """Show the live numbers in `snapshot` from now on; the ticker starts with the first."""
        with self._lock:
            self._snapshots.append(snapshot)
            self._due[id(snapshot)] = time.monotonic() + snapshot.interval
            snapshot.write(self.live, final=False)
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="modelsync-events", daemon=True)
            self._ticker.start()

    @contextlib.contextmanager
    def showing(self, snapshot: Snapshot) -> Iterator[None]:
        """Watch `snapshot` while the block runs; its last write when the block ends."""
        self.watch(snapshot)
        try:
            yield
        finally:
            with self._lock:
                if snapshot in self._snapshots:
                    self._snapshots.remove(snapshot)
                    snapshot.write(self.live, final=True)

    def stop_watching(self, succeeded: bool) -> None:
        """The run is over (also after Ctrl-C or an error): every snapshot writes its last."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self.live.finished, self.live.succeeded = True, succeeded
            snapshots, self._snapshots = self._snapshots, []
            for snapshot in snapshots:
                snapshot.write(self.live, final=True)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:
                for snapshot in self._snapshots:
                    if now >= self._due[id(snapshot)]:
                        self._due[id(snapshot)] = now + snapshot.interval
                        self._write_quietly(snapshot)

    def _write_quietly(self, snapshot: Snapshot) -> None:
        # A full disk or a removed folder must not end the apply the file watches;
        # the final write (in stop_watching) reports such errors.
        with contextlib.suppress(OSError):
            snapshot.write(self.live, final=False)

    # ---- events ------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """One step: `fields` with None left out, strings redacted."""
        record: dict[str, Any] = {"event": event}
        record.update((k, self._clean(v)) for k, v in fields.items() if v is not None)
        with self._lock:
            self._count(event, record)
            if self._log is not None:
                line = {"ts": utc_iso(), **record}
                self._log.write(json.dumps(line, ensure_ascii=False) + "\n")

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, self.secrets)
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def _count(self, event: str, record: dict[str, Any]) -> None:
        live, entry = self.live, record.get("entry", "")
        if event == "begin":
            live.files = record["files"]
            live.totals = Totals(planned=record["bytes"], files=record["files"])
            for snapshot in self._snapshots:  # the plan's numbers, shown at once
                self._write_quietly(snapshot)
        elif event == "download_start":
            self._download_began.setdefault(entry, time.monotonic())
            active = live.active.setdefault(entry, ActiveFile(record["path"], record.get("size")))
            active.size = record.get("size", active.size)
        elif event == "download_retry":
            live.retries += 1
        elif event == "download_finish":
            if entry in live.active:
                live.active[entry].rate = 0  # hashing now
            began = self._download_began.pop(entry, None)
            if began is not None:
                seconds = max(time.monotonic() - began, 1e-3)
                record["seconds"] = round(seconds, 3)
                record["rate"] = int(record.get("bytes", 0) / seconds)
        elif event == "verify" and record.get("ok"):
            live.verified += record.get("bytes", 0)
        elif event == "result":
            live.active.pop(entry, None)
            live.statuses[record["status"]] += 1
            live.downloaded += record.get("bytes", 0)
            if record["status"] == Status.FAILED:
                live.failures[failure_reason(record.get("error", ""))] += 1

    def progress(self, name: str, done: int, total: int | None, speed: int) -> None:
        """A poll's numbers for one download: in memory only (the hot path)."""
        with self._lock:
            self.live.totals.progress(name, done, total, speed)
            active = self.live.active.get(name)
            if active is not None:
                active.done = done  # aria2 counts a resumed file from its first byte
                active.size = total or active.size
                active.rate = speed

    def started(self, name: str, size: int | None, already: int) -> None:
        with self._lock:
            self.live.totals.started(name, size, already)

    # ---- what the commands report -------------------------------------------

    def run_started(self, command: str, root: Path, manifest: Path) -> None:
        self.live.command = command
        self.emit("start", command=command, root=str(root), manifest=str(manifest), pid=os.getpid())

    def run_finished(self, report: Report) -> None:
        """The report is the last word: its counts replace those gathered on the way."""
        counts = Counter(e.status.value for e in report.entries)
        failures = Counter(failure_reason(e.error or "") for e in report.entries if e.error)
        with self._lock:
            self.live.statuses = counts
            self.live.failures = failures
            self.live.downloaded = report.download_bytes
            self.live.active.clear()
        self.emit(
            "end",
            command=report.command,
            exit_code=report.exit_code,
            seconds=round(report.elapsed, 3),
            bytes_downloaded=report.download_bytes,
            **{f"files_{status}": n for status, n in sorted(counts.items())},
        )

    def resolved(self, targets: list[Target], env: Mapping[str, str]) -> None:
        from modelsync.sources import source_of

        if self._log is None:  # one line per entry, for the log only (not counted)
            return
        for t in targets:
            self.emit(
                "resolve",
                entry=t.name,
                source=source_of(t.entry, env),
                host=host_of(t.remote.urls[0]) if t.remote and t.remote.urls else None,
                from_lock=t.desired is not None and t.remote is None,
                ok=t.error is None,
                error=t.error,
                warning=t.warning,
            )

    def planned(self, plan: Plan) -> None:
        if self._log is None:  # log lines only (not counted): a no-op plan skips them
            return
        for a in plan.actions:
            d = a.desired
            self.emit(
                "plan", entry=d.name, path=d.path, action=a.kind.value, reason=a.reason or None
            )


# Failures by kind, for a metric label: a handful of values, whatever the message says.
REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("not_found", ("http 404", "http 410")),
    ("auth", ("http 401", "http 403", "token")),
    ("http", ("http ",)),
    ("corrupt", ("corrupt", "same bytes twice", "expected")),
    ("stalled", ("no progress for",)),
    ("no_space", ("no space", "disk space")),
    ("network", ("timed out", "connection", "network", "cannot resolve", "too slow")),
    ("no_source", ("no source",)),
    ("aria2", ("aria2",)),
)


def failure_reason(error: str) -> str:
    low = error.lower()
    return next((reason for reason, words in REASONS if any(w in low for w in words)), "other")


class Observed:
    """A Reporter that tells the events too: the UI's reporter stays as it is."""

    def __init__(self, inner: Reporter, events: Events) -> None:
        self.inner = inner
        self.events = events

    def begin(self, files: int, total_bytes: int, unknown_sizes: int) -> None:
        self.inner.begin(files, total_bytes, unknown_sizes)
        self.events.emit("begin", files=files, bytes=total_bytes, unknown_sizes=unknown_sizes)

    def file_started(self, name: str, path: str, size: int | None, already: int) -> None:
        self.inner.file_started(name, path, size, already)
        self.events.started(name, size, already)

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None:
        self.inner.file_progress(name, done, total, speed, connections)
        self.events.progress(name, done, total, speed)

    def file_finished(self, result: EntryResult) -> None:
        self.inner.file_finished(result)
        self.events.emit(
            "result",
            entry=result.name,
            path=result.path,
            action=result.action,
            status=result.status.value,
            bytes=result.bytes_downloaded,
            error=result.error,
        )

    def warn(self, message: str) -> None:
        self.inner.warn(message)
        self.events.emit("warning", message=message)

    def end(self) -> None:
        self.inner.end()


def open_events(ws: Workspace, log_file: Path | None, aria2_secret: str | None = None) -> Events:
    """The run's hub, redacting every secret the run knows; logging to `log_file`."""
    events = Events(run_secrets(ws, aria2_secret))
    if log_file is not None:
        events.log_to(log_file)
    return events


def run_secrets(ws: Workspace, aria2_secret: str | None = None) -> tuple[str, ...]:
    """Values to redact: the sources' tokens (stored ones too) and aria2 RPC secrets."""
    names = ("MODELSYNC_ARIA2_SECRET", "COMFYUI_MANAGER_ARIA2_SECRET")
    values = [ws.env.get(n, "") for n in names] + [aria2_secret or ""]
    return (*ws.sources.secrets, *(v for v in values if v), *ws.manifest.settings.aria2.secrets)
