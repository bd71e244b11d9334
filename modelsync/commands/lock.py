"""`modelsync lock`: resolve every entry and write `<manifest stem>.lock`.

- A current lock entry (its fingerprint matches the manifest) is kept as it is, without
  asking its source, so its Hugging Face commit stays put; `--upgrade` resolves every
  entry again (floating revisions move to their newest commit).
- A new or edited entry is resolved through its source's metadata (nothing downloaded).
- An entry with no hash from the manifest or its source is downloaded into root through
  the normal apply machinery, and the sha256/xxh3_128 that apply verified and recorded in
  state.db are locked (trust on first use). A file already in place that modelsync
  verified is not downloaded again; one changed since apply placed it (its learned pin
  in state.db) is repaired first, so its changed bytes are never locked.
- xxh3_128 (and the exact size) are added when an entry is (re)locked anyway (new,
  edited, or `--upgrade`) and the file was verified locally: taken from state.db when its
  row agrees with the locked hashes and the file's stat still matches. A current entry is
  never rewritten for them, so `lock` after `apply` leaves the lock byte-identical.
- One entry failing does not stop the others: the lock is written with everything that
  resolved, a failed entry keeps what the previous lock held for it (or stays out of the
  lock), and the command exits 1. Errors that stop everything (aria2 unavailable, not
  enough space, a broken lock file) exit 2 with nothing written.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from modelsync import repos
from modelsync.commands.apply import ApplyRequest, run_apply
from modelsync.errors import EXIT_FAILED, EXIT_OK, ModelsyncError
from modelsync.events import Events
from modelsync.lockfile import Lock, LockedEntry, fingerprint, plain_url, write_lock
from modelsync.manifest import Entry
from modelsync.progress import NullReporter, Reporter
from modelsync.remote import Desired, RemoteFile, RepoListing
from modelsync.results import EntryResult, Report, Status
from modelsync.sources import list_repository, repository_url, resolve
from modelsync.state import Row, StateDB
from modelsync.workspace import Workspace, desired_for


class Change(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True)
class LockChange:
    name: str
    change: Change
    detail: str = ""  # which fields changed, for `updated`


@dataclass(frozen=True)
class LockResult:
    path: Path
    changes: tuple[LockChange, ...]
    unchanged: int
    errors: tuple[tuple[str, str], ...]  # (entry name, message)
    written: bool
    fetched: Report | None = None  # the apply run that pinned unpinned entries

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.errors else EXIT_OK


@dataclass(frozen=True)
class _Resolved:
    entry: Entry
    desired: Desired
    remote: RemoteFile


def run_lock(
    ws: Workspace,
    *,
    upgrade: bool = False,
    request: ApplyRequest | None = None,
    reporter: Reporter | None = None,
    events: Events | None = None,
) -> LockResult:
    """Lock every entry of ws.manifest (not only ws.entries: the lock covers the manifest)."""
    events = events or Events()
    events.run_started("lock", ws.root, ws.manifest.path)
    old = ws.lock if ws.lock is not None else Lock()
    new: dict[str, LockedEntry] = {}
    errors: dict[str, str] = {}
    unpinned: list[_Resolved] = []
    with StateDB.open(ws.root, create=False) as state:
        rows = state.get_many()
        for entry in ws.manifest.models:
            name = entry.display_name
            previous = old.models.get(name)
            current = old.current(entry)
            if current is not None and not upgrade:
                new[name] = current  # byte for byte: what this disk learned is no change
                events.emit("resolve", entry=name, from_lock=True, ok=True)
                continue
            if entry.is_repo:
                try:
                    listing = list_repository(entry, ws.sources)
                except ModelsyncError as exc:
                    errors[name] = str(exc)
                    if previous is not None:
                        new[name] = previous
                    continue
                new[name] = _locked_repo(ws, entry, listing, previous, rows)
                continue
            try:
                remote = resolve(entry, ws.sources)
            except ModelsyncError as exc:
                errors[name] = str(exc)
                if previous is not None:
                    new[name] = previous
                continue
            desired = desired_for(entry, remote)
            events.emit("resolve", entry=name, url=remote.urls[0] if remote.urls else None, ok=True)
            if not desired.pinned:
                unpinned.append(_Resolved(entry, desired, remote))
                continue
            locked = _locked(entry, desired, remote, ws.sources.secrets)
            new[name] = _with_local_hashes(ws, _keep_known_xxh3(locked, previous), rows)
    for name, error in errors.items():
        events.emit("resolve", entry=name, ok=False, error=error)
    fetched = None
    if unpinned:
        fetched = _fetch(
            ws, unpinned, request or ApplyRequest(), reporter or NullReporter(), events
        )
        with StateDB.open(ws.root, create=False) as state:
            rows = state.get_many()
        outcome = {e.name: e for e in fetched.entries}
        for item in unpinned:
            name = item.entry.display_name
            row = _verified_row(ws, item.desired.path, rows)
            result = outcome.get(name)
            if row is None or (result is not None and result.status is Status.FAILED):
                why = result.error if result is not None and result.error else "not downloaded"
                errors[name] = f"{name}: cannot pin it: {why}"
                if name in old.models:
                    new[name] = old.models[name]
                continue
            verified = replace(
                item.desired, sha256=row.sha256, xxh3_128=row.xxh3_128, size=row.size
            )
            new[name] = _locked(item.entry, verified, item.remote, ws.sources.secrets)
    lock = Lock(models=dict(sorted(new.items())))
    path = ws.manifest.lock_path
    written = False
    if new or ws.lock is not None:
        written = write_lock(path, lock, ws.manifest.path.name)
    changes = _changes(old, lock)
    events.emit("lock", path=str(path), written=written, changes=len(changes), failed=len(errors))
    order = {e.display_name: i for i, e in enumerate(ws.manifest.models)}
    return LockResult(
        path=path,
        changes=tuple(changes),
        unchanged=len(lock.models) - sum(c.change is not Change.REMOVED for c in changes),
        errors=tuple(sorted(errors.items(), key=lambda kv: order.get(kv[0], len(order)))),
        written=written,
        fetched=fetched,
    )


def _locked(
    entry: Entry, desired: Desired, remote: RemoteFile, secrets: tuple[str, ...]
) -> LockedEntry:
    return LockedEntry(
        fingerprint=fingerprint(entry),
        path=desired.path,
        # An entry pinned by hash alone has mirrors, not an origin: nothing to lock there.
        url=plain_url(remote.urls[0], secrets) if remote.urls and entry.source != "none" else None,
        commit=remote.commit,
        size=desired.size,
        estimated_size=desired.estimated_size if desired.size is None else None,
        sha256=desired.sha256.lower() if desired.sha256 else None,
        xxh3_128=desired.xxh3_128.lower() if desired.xxh3_128 else None,
    )


def _locked_repo(
    ws: Workspace,
    entry: Entry,
    listing: RepoListing,
    previous: LockedEntry | None,
    rows: dict[str, Row],
) -> LockedEntry:
    """The commit and every selected file; xxh3_128 added for LFS files verified here."""
    before = previous.files if previous is not None and previous.files else {}
    files = {}
    for path, f in repos.to_lock(listing).items():
        known = before.get(path)
        if f.sha256 and known is not None and known.sha256 == f.sha256 and known.xxh3_128:
            f = f.model_copy(update={"xxh3_128": known.xxh3_128})
        row = _verified_row(ws, f"{entry.dir}/{path}" if entry.dir else path, rows)
        if f.sha256 and not f.xxh3_128 and row is not None and row.sha256 == f.sha256:
            f = f.model_copy(update={"xxh3_128": row.xxh3_128})
        files[path] = f
    return LockedEntry(
        fingerprint=fingerprint(entry),
        url=plain_url(repository_url(entry, ws.env), ws.sources.secrets),
        commit=listing.commit,
        files=files,
    )


def _keep_known_xxh3(locked: LockedEntry, previous: LockedEntry | None) -> LockedEntry:
    """xxh3_128 is a property of the bytes: once known for this sha256, keep it."""
    if (
        previous is None
        or locked.xxh3_128
        or not locked.sha256
        or previous.sha256 != locked.sha256
        or not previous.xxh3_128
    ):
        return locked
    size = locked.size if locked.size is not None else previous.size
    return locked.model_copy(
        update={
            "xxh3_128": previous.xxh3_128,
            "size": size,
            "estimated_size": None if size is not None else locked.estimated_size,
        }
    )


def _verified_row(ws: Workspace, path: str, rows: dict[str, Row]) -> Row | None:
    """state.db's row for `path`, if the file there is still the one that was hashed."""
    row = rows.get(path)
    if row is None:
        return None
    try:
        st = os.stat(ws.layout.target(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return row if row.matches(st) else None


def _with_local_hashes(ws: Workspace, locked: LockedEntry, rows: dict[str, Row]) -> LockedEntry:
    """Add xxh3_128 and the exact size once the file was verified here against the lock."""
    if locked.path is None or (locked.xxh3_128 and locked.sha256 and locked.size is not None):
        return locked
    row = _verified_row(ws, locked.path, rows)
    if row is None:
        return locked
    agree = (not locked.sha256 or locked.sha256 == row.sha256) and (
        not locked.xxh3_128 or locked.xxh3_128 == row.xxh3_128
    )
    if not agree or (locked.size is not None and locked.size != row.size):
        return locked
    return locked.model_copy(
        update={
            "sha256": row.sha256,
            "xxh3_128": row.xxh3_128,
            "size": row.size,
            "estimated_size": None,
        }
    )


class _LockingReporter:
    """Forwards to `inner`, minus advice to run `modelsync lock`: that is what runs."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def begin(self, files: int, total_bytes: int, unknown_sizes: int) -> None:
        self.inner.begin(files, total_bytes, unknown_sizes)

    def file_started(self, name: str, path: str, size: int | None, already: int) -> None:
        self.inner.file_started(name, path, size, already)

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None:
        self.inner.file_progress(name, done, total, speed, connections)

    def file_finished(self, result: EntryResult) -> None:
        self.inner.file_finished(result)

    def warn(self, message: str) -> None:
        if "modelsync lock" not in message:
            self.inner.warn(message)

    def end(self) -> None:
        self.inner.end()


def _fetch(
    ws: Workspace,
    items: list[_Resolved],
    request: ApplyRequest,
    reporter: Reporter,
    events: Events,
) -> Report:
    """Download the entries no hash pins, with apply itself, into ws.root."""
    names = {i.entry.display_name for i in items}
    fetch = copy.copy(ws)  # shares ws.sources: the same resolutions (HF commits) as locked
    fetch.entries = [e for e in ws.manifest.models if e.display_name in names]
    fetch.lock = None  # these entries are not locked yet
    return run_apply(
        fetch, replace(request, prune=False), _LockingReporter(reporter), events=events
    )


def _files_changed(a: dict[str, Any], b: dict[str, Any]) -> str:
    """ "files: 2 added (x, y), 1 removed (z)": a repository's files across two locks."""
    kinds = {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "changed": sorted(p for p in set(a) & set(b) if a[p] != b[p]),
    }
    parts = []
    for kind, paths in kinds.items():
        if paths:
            shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            parts.append(f"{len(paths)} {kind} ({shown})")
    return "files: " + ", ".join(parts) if parts else "files"


def _changes(old: Lock, new: Lock) -> list[LockChange]:
    out = []
    for name, locked in new.models.items():
        before = old.models.get(name)
        if before is None:
            out.append(LockChange(name, Change.ADDED))
        elif before != locked:
            a, b = before.model_dump(), locked.model_dump()
            fields = [k for k in a if a[k] != b[k]]
            out.append(LockChange(name, Change.UPDATED, _describe(fields, a, b)))
    out += [LockChange(n, Change.REMOVED) for n in sorted(old.models) if n not in new.models]
    return out


def _describe(fields: list[str], a: dict[str, Any], b: dict[str, Any]) -> str:
    parts = []
    for key in fields:
        if key == "files":
            parts.append(_files_changed(a[key] or {}, b[key] or {}))
        elif key == "commit" and a[key] and b[key]:
            parts.append(f"commit {str(a[key])[:12]} -> {str(b[key])[:12]}")
        elif key == "fingerprint":
            parts.append("manifest entry changed")
        else:
            parts.append(key)
    return ", ".join(parts)
