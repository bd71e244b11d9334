"""Soak: 200 files from servers that misbehave at random (seeded): 503/429 bursts, dropped
connections, slow first bytes, a body shorter than announced, and one mirror that lies.
Every file ends verified in place, or failed with a clear reason for the lies that no
retry fixes; nothing is left in .modelsync/tmp/ and no aria2c is left running."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from tests.clirun import modelsync
from tests.conftest import Served, serve, write_manifest
from tests.servers import FileServer

FILES = 200


def aria2c_processes_for(root: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"aria2c") and str(root).encode() in b" ".join(cmdline):
            found.append(int(pid))
    return found


def test_two_hundred_files_from_misbehaving_servers(tmp_path: Path, fileserver: FileServer) -> None:
    rng = random.Random(20261203)
    with FileServer() as liar:
        files: list[Served] = []
        entries: list[dict[str, Any]] = []
        lies: set[str] = set()
        for i in range(FILES):
            f = serve(fileserver, f"/f{i:03d}.bin", rng.randint(1_000, 120_000), seed=i)
            files.append(f)
            entry: dict[str, Any] = {"url": f.url, "sha256": f.sha256, "dir": f"d{i % 7}"}
            roll = rng.random()
            if roll < 0.10:
                fileserver.set_faults(f.path, fail_first=1, fail_status=503)
            elif roll < 0.18:
                fileserver.set_faults(f.path, fail_first=1, fail_status=429)
            elif roll < 0.30:
                fileserver.set_faults(f.path, drop_after=len(f.data) // 2, drop_times=1)
            elif roll < 0.36:
                fileserver.set_faults(f.path, first_byte_delay=0.3)
            elif roll < 0.39:  # announces more than it sends, every time: a lie
                fileserver.set_faults(f.path, extra_length=100)
                lies.add(f"f{i:03d}.bin")
            elif roll < 0.45:  # a mirror that serves wrong bytes: the origin is right
                mirror = liar.add_bytes(f.path, f.data)
                liar.set_faults(f.path, corrupt_at=len(f.data) // 3)
                entry["mirrors"] = [mirror]
            entries.append(entry)
        manifest = write_manifest(tmp_path / "models.toml", entries)
        run = modelsync("apply", manifest, "--json", "--no-progress", "--jobs", "16", timeout=110)
    assert run.stdout, run.stderr
    assert "Traceback" not in run.stderr
    doc = json.loads(run.stdout)
    root = tmp_path / "models"
    by_name = {e["name"]: e for e in doc["entries"]}
    assert len(by_name) == FILES
    for i, f in enumerate(files):
        e = by_name[f"f{i:03d}.bin"]
        if e["status"] == "downloaded":
            assert (root / e["path"]).read_bytes() == f.data
        else:  # only the lies may fail, each with its reason in words
            assert e["name"] in lies, (e["name"], e["error"])
            assert e["status"] == "failed" and e["error"]
            assert not (root / e["path"]).exists()
    tmp = root / ".modelsync" / "tmp"
    failed = {e["name"]: e["error"] for e in doc["entries"] if e["status"] == "failed"}
    assert not tmp.exists() or sorted(p.name for p in tmp.iterdir()) == [], failed
    assert aria2c_processes_for(root) == []
