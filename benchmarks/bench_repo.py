"""A whole Hugging Face repository on a capped CDN: modelsync vs snapshot_download (SPEC §8).

    python benchmarks/bench_repo.py [--shape mixed|shards] [--scale 1.0 | --total-mib N]
                                    [--rate 16m] [--repeat 3] [--workers 8] [--detail]
                                    [--variant ARGS] [--tmpdir DIR] [--also DIR]

The fake Hub of the tests (tests/servers/fake_hf.py, in this process) serves the API,
the `resolve` HEADs and redirects, and the small files kept in git (non-LFS: served by
the Hub itself, as huggingface.co does). The LFS files come from nginx's "capped"
server (benchmarks/nginx.py, `limit_rate --rate` per connection), like Hugging Face's
CDN: `FakeHub.cdn_base` makes `resolve` redirect there, to the same blob paths.

The repository: 40 files in nested folders, random bytes (nothing compresses or dedupes).
  --shape mixed (default), a diffusers pipeline, 565 MiB:
    3 large     unet/ 256 MiB, text_encoder/ 128 MiB, vae/ 64 MiB
    12 middle   4-16 MiB (image_encoder/ shards, loras/, embeddings/), 117 MiB together
  --shape shards, a sharded checkpoint, 620 MiB: 4 x 128 MiB, 8 x 12 MiB, 3 x 4 MiB
    (equal shards: snapshot_download's 8 workers fetch them side by side, so this is
    the harder shape for the target)
  and in both, 25 small files: configs and tokenizer files of 0.3-300 KiB; those under
    16 KiB are kept in git (13 non-LFS files, from the Hub), the others LFS (the CDN)
--scale multiplies the sizes of the large and middle files (the small ones keep theirs);
--total-mib N picks the scale that makes the repository about N MiB.

  snapshot_download    `huggingface_hub.snapshot_download(repo, endpoint=, cache_dir=FRESH,
                       max_workers=--workers, token=False)` in its own process
                       (interpreter start, import, listing, one HEAD per file included):
                       the baseline
  aria2c -j16 -i       raw aria2c -j16 -x16 -s16 -k1M, one input file of the URLs the Hub
                       redirects to (the resolve URL for the non-LFS files); no listing,
                       no HEADs, nothing verified (reference: the transfer alone)
  modelsync apply      `python -m modelsync apply MANIFEST --no-progress --json`, a manifest
                       with one repository entry (`hf = "org/repo"`, HF_ENDPOINT = the fake
                       Hub), a fresh root each run: interpreter start, listing, pins from
                       the Hub, downloads, sha256 of every file, placement

Wall time from fork to exit (benchmarks/common.py run_timed), median of --repeat,
methods interleaved; every output is deleted (and the page cache synced) after its run.
The notes: CPU seconds of the method's process and the children it reaped (modelsync's
aria2c included; nginx and the fake Hub not), and from nginx's access log ("cdn") the
requests and connections each method made to the CDN, the most requests it had in
flight at once, the average in flight while it was transferring (sum of request times
/ first request to last byte), and when its first CDN request started and its last
byte left, in seconds after its fork.
`--detail` prints, for the last run of each method, each LFS file's CDN requests,
connections and start/end (the order and overlap of its downloads). `--variant ARGS`
also times `modelsync apply ... ARGS` (e.g. "--jobs 16"), `--also DIR` the modelsync
package in DIR, both in the same run, interleaved.
Target: modelsync >= 4x faster than snapshot_download (SPEC §8).
Exit status: 0 when the target is met, 1 when it is not, 2 when skipped.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.nginx as nginx_module
from benchmarks.common import (
    MODELSYNC,
    MiB,
    Row,
    Timed,
    add_also_argument,
    machine,
    print_table,
    run_timed,
    verdicts,
)
from benchmarks.nginx import Nginx, ensure_nginx
from modelsync.aria2 import aria2c_version, find_aria2c
from tests.servers.fake_hf import FakeHub, HubFile

TARGET = 4.0  # modelsync at least this many times faster than snapshot_download
REPO = "bench/mixed-repo"
KiB = 1024
LFS_THRESHOLD = 16 * KiB  # smaller files are kept in git: served by the Hub, no sha256
# Anything that would send our requests elsewhere, attach modelsync to another aria2,
# or give huggingface_hub a token or a cache of the machine's.
SCRUB_PREFIXES = ("MODELSYNC_", "COMFYUI_MANAGER_ARIA2", "HF_", "HUGGINGFACE_")
SCRUB_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def repo_sizes(scale: float, shape: str = "mixed") -> dict[str, int]:
    """Path in the repository -> size: 40 files (see the module's docstring)."""
    large: dict[str, int]
    middle: dict[str, int] = {}
    if shape == "mixed":  # a diffusers pipeline: one big unet, a text encoder, a vae
        large = {
            "unet/diffusion_pytorch_model.safetensors": 256 * MiB,
            "text_encoder/model.safetensors": 128 * MiB,
            "vae/diffusion_pytorch_model.safetensors": 64 * MiB,
        }
        for i, mib in enumerate((16, 14, 12, 10, 8, 6, 4, 15, 11, 9, 7, 5)):  # 117 MiB
            if i < 4:
                middle[f"image_encoder/model-0000{i + 1}-of-00004.safetensors"] = mib * MiB
            elif i < 8:
                middle[f"loras/style_{i - 3}.safetensors"] = mib * MiB
            else:
                middle[f"embeddings/concept_{i - 7}.safetensors"] = mib * MiB
    else:  # "shards": a sharded checkpoint, equal shards that 8 workers fetch side by side
        large = {f"unet/model-0000{i + 1}-of-00004.safetensors": 128 * MiB for i in range(4)}
        for i in range(8):
            middle[f"text_encoder/model-0000{i + 1}-of-00008.safetensors"] = 12 * MiB
        for i in range(3):
            middle[f"vae/part{i}.safetensors"] = 4 * MiB
    sizes = {p: max(int(n * scale), 1) for p, n in (large | middle).items()}
    small = {  # bytes; under LFS_THRESHOLD: kept in git (13 files), the rest LFS (12)
        "model_index.json": 609,
        "README.md": 4 * KiB + 301,
        ".gitattributes": 1519,
        "unet/config.json": 1785,
        "text_encoder/config.json": 613,
        "vae/config.json": 820,
        "image_encoder/config.json": 560,
        "image_encoder/model.safetensors.index.json": 12 * KiB + 77,
        "scheduler/scheduler_config.json": 479,
        "tokenizer/tokenizer_config.json": 905,
        "tokenizer/special_tokens_map.json": 472,
        "tokenizer/added_tokens.json": 2 * KiB + 17,
        "feature_extractor/preprocessor_config.json": 518,
        "tokenizer/vocab.json": 260 * KiB + 11,
        "tokenizer/merges.txt": 300 * KiB + 5,
        "tokenizer/tokenizer.json": 210 * KiB + 123,
        "tokenizer/spiece.model": 96 * KiB + 9,
        "loras/style_1.preview.png": 48 * KiB + 3,
        "loras/style_2.preview.png": 52 * KiB + 1,
        "loras/style_3.preview.png": 37 * KiB + 5,
        "loras/style_4.preview.png": 61 * KiB + 2,
        "embeddings/concept_1.pt": 24 * KiB + 1,
        "embeddings/concept_2.pt": 24 * KiB + 2,
        "embeddings/concept_3.pt": 24 * KiB + 3,
        "embeddings/concept_4.pt": 24 * KiB + 4,
    }
    return sizes | small


def repo_files(scale: float, shape: str) -> dict[str, bytes]:
    """The 40 files' contents: random bytes, a different rotation of one block per file."""
    block = os.urandom(4 * MiB)
    files = {}
    for n, (path, size) in enumerate(repo_sizes(scale, shape).items()):
        data = bytearray()
        while len(data) < size:  # no two files are equal
            cut = (n * 4099 + len(data)) % len(block)
            data += block[cut:] + block[:cut]
        files[path] = bytes(data[:size])
    return files


@dataclass
class Served:
    """What nginx's CDN served to one run of one method (from its access logs)."""

    requests: int = 0
    connections: int = 0
    sent: int = 0  # body bytes, all requests
    peak: int = 0  # most requests in flight at once
    mean: float = 0.0  # requests in flight on average from the first start to the last byte
    first: float = 0.0  # first request's start, seconds after the method's fork
    last: float = 0.0  # last byte sent, seconds after the fork
    per_file: dict[str, tuple[int, int, float, float]] | None = None  # reqs, conns, start, end
    cpu: float = 0.0  # user + system seconds of the method's process and what it reaped

    def note(self) -> str:
        cpu = f"cpu {self.cpu:.2f} s"
        if not self.requests:
            return cpu
        return (
            f"{cpu}; cdn {self.requests} req/{self.connections} conn, in flight max "
            f"{self.peak} avg {self.mean:.1f}, {self.first:.2f}-{self.last:.2f} s"
        )


class UriNginx(Nginx):
    """Nginx with a second access log naming each request's URI (per-file counts)."""

    def start(self, attempts: int = 5) -> None:
        conf = nginx_module.CONF
        anchor = "    access_log {access_log};\n"
        if anchor in conf and self.log_requests:
            nginx_module.CONF = conf.replace(
                anchor,
                anchor + "    log_format uris '$connection $uri $request_time $msec';\n"
                "    access_log {prefix}/uris.log uris;\n",
            )
        try:
            super().start(attempts)
        finally:
            nginx_module.CONF = conf

    def uris(self) -> list[tuple[int, str, float, float]]:
        """(connection, uri, seconds, end) per request, in the order they finished."""
        log = self.prefix / "uris.log"
        if not log.exists():
            return []
        out = []
        for line in log.read_text().splitlines():
            conn, uri, secs, end = line.split(" ")
            out.append((int(conn), uri, float(secs), float(end)))
        return out


def in_flight(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


class Bench:
    def __init__(self, work: Path, hub: FakeHub, srv: UriNginx, files: dict[str, bytes]) -> None:
        self.work = work
        self.hub = hub
        self.srv = srv
        self.files = files
        self.total = sum(len(d) for d in files.values())
        self.aria2c = find_aria2c()
        self.blob_of = {FakeHub.cdn_path(HubFile.of(p, d)): p for p, d in files.items()}
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        env = {k: v for k, v in env.items() if not k.startswith(SCRUB_PREFIXES)}
        self.env = env | {
            "NO_COLOR": "1",
            "MODELSYNC_ARIA2C": self.aria2c,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ENABLE_HF_TRANSFER": "0",
            "HF_HOME": str(work / "hf-home"),  # no token, no cache of the machine's
        }
        self.out = work / "out"
        self.urls = {p: self._url(p) for p in files}  # (hashing 566 MiB takes a while)
        self.fork = 0.0  # unix time of the last run's fork (nginx logs unix times)
        self.cpu = 0.0  # CPU seconds of the last run
        self.served: dict[str, list[Served]] = defaultdict(list)
        self.hub_requests: dict[str, list[int]] = defaultdict(list)

    # ---- one run of each method: wall seconds --------------------------------------
    def _fresh(self) -> Path:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        return self.out

    def _run(self, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> Timed:
        self.fork = time.time()
        t = run_timed(cmd, env=env, cwd=cwd)
        self.cpu = t.cpu_seconds
        return t

    def _check(self, folder: Path, what: str) -> None:
        for path, data in self.files.items():
            got = folder / path
            if not got.is_file() or got.stat().st_size != len(data):
                raise SystemExit(f"{what}: {path} missing or of the wrong size in {folder}")

    def snapshot(self, workers: int) -> float:
        out = self._fresh()
        code = (
            "import sys\n"
            "from huggingface_hub import snapshot_download\n"
            "print(snapshot_download(sys.argv[1], endpoint=sys.argv[2], cache_dir=sys.argv[3],"
            " max_workers=int(sys.argv[4]), token=False))\n"
        )
        cmd = [sys.executable, "-c", code, REPO, self.hub.url, str(out / "cache"), str(workers)]
        t = self._run(cmd, self.env).check("snapshot_download")
        self._check(Path(t.stdout.strip().splitlines()[-1]), "snapshot_download")
        return t.seconds

    def _url(self, path: str) -> str:
        f = HubFile.of(path, self.files[path])
        if self.hub.is_lfs(f):
            return self.srv.url("capped", FakeHub.cdn_path(f))
        return self.hub.resolve_url(REPO, path)  # kept in git: the Hub serves it

    def aria2c_list(self) -> float:
        out = self._fresh()
        listing = self.work / "list.txt"
        listing.write_text("".join(f"{url}\n  out={p}\n" for p, url in self.urls.items()))
        cmd = [
            self.aria2c,
            "--no-conf",
            "-j16",
            "-x16",
            "-s16",
            "-k1M",
            "--file-allocation=none",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--download-result=hide",
            "--enable-color=false",
            "-d",
            str(out / "repo"),
            "-i",
            str(listing),
        ]
        t = self._run(cmd, self.env).check("aria2c -i")
        self._check(out / "repo", "aria2c")
        return t.seconds

    def modelsync(self, src: Path | None = None, extra: tuple[str, ...] = ()) -> float:
        out = self._fresh()
        manifest = out / "models.toml"
        manifest.write_text(
            f'[settings]\nroot = "models"\n\n[[models]]\nhf = "{REPO}"\ndir = "repo"\n'
        )
        env = self.env | {"PYTHONPATH": str(src)} if src else self.env
        cmd = [*MODELSYNC, "apply", str(manifest), "--no-progress", "--json", *extra]
        t = self._run(cmd, env, cwd=out).check("modelsync apply")
        statuses = {e["status"] for e in json.loads(t.stdout)["entries"]}
        if statuses != {"downloaded"}:
            raise SystemExit(f"modelsync apply: statuses {statuses}, expected downloaded")
        self._check(out / "models" / "repo", "modelsync")
        return t.seconds

    # ---- bookkeeping around each run ----------------------------------------------
    def timed(self, name: str, fn: Callable[[], float]) -> float:
        """Run one method; note what nginx and the Hub served it; delete its output."""
        before = len(self.srv.requests())
        before_uris = len(self.srv.uris())
        self.hub.reset_log()
        seconds = fn()
        self.hub_requests[name].append(len(self.hub.requests))
        served = self._served(before, before_uris, self.fork)
        served.cpu = self.cpu
        self.served[name].append(served)
        shutil.rmtree(self.out, ignore_errors=True)
        os.sync()  # the next run does not pay for this one's writes
        return seconds

    def _served(self, before: int, before_uris: int, fork: float) -> Served:
        reqs = [r for r in self.srv.requests()[before:] if r.server == "capped"]
        if not reqs:
            return Served()
        spans = [(r.start, r.end) for r in reqs]
        first = min(s for s, _ in spans)
        last = max(e for _, e in spans)
        busy = sum(e - s for s, e in spans)
        per: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for conn, uri, secs, end in self.srv.uris()[before_uris:]:
            per[self.blob_of.get(uri, uri)].append((conn, end - secs, end))
        per_file = {
            path: (
                len(rs),
                len({c for c, _, _ in rs}),
                min(s for _, s, _ in rs) - fork,
                max(e for _, _, e in rs) - fork,
            )
            for path, rs in per.items()
        }
        return Served(
            requests=len(reqs),
            connections=len({r.connection for r in reqs}),
            sent=sum(r.sent for r in reqs),
            peak=in_flight(spans),
            mean=busy / (last - first) if last > first else 0.0,
            first=first - fork,
            last=last - fork,
            per_file=per_file,
        )

    def median_note(self, name: str) -> str:
        """The served counts of the run whose time was the median one (see main)."""
        runs = self.served[name]
        return runs[len(runs) // 2].note() if runs else ""


def print_detail(bench: Bench, name: str) -> None:
    served = bench.served[name][-1] if bench.served[name] else None
    if served is None or not served.per_file:
        return
    print(f"\n{name}, last run: each LFS file's CDN requests (s after the fork)")
    print(f"  {'file':<48} {'MiB':>7} {'req':>4} {'conn':>4} {'start':>6} {'end':>6}")
    rows = sorted(served.per_file.items(), key=lambda kv: kv[1][2])
    for path, (nreq, nconn, start, end) in rows:
        size = len(bench.files.get(path, b""))
        print(f"  {path:<48} {size / MiB:7.2f} {nreq:>4} {nconn:>4} {start:6.2f} {end:6.2f}")
    waste = served.sent - sum(
        len(d) for p, d in bench.files.items() if bench.hub.is_lfs(HubFile.of(p, d))
    )
    print(f"  bytes sent beyond the LFS files' sizes: {waste / MiB:.1f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=1.0, help="multiply large/middle sizes")
    size.add_argument("--total-mib", type=float, help="scale the repository to about N MiB")
    ap.add_argument(
        "--shape",
        choices=("mixed", "shards"),
        default="mixed",
        help="mixed: 256+128+64 MiB, 12 of 4-16 MiB, 25 small (default); "
        "shards: 4 x 128 MiB, 8 x 12 MiB, 3 x 4 MiB, the same 25 small",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARGS",
        help="also time `modelsync apply ... ARGS` (e.g. '--jobs 16'), same run",
    )
    ap.add_argument("--rate", default="16m", help="nginx limit_rate per connection (16m)")
    ap.add_argument("--repeat", type=int, default=3, help="median of N runs (3)")
    ap.add_argument("--workers", type=int, default=8, help="snapshot_download max_workers (8)")
    ap.add_argument(
        "--detail", action="store_true", help="per-file CDN log of each method's last run"
    )
    ap.add_argument("--tmpdir", type=Path, help="where to put the files (default: $TMPDIR)")
    add_also_argument(ap)
    args = ap.parse_args()

    nginx = ensure_nginx()
    if nginx is None:
        print("SKIPPED: nginx is not installed (apt-get install nginx-light, as root)")
        return 2
    scale = args.scale
    if args.total_mib is not None:
        small = sum(s for s in repo_sizes(1.0, args.shape).values() if s < MiB)
        scalable = sum(repo_sizes(1.0, args.shape).values()) - small
        scale = max(args.total_mib * MiB - small, MiB) / scalable
    files = repo_files(scale, args.shape)
    total = sum(len(d) for d in files.values())
    print("bench_repo: a 40-file Hugging Face repository on a capped CDN (SPEC §8)")
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-repo-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as nobody when we are root
        www = work / "www"
        for path, data in files.items():
            blob = www / FakeHub.cdn_path(HubFile.of(path, data)).lstrip("/")
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
        for d in [www, *www.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
        srv = UriNginx(nginx, www, work / "nginx", rate=args.rate, log_requests=True)
        with srv, FakeHub() as hub:
            hub.cdn_base = srv.url("capped", "/")
            hub.lfs_threshold = LFS_THRESHOLD
            hub.add_repo(REPO, files)
            bench = Bench(work, hub, srv, files)
            lfs = [p for p, d in files.items() if hub.is_lfs(HubFile.of(p, d))]
            print(
                f"repo: {len(files)} files, {total / MiB:.0f} MiB (scale {scale:.3g}; "
                f"{len(lfs)} LFS from the CDN, {len(files) - len(lfs)} kept in git from the "
                f"Hub); CDN: nginx {srv.version()} limit_rate {args.rate} per connection; "
                f"aria2c {aria2c_version(bench.aria2c)}",
                flush=True,
            )
            snapshot = f"snapshot_download(max_workers={args.workers})"
            methods: dict[str, Callable[[], float]] = {
                snapshot: functools.partial(bench.snapshot, args.workers),
                "aria2c -j16 -x16 -s16 -i": bench.aria2c_list,
                "modelsync apply": bench.modelsync,
            }
            for extra in args.variant:
                variant = functools.partial(bench.modelsync, None, tuple(shlex.split(extra)))
                methods[f"modelsync apply {extra}"] = variant
            for src in args.also:
                methods[f"modelsync apply [{src}]"] = functools.partial(bench.modelsync, src)
            times: dict[str, list[float]] = {name: [] for name in methods}
            for r in range(args.repeat):
                for name, fn in methods.items():
                    seconds = bench.timed(name, fn)
                    times[name].append(seconds)
                    note = bench.served[name][-1].note()
                    hub_n = bench.hub_requests[name][-1]
                    print(
                        f"  run {r + 1}: {name:<32} {seconds:7.2f} s  hub {hub_n} req, {note}",
                        flush=True,
                    )
            if args.detail:
                for name in methods:
                    print_detail(bench, name)

    # The served counts shown are those of each method's median run.
    for name, ts in times.items():
        order = sorted(range(len(ts)), key=ts.__getitem__)
        bench.served[name] = [bench.served[name][i] for i in order]
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base = median[snapshot]
    rows = [Row(f"{snapshot} (baseline)", base, total, 1.0, note=bench.median_note(snapshot))]
    for name, seconds in list(median.items())[1:]:
        speedup = base / seconds
        note = f"{speedup:.1f}x faster; {bench.median_note(name)}"
        if name == "modelsync apply":  # variants and --also copies: no verdict
            target, ok = f">= {TARGET:g}x faster", speedup >= TARGET
            rows.append(Row(name, seconds, total, seconds / base, target, ok, note))
        else:
            label = name if name.startswith("modelsync") else f"{name} (reference)"
            rows.append(Row(label, seconds, total, seconds / base, note=note))
    print_table(
        f"{len(files)} files, {total / MiB:.0f} MiB, CDN capped at {args.rate}/connection "
        f"(median of {args.repeat}; ratio = time / snapshot_download's)",
        rows,
    )
    met = verdicts(rows)
    print(f"\ntargets met: {sum(met)}/{len(met)}")
    return 0 if all(met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
