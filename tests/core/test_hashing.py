from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
import xxhash

from modelsync.hashing import (
    DEFAULT_BUFFER_SIZE,
    FileHashes,
    PrefixHasher,
    hash_file,
    hash_files,
)

BUF = 64  # small buffer so that multi-buffer cases stay tiny


def reference(data: bytes) -> FileHashes:
    return FileHashes(
        len(data), hashlib.sha256(data).hexdigest(), xxhash.xxh3_128(data).hexdigest()
    )


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "size",
    [0, 1, BUF - 1, BUF, BUF + 1, 2 * BUF, 7 * BUF + 13],
    ids=["empty", "1-byte", "buf-1", "buf", "buf+1", "2buf", "multi"],
)
def test_hash_file_matches_reference(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    p = write(tmp_path, "f.bin", data)
    assert hash_file(p, buffer_size=BUF) == reference(data)


def test_known_values_of_empty_file(tmp_path: Path) -> None:
    h = hash_file(write(tmp_path, "empty", b""))
    assert h.size == 0
    assert h.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert h.xxh3_128 == xxhash.xxh3_128(b"").hexdigest()
    assert len(h.xxh3_128) == 32
    assert h.sha256 == h.sha256.lower() and h.xxh3_128 == h.xxh3_128.lower()


def test_default_buffer_multi_buffer_file(tmp_path: Path) -> None:
    data = os.urandom(DEFAULT_BUFFER_SIZE * 2 + 12345)
    p = write(tmp_path, "big.bin", data)
    assert hash_file(p) == reference(data)


def test_progress_reports_increments(tmp_path: Path) -> None:
    data = os.urandom(5 * BUF + 3)
    p = write(tmp_path, "f.bin", data)
    seen: list[int] = []
    hash_file(p, buffer_size=BUF, progress=seen.append)
    assert seen == [BUF] * 5 + [3]
    assert sum(seen) == len(data)


def test_progress_exception_aborts(tmp_path: Path) -> None:
    p = write(tmp_path, "f.bin", os.urandom(10 * BUF))
    calls = 0

    class Stop(Exception):
        pass

    def progress(_n: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Stop

    with pytest.raises(Stop):
        hash_file(p, buffer_size=BUF, progress=progress)
    assert calls == 2


def test_hash_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        hash_file(tmp_path)
    with pytest.raises(ValueError):
        hash_file(write(tmp_path, "f", b"x"), buffer_size=0)


def test_hash_files_parallel_equals_serial(tmp_path: Path) -> None:
    paths = [write(tmp_path, f"f{i}", os.urandom(i * 37 + (i % 3) * BUF)) for i in range(12)]
    parallel = hash_files(paths, workers=4, buffer_size=BUF)
    serial = hash_files(paths, workers=1, buffer_size=BUF)
    assert list(parallel) == paths  # input order
    assert parallel == serial
    for p in paths:
        assert parallel[p] == reference(p.read_bytes())


def test_hash_files_default_workers_and_str_paths(tmp_path: Path) -> None:
    paths = [str(write(tmp_path, f"f{i}", os.urandom(100 * i))) for i in range(5)]
    out = hash_files(paths)
    assert set(out) == set(paths)
    assert all(out[p] == reference(Path(p).read_bytes()) for p in paths)


def test_hash_files_error_entry_does_not_stop_others(tmp_path: Path) -> None:
    good = [write(tmp_path, f"g{i}", os.urandom(3 * BUF + i)) for i in range(4)]
    missing = tmp_path / "missing.bin"
    a_dir = tmp_path / "sub"
    a_dir.mkdir()
    paths = [good[0], missing, good[1], a_dir, good[2], good[3]]
    for workers in (1, 3):
        out = hash_files(paths, workers=workers, buffer_size=BUF)
        assert list(out) == paths
        assert isinstance(out[missing], FileNotFoundError)
        assert isinstance(out[a_dir], IsADirectoryError)
        for g in good:
            assert out[g] == reference(g.read_bytes())


def test_hash_files_empty_and_duplicates(tmp_path: Path) -> None:
    assert hash_files([]) == {}
    p = write(tmp_path, "f", b"abc")
    assert hash_files([p, p, p], workers=2) == {p: reference(b"abc")}


def test_hash_files_progress_exception_stops_everything(tmp_path: Path) -> None:
    paths = [write(tmp_path, f"f{i}", os.urandom(50 * BUF)) for i in range(8)]
    lock = threading.Lock()
    calls = 0

    class Stop(Exception):
        pass

    def progress(_n: int) -> None:
        nonlocal calls
        with lock:
            calls += 1
            if calls == 3:
                raise Stop

    with pytest.raises(Stop):
        hash_files(paths, workers=2, buffer_size=BUF, progress=progress)
    # the other worker stopped at its next buffer instead of hashing all 8 files
    assert calls < 8 * 50


def test_hash_files_progress_total(tmp_path: Path) -> None:
    paths = [write(tmp_path, f"f{i}", os.urandom(i * BUF + 5)) for i in range(6)]
    lock = threading.Lock()
    total = 0

    def progress(n: int) -> None:
        nonlocal total
        with lock:
            total += n

    hash_files(paths, workers=3, buffer_size=BUF, progress=progress)
    assert total == sum(p.stat().st_size for p in paths)


def test_a_prefix_hasher_refuses_a_file_replaced_under_it(tmp_path: Path) -> None:
    # The folder of a download removed and the file made again by aria2 (holes where the
    # hashed prefix was): the prefix's hash must not vouch for the new file's bytes.
    data = os.urandom(3 * 65536)
    path = tmp_path / "partial.bin"
    path.write_bytes(data)
    hasher = PrefixHasher(path)
    hasher.advance(65536)
    path.unlink()
    path.write_bytes(bytes(65536) + data[65536:])
    with pytest.raises(OSError, match="replaced"):
        hasher.finish(len(data))


def test_a_prefix_hasher_of_a_growing_file_matches_one_pass(tmp_path: Path) -> None:
    data = os.urandom(3 * 65536 + 7)
    path = tmp_path / "partial.bin"
    with open(path, "wb") as f:
        f.write(data[:65536])
        f.flush()
        hasher = PrefixHasher(path)
        hasher.advance(65536)
        f.write(data[65536:])
    assert hasher.finish(len(data)) == hash_file(path)
