"""Rendering: human text on stderr (rich), or one JSON document on stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from modelsync.errors import ModelsyncError
from modelsync.progress import Totals
from modelsync.results import EntryResult, Report, Status
from modelsync.units import human_size

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from modelsync.commands.add import AddResult
    from modelsync.commands.doctor import Check
    from modelsync.commands.gc import GcResult
    from modelsync.commands.import_ import ImportResult
    from modelsync.commands.lock import LockResult
    from modelsync.commands.mirror import ExportResult
    from modelsync.status import ApplyStatus

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

SYMBOLS = {
    "ok": ("=", "green"),
    "download": ("+", "cyan"),
    "resume": (">", "cyan"),
    "repair": ("~", "yellow"),
    "verify": ("?", "blue"),
    "link": ("&", "cyan"),
}
STATUS_STYLE = {
    Status.OK: "green",
    Status.DOWNLOADED: "cyan",
    Status.REPAIRED: "yellow",
    Status.LINKED: "cyan",
    Status.FAILED: "red",
    Status.SKIPPED: "dim",
    Status.PENDING: "cyan",
    Status.MISSING: "red",
    Status.CORRUPT: "red",
    Status.UNPINNED: "yellow",
}


def report_json(report: Report) -> dict[str, Any]:
    counts = {s.value: report.count(s) for s in Status if report.count(s)}
    doc: dict[str, Any] = {
        "schema": 1,
        "command": report.command,
        "root": str(report.root),
        "entries": [
            {
                "name": e.name,
                "path": e.path,
                "action": e.action,
                "status": e.status.value,
                "size": e.size,
                "bytes_downloaded": e.bytes_downloaded,
                "error": e.error,
                **({"optional": True} if e.name in report.optional else {}),
            }
            for e in report.entries
        ],
        "unmanaged": [
            {"path": u.path, "size": u.size, "prunable": u.prunable} for u in report.unmanaged
        ],
        "totals": {
            "download_bytes": report.download_bytes,
            "unknown_sizes": report.unknown_sizes,
            "free_bytes": report.free_bytes,
            **counts,
        },
        "warnings": list(report.warnings),
    }
    if report.pruned:
        doc["pruned"] = list(report.pruned)
    return doc


def print_json(report: Report) -> None:
    write_json(report_json(report))


def write_json(doc: dict[str, Any]) -> None:
    """The one JSON document a command prints, alone on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def print_root(root: Path, origin: str) -> None:
    """The first line of every human output: which folder, and why that one."""
    err_console.print(f"root: {escape(str(root))} [dim]({escape(_from(origin))})[/]")


def _from(origin: str) -> str:
    return origin if origin.startswith("the ") else f"from {origin}"


def print_warnings(report: Report) -> None:
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")


LIST_ALL_UP_TO = 100  # longer reports list only what is not ok (--json has everything)

Segment = tuple[str, str]  # (text, rich style)


def write_lines(rows: list[list[Segment]]) -> None:
    """Aligned columns, coloured on a terminal; linear in the number of rows (rich's
    Table takes seconds for 10,000)."""
    if not rows:
        return
    widths = [max(len(row[i][0]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    text = Text()
    for row in rows:
        for i, (cell, style) in enumerate(row):
            last = i == len(row) - 1
            text.append(cell if last else cell.ljust(widths[i]) + "  ", style=style or None)
        text.append("\n")
    text.rstrip()
    err_console.print(text)


def _shown(
    entries: tuple[EntryResult, ...], interesting: Callable[[EntryResult], bool]
) -> list[EntryResult]:
    if len(entries) <= LIST_ALL_UP_TO:
        return list(entries)
    return [e for e in entries if interesting(e)]


def print_plan(report: Report) -> None:
    rows: list[list[Segment]] = []
    shown = _shown(report.entries, lambda e: e.action != "ok" or e.status is Status.FAILED)
    for e in shown:
        symbol, style = SYMBOLS.get(e.action, ("!", "red"))
        action = e.action
        if e.status is Status.FAILED:
            symbol, style, action = "!", "red", "failed"
        elif e.status is Status.UNPINNED:  # in place, but nothing vouches for its bytes
            style, action = "yellow", "unpinned"
        detail = (e.error or e.detail) if e.action != "ok" or e.status is Status.UNPINNED else ""
        rows.append(
            [
                (symbol, style),
                (e.path or e.name, ""),
                (human_size(e.size), ""),
                (action, style),
                (detail, "dim"),
            ]
        )
    for u in report.unmanaged:
        rows.append(
            [
                ("-", "magenta"),
                (u.path, ""),
                (human_size(u.size), ""),
                ("unmanaged", "magenta"),
                ("--prune deletes it" if u.prunable else "kept by --prune", "dim"),
            ]
        )
    write_lines(rows)
    print_warnings(report)
    pending: dict[str, int] = {}
    for e in report.entries:
        if e.action != "ok" or e.status is Status.FAILED:
            key = "failed" if e.status is Status.FAILED else e.action
            pending[key] = pending.get(key, 0) + 1
    summary = ", ".join(
        f"{n} to {k}" if k != "failed" else f"{n} failed" for k, n in pending.items()
    )
    ok = sum(1 for e in report.entries if e.action == "ok" and e.status is Status.OK)
    unpinned = report.count(Status.UNPINNED)
    ok_text = f"{ok} ok, {unpinned} unpinned" if unpinned else f"{ok} ok"
    hidden = " (not listed)" if len(shown) < len(report.entries) else ""
    prunable = sum(1 for u in report.unmanaged if u.prunable)
    unmanaged = f", {len(report.unmanaged)} unmanaged" if report.unmanaged else ""
    if prunable:
        unmanaged += f" ({prunable} deleted by --prune)"
    err_console.print(
        f"Plan: {summary or 'nothing to do'}; {ok_text}{hidden}{unmanaged}. "
        f"{bytes_to_download(report.download_bytes, report.unknown_sizes)} to download, "
        f"{human_size(report.free_bytes)} free on root's filesystem."
    )


def bytes_to_download(known: int, unknown_sizes: int) -> str:
    """ "1.2 GiB", or "at least 1.2 GiB (2 entries of unknown size)": never a wrong total."""
    if not unknown_sizes:
        return human_size(known)
    entries = "entry" if unknown_sizes == 1 else "entries"
    return f"at least {human_size(known)} ({unknown_sizes} {entries} of unknown size)"


def print_entries(report: Report) -> None:
    """verify: one line per entry (per problem, for long reports), then the counts."""
    rows: list[list[Segment]] = []
    for e in _shown(report.entries, lambda e: e.status is not Status.OK):
        style = STATUS_STYLE[e.status]
        rows.append([(f"{e.status.value:>10}", style), (e.path or e.name, "")])
        if e.error:
            rows.append([("", ""), (e.error, "red")])
        elif e.status is Status.UNPINNED:
            rows.append([("", ""), (e.detail, "dim")])
    write_lines(rows)
    print_warnings(report)
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
    err_console.print(
        f"{report.command.capitalize()}: {counts or 'no entries'} ({report.elapsed:.1f}s)"
    )


def print_error(exc: ModelsyncError, usage: str = "") -> None:
    """The human error on stderr; a usage error shows the command's usage line first."""
    if usage:
        err_console.print(escape(usage))
    err_console.print(f"[red]error:[/] {escape(exc.message)}")
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {escape(exc.hint)}")


def error_json(exc: ModelsyncError, command: str | None) -> dict[str, Any]:
    """A failed command's one JSON document: scripts read this, never stderr."""
    problems = [
        {"entry": p.entry, "key": p.key, "line": p.line, "message": p.message} for p in exc.problems
    ]
    return {
        "schema": 1,
        "command": command,
        "error": {
            "message": exc.headline,
            "hint": exc.hint or None,
            "exit_code": exc.exit_code,
            "problems": problems,
        },
    }


def print_error_json(exc: ModelsyncError, command: str | None) -> None:
    write_json(error_json(exc, command))


def _progress_interval() -> float:
    """Seconds between summary lines without a terminal (a hidden knob for tests)."""
    try:
        return max(float(os.environ.get("MODELSYNC_PROGRESS_INTERVAL", "10")), 0.1)
    except ValueError:
        return 10.0


class LineReporter:
    """No terminal (or --no-progress): a line when each file starts and finishes, and a
    summary line at least every 10 s, so that a CI log is never silent for long."""

    verbose = False  # apply --verbose: a failure's cause in aria2's words too

    def __init__(self, console: Console = err_console) -> None:
        self.console = console
        self.plain = console.color_system is None and not console.is_terminal
        self.totals = Totals()
        self.interval = _progress_interval()
        self.next_summary = time.monotonic() + self.interval

    def begin(self, files: int, total_bytes: int, unknown_sizes: int) -> None:
        self.totals = Totals(planned=total_bytes, files=files)
        if files:
            self.console.print(
                f"{files} file(s) to process, "
                f"{bytes_to_download(total_bytes, unknown_sizes)} to download"
            )

    def _say(self, style: str, word: str, rest: str) -> None:
        """One line of a file's start or end. Without colours it is written as is: rich's
        markup rendering costs more than the rest of a small file's download."""
        if self.plain:
            self.console.file.write(f"{word:>10}  {rest}\n")
        else:
            self.console.print(f"[{style}]{word:>10}[/]  {escape(rest)}")

    def file_started(self, name: str, path: str, size: int | None, already: int) -> None:
        self.totals.started(name, size, already)
        resumed = f", {human_size(already)} already here" if already else ""
        shown = human_size(size) if size is not None else "size unknown"
        self._say("cyan", "start", f"{path} ({shown}{resumed})")

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None:
        self.totals.progress(name, done, total, speed)
        now = time.monotonic()
        if now >= self.next_summary:
            self.next_summary = now + self.interval
            t = self.totals
            share = f" ({100 * t.transferred // t.total}%)" if t.total else ""
            self.console.print(
                f"progress: {human_size(t.transferred)} of {human_size(t.total)}{share}, "
                f"{human_size(t.speed)}/s, {t.finished}/{t.files} files"
            )

    def file_finished(self, result: EntryResult) -> None:
        self.totals.file_done(result.name)
        style = STATUS_STYLE[result.status]
        if not (result.error or (result.cause and self.verbose)):
            done = f"  ({human_size(result.bytes_downloaded)})" if result.bytes_downloaded else ""
            self._say(style, result.status.value, f"{result.path or result.name}{done}")
            return
        line = f"[{style}]{result.status.value:>10}[/]  {escape(result.path or result.name)}"
        if result.bytes_downloaded:
            line += f"  ({human_size(result.bytes_downloaded)})"
        if result.error:
            line += f"\n            [red]{escape(result.error)}[/]"
        if result.cause and self.verbose:
            line += f"\n            [dim]cause: {escape(result.cause)}[/]"
        self.console.print(line)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}")

    def end(self) -> None:
        pass


class BarReporter(LineReporter):
    """A terminal: one bar per active file (bytes, speed, ETA, connections) plus a total
    that grows as sizes unknown to the plan are learned."""

    def __init__(self, console: Console = err_console) -> None:
        super().__init__(console)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[conns]}", markup=False),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.total: TaskID | None = None

    def begin(self, files: int, total_bytes: int, unknown_sizes: int) -> None:
        self.totals = Totals(planned=total_bytes, files=files)
        self.progress.start()
        self.total = self.progress.add_task("total", total=total_bytes or None, conns="")

    def file_started(self, name: str, path: str, size: int | None, already: int) -> None:
        self.totals.started(name, size, already)

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None:
        self.totals.progress(name, done, total, speed)
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, conns="")
        self.progress.update(
            self.tasks[name], completed=done, total=total, conns=f"{connections} conn"
        )
        if self.total is not None:
            t = self.totals
            self.progress.update(self.total, completed=t.transferred, total=t.total or None)

    def file_finished(self, result: EntryResult) -> None:
        task = self.tasks.pop(result.name, None)
        if task is not None:
            self.progress.remove_task(task)
        super().file_finished(result)  # same console: rich prints it above the bars

    def end(self) -> None:
        self.progress.stop()


CHECK_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


def print_checks(checks: Sequence[Check]) -> None:
    """One line per check (`ok`, `warn`, `fail`), a `fix:` line under warn and fail."""
    for c in checks:
        mark = f"[{CHECK_STYLE[c.status]}]{c.status:<4}[/]"
        err_console.print(f"{mark} {escape(c.name)}: {escape(c.detail)}")
        if c.fix and c.status != "ok":
            err_console.print(f"     fix: {escape(c.fix)}")
    failed = sum(1 for c in checks if c.status == "fail")
    warned = sum(1 for c in checks if c.status == "warn")
    err_console.print(
        f"Doctor: {len(checks)} checks, {failed} failed, {warned} warning(s)"
        if failed or warned
        else f"Doctor: all {len(checks)} checks ok"
    )


def print_checks_json(checks: Sequence[Check]) -> None:
    doc = {
        "schema": 1,
        "command": "doctor",
        "ok": all(c.ok for c in checks),
        "checks": [
            {"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix or None}
            for c in checks
        ],
    }
    write_json(doc)


def status_json(st: ApplyStatus) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": 1,
        "command": "status",
        "root": str(st.root),
        "running": st.running,
        "stale": st.stale,
        "pid": st.pid,
    }
    if not st.running:
        return doc
    return doc | {
        "manifest": st.manifest,
        "started": st.started,
        "updated": st.updated,
        "files": {"done": st.files_done, "total": st.files_total},
        "bytes": {"done": st.bytes_done, "total": st.bytes_total},
        "rate": st.rate,
        "eta_seconds": None if st.eta is None else round(st.eta),
        "active": [
            {
                "name": a.name,
                "path": a.path,
                "done": a.done,
                "total": a.total,
                "rate": a.rate,
                "eta_seconds": None if a.eta is None else round(a.eta),
            }
            for a in st.active
        ],
    }


def print_status(st: ApplyStatus) -> None:
    """`status`: the running apply's totals, then one line per active file."""
    if st.stale:
        err_console.print(
            f"no apply running (the last one, pid {st.pid}, stopped without finishing)"
        )
        return
    if not st.running:
        err_console.print("no apply running")
        return
    share = f" ({100 * st.bytes_done // st.bytes_total}%)" if st.bytes_total else ""
    err_console.print(
        f"apply running (pid {st.pid}, started {st.started}): "
        f"{st.files_done}/{st.files_total} files, "
        f"{human_size(st.bytes_done)} of {human_size(st.bytes_total)}{share}, "
        f"{human_size(st.rate)}/s, ETA {_duration(st.eta)}"
    )
    rows: list[list[Segment]] = [
        [
            ("", ""),
            (a.path, ""),
            (f"{human_size(a.done)} of {human_size(a.total)}", ""),
            (f"{human_size(a.rate)}/s", ""),
            (f"ETA {_duration(a.eta)}", "dim"),
        ]
        for a in st.active
    ]
    write_lines(rows)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def print_summary(report: Report, verbose: bool = False) -> None:
    """apply's closing lines: counts, bytes, time, average speed, unmanaged files."""
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
    speed = report.download_bytes / report.elapsed if report.elapsed else 0
    err_console.print(
        f"Apply: {counts or 'no entries'}; {human_size(report.download_bytes)} downloaded "
        f"in {report.elapsed:.1f}s ({human_size(int(speed))}/s)"
    )
    for path in report.pruned:
        err_console.print(f"[magenta]pruned[/]  {escape(path)}")
    if report.unmanaged:
        prunable = sum(1 for u in report.unmanaged if u.prunable)
        err_console.print(
            f"{len(report.unmanaged)} unmanaged file(s) in managed folders, "
            f"{prunable} of them model files that `apply --prune` would delete "
            "(see `modelsync plan`)"
        )
    for e in report.entries:
        if e.status is Status.FAILED:
            error = e.error or ""
            named = error if error.startswith(f"{e.name}: ") else f"{e.name}: {error}"
            if e.name in report.optional:
                err_console.print(f"[yellow]failed (optional):[/] {escape(named)}")
            else:
                err_console.print(f"[red]failed:[/] {escape(named)}")
            if verbose and e.cause:
                err_console.print(f"        [dim]cause: {escape(e.cause)}[/]")


def print_lock(result: LockResult) -> None:
    """`lock`: what changed in the lock file, then what failed."""
    marks = {"added": ("+", "green"), "updated": ("~", "yellow"), "removed": ("-", "red")}
    for c in result.changes:
        mark, style = marks[c.change.value]
        detail = f"  [dim]({escape(c.detail)})[/]" if c.detail else ""
        err_console.print(f"[{style}]{mark} {c.change.value:>7}[/]  {escape(c.name)}{detail}")
    for _name, error in result.errors:
        err_console.print(f"[red]! failed[/]   {escape(error)}")
    counts = {k: sum(1 for c in result.changes if c.change.value == k) for k in marks}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if result.written:
        state = f"wrote {escape(str(result.path))}"
    elif result.path.exists():
        state = f"{escape(str(result.path))} is up to date"
    else:
        state = f"{escape(str(result.path))} not written (nothing could be locked)"
    extra = f"{summary}, " if summary else ""
    failed = f", {len(result.errors)} failed" if result.errors else ""
    err_console.print(f"Lock: {state} ({extra}{result.unchanged} unchanged{failed}).")


def print_added(result: AddResult) -> None:
    details = []
    if "size" in result.values:
        details.append(human_size(result.values["size"]))
    if "sha256" in result.values:
        details.append(f"sha256 {result.values['sha256'][:12]}…")
    suffix = f" ({', '.join(details)})" if details else ""
    err_console.print(
        f"[green]added[/] {escape(result.name)} -> {escape(result.path)}{suffix} "
        f"to {escape(str(result.manifest))}"
    )
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    if result.unpinned:
        err_console.print(
            "[yellow]warning:[/] the source publishes no hash, so the entry is unpinned; "
            f"run `modelsync lock {escape(str(result.manifest))}` to download it once and "
            "pin its sha256 in the lock"
        )


def hashing_progress(interval: float = 10.0) -> Callable[[int, int], None]:
    """`import` of a folder: a line at most every `interval` seconds while it hashes."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= interval or (done == total and now - last[0] >= 1):
            last[0] = now
            err_console.print(f"hashing: {human_size(done)} of {human_size(total)}")

    return report


def print_import(result: ImportResult) -> None:
    """What was added, skipped, and could not be imported (with what to add)."""
    rows: list[list[Segment]] = []
    for f in result.added:
        rows.append(
            [("+", "green"), (f.target, ""), (_source_word(f.values), "dim"), (f.origin, "dim")]
        )
    for s in result.skipped:
        rows.append([("=", "dim"), (s.found.target, ""), ("skipped", "dim"), (s.why, "dim")])
    for u in result.unresolved:
        where = f"{u.dir}/{u.name}" if u.dir else u.name
        rows.append([("?", "yellow"), (where, ""), ("unresolved", "yellow"), (u.origin, "dim")])
        rows.append([("", ""), ("", ""), ("", ""), (u.why, "yellow")])
    write_lines(rows)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    verb = "created" if result.created else "updated" if result.added else "unchanged"
    err_console.print(
        f"Import: {len(result.added)} added, {len(result.skipped)} skipped, "
        f"{len(result.unresolved)} unresolved; {escape(str(result.manifest))} {verb}."
    )
    if result.added:
        err_console.print(
            f"next: `modelsync lock {escape(str(result.manifest))}` pins every file, "
            f"`modelsync plan {escape(str(result.manifest))}` shows what apply would do"
        )


def _source_word(values: dict[str, Any]) -> str:
    if "civitai" in values:
        return f"civitai {values['civitai']}"
    if "hf" in values:
        return f"hf {values['hf']}" + ("" if "file" in values else " (repository)")
    if "url" in values:
        return "url"
    return "pinned, no source"


def print_import_json(result: ImportResult) -> None:
    write_json(
        {
            "schema": 1,
            "command": "import",
            "manifest": str(result.manifest),
            "created": result.created,
            "added": [
                {"path": f.target, "origin": f.origin, "entry": f.values} for f in result.added
            ],
            "skipped": [
                {"path": s.found.target, "origin": s.found.origin, "why": s.why}
                for s in result.skipped
            ],
            "unresolved": [
                {"name": u.name, "dir": u.dir, "origin": u.origin, "why": u.why}
                for u in result.unresolved
            ],
            "warnings": list(result.warnings),
        }
    )


def print_gc(result: GcResult) -> None:
    for sha256, size in result.unreferenced:
        verb = "removed" if result.removed else "unreferenced"
        err_console.print(f"{verb}  sha256/{sha256[:2]}/{sha256}  {human_size(size)}")
    for root in result.gone_roots:
        err_console.print(f"forgot  {escape(str(root))} (the root no longer exists)")
    total = sum(size for _, size in result.unreferenced)
    if result.removed:
        err_console.print(
            f"GC: removed {len(result.unreferenced)} blob(s), {human_size(result.freed)} freed; "
            f"{result.kept} kept in {escape(str(result.store))}."
        )
    else:
        hint = "; run with --yes to remove them" if result.unreferenced else ""
        err_console.print(
            f"GC: {len(result.unreferenced)} unreferenced blob(s), {human_size(total)}{hint}; "
            f"{result.kept} kept in {escape(str(result.store))}."
        )


def print_gc_json(result: GcResult) -> None:
    write_json(
        {
            "schema": 1,
            "command": "gc",
            "store": str(result.store),
            "removed": result.removed,
            "unreferenced": [{"sha256": h, "size": n} for h, n in result.unreferenced],
            "freed_bytes": result.freed,
            "kept": result.kept,
            "forgotten_roots": [str(r) for r in result.gone_roots],
        }
    )


EXPORT_STYLE = {"written": "cyan", "present": "green", "unpinned": "yellow", "skipped": "dim"}


def print_export(result: ExportResult) -> None:
    """mirror export: the blobs written and every problem (present ones are counted)."""
    rows: list[list[Segment]] = []
    for f in result.files:
        if f.status == "present":
            continue
        style = EXPORT_STYLE.get(f.status, "red")
        what = f.path or f.name
        if f.status == "written":  # the blob's name is in index.json: its start will do
            what += f"  sha256/{(f.sha256 or '')[:16]}…  {human_size(f.size)} ({f.how})"
        rows.append([(f"{f.status:>10}", style), (what, "")])
        if f.error:
            quiet = f.status in ("unpinned", "skipped")
            rows.append([("", ""), (f.error, "dim" if quiet else "red")])
    write_lines(rows)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    counts = [f"{result.count('written')} written ({human_size(result.written_bytes)})"]
    counts.append(f"{result.count('present')} already there")
    bad = ("missing", "corrupt", "failed", "unpinned", "skipped")
    counts += [f"{result.count(s)} {s}" for s in bad]
    shown = [c for c in counts[2:] if not c.startswith("0 ")]
    err_console.print(
        f"Export: {', '.join(counts[:2] + shown)} in {escape(str(result.dest))} "
        f"({result.elapsed:.1f}s); index: {escape(str(result.index))}"
    )


def print_export_json(result: ExportResult) -> None:
    counts = ("written", "present", "missing", "corrupt", "failed", "unpinned", "skipped")
    write_json(
        {
            "schema": 1,
            "command": "mirror export",
            "root": str(result.root),
            "dir": str(result.dest),
            "index": str(result.index),
            "entries": [
                {
                    "name": f.name,
                    "path": f.path,
                    "status": f.status,
                    "size": f.size,
                    "sha256": f.sha256,
                    "xxh3_128": f.xxh3_128,
                    "how": f.how,
                    "error": f.error,
                    **({"optional": True} if f.optional else {}),
                }
                for f in result.files
            ],
            "totals": {
                **{s: result.count(s) for s in counts},
                "written_bytes": result.written_bytes,
            },
            "warnings": list(result.warnings),
        }
    )
