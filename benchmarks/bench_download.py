"""Downloading one large file: modelsync vs curl and raw aria2c, same server, same run (SPEC §7).

    python benchmarks/bench_download.py [--size-mib 1024] [--rate 16m] [--repeat 3]
                                        [--curl-repeat 1] [--hf] [--only capped|fast]
                                        [--workers 1] [--tmpdir DIR] [--keep] [--also DIR]

A generated file (random bytes, --size-mib) is served by nginx on 127.0.0.1 from a
temp folder (generated nginx.conf, foreground, `sendfile on`; see benchmarks/nginx.py)
through two server blocks: "fast" (no limit) and "capped" (`limit_rate --rate` per
connection, like a CDN). Every method downloads the same URL to a fresh output that
is deleted after the run, so no run finds the previous one's file; the served file
stays in the page cache (written just before), so this measures the network path,
hashing and placing, not the disk the server reads from. Wall time from fork to exit,
best of --repeat, methods interleaved. On a 2-core machine nginx, aria2c, curl and our
hashing share the same two cores: loopback numbers are CPU-bound, not network-bound.

capped server (baseline: curl, one connection):
  curl                   `curl -s -o OUT URL`, a single connection
  huggingface_hub        (--hf) huggingface_hub.file_download.http_get, single stream
  modelsync apply        `modelsync apply --no-progress`: manifest with url + sha256 +
                         size, a fresh root each run; includes interpreter start, aria2c
                         start/stop, download, sha256+xxh3 verification, fsync, rename
  target: modelsync >= 13x faster than curl (SPEC §8; the ceiling is 16x: 16 connections)

fast server (baseline: raw aria2c, no verification):
  aria2c                 `aria2c -x16 -s16 -k1M --file-allocation=none`, same binary
                         as modelsync (modelsync.aria2.find_aria2c)
  aria2c --checksum      the same plus --checksum=sha-256=HEX (aria2 verifies itself)
  curl                   reference only: one connection
  modelsync apply        as above
  targets: modelsync <= 1.1x raw aria2c, and < 0.5x aria2c --checksum's time (SPEC §8)

Also: raw aria2c on the capped server (reference: the ceiling modelsync works under),
the peak RSS of modelsync apply (target < 150 MB whatever the file size), and for each
method how many requests and connections nginx served it (from nginx's access log).

curl on the capped server is run --curl-repeat times (default 1): its time is set by
the cap (size / rate), so repeating it only costs minutes. `--also DIR` times a changed
copy of the modelsync package (PYTHONPATH=DIR) next to this checkout's, same run.
Exit status: 0 when every target is met, 1 when one is not, 2 when skipped.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    MODELSYNC,
    MiB,
    Row,
    Timed,
    add_also_argument,
    apt_install,
    have,
    machine,
    print_table,
    run_timed,
    verdicts,
)
from benchmarks.nginx import Nginx, ensure_nginx
from modelsync.aria2 import aria2c_version, find_aria2c

TARGET_CAPPED = 13.0  # modelsync at least this many times faster than curl
TARGET_FAST = 1.1  # modelsync at most this many times raw aria2c's time
TARGET_CHECKSUM = 0.5  # modelsync under this share of aria2c --checksum's time
TARGET_RSS_MB = 150.0  # whatever the file size
NAME = "big.safetensors"
# Anything that would send our requests elsewhere or attach modelsync to another aria2.
SCRUB_ENV = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "MODELSYNC_ARIA2_URL",
    "MODELSYNC_ARIA2_SECRET",
    "COMFYUI_MANAGER_ARIA2_SERVER",
    "COMFYUI_MANAGER_ARIA2_SECRET",
    "MODELSYNC_ROOT",
)


def make_file(path: Path, size: int) -> str:
    """Random content (a 64 MiB random block repeated); returns its sha256."""
    block = os.urandom(64 * MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = memoryview(block)[: min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, size: int, sha256: str) -> None:
        self.args = args
        self.work = work
        self.size = size
        self.sha256 = sha256
        self.aria2c = find_aria2c()
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        self.env |= {"NO_COLOR": "1", "MODELSYNC_ARIA2C": self.aria2c}
        self.out = work / "out"
        self.rss: list[float] = []  # peak RSS of each modelsync run (MiB)
        self.srv: Nginx | None = None
        self.served: dict[str, str] = {}  # method -> "N req / M conn" of its last run

    # ---- one run of each method: returns wall seconds ---------------------------------
    def _fresh_out(self) -> Path:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        return self.out

    def _check_output(self, path: Path, what: str) -> None:
        size = path.stat().st_size if path.exists() else -1
        if size != self.size:
            raise SystemExit(f"{what}: output is {size} bytes, expected {self.size}")

    def curl(self, url: str) -> float:
        out = self._fresh_out() / NAME
        t = run_timed(["curl", "-fsS", "--noproxy", "*", "-o", str(out), url], env=self.env)
        t.check("curl")
        self._check_output(out, "curl")
        out.unlink()
        return t.seconds

    def hf(self, url: str) -> float:
        out = self._fresh_out() / NAME
        code = (
            "import sys\n"
            "from huggingface_hub.file_download import http_get\n"
            "with open(sys.argv[2], 'wb') as f:\n"
            "    http_get(sys.argv[1], f)\n"
        )
        env = self.env | {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ENABLE_HF_TRANSFER": "0"}
        t = run_timed([sys.executable, "-c", code, url, str(out)], env=env)
        t.check("huggingface_hub http_get")
        self._check_output(out, "huggingface_hub")
        out.unlink()
        return t.seconds

    def aria2c_raw(self, url: str, checksum: bool = False) -> float:
        out = self._fresh_out()
        cmd = [
            self.aria2c,
            "--no-conf",
            "-x16",
            "-s16",
            "-k1M",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
            "--enable-color=false",
            "-d",
            str(out),
            "-o",
            NAME,
        ]
        if checksum:
            cmd.append(f"--checksum=sha-256={self.sha256}")
        t = run_timed([*cmd, url], env=self.env).check("aria2c")
        self._check_output(out / NAME, "aria2c")
        (out / NAME).unlink()
        return t.seconds

    def modelsync(self, url: str, src: Path | None = None) -> float:
        """`src`: run the modelsync package found in that folder instead (PYTHONPATH)."""
        base = self._fresh_out()
        manifest = base / "models.toml"
        manifest.write_text(
            '[settings]\nroot = "models"\n\n[[models]]\n'
            f'url = "{url}"\ndir = "checkpoints"\nsha256 = "{self.sha256}"\nsize = {self.size}\n'
        )
        env = self.env | {"PYTHONPATH": str(src)} if src else self.env
        t: Timed = run_timed(
            [*MODELSYNC, "apply", "--no-progress", "--json", str(manifest)], env=env, cwd=base
        ).check("modelsync apply")
        report = json.loads(t.stdout)
        status = report["entries"][0]["status"]
        if status != "downloaded":
            raise SystemExit(f"modelsync apply: entry status {status!r}, expected 'downloaded'")
        self._check_output(base / "models" / "checkpoints" / NAME, "modelsync")
        if src is None:
            self.rss.append(t.maxrss_mib)
        shutil.rmtree(base / "models")
        return t.seconds

    # ---- a group of methods, interleaved -----------------------------------------------
    def best_of(self, methods: dict[str, tuple[Callable[[], float], int]]) -> dict[str, float]:
        best = {name: float("inf") for name in methods}
        rounds = max(n for _, n in methods.values())
        for i in range(rounds):
            for name, (fn, n) in methods.items():
                if i < n:
                    before = len(self.srv.requests()) if self.srv else 0
                    s = fn()
                    best[name] = min(best[name], s)
                    if self.srv:
                        reqs = self.srv.requests()[before:]
                        conns = len({r.connection for r in reqs})
                        self.served[name] = f"{len(reqs)} req / {conns} conn"
                    print(
                        f"  run {i + 1}: {name:<28} {s:7.2f} s  {self.served.get(name, '')}",
                        flush=True,
                    )
        return best


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:.0f} MB/s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    ap.add_argument("--rate", default="16m", help="nginx limit_rate per connection (16m)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (3)")
    ap.add_argument(
        "--curl-repeat", type=int, default=1, help="runs of curl on the capped server (1)"
    )
    ap.add_argument("--hf", action="store_true", help="also huggingface_hub on the capped server")
    ap.add_argument("--only", choices=("capped", "fast"), help="run one of the two parts")
    ap.add_argument("--workers", type=int, default=1, help="nginx worker_processes (1)")
    ap.add_argument("--tmpdir", type=Path, help="where to put the served file and outputs")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    add_also_argument(ap)
    args = ap.parse_args()

    print("bench_download: one large file, modelsync vs curl / aria2c (SPEC §7)")
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    nginx = ensure_nginx()
    if nginx is None:
        print("SKIPPED: nginx is not installed (apt-get install nginx-light, as root)")
        return 2
    if not have("curl") and not apt_install("curl"):
        print("SKIPPED: curl is not installed")
        return 2
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="bench_download-", dir=args.tmpdir))
    work.chmod(0o755)  # nginx workers run as nobody when we are root
    try:
        www = work / "www"
        www.mkdir()
        t0 = time.perf_counter()
        sha256 = make_file(www / NAME, size)
        print(f"file: {args.size_mib} MiB random, sha256 {sha256[:16]}…, written in "
              f"{time.perf_counter() - t0:.1f} s (stays in the page cache)")  # fmt: skip
        bench = Bench(args, work, size, sha256)
        with Nginx(
            nginx, www, work / "nginx", rate=args.rate, workers=args.workers, log_requests=True
        ) as srv:
            bench.srv = srv
            curl = subprocess.run(["curl", "--version"], capture_output=True, text=True)
            print(
                f"nginx {srv.version()} ({args.workers} worker), aria2c "
                f"{aria2c_version(bench.aria2c)} at {bench.aria2c}, "
                f"curl {curl.stdout.split()[1]}"
            )
            tables: list[tuple[str, list[Row]]] = []
            if args.only in (None, "capped"):
                tables.append(capped_part(args, bench, srv, size))
            if args.only in (None, "fast"):
                tables.append(fast_part(args, bench, srv, size))
        if bench.rss and tables:
            tables[-1][1].append(
                Row(
                    "modelsync apply: peak RSS",
                    None,
                    target=f"< {TARGET_RSS_MB:g} MB",
                    met=max(bench.rss) < TARGET_RSS_MB,
                    note=f"{max(bench.rss):.0f} MiB (largest of modelsync's and its aria2c's)",
                )
            )
        met: list[bool] = []
        for title, rows in tables:
            print_table(title, rows)
            met += verdicts(rows)
        print(f"\ntargets met: {sum(met)}/{len(met)}")
        return 0 if all(met) else 1
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def also_methods(
    args: argparse.Namespace, bench: Bench, url: str
) -> dict[str, tuple[Callable[[], float], int]]:
    methods: dict[str, tuple[Callable[[], float], int]] = {}
    for src in args.also:
        methods[f"modelsync [{src}]"] = (functools.partial(bench.modelsync, url, src), args.repeat)
    return methods


def capped_part(
    args: argparse.Namespace, bench: Bench, srv: Nginx, size: int
) -> tuple[str, list[Row]]:
    url = srv.url("capped", NAME)
    print(f"\ncapped server (limit_rate {args.rate} per connection): {url}", flush=True)
    methods: dict[str, tuple[Callable[[], float], int]] = {
        "curl": (lambda: bench.curl(url), args.curl_repeat),
        "aria2c": (lambda: bench.aria2c_raw(url), args.repeat),
        "modelsync apply": (lambda: bench.modelsync(url), args.repeat),
    }
    if args.hf:
        methods["huggingface_hub http_get"] = (lambda: bench.hf(url), args.curl_repeat)
    methods |= also_methods(args, bench, url)
    best = bench.best_of(methods)
    base = best["curl"]
    rows = [Row("curl (1 connection)", base, size, 1.0, note="baseline")]
    a = best["aria2c"]
    rows.append(
        Row(
            "aria2c -x16 -s16 -k1M (reference)",
            a,
            size,
            a / base,
            note=f"{base / a:.1f}x faster; {bench.served.get('aria2c', '')}",
        )
    )
    if "huggingface_hub http_get" in best:
        hf = best["huggingface_hub http_get"]
        rows.append(Row("huggingface_hub http_get (1 stream)", hf, size, hf / base))
    ms = best["modelsync apply"]
    speedup = base / ms
    rows.append(
        Row(
            "modelsync apply (end to end)",
            ms,
            size,
            ms / base,
            target=f">= {TARGET_CAPPED:g}x faster",
            met=speedup >= TARGET_CAPPED,
            note=f"{speedup:.1f}x faster than curl; {bench.served.get('modelsync apply', '')}",
        )
    )
    for src in args.also:
        t = best[f"modelsync [{src}]"]
        rows.append(Row(f"  [{src}]", t, size, t / base, note=f"{base / t:.1f}x faster than curl"))
    title = (
        f"capped server, {size // MiB} MiB, limit_rate {args.rate}/connection "
        f"(curl best of {args.curl_repeat}, others best of {args.repeat}; ratio = time / curl's)"
    )
    return title, rows


def fast_part(
    args: argparse.Namespace, bench: Bench, srv: Nginx, size: int
) -> tuple[str, list[Row]]:
    url = srv.url("fast", NAME)
    print(f"\nunthrottled loopback server: {url}", flush=True)
    n = args.repeat
    best = bench.best_of(
        {
            "aria2c": (lambda: bench.aria2c_raw(url), n),
            "aria2c --checksum": (lambda: bench.aria2c_raw(url, checksum=True), n),
            "curl": (lambda: bench.curl(url), n),
            "modelsync apply": (lambda: bench.modelsync(url), n),
        }
        | also_methods(args, bench, url)
    )
    base = best["aria2c"]
    ms = best["modelsync apply"]
    check = best["aria2c --checksum"]
    rows = [
        Row(
            "aria2c -x16 -s16 -k1M (no verification)",
            base,
            size,
            1.0,
            note=f"baseline; {bench.served.get('aria2c', '')}",
        ),
        Row("aria2c ... --checksum=sha-256", check, size, check / base),
        Row("curl (1 connection, reference)", best["curl"], size, best["curl"] / base),
        Row(
            "modelsync apply (end to end)",
            ms,
            size,
            ms / base,
            target=f"<= {TARGET_FAST:g}x aria2c",
            met=ms / base <= TARGET_FAST,
            note=bench.served.get("modelsync apply", ""),
        ),
        Row(
            "modelsync vs aria2c --checksum",
            None,
            ratio=ms / check,
            target=f"< {TARGET_CHECKSUM:g}x",
            met=ms / check < TARGET_CHECKSUM,
        ),
    ]
    for src in args.also:
        t = best[f"modelsync [{src}]"]
        rows.append(Row(f"  [{src}]", t, size, t / base, note=f"{t / check:.2f}x --checksum's"))
    title = f"unthrottled loopback, {size // MiB} MiB (best of {n}; ratio = time / raw aria2c's)"
    return title, rows


if __name__ == "__main__":
    raise SystemExit(main())
