"""The stat cache: which files were hashed, at which (size, mtime_ns, inode, device).

`<root>/.modelsync/state.db` is a small SQLite database with two tables keyed by the
file's POSIX path relative to root. A `files` row says: "when this path had
exactly this size, mtime_ns, inode and device, its content hashed to sha256 /
xxh3_128". It does not say whether those hashes match any manifest; the caller
compares them with what it wants. A second `plan` therefore reads no file content:
one SELECT for all rows, one `stat` per file, compared in Python.

A `pins` row is a *learned pin*: the size and hashes of the file `apply` last
placed at that path (downloaded and, if it had one, checked against its pin). It is
what the file is judged against while nothing pins the entry (no hash in the
manifest, the lock or the source), now or once a pin is dropped again. It is not tied
to a stat: whatever happens to the file later, it is judged against these hashes (a
changed file is repaired, not accepted). Schema version 1
had `files` only; opening it for writing adds `pins` in place (the cache is kept).

Rules for callers:
- Take the `os.stat_result` BEFORE hashing and pass that one to `record`. A file
  written while it was being hashed then has a newer mtime (or another size) than
  the row, so the next lookup misses and the file is hashed again. A stat taken
  after hashing could pair new metadata with hashes of the old content. `record`
  refuses (returns False) when the hashed size differs from that stat.
- ctime is deliberately not part of the key: moving a verified download from tmp/
  into place with rename() keeps size, mtime, inode and device but changes ctime,
  so the stat of the tmp file (taken before hashing) stays valid after the move.
- Residual blind spot, as for git/make: a same-size rewrite within the filesystem's
  timestamp granularity of the pre-hash stat keeps the same mtime_ns.

Robustness: a file that is not a SQLite database, a database with other tables,
or another schema version (`PRAGMA user_version`; a newer one included) is moved
aside to `state.db.corrupt` and rebuilt when opened with create=True; it is treated
as an empty cache with create=False. Version 1 is no foreign database: it is migrated
when opened with create=True, and read as it is (no learned pins) with create=False.
Read and write failures at run time are logged and treated as cache misses / skipped
updates: the cache is never worth failing a command for. WAL mode plus a busy
timeout let several processes read and write.

`StateDB.open(root, create=False)` never creates, moves or deletes anything: a
missing database is an empty cache, and an existing one is opened read-only (with
`immutable=1` when no writer has it open, so SQLite does not leave -wal/-shm files
behind).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from types import TracebackType
from typing import TypeVar

from modelsync.hashing import FileHashes
from modelsync.layout import Layout
from modelsync.state_schema import (
    BUSY_TIMEOUT_S,
    COLUMNS,
    PIN_COLUMNS,
    SCHEMA_VERSION,
    has_pins,
    open_readonly,
    open_writable,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "SCHEMA_VERSION",
    "LearnedPin",
    "Row",
    "StateDB",
]

log = logging.getLogger(__name__)

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM files"
_SELECT_PINS = f"SELECT {', '.join(PIN_COLUMNS)} FROM pins"
_UPSERT_PIN = f"INSERT OR REPLACE INTO pins ({', '.join(PIN_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
_UPSERT = f"INSERT OR REPLACE INTO files ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

RelPath = str | PurePath
T = TypeVar("T")
_Values = tuple[str, int, int, int, int, str, str, float]  # one `files` row, in COLUMNS order


def _to_i64(value: int) -> int:
    """st_ino/st_dev are unsigned 64-bit; SQLite integers are signed 64-bit."""
    value %= _U64
    return value - _U64 if value > _I64_MAX else value


@dataclass(frozen=True, slots=True)
class Row:
    """One cached verification. `inode` and `device` are unsigned, as os.stat gives them."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    sha256: str
    xxh3_128: str
    verified_at: float

    def matches(self, st: os.stat_result) -> bool:
        """True when `st` has the recorded size, mtime_ns, inode and device."""
        return (
            self.size == st.st_size
            and self.mtime_ns == st.st_mtime_ns
            and self.inode == st.st_ino % _U64
            and self.device == st.st_dev % _U64
        )

    @property
    def hashes(self) -> FileHashes:
        return FileHashes(self.size, self.sha256, self.xxh3_128)


@dataclass(frozen=True, slots=True)
class LearnedPin:
    """What the file apply last placed at `path` held (judged against while unpinned)."""

    path: str
    size: int
    sha256: str
    xxh3_128: str
    learned_at: float

    @property
    def hashes(self) -> FileHashes:
        return FileHashes(self.size, self.sha256, self.xxh3_128)


def _row(values: _Values) -> Row:
    path, size, mtime_ns, inode, device, sha256, xxh3_128, verified_at = values
    return Row(path, size, mtime_ns, inode % _U64, device % _U64, sha256, xxh3_128, verified_at)


# The pins table also maps git blob ids to content hashes, under keys no path relative
# to root can take (they start with "/").
_BLOB_KEY = "/git-blob/"


def normalize_relpath(relpath: RelPath) -> str:
    """The database key of a path relative to root: POSIX, no '.', no '//'.

    ValueError for an absolute path, a '..' component, or the root itself.
    """
    text = relpath.as_posix() if isinstance(relpath, PurePath) else relpath
    parts = text.split("/")
    if "" not in parts and "." not in parts and ".." not in parts:
        return text  # already canonical: the fast path (10,000 keys per plan)
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"not a path relative to root: {str(relpath)!r}")
    return p.as_posix()


class StateDB:
    """The stat cache of one root. Use `StateDB.open(...)` as a context manager.

    Methods are thread-safe (one lock around the connection).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection | None, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._conn = conn
        self._lock = threading.Lock()
        self._batched: list[Callable[[sqlite3.Connection], object]] | None = None
        # A version 1 database opened read-only has no pins table (nothing learned yet).
        self.has_pins = conn is not None and has_pins(conn)

    # ---- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, *, create: bool) -> StateDB:
        """Open `<root>/.modelsync/state.db`.

        create=True: create the folder and database if needed; rebuild a corrupt,
        foreign or other-version database (moved aside to `state.db.corrupt`).
        create=False: read-only, writes nothing to disk; a missing, corrupt or
        incompatible database is an empty cache, and record/forget raise RuntimeError.
        """
        db = Layout(Path(root)).state_db
        if not create:
            return cls(db, open_readonly(db), readonly=True)
        return cls(db, open_writable(db), readonly=False)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> StateDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- reading -----------------------------------------------------------------

    def lookup(self, relpath: RelPath, st: os.stat_result) -> Row | None:
        """The cached hashes of `relpath` if `st` (size, mtime_ns, inode, device) matches.

        Takes the caller's stat result and never touches the file itself.
        """
        key = normalize_relpath(relpath)
        found: list[_Values] = self._read(
            lambda conn: conn.execute(f"{_SELECT} WHERE path = ?", (key,)).fetchall(), []
        )
        if not found:
            return None
        row = _row(found[0])
        return row if row.matches(st) else None

    def get_many(self, relpaths: Iterable[RelPath] | None = None) -> dict[str, Row]:
        """Rows for `relpaths` (all rows when None), keyed as the caller spelled them.

        One SELECT of the whole table, filtered in Python; no stat comparison here:
        use `Row.matches(st)`.
        """
        values: list[_Values] = self._read(lambda conn: conn.execute(_SELECT).fetchall(), [])
        if relpaths is None:
            return {v[0]: _row(v) for v in values}
        wanted: dict[str, list[str]] = {}
        for rp in relpaths:
            wanted.setdefault(normalize_relpath(rp), []).append(
                rp.as_posix() if isinstance(rp, PurePath) else rp
            )
        out: dict[str, Row] = {}
        for v in values:
            spellings = wanted.get(v[0])
            if spellings:
                row = _row(v)
                for s in spellings:
                    out[s] = row
        return out

    def learned_pins(self, relpaths: Iterable[RelPath]) -> dict[str, LearnedPin]:
        """The learned pins of `relpaths` that exist, keyed as the caller spelled them."""
        wanted = {normalize_relpath(rp): rp for rp in relpaths}
        if not wanted or not self.has_pins:
            return {}
        values: list[tuple[str, int, str, str, float]] = self._read(
            lambda conn: conn.execute(_SELECT_PINS).fetchall(), []
        )
        out: dict[str, LearnedPin] = {}
        for v in values:
            if v[0] in wanted:
                rp = wanted[v[0]]
                out[rp.as_posix() if isinstance(rp, PurePath) else rp] = LearnedPin(*v)
        return out

    def blob_pins(self, git_sha1s: Iterable[str]) -> dict[str, LearnedPin]:
        """For git blob ids: the size and hashes of bytes seen to have that id, by id."""
        keys = {_BLOB_KEY + sha1: sha1 for sha1 in git_sha1s}
        if not keys or not self.has_pins:
            return {}
        values: list[tuple[str, int, str, str, float]] = self._read(
            lambda conn: conn.execute(_SELECT_PINS).fetchall(), []
        )
        return {keys[v[0]]: LearnedPin(*v) for v in values if v[0] in keys}

    # ---- writing -----------------------------------------------------------------

    def learn_blob(self, git_sha1: str, hashes: FileHashes) -> bool:
        """Remember that bytes with git blob id `git_sha1` hash to `hashes`: a file kept
        in git (not LFS) is then judged by its sha256, like any pinned file."""
        return self._learn(_BLOB_KEY + git_sha1.lower(), hashes)

    def learn(self, relpath: RelPath, hashes: FileHashes) -> bool:
        """Remember `hashes` as what apply last placed at `relpath` (replaces any)."""
        return self._learn(normalize_relpath(relpath), hashes)

    def _learn(self, key: str, hashes: FileHashes) -> bool:
        params = (
            key,
            hashes.size,
            hashes.sha256.lower(),
            hashes.xxh3_128.lower(),
            time.time(),
        )
        return self._write(lambda conn: conn.execute(_UPSERT_PIN, params))

    def record(self, relpath: RelPath, st: os.stat_result, hashes: FileHashes) -> bool:
        """Remember that the file at `relpath`, as described by `st`, hashes to `hashes`.

        `st` must be the stat taken BEFORE hashing (see the module docstring).
        Returns False, recording nothing, when hashes.size != st.st_size: the file
        changed while it was hashed.
        """
        return self.record_many([(relpath, st, hashes)]) == 1

    def record_many(self, items: Iterable[tuple[RelPath, os.stat_result, FileHashes]]) -> int:
        """`record` for several files in one transaction; returns how many were recorded."""
        now = time.time()
        params = []
        for relpath, st, h in items:
            if h.size != st.st_size:
                log.debug("not caching %s: size %d at stat, %d hashed", relpath, st.st_size, h.size)
                continue
            params.append(
                (
                    normalize_relpath(relpath),
                    st.st_size,
                    st.st_mtime_ns,
                    _to_i64(st.st_ino),
                    _to_i64(st.st_dev),
                    h.sha256.lower(),
                    h.xxh3_128.lower(),
                    now,
                )
            )
        if params and self._write(lambda conn: conn.executemany(_UPSERT, params)):
            return len(params)
        return 0

    def forget(self, relpath: RelPath) -> None:
        """Drop the row of `relpath`, if any."""
        self.forget_many([relpath])

    def forget_many(self, relpaths: Iterable[RelPath]) -> None:
        keys = [(normalize_relpath(rp),) for rp in relpaths]
        if keys:
            self._write(lambda conn: conn.executemany("DELETE FROM files WHERE path = ?", keys))

    # ---- plumbing ----------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], T], default: T) -> T:
        with self._lock:
            if self._conn is None:
                return default
            try:
                return fn(self._conn)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.ProgrammingError):
                    raise
                log.warning(
                    "%s: cannot read the stat cache (%s); treating it as empty", self.path, exc
                )
                return default

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside the block are committed together at its end: one transaction
        (and one journal sync) for the files a tick of apply finished, not one each."""
        if self._batched is not None:  # nested: the outer block commits
            yield
            return
        self._batched = []
        try:
            yield
        finally:
            batched, self._batched = self._batched, None
            if batched:
                self._write(lambda conn: [fn(conn) for fn in batched])

    def _write(self, fn: Callable[[sqlite3.Connection], object]) -> bool:
        if self.readonly:
            raise RuntimeError(f"{self.path}: opened with create=False (read-only)")
        if self._batched is not None:
            self._batched.append(fn)
            return True
        with self._lock:
            conn = self._conn
            if conn is None:  # closed
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            try:
                conn.execute("BEGIN IMMEDIATE")
                fn(conn)
                conn.execute("COMMIT")
                return True
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                    exc, sqlite3.ProgrammingError
                ):
                    log.warning("%s: cannot update the stat cache (%s)", self.path, exc)
                    return False
                raise
