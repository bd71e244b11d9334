"""Many small files: modelsync vs `aria2c -j16 -i LIST`, same server, same run (SPEC §7).

    python benchmarks/bench_small.py [--files 500] [--size-kib 64] [--repeat 5]
                                     [--profile FILE] [--tmpdir DIR] [--also DIR]

--files random files of --size-kib each are served by nginx on 127.0.0.1 ("fast" server
of benchmarks/nginx.py, no limit). Each method downloads all of them to a fresh folder:

  aria2c -j16 -i LIST    the same aria2c binary as modelsync, one input file listing
                         every URL with its `out=`; nothing verified (the baseline)
  modelsync apply        `modelsync apply --no-progress`: a manifest of --files entries
                         (url + sha256 + size), a fresh root each run; includes interpreter
                         start, aria2c start/stop, downloads, sha256+xxh3 of every file,
                         fsync, rename, state.db

Wall time from fork to exit, median of --repeat, methods interleaved.
Target: modelsync <= 1.3x aria2c's time. `--profile FILE` also runs one modelsync apply
under pyinstrument (installed on demand into the venv) and writes its text report.
Exit status: 0 when the target is met, 1 when it is not, 2 when skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    MODELSYNC,
    Row,
    add_also_argument,
    machine,
    print_table,
    run_timed,
    verdicts,
)
from benchmarks.nginx import Nginx, ensure_nginx
from modelsync.aria2 import aria2c_version, find_aria2c

TARGET = 1.3  # modelsync at most this many times aria2c -j16 -i's time
SCRUB_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class Small:
    def __init__(self, work: Path, srv: Nginx, names: list[str], sums: dict[str, str]) -> None:
        self.work = work
        self.srv = srv
        self.names = names
        self.sums = sums
        self.size = (srv.www / names[0]).stat().st_size
        self.aria2c = find_aria2c()
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        self.env = {
            k: v
            for k, v in self.env.items()
            if not k.startswith(("MODELSYNC_", "COMFYUI_MANAGER_ARIA2"))
        }
        self.env |= {"NO_COLOR": "1", "MODELSYNC_ARIA2C": self.aria2c}
        self.out = work / "out"

    def _fresh(self) -> Path:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        return self.out

    def _check(self, folder: Path, what: str) -> None:
        for name in self.names:
            path = folder / name
            if not path.exists() or path.stat().st_size != self.size:
                raise SystemExit(f"{what}: {name} missing or of the wrong size")

    def aria2c_list(self) -> float:
        out = self._fresh()
        listing = out / "list.txt"
        listing.write_text("".join(f"{self.srv.url('fast', n)}\n  out={n}\n" for n in self.names))
        cmd = [
            self.aria2c,
            "--no-conf",
            "-j16",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
            "--enable-color=false",
            "-d",
            str(out / "m"),
            "-i",
            str(listing),
        ]
        t = run_timed(cmd, env=self.env).check("aria2c -i")
        self._check(out / "m", "aria2c")
        return t.seconds

    def manifest(self, base: Path) -> Path:
        parts = ['[settings]\nroot = "models"\n']
        for n in self.names:
            parts.append(
                f'[[models]]\nurl = "{self.srv.url("fast", n)}"\ndir = "m"\n'
                f'sha256 = "{self.sums[n]}"\nsize = {self.size}\n'
            )
        path = base / "models.toml"
        path.write_text("\n".join(parts))
        return path

    def modelsync(self, src: Path | None = None, prefix: list[str] | None = None) -> float:
        base = self._fresh()
        manifest = self.manifest(base)
        env = self.env | {"PYTHONPATH": str(src)} if src else self.env
        cmd = [*(prefix or MODELSYNC), "apply", "--no-progress", "--json", str(manifest)]
        cmd += shlex.split(os.environ.get("BENCH_MODELSYNC_ARGS", ""))
        t = run_timed(cmd, env=env, cwd=base).check("modelsync apply")
        report = json.loads(t.stdout)
        statuses = {e["status"] for e in report["entries"]}
        if statuses != {"downloaded"}:
            raise SystemExit(f"modelsync apply: statuses {statuses}, expected downloaded")
        self._check(base / "models" / "m", "modelsync")
        return t.seconds


def make_files(www: Path, count: int, size: int) -> tuple[list[str], dict[str, str]]:
    names, sums = [], {}
    for i in range(count):
        name = f"f{i:05d}.bin"
        data = os.urandom(size)
        (www / name).write_bytes(data)
        names.append(name)
        sums[name] = hashlib.sha256(data).hexdigest()
    return names, sums


def profile(bench: Small, out: Path) -> None:
    """One modelsync apply under pyinstrument; its text report to `out`."""
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "pyinstrument"], check=True
        )
    session = out.with_suffix(".pyisession")
    prefix = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session)]
    bench.modelsync(prefix=[*prefix, "-m", "modelsync"])
    subprocess.run(
        [sys.executable, "-m", "pyinstrument", "--load", str(session), "-o", str(out)],
        check=True,
    )
    session.unlink(missing_ok=True)
    print(f"  profile of one modelsync apply: {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--size-kib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", type=Path, help="write a pyinstrument report of one apply")
    ap.add_argument("--tmpdir", type=Path, help="where to put the files (default: $TMPDIR)")
    add_also_argument(ap)
    args = ap.parse_args()

    nginx = ensure_nginx()
    if nginx is None:
        print("SKIPPED: nginx is not installed")
        return 2
    print(f"machine: {machine()}")
    print(f"aria2c {aria2c_version(find_aria2c())}; {args.files} files x {args.size_kib} KiB")
    with tempfile.TemporaryDirectory(prefix="bench-small-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as nobody when we are root
        www = work / "www"
        www.mkdir()
        names, sums = make_files(www, args.files, args.size_kib * 1024)
        with Nginx(nginx, www, work / "nginx") as srv:
            bench = Small(work, srv, names, sums)
            methods: dict[str, Callable[[], float]] = {
                "aria2c -j16 -i": bench.aria2c_list,
                "modelsync apply": bench.modelsync,
            }
            for i, src in enumerate(args.also):
                methods[f"modelsync apply ({src.name or i})"] = lambda s=src: bench.modelsync(src=s)
            times: dict[str, list[float]] = {name: [] for name in methods}
            for r in range(args.repeat):
                for name, fn in methods.items():
                    seconds = fn()
                    times[name].append(seconds)
                    print(f"  run {r + 1}: {name:<28} {seconds:7.2f} s", flush=True)
            if args.profile:
                profile(bench, args.profile)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base = median["aria2c -j16 -i"]
    total = args.files * args.size_kib * 1024
    rows = [Row("aria2c -j16 -i (baseline, no verification)", base, total, 1.0)]
    for name, seconds in median.items():
        if name.startswith("modelsync"):
            ratio = seconds / base
            rows.append(Row(name, seconds, total, ratio, f"<= {TARGET}x", ratio <= TARGET))
    per_file = (median["modelsync apply"] - base) / args.files * 1000
    print_table(
        f"{args.files} files x {args.size_kib} KiB, nginx on loopback (median of {args.repeat})",
        rows,
    )
    print(f"  modelsync's overhead per file over aria2c: {per_file:.2f} ms")
    met = verdicts(rows)
    print(f"\ntargets met: {sum(met)}/{len(met)}")
    return 0 if all(met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
