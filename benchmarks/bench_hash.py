"""Hashing throughput: sha256 + xxh3_128 in one pass vs hashlib.sha256 alone (SPEC §7).

    python benchmarks/bench_hash.py [--file F] [--size-mib 1024] [--repeat 3]
                                    [--buffer-sizes 1,4,8,16] [--no-parallel]

Everything runs in this one process on the same file. Each measurement is the best
of --repeat runs; runs of the different methods are interleaved so that a burst of
load from elsewhere hits them alike. The file is read once before timing, so all
numbers are warm page-cache numbers (hashing cost, not disk speed).

Methods, per buffer size:
  sha256      hashlib.sha256 alone, readinto() a reused buffer (the baseline)
  xxh3_128    xxhash.xxh3_128 alone, same loop
  hash_file   modelsync.hashing.hash_file: both digests, one read pass (serial)
  pipelined   reference only, not used by modelsync: a helper thread reads and runs
              xxh3 into two alternating buffers while the caller runs sha256

Then hash_files on 4 files of size/4 each: workers=1 vs workers=os.cpu_count().
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelsync.hashing import DEFAULT_BUFFER_SIZE, hash_file, hash_files

MiB = 1 << 20
TARGET = 0.90


def write_file(path: Path, size: int) -> None:
    chunk = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def warm(path: Path) -> None:
    """Read the whole file once so that every timed run reads from the page cache."""
    buf = memoryview(bytearray(8 * MiB))
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def sha256_alone(path: Path, bufsize: int) -> str:
    view = memoryview(bytearray(bufsize))
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def xxh3_alone(path: Path, bufsize: int) -> str:
    view = memoryview(bytearray(bufsize))
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def ours(path: Path, bufsize: int) -> str:
    return hash_file(path, buffer_size=bufsize).sha256


def pipelined(path: Path, bufsize: int) -> str:
    free: queue.Queue[memoryview] = queue.Queue()
    full: queue.Queue[tuple[memoryview, memoryview] | None] = queue.Queue()
    for _ in range(2):
        free.put(memoryview(bytearray(bufsize)))
    sha = hashlib.sha256()
    xxh = xxhash.xxh3_128()

    def reader() -> None:
        with open(path, "rb", buffering=0) as f:
            while True:
                buf = free.get()
                n = f.readinto(buf)
                if not n:
                    full.put(None)
                    return
                chunk = buf[:n]
                xxh.update(chunk)
                full.put((buf, chunk))

    t = threading.Thread(target=reader)
    t.start()
    while (item := full.get()) is not None:
        buf, chunk = item
        sha.update(chunk)
        free.put(buf)
    t.join()
    return sha.hexdigest()


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--file", type=Path, help="hash this file instead of a generated one")
    ap.add_argument("--size-mib", type=int, default=1024, help="generated file size (1024)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (3)")
    ap.add_argument("--buffer-sizes", default="1,4,8,16", help="MiB, comma-separated (1,4,8,16)")
    ap.add_argument("--no-parallel", action="store_true", help="skip the hash_files part")
    ap.add_argument("--tmpdir", type=Path, help="where to create the test files")
    args = ap.parse_args()
    sizes = [int(float(s) * MiB) for s in args.buffer_sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_hash-", dir=args.tmpdir) as tmp:
        path = args.file or Path(tmp) / "big.bin"
        if args.file is None:
            write_file(path, args.size_mib * MiB)
        size = path.stat().st_size
        warm(path)
        assert sha256_alone(path, MiB) == ours(path, MiB) == pipelined(path, MiB)
        print(f"file: {path} ({size / MiB:.0f} MiB), warm page cache (read once before timing)")
        print(f"cpus: {os.cpu_count()}, best of {args.repeat}, methods interleaved")
        print(
            f"python {sys.version.split()[0]}, xxhash {xxhash.VERSION}, default buffer "
            f"{DEFAULT_BUFFER_SIZE // MiB} MiB"
        )
        print()
        header = f"{'buffer':>8} {'sha256':>9} {'xxh3_128':>9} {'hash_file':>10} {'pipelined':>10}"
        print(header + f" {'ours/sha256':>12} {'pipe/sha256':>12}   (MB/s)")
        best_sha = 0.0
        ratio_default = ours_default = 0.0
        for bs in sizes:
            t = best_of(
                {
                    "sha": partial(sha256_alone, path, bs),
                    "xxh": partial(xxh3_alone, path, bs),
                    "ours": partial(ours, path, bs),
                    "pipe": partial(pipelined, path, bs),
                },
                args.repeat,
            )
            r = {k: mbps(size, v) for k, v in t.items()}
            ratio = r["ours"] / r["sha"]
            best_sha = max(best_sha, r["sha"])
            mark = " *" if bs == DEFAULT_BUFFER_SIZE else ""
            if bs == DEFAULT_BUFFER_SIZE:
                ratio_default = ratio
                ours_default = r["ours"]
            print(
                f"{bs / MiB:>6g}Mi {r['sha']:>9.0f} {r['xxh']:>9.0f} {r['ours']:>10.0f}"
                f" {r['pipe']:>10.0f} {ratio:>12.3f} {r['pipe'] / r['sha']:>12.3f}{mark}",
                flush=True,
            )
        if ratio_default:
            verdict = "met" if ratio_default >= TARGET else "NOT met"
            print(
                f"\n* default buffer: hash_file/sha256 = {ratio_default:.3f} (target >= {TARGET}:"
                f" {verdict}); vs sha256 at its best buffer size: {ours_default / best_sha:.3f}"
            )

        if not args.no_parallel:
            part = max(size // 4, 1)
            files = [Path(tmp) / f"part{i}.bin" for i in range(4)]
            for f in files:
                write_file(f, part)
                warm(f)
            cpus = os.cpu_count() or 1
            t = best_of(
                {
                    "serial": lambda: hash_files(files, workers=1),
                    "parallel": lambda: hash_files(files),
                },
                args.repeat,
            )
            total = part * 4
            print(f"\nhash_files, 4 files x {part / MiB:.0f} MiB (warm cache):")
            print(f"  workers=1        {mbps(total, t['serial']):7.0f} MB/s  {t['serial']:.2f} s")
            print(
                f"  workers={cpus:<8d}{mbps(total, t['parallel']):7.0f} MB/s  {t['parallel']:.2f} s"
                f"  speedup {t['serial'] / t['parallel']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
