"""`make demo`: serve generated demo "models" on 127.0.0.1 and sync demo.toml end to end.

plan → apply → apply again (a no-op: no request reaches the server) → verify.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.servers lives in the repo, not in the package

from tests.servers import FileServer  # noqa: E402

PORT = 18765
FILES = [  # name, size, seed: the bytes behind the sha256 pins in demo.toml
    ("demo-checkpoint.safetensors", 48 << 20, 1),
    ("demo-lora.safetensors", 8 << 20, 2),
    ("demo-vae.safetensors", 16 << 20, 3),
]


def step(title: str, *args: str) -> int:
    print(f"\n=== modelsync {' '.join(args)}   ({title})", flush=True)
    return subprocess.run([sys.executable, "-m", "modelsync", *args]).returncode


def main() -> int:
    manifest = str(HERE / "demo.toml")
    shutil.rmtree(HERE.parent / "demo-models", ignore_errors=True)  # start from nothing
    try:
        server = FileServer(port=PORT)
    except OSError as exc:
        print(f"cannot serve the demo on 127.0.0.1:{PORT}: {exc}", file=sys.stderr)
        return 2
    with server:
        for name, size, seed in FILES:
            server.add_bytes(f"/{name}", random.Random(seed).randbytes(size))
        codes = [
            step("what would change", "plan", manifest),
            step("download, verify, place", "apply", manifest),
        ]
        served = server.bytes_served()
        codes.append(step("again: nothing to do", "apply", manifest))
        print(f"(second apply: {server.bytes_served() - served} bytes requested from the server)")
        codes.append(step("hash everything", "verify", manifest))
    failed = [c for c in codes if c != 0]
    print("\ndemo: " + ("OK, demo-models/ matches manifests/demo.toml" if not failed else "FAILED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
