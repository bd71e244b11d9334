"""How modelsync scales: three plots for docs/ (SPEC §8, issue 13).

    python benchmarks/bench_scaling.py [--quick] [--max-size 1G] [--out docs] [--tmpdir DIR]

  time vs file count   N files of 64 KiB (10 -> 10,000) from nginx on loopback:
                       `modelsync apply` vs `aria2c -j16 -i` (benchmarks/bench_small.py)
  time vs file size    one file (1 MiB -> 4 GiB) from nginx on loopback: `modelsync apply`
                       (end to end, verified) vs `aria2c -x16 -s16` (benchmarks/bench_download.py)
  peak RSS vs entries  no-op `plan --check` and `apply` on a synced root of N files
                       (1,000 -> 100,000; benchmarks/bench_noop.py builds it)

One run per point (they are many; bench_small/bench_download/bench_noop give medians of
repeats for the points SPEC names). Writes docs/scaling-files.png, scaling-size.png and
scaling-rss.png (matplotlib, `pip install -e '.[bench]'`; `make bench` installs it) and
prints every point, then a table of them. `--quick` stops at 1,000 files, 256 MiB and
10,000 entries; `--max-size` drops the sizes above it (e.g. `--max-size 1G`: no 4 GiB file).
The size points need the served file plus one copy of it on disk (8 GiB at 4 GiB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_download import Bench as SizeBench
from benchmarks.bench_download import make_file
from benchmarks.bench_noop import build, dead_port
from benchmarks.bench_small import Small, make_files
from benchmarks.common import MODELSYNC, REPO, MiB, machine, run_timed
from benchmarks.nginx import Nginx, ensure_nginx

COUNTS = (10, 100, 1000, 10_000)
SIZES = (1 * MiB, 16 * MiB, 256 * MiB, 1024 * MiB, 4096 * MiB)
ENTRIES = (1000, 10_000, 100_000)


def by_count(work: Path, nginx: str, counts: tuple[int, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"aria2c -j16 -i": [], "modelsync apply": []}
    for n in counts:
        here = work / f"count-{n}"
        www = here / "www"
        www.mkdir(parents=True)
        names, sums = make_files(www, n, 64 * 1024)
        with Nginx(nginx, www, here / "nginx") as srv:
            bench = Small(here, srv, names, sums)
            out["aria2c -j16 -i"].append(bench.aria2c_list())
            out["modelsync apply"].append(bench.modelsync())
        print(
            f"  {n:>6} files x 64 KiB: aria2c {out['aria2c -j16 -i'][-1]:6.2f} s, "
            f"modelsync {out['modelsync apply'][-1]:6.2f} s",
            flush=True,
        )
        shutil.rmtree(here)
    return out


def by_size(work: Path, nginx: str, sizes: tuple[int, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"aria2c -x16 -s16": [], "modelsync apply": []}
    for size in sizes:
        here = work / f"size-{size}"
        www = here / "www"
        www.mkdir(parents=True)
        sha256 = make_file(www / "big.safetensors", size)
        with Nginx(nginx, www, here / "nginx") as srv:
            bench = SizeBench(argparse.Namespace(), here, size, sha256)
            url = srv.url("fast", "/big.safetensors")
            out["aria2c -x16 -s16"].append(bench.aria2c_raw(url))
            out["modelsync apply"].append(bench.modelsync(url))
        print(
            f"  {size // MiB:>6} MiB: aria2c {out['aria2c -x16 -s16'][-1]:6.2f} s, "
            f"modelsync {out['modelsync apply'][-1]:6.2f} s",
            flush=True,
        )
        shutil.rmtree(here)
    return out


def by_entries(work: Path, entries: tuple[int, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"plan --check": [], "apply": [], "plan s": [], "apply s": []}
    blocker = dead_port()  # every URL points at it: a request would fail
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    env |= {"NO_COLOR": "1"}
    for n in entries:
        here = work / f"entries-{n}"
        here.mkdir()
        manifest = build(here, n, 10, blocker.getsockname()[1])
        run_timed([*MODELSYNC, "verify", str(manifest)], env=env, cwd=here).check("verify")
        for name, cmd in (
            ("plan --check", ["plan", "--check"]),
            ("apply", ["apply", "--no-progress"]),
        ):
            t = run_timed([*MODELSYNC, *cmd, str(manifest)], env=env, cwd=here).check(name)
            out[name].append(t.maxrss_mib)
            out[f"{name.split()[0]} s"].append(t.seconds)
        print(
            f"  {n:>7} entries: plan {out['plan s'][-1]:5.2f} s "
            f"{out['plan --check'][-1]:5.0f} MiB, "
            f"apply {out['apply s'][-1]:5.2f} s {out['apply'][-1]:5.0f} MiB",
            flush=True,
        )
        shutil.rmtree(here)
    blocker.close()
    return out


def parse_size(text: str) -> int:
    """`1G`, `256M`, `4096` (MiB) -> bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 * 1024 * MiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * MiB)


def label(n: int) -> str:
    """A size or count in the table: 64 KiB, 16 MiB, 4 GiB."""
    if n >= 1024 * MiB:
        return f"{n / (1024 * MiB):g} GiB"
    return f"{n / MiB:g} MiB"


def points_table(
    title: str, xs: list[str], series: dict[str, list[float]], ratio: bool = True
) -> None:
    """Every point of one plot; `ratio` is the last series over the first."""
    names = list(series)
    print(f"\n{title}")
    header = f"  {'':>10}" + "".join(f" {n:>18}" for n in names) + (" ratio" if ratio else "")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for i, x in enumerate(xs):
        ys = [series[n][i] if i < len(series[n]) else None for n in names]
        cells = "".join(
            f" {'-' if y is None else f'{y:.2f}' if y < 100 else f'{y:.0f}':>18}" for y in ys
        )
        last, first = ys[-1], ys[0]
        share = f" {last / first:.2f}x" if ratio and first and last is not None else ""
        print(f"  {x:>10}{cells}{share}")
    sys.stdout.flush()


def plot(
    path: Path, title: str, xs: list[int], series: dict[str, list[float]], xlabel: str, ylabel: str
) -> None:
    # Imported once every point is measured: a child forked from a parent that holds
    # matplotlib would report that parent's size as its own peak RSS.
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, ys in series.items():
        ax.plot(xs[: len(ys)], ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"  written: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller points (about a minute)")
    ap.add_argument(
        "--max-size",
        type=parse_size,
        help="largest file of the size plot, e.g. 1G (default: 4G; 256M with --quick)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go (docs/)")
    ap.add_argument("--tmpdir", type=Path, help="where the files go (default: $TMPDIR)")
    args = ap.parse_args()
    nginx = ensure_nginx()
    if nginx is None:
        print("SKIPPED: nginx is not installed")
        return 2
    counts = COUNTS[:-1] if args.quick else COUNTS
    sizes = SIZES[:3] if args.quick else SIZES
    if args.max_size is not None:
        sizes = tuple(s for s in SIZES if s <= args.max_size)
    entries = ENTRIES[:-1] if args.quick else ENTRIES
    where = f"{machine()}; commit {_commit()}"
    print(f"bench_scaling: {where}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as nobody when we are root
        # First, while this process is small: a child's ru_maxrss counts the parent it
        # was forked from (before exec), so a big parent would show as the child's peak.
        print("peak RSS vs manifest size (no-op on a synced root):")
        rss = by_entries(work, entries)
        print("time vs file count (64 KiB each):")
        files = by_count(work, nginx, counts)
        print("time vs file size (one file):")
        size = by_size(work, nginx, sizes) if sizes else {}
    points_table(
        "time vs file count (64 KiB each), seconds; ratio = modelsync / aria2c",
        [f"{n:,}" for n in counts],
        files,
    )
    if size:
        points_table(
            "time vs file size (one file), seconds; ratio = modelsync / aria2c",
            [label(s) for s in sizes],
            size,
        )
    points_table(
        "no-op on a synced root: seconds and peak RSS (MiB)",
        [f"{n:,}" for n in entries],
        {
            "plan --check s": rss["plan s"],
            "plan --check MiB": rss["plan --check"],
            "apply s": rss["apply s"],
            "apply MiB": rss["apply"],
        },
        ratio=False,
    )
    plot(
        args.out / "scaling-files.png",
        f"N files of 64 KiB, nginx on loopback\n{where}",
        list(counts),
        files,
        "files",
        "seconds (wall, end to end)",
    )
    if size:
        plot(
            args.out / "scaling-size.png",
            f"One file, nginx on loopback\n{where}",
            [s // MiB for s in sizes],
            size,
            "MiB",
            "seconds (wall, end to end)",
        )
    memory = {"plan --check": rss["plan --check"], "apply": rss["apply"]}
    plot(
        args.out / "scaling-rss.png",
        f"No-op plan/apply, peak RSS\n{where}",
        list(entries),
        memory,
        "entries (files)",
        "peak RSS (MiB)",
    )
    return 0


def _commit() -> str:
    head = REPO / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (REPO / ".git" / ref[5:]).read_text().strip()[:7]
        return ref[:7]
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
