"""A whole Hugging Face repository on a capped CDN: modelsync vs snapshot_download (SPEC §8).

    python benchmarks/bench_repo.py [--scale 1.0] [--rate 16m] [--repeat 3] [--workers 8]
                                    [--tmpdir DIR] [--also DIR]

The fake Hub of the tests (tests/servers/fake_hf.py, in this process) serves the API
and the `resolve` redirects; the files themselves come from nginx's "capped" server
(benchmarks/nginx.py, `limit_rate --rate` per connection), like Hugging Face's CDN.
The repository has 40 files of mixed sizes, as a diffusers or sharded-LLM repository
does: 4 shards of 128 MiB, 8 files of 16 MiB, 8 of 2 MiB and 20 configs and tokenizer
files of 1-64 KiB (`--scale` multiplies every size; 1.0 is 656 MiB).

  snapshot_download    `huggingface_hub.snapshot_download(repo, max_workers=--workers)`
                       into a fresh cache, in its own process (interpreter start, the
                       listing and one HEAD per file included): the baseline
  aria2c -j16 -i       raw aria2c on the CDN URLs the Hub redirects to, -x16 -s16, one
                       input file (reference: the tool without the Hub and the checks)
  modelsync apply      a manifest with one repository entry (`hf = "org/repo"`), a fresh
                       root each run: listing, pins from the Hub, downloads, sha256 of
                       every file, placement

Wall time from fork to exit, median of --repeat, methods interleaved.
Target: modelsync >= 4x faster than snapshot_download (SPEC §8).
Exit status: 0 when the target is met, 1 when it is not, 2 when skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    MODELSYNC,
    MiB,
    Row,
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
KIB = 1024
SCRUB_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def repo_files(scale: float) -> dict[str, bytes]:
    """40 files of mixed sizes (random bytes: nothing compresses, nothing dedupes)."""
    sizes: dict[str, int] = {}
    for i in range(4):
        sizes[f"unet/diffusion_pytorch_model-0000{i + 1}-of-00004.safetensors"] = 128 * MiB
    for i in range(8):
        sizes[f"text_encoder/model-0000{i + 1}-of-00008.safetensors"] = 16 * MiB
    for i in range(8):
        sizes[f"vae/part{i}.safetensors"] = 2 * MiB
    for i in range(20):
        folder = ("tokenizer", "scheduler", "text_encoder", "unet")[i % 4]
        sizes[f"{folder}/config{i}.json"] = (1 + (i * 7) % 64) * KIB
    block = os.urandom(4 * MiB)
    files = {}
    for n, (path, size) in enumerate(sizes.items()):
        size = max(int(size * scale), 1)
        data = bytearray()
        while len(data) < size:  # a different rotation per file: no two are equal
            cut = (n * 4099 + len(data)) % len(block)
            data += block[cut:] + block[:cut]
        files[path] = bytes(data[:size])
    return files


class Bench:
    def __init__(self, work: Path, hub: FakeHub, srv: Nginx, files: dict[str, bytes]) -> None:
        self.work = work
        self.hub = hub
        self.srv = srv
        self.files = files
        self.total = sum(len(d) for d in files.values())
        self.aria2c = find_aria2c()
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        env = {k: v for k, v in env.items() if not k.startswith(("MODELSYNC_", "HF_"))}
        self.env = env | {
            "NO_COLOR": "1",
            "MODELSYNC_ARIA2C": self.aria2c,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ENABLE_HF_TRANSFER": "0",
            "HF_HOME": str(work / "hf-home"),  # no token of the machine's
        }
        self.out = work / "out"

    def _fresh(self) -> Path:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        return self.out

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
        t = run_timed(cmd, env=self.env).check("snapshot_download")
        self._check(Path(t.stdout.strip().splitlines()[-1]), "snapshot_download")
        return t.seconds

    def aria2c_list(self) -> float:
        out = self._fresh()
        lines = []
        for path, data in self.files.items():
            url = self.srv.url("capped", FakeHub.cdn_path(HubFile.of(path, data)))
            lines.append(f"{url}\n  out={path}\n")
        listing = out / "list.txt"
        listing.write_text("".join(lines))
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
        t = run_timed(cmd, env=self.env).check("aria2c -i")
        self._check(out / "repo", "aria2c")
        return t.seconds

    def modelsync(self, src: Path | None = None) -> float:
        out = self._fresh()
        manifest = out / "models.toml"
        manifest.write_text(
            f'[settings]\nroot = "models"\n\n[[models]]\nhf = "{REPO}"\ndir = "repo"\n'
        )
        env = self.env | {"PYTHONPATH": str(src)} if src else self.env
        cmd = [*MODELSYNC, "apply", "--no-progress", "--json", str(manifest)]
        t = run_timed(cmd, env=env, cwd=out).check("modelsync apply")
        statuses = {e["status"] for e in json.loads(t.stdout)["entries"]}
        if statuses != {"downloaded"}:
            raise SystemExit(f"modelsync apply: statuses {statuses}, expected downloaded")
        self._check(out / "models" / "repo", "modelsync")
        return t.seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every file size")
    ap.add_argument("--rate", default="16m", help="nginx limit_rate per connection (16m)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8, help="snapshot_download max_workers")
    ap.add_argument("--tmpdir", type=Path, help="where to put the files (default: $TMPDIR)")
    add_also_argument(ap)
    args = ap.parse_args()

    nginx = ensure_nginx()
    if nginx is None:
        print("SKIPPED: nginx is not installed")
        return 2
    files = repo_files(args.scale)
    total = sum(len(d) for d in files.values())
    print("bench_repo: a 40-file Hugging Face repository on a capped CDN (SPEC §8)")
    print(f"machine: {machine()}")
    print(
        f"repo: {len(files)} files, {total / MiB:.0f} MiB; CDN: nginx limit_rate {args.rate} per "
        f"connection; aria2c {aria2c_version(find_aria2c())}"
    )
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
        with Nginx(nginx, www, work / "nginx", rate=args.rate) as srv, FakeHub() as hub:
            hub.cdn_base = srv.url("capped", "/")
            hub.add_repo(REPO, files)
            bench = Bench(work, hub, srv, files)
            methods: dict[str, Callable[[], float]] = {
                f"snapshot_download(max_workers={args.workers})": lambda: bench.snapshot(
                    args.workers
                ),
                "aria2c -j16 -x16 -s16 -i": bench.aria2c_list,
                "modelsync apply": bench.modelsync,
            }
            for i, src in enumerate(args.also):
                methods[f"modelsync apply ({src.name or i})"] = lambda s=src: bench.modelsync(s)
            times: dict[str, list[float]] = {name: [] for name in methods}
            for r in range(args.repeat):
                for name, fn in methods.items():
                    seconds = fn()
                    times[name].append(seconds)
                    print(f"  run {r + 1}: {name:<32} {seconds:7.2f} s", flush=True)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base_name = next(iter(median))
    base = median[base_name]
    rows = [Row(f"{base_name} (baseline)", base, total, 1.0)]
    for name, seconds in list(median.items())[1:]:
        speedup = base / seconds
        if name.startswith("modelsync"):
            rows.append(
                Row(
                    name,
                    seconds,
                    total,
                    seconds / base,
                    f">= {TARGET:g}x faster",
                    speedup >= TARGET,
                    f"{speedup:.1f}x faster",
                )
            )
        else:
            rows.append(
                Row(
                    f"{name} (reference)",
                    seconds,
                    total,
                    seconds / base,
                    note=f"{speedup:.1f}x faster",
                )
            )
    print_table(
        f"{len(files)} files, {total / MiB:.0f} MiB, capped CDN (median of {args.repeat}; "
        "ratio = time / snapshot_download's)",
        rows,
    )
    met = verdicts(rows)
    print(f"\ntargets met: {sum(met)}/{len(met)}")
    return 0 if all(met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
