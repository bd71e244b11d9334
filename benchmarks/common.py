"""Shared by the benchmark scripts: timed subprocesses, best-of-N, result tables.

Not a benchmark itself. Scripts run as `python benchmarks/<name>.py` import it as
`from benchmarks.common import ...` after putting the repository root on sys.path.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
# The modelsync of this checkout, as an installed user runs it (console script).
MODELSYNC = [sys.executable, "-m", "modelsync"]


@dataclass(frozen=True)
class Timed:
    """One finished subprocess: wall seconds, exit code, peak RSS (its own and of any
    descendant it waited for, as wait4() reports it), and its output."""

    seconds: float
    returncode: int
    maxrss_mib: float
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system time of the child and what it reaped

    def check(self, what: str) -> Timed:
        if self.returncode != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-15:]
            raise SystemExit(
                f"{what} exited {self.returncode}:\n  " + "\n  ".join(tail or ["(no output)"])
            )
        return self


def run_timed(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Timed:
    """Run `cmd` to completion; wall time from fork to reap (interpreter start included).

    Reaped with wait4(), whose rusage is this child's alone (plus any descendant it
    reaped itself), so ru_maxrss is exactly this run's peak RSS.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Timed(
            elapsed,
            proc.returncode,
            usage.ru_maxrss / 1024,  # KiB on Linux
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_utime + usage.ru_stime,
        )


@dataclass
class Row:
    """One line of a result table."""

    method: str
    seconds: float | None  # None: a row that is not a timing (a count, a size)
    nbytes: int | None = None  # for MB/s
    ratio: float | None = None  # vs the table's baseline
    target: str = ""  # e.g. "<= 1.25x"
    met: bool | None = None  # None: no target on this row
    note: str = ""


def print_table(title: str, rows: Sequence[Row]) -> None:
    print(f"\n{title}")
    header = f"  {'method':<40} {'seconds':>8} {'MB/s':>8} {'ratio':>7}  {'target':<16} {'met?':<5}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in rows:
        secs = f"{r.seconds:.2f}" if r.seconds is not None else ""
        mbps = f"{r.nbytes / r.seconds / 1e6:.0f}" if r.nbytes and r.seconds else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "NO")
        line = f"  {r.method:<40} {secs:>8} {mbps:>8} {ratio:>7}  {r.target:<16} {met:<5}"
        print((line + (f" {r.note}" if r.note else "")).rstrip())
    sys.stdout.flush()


def verdicts(rows: Sequence[Row]) -> list[bool]:
    return [r.met for r in rows if r.met is not None]


def machine() -> str:
    """One line: cores, CPU model, kernel, Python."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cpus ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def have(tool: str) -> str | None:
    return shutil.which(tool)


def apt_install(*packages: str) -> bool:
    """Install the first installable of `packages` with apt-get (root only).

    Returns False, after printing how to install it, when not root or apt fails.
    """
    if not have("apt-get") or os.geteuid() != 0:
        print(
            f"  (not root or no apt-get: install one of {', '.join(packages)} yourself, "
            f"e.g. `sudo apt-get install -y {packages[0]}`)"
        )
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for pkg in packages:
        print(f"  installing {pkg} with apt-get ...", flush=True)
        rc = subprocess.call(
            ["apt-get", "install", "-y", "-q", pkg],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if rc != 0:  # a stale package list: refresh it once
            subprocess.call(
                ["apt-get", "update", "-q"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            rc = subprocess.call(
                ["apt-get", "install", "-y", "-q", pkg],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if rc == 0:
            return True
    print(f"  apt-get could not install {' or '.join(packages)}")
    return False


def add_also_argument(ap: argparse.ArgumentParser) -> None:
    """--also DIR: time a changed copy of modelsync in the same run, interleaved."""
    ap.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also time the modelsync package in DIR (a changed copy; PYTHONPATH=DIR)",
    )
