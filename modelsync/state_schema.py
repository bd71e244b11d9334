"""state.db on disk: its schema and versions, the migration of an older one, and opening
it writable (created, migrated, or rebuilt when corrupt) or read-only (writing nothing).

The queries live in state.py; this module only knows how the file is laid out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import urllib.parse
from pathlib import Path

log = logging.getLogger("modelsync.state")

SCHEMA_VERSION = 2  # 2: + pins (learned pins); a version 1 database is migrated in place
BUSY_TIMEOUT_S = 30.0

COLUMNS = ("path", "size", "mtime_ns", "inode", "device", "sha256", "xxh3_128", "verified_at")
_SCHEMA = """
CREATE TABLE files (
    path        TEXT    NOT NULL PRIMARY KEY,  -- POSIX path relative to root
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    inode       INTEGER NOT NULL,              -- u64 stored as two's-complement i64
    device      INTEGER NOT NULL,              -- u64 stored as two's-complement i64
    sha256      TEXT    NOT NULL,              -- lowercase hex
    xxh3_128    TEXT    NOT NULL,              -- lowercase hex
    verified_at REAL    NOT NULL               -- unix time of the record
) WITHOUT ROWID
"""
PIN_COLUMNS = ("path", "size", "sha256", "xxh3_128", "learned_at")
_PINS_SCHEMA = """
CREATE TABLE pins (
    path        TEXT    NOT NULL PRIMARY KEY,  -- POSIX path relative to root
    size        INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,              -- lowercase hex
    xxh3_128    TEXT    NOT NULL,              -- lowercase hex
    learned_at  REAL    NOT NULL               -- unix time of the download
) WITHOUT ROWID
"""


def _uri(db: Path, **params: str) -> str:
    return f"file:{urllib.parse.quote(str(db.absolute()))}?{urllib.parse.urlencode(params)}"


def _connect(target: str, *, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,  # autocommit; transactions are explicit
        check_same_thread=False,  # guarded by StateDB._lock
        uri=uri,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """1 or 2 when the database holds exactly that version's tables with our columns."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    tables = {2: ["files", "pins"], 1: ["files"]}.get(version)
    objects = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    if tables is None or objects != [("table", t) for t in tables]:
        return None
    expected = {"files": COLUMNS, "pins": PIN_COLUMNS}
    for table in tables:
        columns = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall())
        if columns != expected[table]:
            return None
    return int(version)


def _schema_ok(conn: sqlite3.Connection) -> bool:
    """Our schema version, exactly our tables with our columns."""
    return _schema_version(conn) == SCHEMA_VERSION


def has_pins(conn: sqlite3.Connection) -> bool:
    try:
        return _schema_version(conn) == SCHEMA_VERSION
    except sqlite3.DatabaseError:
        return False


def open_readonly(db: Path) -> sqlite3.Connection | None:
    if not db.is_file():
        return None
    # mode=ro would create (and leave) state.db-wal/-shm when no writer has the
    # database open; immutable=1 reads the main file only. When a writer is active
    # (-wal present) its recent commits live in the WAL, so join it read-only.
    wal_live = db.with_name(db.name + "-wal").exists()
    conn = None
    try:
        conn = _connect(_uri(db, mode="ro") if wal_live else _uri(db, immutable="1"), uri=True)
        if _schema_version(conn) is not None:  # version 1 too: its stat cache is valid
            return conn
        log.info("%s: not a modelsync %d stat cache; ignoring it", db, SCHEMA_VERSION)
    except sqlite3.DatabaseError as exc:
        log.warning("%s: unreadable stat cache (%s); ignoring it", db, exc)
    if conn is not None:
        conn.close()
    return None


def _init_schema(conn: sqlite3.Connection) -> bool:
    """Create the schema in an empty database; True when the database is usable."""
    conn.execute("PRAGMA journal_mode = WAL")  # "file is not a database" surfaces here
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for a cache
    conn.execute("BEGIN IMMEDIATE")  # serialize concurrent first-time creation
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and objects == 0:
            conn.execute(_SCHEMA)
            conn.execute(_PINS_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            ok = True
        elif _schema_version(conn) == 1:  # migrate: keep the cache, add the learned pins
            conn.execute(_PINS_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            ok = conn.execute("PRAGMA quick_check(1)").fetchone() == ("ok",)
        else:
            ok = _schema_ok(conn) and conn.execute("PRAGMA quick_check(1)").fetchone() == ("ok",)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT" if ok else "ROLLBACK")
    return ok


def _move_aside(db: Path) -> None:
    """state.db (and its WAL, which belongs to it) -> state.db.corrupt; drop -shm."""
    aside = db.with_name(db.name + ".corrupt")
    for suffix in ("", "-wal"):
        src = db.with_name(db.name + suffix)
        dst = aside.with_name(aside.name + suffix)
        if src.exists():
            os.replace(src, dst)
        else:
            dst.unlink(missing_ok=True)
    for suffix in ("-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def _not_the_files_fault(exc: sqlite3.DatabaseError) -> bool:
    """A full disk (SQLITE_FULL), an I/O error or a read-only file system says nothing
    about the database: moving it aside would lose the learned pins for nothing."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    return code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY)


def open_writable(db: Path) -> sqlite3.Connection:
    db.parent.mkdir(parents=True, exist_ok=True)
    problem = ""
    for attempt in range(2):
        conn = None
        try:
            conn = _connect(str(db), uri=False)
            if _init_schema(conn):
                return conn
            problem = "a foreign database or another schema version"
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
            if _not_the_files_fault(exc):  # a full or read-only disk: the file is fine
                if conn is not None:
                    conn.close()
                break
        if conn is not None:
            conn.close()
        if attempt == 0:
            log.warning("%s: %s; moving it aside and starting an empty stat cache", db, problem)
            try:
                _move_aside(db)
            except OSError as exc:
                problem = f"cannot move it aside: {exc}"
                break
    log.warning("%s: unusable (%s); using an in-memory stat cache for this run", db, problem)
    conn = _connect(":memory:", uri=False)
    with contextlib.suppress(sqlite3.DatabaseError):
        _init_schema(conn)
    return conn
