from __future__ import annotations

import builtins
import inspect
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from modelsync.hashing import FileHashes, hash_file
from modelsync.layout import OWN_DIR
from modelsync.layout import STATE_DB as DB_NAME
from modelsync.state import SCHEMA_VERSION, Row, StateDB

_EXTRA_FIELDS = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


def fake_stat(st: os.stat_result, **changes: int) -> os.stat_result:
    """A copy of `st` with some fields replaced (st_ino, st_dev, st_size, st_mtime_ns)."""
    seq = list(st)  # st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, atime...
    index = {"st_ino": 1, "st_dev": 2, "st_size": 6}
    extra: dict[str, Any] = {name: getattr(st, name) for name in _EXTRA_FIELDS}
    for name, value in changes.items():
        if name in index:
            seq[index[name]] = value
        else:
            extra[name] = value
    return os.stat_result(seq, extra)


def make_file(
    root: Path, rel: str, data: bytes = b"model bytes"
) -> tuple[os.stat_result, FileHashes]:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    st = os.stat(p)  # taken before hashing, as callers must
    return st, hash_file(p)


def listing(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return sorted(out)


def db_path(root: Path) -> Path:
    return root / OWN_DIR / DB_NAME


# ---- hits and misses ---------------------------------------------------------------------


def test_record_then_lookup_hit(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "checkpoints/a.safetensors")
    before = time.time()
    with StateDB.open(tmp_path, create=True) as db:
        assert db.lookup("checkpoints/a.safetensors", st) is None
        assert db.record("checkpoints/a.safetensors", st, h)
        row = db.lookup(
            "checkpoints/a.safetensors", os.stat(tmp_path / "checkpoints/a.safetensors")
        )
    assert row is not None
    assert row.hashes == h
    assert (row.sha256, row.xxh3_128, row.size) == (h.sha256, h.xxh3_128, h.size)
    assert (row.inode, row.device, row.mtime_ns) == (st.st_ino, st.st_dev, st.st_mtime_ns)
    assert before <= row.verified_at <= time.time()
    # persisted: a new process-level open (read-only) sees it too
    with StateDB.open(tmp_path, create=False) as db:
        assert db.lookup("checkpoints/a.safetensors", st) == row


def test_touching_mtime_misses(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        os.utime(tmp_path / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        assert db.lookup("a.bin", os.stat(tmp_path / "a.bin")) is None
        os.utime(tmp_path / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert db.lookup("a.bin", os.stat(tmp_path / "a.bin")) is not None


def test_replaced_file_same_size_and_mtime_misses(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin", b"original!")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        new = tmp_path / "a.new"
        new.write_bytes(b"tampered!")  # same size; created while a.bin exists: new inode
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(new, tmp_path / "a.bin")
        st2 = os.stat(tmp_path / "a.bin")
        assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert st2.st_ino != st.st_ino
        assert db.lookup("a.bin", st2) is None


def test_truncated_file_misses(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin", b"x" * 1000)
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        os.truncate(tmp_path / "a.bin", 10)
        os.utime(tmp_path / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))  # even with mtime kept
        assert db.lookup("a.bin", os.stat(tmp_path / "a.bin")) is None


def test_every_key_field_must_match(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        assert db.lookup("a.bin", fake_stat(st)) is not None
        for change in (
            {"st_dev": st.st_dev + 1},
            {"st_ino": st.st_ino + 1},
            {"st_size": st.st_size + 1},
            {"st_mtime_ns": st.st_mtime_ns - 1},
        ):
            assert db.lookup("a.bin", fake_stat(st, **change)) is None, change
        assert db.lookup("other.bin", st) is None


def test_64bit_unsigned_inode_and_device(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    big = fake_stat(st, st_ino=2**64 - 5, st_dev=2**63 + 7)
    with StateDB.open(tmp_path, create=True) as db:
        assert db.record("a.bin", big, h)
        row = db.lookup("a.bin", big)
        assert row is not None
        assert (row.inode, row.device) == (2**64 - 5, 2**63 + 7)
        assert db.lookup("a.bin", fake_stat(big, st_ino=2**63 - 5)) is None


def test_lookup_never_reads_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # By construction: lookup gets the caller's stat result, not a path to stat or open.
    assert list(inspect.signature(StateDB.lookup).parameters) == ["self", "relpath", "st"]
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        opened: list[object] = []
        real_open, real_os_open = builtins.open, os.open

        def spy_open(*args: Any, **kwargs: Any) -> Any:
            opened.append(args[0])
            return real_open(*args, **kwargs)

        def spy_os_open(*args: Any, **kwargs: Any) -> int:
            opened.append(args[0])
            return real_os_open(*args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(os, "open", spy_os_open)
        # the file is gone: a hit can only come from the cache and the given stat
        (tmp_path / "a.bin").unlink()
        assert db.lookup("a.bin", st) is not None
        rows = db.get_many(["a.bin"])
        assert rows["a.bin"].matches(st)
        monkeypatch.undo()
    assert opened == []


def test_record_refuses_when_size_changed_during_hashing(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    p.write_bytes(b"12345")
    st = os.stat(p)
    with p.open("ab") as f:
        f.write(b"678")  # a writer appended after the stat
    h = hash_file(p)
    with StateDB.open(tmp_path, create=True) as db:
        assert db.record("a.bin", st, h) is False
        assert db.get_many() == {}


def test_get_many_one_query_keyed_as_given(tmp_path: Path) -> None:
    with StateDB.open(tmp_path, create=True) as db:
        items = []
        for i in range(50):
            st, h = make_file(tmp_path, f"d{i % 3}/f{i}.bin", str(i).encode())
            items.append((f"d{i % 3}/f{i}.bin", st, h))
        assert db.record_many(items) == 50
        everything = db.get_many()
        assert set(everything) == {rel for rel, _, _ in items}
        some = db.get_many(["d0/f0.bin", "./d1/f1.bin", PurePosixPath("d2/f2.bin"), "nope.bin"])
        assert set(some) == {"d0/f0.bin", "./d1/f1.bin", "d2/f2.bin"}
        assert some["./d1/f1.bin"].path == "d1/f1.bin"
        for rel, st, h in items:
            assert everything[rel].matches(st) and everything[rel].hashes == h


def test_forget_and_overwrite(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin", b"one")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        st2, h2 = make_file(tmp_path, "a.bin", b"two")
        db.record("a.bin", st2, h2)
        assert len(db.get_many()) == 1
        row = db.lookup("a.bin", st2)
        assert row is not None and row.hashes == h2
        db.forget("a.bin")
        db.forget("never-recorded.bin")
        assert db.lookup("a.bin", st2) is None
        assert db.get_many() == {}


def test_relpath_validation(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as db:
        for bad in ("/etc/passwd", "../a.bin", "x/../../a.bin", "", "."):
            with pytest.raises(ValueError):
                db.record(bad, st, h)
            with pytest.raises(ValueError):
                db.lookup(bad, st)


# ---- create=False ------------------------------------------------------------------------


def test_readonly_on_fresh_root_creates_nothing(tmp_path: Path) -> None:
    make_file(tmp_path, "a.bin")
    before = listing(tmp_path)
    with StateDB.open(tmp_path, create=False) as db:
        assert db.get_many() == {}
        assert db.lookup("a.bin", os.stat(tmp_path / "a.bin")) is None
        with pytest.raises(RuntimeError):
            db.record("a.bin", *make_file(tmp_path, "b.bin"))
    (tmp_path / "b.bin").unlink()
    assert listing(tmp_path) == before
    assert not (tmp_path / OWN_DIR).exists()


def test_readonly_on_existing_db_writes_nothing(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
    before = listing(tmp_path)
    with StateDB.open(tmp_path, create=False) as db:
        assert db.lookup("a.bin", st) is not None
        with pytest.raises(RuntimeError):
            db.forget("a.bin")
    assert listing(tmp_path) == before  # no -wal/-shm left behind, db untouched


def test_readonly_sees_a_live_writer(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as writer:
        writer.record("a.bin", st, h)  # committed, still in the WAL
        with StateDB.open(tmp_path, create=False) as reader:
            assert reader.lookup("a.bin", st) is not None
            st2, h2 = make_file(tmp_path, "b.bin")
            writer.record("b.bin", st2, h2)
            assert set(reader.get_many()) == {"a.bin", "b.bin"}


def test_readonly_ignores_corrupt_db_without_touching_it(tmp_path: Path) -> None:
    db_path(tmp_path).parent.mkdir()
    garbage = os.urandom(8192)
    db_path(tmp_path).write_bytes(garbage)
    before = listing(tmp_path)
    with StateDB.open(tmp_path, create=False) as db:
        assert db.get_many() == {}
        assert db.lookup("a.bin", os.stat(tmp_path)) is None
    assert listing(tmp_path) == before
    assert db_path(tmp_path).read_bytes() == garbage


# ---- damaged databases -------------------------------------------------------------------


def _check_rebuilt(root: Path) -> None:
    st, h = make_file(root, "a.bin")
    with StateDB.open(root, create=True) as db:
        assert db.get_many() == {}
        assert db.record("a.bin", st, h)
    with StateDB.open(root, create=True) as db:
        assert db.lookup("a.bin", st) is not None
    conn = sqlite3.connect(db_path(root))
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


@pytest.mark.parametrize("size", [1, 100, 8192])
def test_garbage_db_is_moved_aside_and_rebuilt(tmp_path: Path, size: int) -> None:
    db_path(tmp_path).parent.mkdir()
    garbage = b"\x13" + os.urandom(size - 1)
    db_path(tmp_path).write_bytes(garbage)
    _check_rebuilt(tmp_path)
    aside = db_path(tmp_path).with_name(DB_NAME + ".corrupt")
    if size >= 100:  # SQLite itself treats a file shorter than its header as empty
        assert aside.read_bytes() == garbage


def test_foreign_db_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    db_path(tmp_path).parent.mkdir()
    conn = sqlite3.connect(db_path(tmp_path))
    conn.execute("CREATE TABLE precious (x)")
    conn.execute("INSERT INTO precious VALUES (42)")
    conn.commit()
    conn.close()
    _check_rebuilt(tmp_path)
    aside = sqlite3.connect(db_path(tmp_path).with_name(DB_NAME + ".corrupt"))
    try:
        assert aside.execute("SELECT x FROM precious").fetchall() == [(42,)]
    finally:
        aside.close()


@pytest.mark.parametrize(
    "ddl",
    [
        # our table, another schema version
        "CREATE TABLE files (path TEXT PRIMARY KEY, size, mtime_ns, inode, device,"
        " sha256, xxh3_128, verified_at); PRAGMA user_version = 99",
        # our version number, other columns
        "CREATE TABLE files (path TEXT PRIMARY KEY, sha256);"
        f" PRAGMA user_version = {SCHEMA_VERSION}",
        # our table plus a foreign one
        "CREATE TABLE files (path TEXT PRIMARY KEY, size, mtime_ns, inode, device, sha256,"
        f" xxh3_128, verified_at); CREATE TABLE x (y); PRAGMA user_version = {SCHEMA_VERSION}",
    ],
    ids=["version", "columns", "extra-table"],
)
def test_schema_mismatch_is_rebuilt(tmp_path: Path, ddl: str) -> None:
    db_path(tmp_path).parent.mkdir()
    conn = sqlite3.connect(db_path(tmp_path))
    conn.executescript(ddl)
    conn.close()
    with StateDB.open(tmp_path, create=False) as db:  # read-only: ignored, not fatal
        assert db.get_many() == {}
    _check_rebuilt(tmp_path)


def test_empty_file_is_a_fresh_db(tmp_path: Path) -> None:
    db_path(tmp_path).parent.mkdir()
    db_path(tmp_path).write_bytes(b"")
    _check_rebuilt(tmp_path)
    assert not db_path(tmp_path).with_name(DB_NAME + ".corrupt").exists()


def test_wal_of_a_foreign_db_moves_aside_with_it(tmp_path: Path) -> None:
    """A foreign database's uncheckpointed WAL must neither be lost nor leak into ours."""
    db_path(tmp_path).parent.mkdir()
    live = tmp_path / "live"
    live.mkdir()
    conn = sqlite3.connect(live / DB_NAME)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE precious (x)")
    conn.execute("INSERT INTO precious VALUES (7)")
    conn.commit()
    # snapshot the files while the writer is open: the rows are only in the WAL
    for suffix in ("", "-wal"):
        src = live / (DB_NAME + suffix)
        db_path(tmp_path).with_name(DB_NAME + suffix).write_bytes(src.read_bytes())
    conn.close()
    assert db_path(tmp_path).with_name(DB_NAME + "-wal").stat().st_size > 0
    _check_rebuilt(tmp_path)
    aside = sqlite3.connect(db_path(tmp_path).with_name(DB_NAME + ".corrupt"))
    try:
        assert aside.execute("SELECT x FROM precious").fetchall() == [(7,)]
    finally:
        aside.close()


# ---- concurrency -------------------------------------------------------------------------


def _writer(root: Path, prefix: str, n: int, barrier: Any) -> None:
    """Runs in a child process: n single-row transactions, with reads and deletes mixed in."""
    st = os.stat(root / "f.bin")
    h = FileHashes(st.st_size, "a" * 64, "b" * 32)
    with StateDB.open(root, create=True) as db:
        barrier.wait(timeout=60)
        for i in range(n):
            assert db.record(f"{prefix}/{i}.bin", st, h)
            if i % 10 == 0:
                db.forget(f"{prefix}/gone.bin")
                assert f"{prefix}/{i}.bin" in db.get_many([f"{prefix}/{i}.bin"])


def test_two_processes_write_while_a_third_reads(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"abc")
    n = 300
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_writer, args=(tmp_path, prefix, n, barrier)) for prefix in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(
            timeout=60
        )  # both writers have the database open (fresh, created concurrently)
        counts = []
        while any(p.is_alive() for p in procs):  # read concurrently, read-only like `plan`
            with StateDB.open(tmp_path, create=False) as ro:
                counts.append(len(ro.get_many()))
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counts == sorted(counts)  # every read saw a consistent, growing table
    with StateDB.open(tmp_path, create=False) as ro:
        assert len(ro.get_many()) == 2 * n


def test_threads_share_one_db(tmp_path: Path) -> None:
    st, _ = make_file(tmp_path, "f.bin")
    h = FileHashes(st.st_size, "a" * 64, "b" * 32)
    errors: list[BaseException] = []
    with StateDB.open(tmp_path, create=True) as db:

        def work(t: int) -> None:
            try:
                for i in range(100):
                    db.record(f"t{t}/{i}", st, h)
                    db.lookup(f"t{t}/{i}", st)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        rows = db.get_many()
    assert len(rows) == 400
    assert all(isinstance(r, Row) for r in rows.values())


def test_write_failure_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st, h = make_file(tmp_path, "a.bin")
    with StateDB.open(tmp_path, create=True) as db:
        db.record("a.bin", st, h)
        assert db._conn is not None
        db._conn.execute(
            "CREATE TEMP TRIGGER fail BEFORE INSERT ON files"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
        st2, h2 = make_file(tmp_path, "b.bin")
        assert db.record("b.bin", st2, h2) is False
        assert "disk on fire" in caplog.text
        assert not db._conn.in_transaction
        db.forget("a.bin")  # still usable
        assert db.get_many() == {}


def test_closed_db_raises(tmp_path: Path) -> None:
    db = StateDB.open(tmp_path, create=True)
    db.close()
    db.close()  # idempotent
    st, h = make_file(tmp_path, "a.bin")
    with pytest.raises(sqlite3.ProgrammingError):
        db.record("a.bin", st, h)


# ---- learned pins and the version 1 migration ----------------------------------------------

V1_DDL = (
    "CREATE TABLE files (path TEXT NOT NULL PRIMARY KEY, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, device INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL, xxh3_128 TEXT NOT NULL, verified_at REAL NOT NULL) WITHOUT ROWID;"
    " PRAGMA user_version = 1"
)


def test_a_learned_pin_is_not_tied_to_the_stat(tmp_path: Path) -> None:
    _st, h = make_file(tmp_path, "d/a.bin", b"first bytes")
    with StateDB.open(tmp_path, create=True) as db:
        assert db.learned_pins(["d/a.bin", "d/other.bin"]) == {}
        assert db.learn("d/a.bin", h)
    make_file(tmp_path, "d/a.bin", b"other bytes, longer")  # rewritten: the pin stays
    with StateDB.open(tmp_path, create=False) as db:
        pins = db.learned_pins([PurePosixPath("d/a.bin"), "d/other.bin"])
    assert list(pins) == ["d/a.bin"] and pins["d/a.bin"].hashes == h


def test_a_version_1_db_is_migrated_in_place_keeping_its_rows(tmp_path: Path) -> None:
    st, h = make_file(tmp_path, "a.bin")
    db_path(tmp_path).parent.mkdir(exist_ok=True)
    conn = sqlite3.connect(db_path(tmp_path))
    conn.executescript(V1_DDL)
    conn.execute(
        "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("a.bin", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, h.sha256, h.xxh3_128, 1.0),
    )
    conn.commit()
    conn.close()
    before = listing(tmp_path)
    with StateDB.open(tmp_path, create=False) as db:  # read-only: read as it is
        assert db.lookup("a.bin", st) is not None
        assert db.learned_pins(["a.bin"]) == {}
    assert listing(tmp_path) == before
    with StateDB.open(tmp_path, create=True) as db:
        assert db.lookup("a.bin", st) is not None  # the cache survived the migration
        assert db.learn("a.bin", h)
    assert not db_path(tmp_path).with_name(DB_NAME + ".corrupt").exists()
    with StateDB.open(tmp_path, create=False) as db:
        assert db.learned_pins(["a.bin"])["a.bin"].hashes == h
    conn = sqlite3.connect(db_path(tmp_path))
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)
    finally:
        conn.close()
