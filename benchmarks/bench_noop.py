"""No-op `plan` and `apply` on a synced folder of many small files (SPEC §7).

    python benchmarks/bench_noop.py [--files 10000] [--dirs 10] [--repeat 3]
                                    [--no-strace] [--tmpdir DIR] [--keep]

Builds a root of --files files of 1-4 KiB spread over --dirs folders and a manifest
with one `url` entry per file, pinned with sha256 and size. Every URL points at a
127.0.0.1 port that is bound but never listens: a request would fail, so the no-op
path must make none. `modelsync verify` hashes everything once and fills the stat
cache (state.db). Then, as a user runs them (a new interpreter each time, wall time
from fork to exit, best of --repeat, interleaved):

  python -c pass                  the interpreter alone (the floor every command pays)
  modelsync plan --check          exit 0 proves "in sync"
  modelsync apply --no-progress   a no-op apply: lock, plan, nothing to do

Targets: plan and apply each < 2 s; peak RSS < 150 MB; no file content read. The
last one is shown by running each command once more under
`strace -f -e trace=openat,open,creat,connect` and counting opens of regular files
under root outside .modelsync/ (must be 0) and connect() calls to any inet address
(must be 0). strace is installed with apt-get when missing and running as root;
otherwise that part is skipped with a note.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    MODELSYNC,
    Row,
    apt_install,
    have,
    machine,
    print_table,
    run_timed,
    verdicts,
)

TARGET_SECONDS = 2.0
TARGET_RSS_MB = 150.0  # SPEC says MB; ru_maxrss is reported in MiB, the stricter reading
DIR_NAMES = [
    "checkpoints",
    "loras",
    "vae",
    "clip",
    "controlnet",
    "upscale_models",
    "embeddings",
    "unet",
    "clip_vision",
    "style_models",
]


def dead_port() -> socket.socket:
    """A 127.0.0.1 port bound but not listening: connect() is refused. Keep it open."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


def build(base: Path, n_files: int, n_dirs: int, port: int) -> Path:
    """Write root/ with n_files small files and models.toml pinning them; return the manifest."""
    root = base / "models"
    rng = random.Random(1)
    dirs = [DIR_NAMES[i] if i < len(DIR_NAMES) else f"dir{i:02d}" for i in range(n_dirs)]
    lines = ['[settings]\nroot = "models"\n']
    for d in dirs:
        (root / d).mkdir(parents=True)
    for i in range(n_files):
        d = dirs[i % n_dirs]
        name = f"model-{i:05d}.safetensors"
        data = rng.randbytes(rng.randint(1024, 4096))
        (root / d / name).write_bytes(data)
        lines.append(
            f'[[models]]\nurl = "http://127.0.0.1:{port}/{d}/{name}"\ndir = "{d}"\n'
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\n'
        )
    manifest = base / "models.toml"
    manifest.write_text("\n".join(lines))
    return manifest


def strace_counts(cmd: list[str], root: Path, out: Path) -> dict[str, int | list[str]]:
    """Run `cmd` under strace; classify every open of a path under root and every connect."""
    run_timed(
        ["strace", "-f", "-qq", "-e", "trace=openat,open,creat,connect", "-o", str(out), *cmd],
        cwd=root.parent,
    ).check("strace " + " ".join(cmd[2:4]))
    opened = re.compile(r'(?:openat\([^,]+, |open\(|creat\()"((?:[^"\\]|\\.)*)", ([^,)]+)')
    inet = re.compile(r"connect\(\d+, \{sa_family=AF_INET6?,")
    content: list[str] = []
    own: set[str] = set()
    dirs = 0
    connects = 0
    root_s = str(root)
    for line in out.read_text(errors="replace").splitlines():
        if inet.search(line):
            connects += 1
            continue
        m = opened.search(line)
        if not m:
            continue
        path = os.path.normpath(os.path.join(root.parent, m.group(1)))
        if path != root_s and not path.startswith(root_s + os.sep):
            continue
        rel = os.path.relpath(path, root)
        if "O_DIRECTORY" in m.group(2):
            dirs += 1
        elif rel.split(os.sep)[0] == ".modelsync":
            own.add(rel)
        else:
            content.append(rel)
    return {"content": len(content), "examples": content[:5], "own": sorted(own), "dirs": dirs,
            "connects": connects}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="number of files (10000)")
    ap.add_argument("--dirs", type=int, default=10, help="folders they are spread over (10)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (3)")
    ap.add_argument("--no-strace", action="store_true", help="skip the no-read/no-request proof")
    ap.add_argument("--tmpdir", type=Path, help="where to build the folder")
    ap.add_argument("--keep", action="store_true", help="keep the folder, print its path")
    args = ap.parse_args()

    print("bench_noop: no-op plan/apply on a synced folder (SPEC §7)")
    print(f"machine: {machine()}")
    blocker = dead_port()
    port = blocker.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench_noop-", dir=args.tmpdir))
    try:
        manifest = build(tmp, args.files, args.dirs, port)
        root = tmp / "models"
        print(
            f"folder: {args.files} files of 1-4 KiB in {args.dirs} folders; manifest "
            f"{manifest.stat().st_size // 1024} KiB, URLs on 127.0.0.1:{port} (nothing listens)"
        )
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
        env.pop("MODELSYNC_ROOT", None)
        verify = run_timed([*MODELSYNC, "verify", str(manifest)], env=env, cwd=tmp)
        verify.check("modelsync verify")
        print(f"warm-up: `modelsync verify` hashed {args.files} files in {verify.seconds:.2f} s")

        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "modelsync plan --check": [*MODELSYNC, "plan", "--check", str(manifest)],
            "modelsync apply --no-progress": [*MODELSYNC, "apply", "--no-progress", str(manifest)],
        }
        best = dict.fromkeys(commands, float("inf"))
        rss = dict.fromkeys(commands, 0.0)
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                t = run_timed(cmd, env=env, cwd=tmp).check(name)
                best[name] = min(best[name], t.seconds)
                rss[name] = max(rss[name], t.maxrss_mib)

        base = best["python -c pass"]
        rows = [Row("python -c pass (interpreter start)", base, ratio=1.0, note="baseline")]
        for name in list(commands)[1:]:
            ok = best[name] < TARGET_SECONDS
            rows.append(
                Row(
                    name,
                    best[name],
                    ratio=best[name] / base,
                    target=f"< {TARGET_SECONDS:g} s",
                    met=ok,
                )
            )
        for name in list(commands)[1:]:
            rows.append(
                Row(
                    f"{name.split(' --')[0]}: peak RSS",
                    None,
                    target=f"< {TARGET_RSS_MB:g} MB",
                    met=rss[name] < TARGET_RSS_MB,
                    note=f"{rss[name]:.0f} MiB",
                )
            )

        if args.no_strace:
            print("\n(strace part skipped: --no-strace)")
        elif have("strace") or apt_install("strace"):
            for name in list(commands)[1:]:
                c = strace_counts(commands[name], root, tmp / "strace.txt")
                rows.append(
                    Row(
                        f"{name.split(' --')[0]}: file opens under root",
                        None,
                        target="0 (no reads)",
                        met=c["content"] == 0,
                        note=f"{c['content']}" + (f" e.g. {c['examples']}" if c["content"] else ""),
                    )
                )
                rows.append(
                    Row(
                        f"{name.split(' --')[0]}: inet connect() calls",
                        None,
                        target="0 (no requests)",
                        met=c["connects"] == 0,
                        note=f"{c['connects']}",
                    )
                )
                print(
                    f"strace {name}: {c['content']} opens of model files, {c['dirs']} folder "
                    f"opens, own files opened: {', '.join(c['own']) or 'none'}"  # type: ignore[arg-type]
                )
        else:
            print("\n(strace part skipped: strace is not installed)")

        print_table(
            f"no-op on {args.files} synced files, best of {args.repeat} "
            "(wall time incl. interpreter start; ratio vs bare interpreter)",
            rows,
        )
        met = verdicts(rows)
        print(f"\ntargets met: {sum(met)}/{len(met)}")
        return 0 if all(met) else 1
    finally:
        blocker.close()
        if args.keep:
            print(f"kept: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
