"""Provisioning a fleet: N machines straight from the origin, or the origin once and then
an exported mirror (issue 12).

    python benchmarks/bench_fleet.py [--machines 8] [--files 4] [--size-mib 32] [--rate 2m]
                                     [--tmpdir DIR] [--keep]

One nginx (see benchmarks/nginx.py) with two server blocks on 127.0.0.1: "capped" is the
origin (`limit_rate --rate` per connection, like the Hub's CDN) serving a set of --files
random files of --size-mib each; "fast" (no limit, a box on the LAN) serves the mirror
tree that `modelsync mirror export` fills. N fresh roots stand in for N machines, and
each machine is one `modelsync apply --no-progress --json` (a new process, its own
aria2c), one after the other:

  origin only   every machine applies a manifest of url + sha256 + size from the origin
  fleet         machine 1 applies from the origin, then `modelsync mirror export`s its root
                to the tree; machines 2..N apply the same manifest with
                settings.mirrors = ["http://localhost:PORT/sha256/{sha256}"] and
                settings.mirror_first = true (without mirror_first in this checkout: the
                mirror as extra URIs of each download, next to the origin)

Reported for each scenario: the bytes the origin served (nginx's access log, capped
server only) divided by the size of the set, the requests it served, and the wall time
of the whole scenario (machine 1's export included). Target: the fleet pulls each byte
of the set from the origin once (origin bytes / set size <= 1.05); the origin-only
scenario pulls it N times. Every machine's files are checked (status `downloaded`, and
sha256 by modelsync itself).

The machines share this machine's two cores and loopback, so wall times say how much
faster the LAN mirror is than the capped origin here, not what a real fleet sees; the
byte ratio is the number that carries over. Exit status: 0 target met, 1 missed,
2 skipped (no nginx) or a run failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import MODELSYNC, MiB, Row, machine, print_table, run_timed, verdicts
from benchmarks.nginx import Nginx, ensure_nginx
from modelsync.aria2 import aria2c_version, find_aria2c
from modelsync.manifest import Settings

TARGET_RATIO = 1.05  # origin bytes / set size for the fleet
SCRUB_ENV = (  # anything that would send requests elsewhere or reuse files from elsewhere
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "MODELSYNC_ARIA2_URL",
    "MODELSYNC_ARIA2_SECRET",
    "COMFYUI_MANAGER_ARIA2_SERVER",
    "COMFYUI_MANAGER_ARIA2_SERVERS",
    "COMFYUI_MANAGER_ARIA2_SECRET",
    "MODELSYNC_ROOT",
    "MODELSYNC_STORE",
)
HAS_MIRROR_FIRST = "mirror_first" in Settings.model_fields


def make_set(folder: Path, files: int, size: int) -> list[tuple[str, str]]:
    """`files` random files of `size` bytes; returns (name, sha256) of each."""
    folder.mkdir(parents=True)
    out = []
    for i in range(files):
        name = f"model-{i}.safetensors"
        data = os.urandom(size)
        (folder / name).write_bytes(data)
        out.append((name, hashlib.sha256(data).hexdigest()))
    return out


def manifest_text(
    entries: list[tuple[str, str]], origin: str, size: int, mirror: str | None
) -> str:
    lines = ["[settings]", 'root = "models"']
    if mirror is not None:
        lines.append(f'mirrors = ["{mirror}"]')
        if HAS_MIRROR_FIRST:
            lines.append("mirror_first = true")
    for name, sha256 in entries:
        lines += [
            "",
            "[[models]]",
            f'url = "{origin}/{name}"',
            'dir = "checkpoints"',
            f'sha256 = "{sha256}"',
            f"size = {size}",
        ]
    return "\n".join(lines) + "\n"


class Fleet:
    def __init__(self, work: Path, srv: Nginx, entries: list[tuple[str, str]], size: int) -> None:
        self.work = work
        self.srv = srv
        self.entries = entries
        self.size = size
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        self.env |= {"NO_COLOR": "1", "MODELSYNC_ARIA2C": find_aria2c()}
        # An empty Hugging Face cache: reuse before download must find nothing there.
        self.env["HF_HUB_CACHE"] = str(work / "hf-cache")

    def origin_bytes(self) -> tuple[int, int]:
        """Body bytes and requests the origin (capped server) served so far."""
        reqs = [r for r in self.srv.requests() if r.server == "capped"]
        return sum(r.sent for r in reqs), len(reqs)

    def apply(self, machine_dir: Path, mirror: str | None) -> float:
        machine_dir.mkdir(parents=True)
        manifest = machine_dir / "models.toml"
        origin = self.srv.url("capped", "/origin").rstrip("/")
        manifest.write_text(manifest_text(self.entries, origin, self.size, mirror))
        t = run_timed(
            [*MODELSYNC, "apply", "--no-progress", "--json", str(manifest)],
            env=self.env,
            cwd=machine_dir,
        ).check(f"modelsync apply ({machine_dir.name})")
        statuses = {e["status"] for e in json.loads(t.stdout)["entries"]}
        if statuses != {"downloaded"}:
            raise SystemExit(f"{machine_dir.name}: statuses {statuses}, expected downloaded")
        return t.seconds

    def export(self, machine_dir: Path, tree: Path) -> float:
        t = run_timed(
            [*MODELSYNC, "mirror", "export", "models.toml", str(tree), "--json"],
            env=self.env,
            cwd=machine_dir,
        ).check("modelsync mirror export")
        written = json.loads(t.stdout)["totals"]["written"]
        if written != len(self.entries):
            raise SystemExit(f"mirror export wrote {written} blobs, expected {len(self.entries)}")
        return t.seconds

    def scenario(self, name: str, machines: int, tree: Path | None) -> tuple[float, int, int]:
        """Provision `machines` roots; returns (wall seconds, origin bytes, requests)."""
        bytes0, reqs0 = self.origin_bytes()
        base = self.work / name
        mirror = self.srv.url("fast", "/sha256/{sha256}").replace("127.0.0.1", "localhost")
        started = time.perf_counter()
        for i in range(1, machines + 1):
            use_mirror = tree is not None and i > 1
            seconds = self.apply(base / f"machine-{i}", mirror if use_mirror else None)
            sent, _ = self.origin_bytes()
            note = "mirror" if use_mirror else "origin"
            print(
                f"  {name}: machine {i} from the {note:<6} {seconds:6.2f} s, "
                f"origin bytes so far {(sent - bytes0) / MiB:7.1f} MiB",
                flush=True,
            )
            if tree is not None and i == 1:
                seconds = self.export(base / "machine-1", tree)
                print(f"  {name}: machine 1 mirror export  {seconds:6.2f} s", flush=True)
        elapsed = time.perf_counter() - started
        sent, reqs = self.origin_bytes()
        shutil.rmtree(base, ignore_errors=True)  # the page cache holds N copies otherwise
        return elapsed, sent - bytes0, reqs - reqs0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--machines", type=int, default=8, help="roots standing in for machines (8)")
    ap.add_argument("--files", type=int, default=4, help="files in the set (4)")
    ap.add_argument("--size-mib", type=int, default=32, help="size of each file in MiB (32)")
    ap.add_argument("--rate", default="2m", help="origin's nginx limit_rate per connection (2m)")
    ap.add_argument("--tmpdir", type=Path, help="where to put the files, trees and roots")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()

    print("bench_fleet: N machines from the origin alone vs the origin once, then a mirror")
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    nginx = ensure_nginx()
    if nginx is None:
        print("SKIPPED: nginx is not installed (apt-get install nginx-light, as root)")
        return 2
    size = args.size_mib * MiB
    set_bytes = args.files * size
    work = Path(tempfile.mkdtemp(prefix="bench_fleet-", dir=args.tmpdir))
    work.chmod(0o755)  # nginx workers run as nobody when we are root
    try:
        www = work / "www"  # the fast server's root is the mirror tree: www/sha256/<hash>
        entries = make_set(www / "origin", args.files, size)
        tree = www
        print(
            f"set: {args.files} files x {args.size_mib} MiB = {set_bytes / MiB:.0f} MiB, "
            f"origin capped at {args.rate}/connection; {args.machines} machines; "
            f"mirror_first {'on' if HAS_MIRROR_FIRST else 'not in this checkout'}"
        )
        with Nginx(nginx, www, work / "nginx", rate=args.rate, log_requests=True) as srv:
            print(f"nginx {srv.version()}, aria2c {aria2c_version(find_aria2c())}")
            fleet = Fleet(work, srv, entries, size)
            direct = fleet.scenario("origin-only", args.machines, None)
            mirrored = fleet.scenario("fleet", args.machines, tree)
        rows = table(args.machines, set_bytes, direct, mirrored)
        title = (
            f"{args.machines} machines, a set of {args.files} x {args.size_mib} MiB, origin "
            f"limit_rate {args.rate}/connection (one run; ratio = origin bytes / set size)"
        )
        print_table(title, rows)
        met = verdicts(rows)
        print(f"\ntargets met: {sum(met)}/{len(met)}")
        return 0 if all(met) else 1
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def table(
    machines: int,
    set_bytes: int,
    direct: tuple[float, int, int],
    mirrored: tuple[float, int, int],
) -> list[Row]:
    d_secs, d_bytes, d_reqs = direct
    f_secs, f_bytes, f_reqs = mirrored
    f_ratio = f_bytes / set_bytes
    return [
        Row(
            f"{machines} applies from the origin",
            d_secs,
            ratio=d_bytes / set_bytes,
            note=f"origin served {d_bytes / MiB:.0f} MiB in {d_reqs} requests",
        ),
        Row(
            "origin once, then the exported mirror",
            f_secs,
            ratio=f_ratio,
            target=f"ratio <= {TARGET_RATIO:g}",
            met=f_ratio <= TARGET_RATIO,
            note=(
                f"origin served {f_bytes / MiB:.0f} MiB in {f_reqs} requests; "
                f"wall {f_secs / d_secs:.2f}x the origin-only time"
            ),
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
