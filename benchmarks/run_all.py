"""Run every benchmark (SPEC §7) and print their tables: `make bench`.

    python benchmarks/run_all.py [--only hash,noop,noop100k,download,small,repo,fleet,scaling]
                                 [--repeat N]
                                 [--size-mib 1024] [--hash-size-mib 1024] [--files 10000]
                                 [--hash-args "..."] [--noop-args "..."]
                                 [--download-args "..."] [--fleet-args "..."] [--save FILE]

Runs, one after the other, each in its own process (so that one's page cache, threads
and children never overlap another's timing):

  bench_hash.py      sha256 + xxh3_128 in one pass vs hashlib sha256 alone
  bench_noop.py      no-op plan/apply on 10,000 synced files: time, RSS, no reads
  noop100k           the same on 100,000 files (bench_noop.py --files 100000, once)
  bench_download.py  1 GiB through nginx: capped (vs curl) and loopback (vs aria2c)
  bench_small.py     500 files of 64 KiB: modelsync vs aria2c -j16 -i
  bench_repo.py      a 40-file Hugging Face repository on a capped CDN vs snapshot_download
  bench_fleet.py     8 machines: from a capped origin alone, or the origin once and then
                     an exported mirror (origin bytes / set size; about 1 minute)
  bench_scaling.py   the plots of docs/ (time vs files, vs size; RSS vs entries)

Their output streams through as it comes; a summary of the verdict lines follows.
`--repeat` (fleet, noop100k and scaling run once), `--size-mib` (download),
`--hash-size-mib`, `--files` (noop) are passed on; anything else goes through
`--<name>-args "..."`, e.g. `--download-args "--hf --rate 8m"`.
bench_hash gets `--buffer-sizes 1,4` unless --hash-args names buffer sizes itself.
`--save FILE` also writes everything as Markdown (machine, commit, each output).
With the defaults the whole run takes about 20-25 minutes on a 2-core machine: curl's
single connection on the capped server (1 GiB at 16 MiB/s: 64 s, twice with --hf),
snapshot_download's repository, building and hashing the 100,000-file root, and the
4 GiB point of the scaling plot. `--only small,repo` is a few minutes.
Exit status: 0 when every target is met, 1 when one is not, 2 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine

HERE = Path(__file__).resolve().parent
# Shorter than the scripts' own defaults: the default hashing buffer (1 MiB) and one more.
DEFAULT_ARGS = {
    "hash": ["--buffer-sizes", "1,4"],
    "noop100k": ["--files", "100000", "--no-strace", "--repeat", "1"],
}
ORDER = ("hash", "noop", "noop100k", "download", "small", "repo", "fleet", "scaling")
SCRIPT = {"noop100k": "noop"}  # a name that runs another script with other arguments
ONCE = ("fleet", "noop100k", "scaling")  # no --repeat: bytes, a 100,000-file root, plots
# A line of a benchmark's output that says whether a target is met.
VERDICT_WORDS = ("targets met:", "target >=", "SKIPPED")
MISSED = re.compile(r"\sNO(\s|$)")  # a table row whose target is not met


def commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + (" (with uncommitted changes)" if dirty else "")


def run(name: str, argv: list[str]) -> tuple[int, str, float]:
    """Run one benchmark, echoing its output; returns exit code, output, seconds."""
    script = f"bench_{SCRIPT.get(name, name)}.py"
    cmd = [sys.executable, str(HERE / script), *argv]
    shown = ["python", f"benchmarks/{script}", *argv]
    print(f"\n{'=' * 100}\n$ {' '.join(shlex.quote(c) for c in shown)}\n", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    return proc.returncode, "".join(lines), time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default=",".join(ORDER), help=f"comma-separated: {','.join(ORDER)}")
    ap.add_argument("--repeat", type=int, help="best of N, for every benchmark (each's default)")
    ap.add_argument("--size-mib", type=int, help="bench_download file size (1024)")
    ap.add_argument("--hash-size-mib", type=int, help="bench_hash file size (1024)")
    ap.add_argument("--files", type=int, help="bench_noop number of files (10000)")
    for name in ORDER:
        ap.add_argument(f"--{name}-args", default="", help=f"more arguments for bench_{name}.py")
    ap.add_argument("--save", type=Path, help="also write the outputs as Markdown to FILE")
    args = ap.parse_args()

    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(ORDER))
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {ORDER}")
    argv: dict[str, list[str]] = {n: shlex.split(getattr(args, f"{n}_args")) for n in ORDER}
    for name, defaults in DEFAULT_ARGS.items():
        if defaults[0] not in argv[name]:
            argv[name] = defaults + argv[name]
    if args.repeat is not None:
        for n in ORDER:
            if n not in ONCE:
                argv[n] += ["--repeat", str(args.repeat)]
    if args.size_mib is not None:
        argv["download"] += ["--size-mib", str(args.size_mib)]
    if args.hash_size_mib is not None:
        argv["hash"] += ["--size-mib", str(args.hash_size_mib)]
    if args.files is not None:
        argv["noop"] += ["--files", str(args.files)]

    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    head = f"machine: {machine()}\ncommit: {commit()}\ndate: {when}"
    print(head, flush=True)
    results: dict[str, tuple[int, str, float]] = {}
    for name in (n for n in ORDER if n in chosen):
        results[name] = run(name, argv[name])

    print(f"\n{'=' * 100}\nsummary ({head.replace(chr(10), '; ')})")
    worst = 0
    for name, (code, output, seconds) in results.items():
        state = {0: "all targets met", 1: "a target is NOT met"}.get(code, f"FAILED (exit {code})")
        if name == "hash" and code == 0 and "NOT met" in output:
            state = "a target is NOT met"  # bench_hash reports its verdict, exits 0
        worst = max(worst, 1 if state.startswith("a target") else 0 if code == 0 else 2)
        print(f"  {name:<12} {seconds:6.0f} s  {state}")
        for line in output.splitlines():
            if any(w in line for w in VERDICT_WORDS) or MISSED.search(line):
                print(f"      {line.strip()}")
    if args.save:
        save(args.save, head, argv, results)
        print(f"\nwritten: {args.save}")
    return worst


def save(
    path: Path, head: str, argv: dict[str, list[str]], results: dict[str, tuple[int, str, float]]
) -> None:
    parts = ["# Benchmark run", "", "```", head, "```", ""]
    for name, (code, output, seconds) in results.items():
        script = f"bench_{SCRIPT.get(name, name)}.py"
        cmd = " ".join(["python", f"benchmarks/{script}", *argv[name]])
        parts += [f"## bench_{name} ({seconds:.0f} s, exit {code})", "", f"`{cmd}`", ""]
        parts += ["```", output.rstrip(), "```", ""]
    path.write_text("\n".join(parts))


if __name__ == "__main__":
    raise SystemExit(main())
