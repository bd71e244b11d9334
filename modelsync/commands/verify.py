"""`verify`: hash every present file (the stat cache is not trusted) and report."""

from __future__ import annotations

import os
import time
from pathlib import Path

from modelsync.commands.common import UNPINNED_HINT, failed_targets, unpinned_warnings
from modelsync.events import Events
from modelsync.hashing import FileHashes, git_blob_sha1, hash_files
from modelsync.reconcile import LEARNED_CHANGED, Learned, hash_mismatches, judged
from modelsync.remote import Desired
from modelsync.results import EntryResult, Report, Status, free_bytes
from modelsync.state import StateDB
from modelsync.workspace import Target, Workspace


def _fast_verifiable(t: Target) -> bool:
    return t.desired is not None and bool(t.desired.sha256 and t.desired.xxh3_128)


def _expected(ws: Workspace, targets: list[Target]) -> dict[str, Desired]:
    """What each resolved entry's file is judged against: its pins, or else the pin
    learned when apply downloaded it unpinned (the same object when that changes nothing)."""
    unpinned = [
        t.desired.path
        for t in targets
        if t.desired and not t.desired.pinned and not t.desired.git_sha1  # see _git_check
    ]
    pins = {}
    if unpinned:
        with StateDB.open(ws.root, create=False) as state:
            pins = state.learned_pins(unpinned)
    out = {}
    for t in targets:
        if t.desired is not None:
            pin = pins.get(t.desired.path)
            learned = Learned(pin.size, pin.sha256, pin.xxh3_128) if pin else None
            out[t.name] = judged(t.desired, learned)
    return out


def _learned_prefix(t: Target, judged_by: Desired) -> str:
    return f"{LEARNED_CHANGED}: " if judged_by is not t.desired else ""


def _xxh3_differs(outcome: FileHashes | OSError, t: Target) -> bool:
    return isinstance(outcome, FileHashes) and (
        t.desired is None or outcome.xxh3_128 != t.desired.xxh3_128
    )


def _git_check(state: StateDB, d: Desired, path: Path, hashes: FileHashes) -> list[str]:
    """A file kept in git (not LFS) that nothing else pins: its git blob id, computed;
    the bytes that match it are remembered (plan then judges the file by its sha256)."""
    if d.pinned or not d.git_sha1:
        return []
    try:
        actual = git_blob_sha1(path)
    except OSError as exc:
        return [f"cannot read: {exc}"]
    if actual != d.git_sha1:
        return [f"git blob sha1 expected {d.git_sha1}, got {actual}"]
    state.learn_blob(actual, hashes)
    return []


def run_verify(ws: Workspace, *, strict: bool = False, events: Events | None = None) -> Report:
    """Hash every present file (cache not trusted), refresh the cache with what it finds.

    An entry pinned by both sha256 and xxh3_128 (as the lock pins a verified file) is
    re-verified with xxh3_128 alone unless `strict`: several times faster, and the pair
    was bound together when the file was first checked against its sha256.
    """
    events = events or Events()
    started = time.monotonic()
    events.run_started("verify", ws.root, ws.manifest.path)
    targets = ws.targets()
    events.resolved(targets, ws.env)
    entries = failed_targets(targets, "verify")
    to_hash: dict[Path, tuple[Target, os.stat_result]] = {}
    results: dict[str, EntryResult] = {}
    expected = _expected(ws, targets)  # unpinned entries: against their learned pins
    for t in targets:
        if t.desired is None:
            continue
        d = expected[t.name]
        path = ws.layout.target(d.path)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            results[t.name] = EntryResult(t.name, d.path, "verify", Status.MISSING, d.size)
            continue
        if d.size is not None and st.st_size != d.size:
            error = _learned_prefix(t, d) + f"size {st.st_size}, expected {d.size}"
            results[t.name] = EntryResult(
                t.name, d.path, "verify", Status.CORRUPT, st.st_size, error=error
            )
            continue
        to_hash[path] = (t, st)
    fast = [p for p, (t, _) in to_hash.items() if not strict and _fast_verifiable(t)]
    fast_set = set(fast)
    full = [p for p in to_hash if p not in fast_set]
    hashed = {**hash_files(full), **hash_files(fast, with_sha256=False)}
    # A fast re-verify that fails knows no sha256: hash those files whole, so that the
    # stat cache records what they really hold (plan then says `repair`, with the reason).
    changed = [p for p in fast if _xxh3_differs(hashed[p], to_hash[p][0])]
    hashed.update(hash_files(changed))
    # Nothing present: open no database, so verify of an empty root creates nothing.
    with StateDB.open(ws.root, create=bool(to_hash)) as state:
        for path, (t, st) in to_hash.items():
            d = expected[t.name]
            outcome = hashed[path]
            if not isinstance(outcome, FileHashes):
                results[t.name] = EntryResult(
                    t.name,
                    d.path,
                    "verify",
                    Status.FAILED,
                    st.st_size,
                    error=f"cannot read: {outcome}",
                )
                continue
            if not outcome.sha256:  # xxh3_128 only: a match binds it to the pinned sha256
                assert d.sha256 is not None
                outcome = FileHashes(outcome.size, d.sha256, outcome.xxh3_128)
            wrong = hash_mismatches(d, outcome.sha256, outcome.xxh3_128)
            wrong += _git_check(state, d, path, outcome)
            # The cache states what the file holds, right or wrong: a mismatch stays known.
            state.record(d.path, st, outcome)
            if wrong:
                error = _learned_prefix(t, d) + "; ".join(wrong)
                results[t.name] = EntryResult(
                    t.name, d.path, "verify", Status.CORRUPT, st.st_size, error=error
                )
            elif d is t.desired and d.vouched:
                results[t.name] = EntryResult(t.name, d.path, "verify", Status.OK, st.st_size)
            else:  # matches its learned pin, or was never downloaded by modelsync
                results[t.name] = EntryResult(
                    t.name, d.path, "verify", Status.UNPINNED, st.st_size, detail=UNPINNED_HINT
                )
    entries += [results[t.name] for t in targets if t.name in results]
    for e in entries:
        events.emit(
            "verify",
            entry=e.name,
            path=e.path,
            ok=e.status in (Status.OK, Status.UNPINNED),
            status=e.status.value,
            bytes=e.size,
            error=e.error,
        )
    report = Report(
        optional=frozenset(t.name for t in targets if t.entry.optional),
        command="verify",
        root=ws.root,
        entries=tuple(entries),
        warnings=tuple(unpinned_warnings(targets)),
        elapsed=time.monotonic() - started,
        free_bytes=free_bytes(ws.root),
    )
    events.run_finished(report)
    return report
