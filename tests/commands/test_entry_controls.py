"""Per-entry control (priority, connections, optional) and entries pinned by hash alone
(no url, hf nor civitai), end to end: the real CLI, a real aria2c, the local FileServer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelsync.aria2 import Aria2Daemon
from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers import FileServer

MIB = 1 << 20


def apply_json(manifest: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", "--no-progress", *args)
    assert run.stdout, run.stderr
    return run, json.loads(run.stdout)


def first_get_order(server: FileServer) -> list[str]:
    order: list[str] = []
    for r in server.requests:
        if r.method == "GET" and r.path not in order:
            order.append(r.path)
    return order


def test_priority_then_size_decides_the_order(tmp_path: Path, fileserver: FileServer) -> None:
    """Higher priority first; inside one priority the largest first (one job at a time,
    so the order aria2 starts them in is the order the server sees them)."""
    small = serve(fileserver, "/small.bin", 20_000, seed=1)
    urgent = serve(fileserver, "/urgent.bin", 10_000, seed=2)
    large = serve(fileserver, "/large.bin", 300_000, seed=3)
    late = serve(fileserver, "/late.bin", 400_000, seed=4)
    entries = [
        {"url": small.url, "sha256": small.sha256},
        {"url": late.url, "sha256": late.sha256, "priority": 10},
        {"url": large.url, "sha256": large.sha256, "size": 300_000},
        {"url": urgent.url, "sha256": urgent.sha256, "priority": 90},
    ]
    entries[0]["size"] = 20_000
    manifest = write_manifest(tmp_path / "models.toml", entries)
    run, doc = apply_json(manifest, "--jobs", "1")
    assert run.code == 0, run.stderr
    assert first_get_order(fileserver) == ["/urgent.bin", "/large.bin", "/small.bin", "/late.bin"]
    # the report keeps the manifest's order
    assert [e["name"] for e in doc["entries"]] == [
        "small.bin",
        "late.bin",
        "large.bin",
        "urgent.bin",
    ]


def test_only_keeps_priorities(tmp_path: Path, fileserver: FileServer) -> None:
    a = serve(fileserver, "/a.bin", 50_000, seed=5)
    b = serve(fileserver, "/b.bin", 10_000, seed=6)
    entries = [
        {"url": a.url, "sha256": a.sha256, "tags": ["set"], "priority": 20},
        {"url": b.url, "sha256": b.sha256, "tags": ["set"], "priority": 80},
    ]
    manifest = write_manifest(tmp_path / "models.toml", entries)
    run, _ = apply_json(manifest, "--jobs", "1", "--only", "set")
    assert run.code == 0, run.stderr
    assert first_get_order(fileserver) == ["/b.bin", "/a.bin"]


def test_entry_connections_reach_aria2_for_that_download(
    tmp_path: Path, fileserver: FileServer, foreign_aria2: tuple[str, str]
) -> None:
    """Read back from aria2 itself (an attached daemon, while the server holds the
    download): the entry's `connections` is the download's split and per-server cap."""
    url, secret = foreign_aria2
    f = serve(fileserver, "/capped.bin", 40 * MIB, seed=7)
    fileserver.set_faults("/capped.bin", stall_after=MIB, stall_times=100)
    entry = {"url": f.url, "sha256": f.sha256, "size": 40 * MIB, "connections": 3}
    manifest = write_manifest(tmp_path / "models.toml", [entry])
    env = {"MODELSYNC_ARIA2_URL": url, "MODELSYNC_ARIA2_SECRET": secret}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelsync", "apply", str(manifest), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")} | env,
    )
    with Aria2Daemon.attach(url, secret) as user:
        try:
            held = fileserver.wait_until(
                lambda: any(r.stalled for r in fileserver.requests) or proc.poll() is not None, 60
            )
            assert held and proc.poll() is None, "the download never reached the server"
            (active,) = user.client.tell_active(["gid"])
            options = user.client.get_option(active["gid"])
        finally:
            fileserver.set_faults("/capped.bin")
            fileserver.release_stalls()
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert options["split"] == "3" and options["max-connection-per-server"] == "3"


def test_a_failing_optional_entry_does_not_fail_apply(
    tmp_path: Path, fileserver: FileServer
) -> None:
    good = serve(fileserver, "/good.bin", 30_000, seed=9)
    entries = [
        {"url": good.url, "sha256": good.sha256},
        {"url": f"{fileserver.url}/missing.bin", "optional": True},
    ]
    manifest = write_manifest(tmp_path / "models.toml", entries)
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    statuses = {e["name"]: (e["status"], e.get("optional", False)) for e in doc["entries"]}
    assert statuses == {"good.bin": ("downloaded", False), "missing.bin": ("failed", True)}
    human = modelsync("apply", manifest, "--no-progress")
    assert human.code == 0
    assert "failed (optional): missing.bin: HTTP 404" in human.stderr

    entries[1]["optional"] = False  # the same failure, not optional: exit 1
    write_manifest(tmp_path / "models.toml", entries)
    assert modelsync("apply", manifest, "--no-progress").code == 1


# -- entries pinned by hash alone ----------------------------------------------------------

DATA = blob(120_000, seed=10)
SHA = hashlib.sha256(DATA).hexdigest()
SOURCELESS = {"filename": "private.safetensors", "dir": "loras", "sha256": SHA, "size": len(DATA)}


def test_a_sourceless_entry_is_satisfied_by_the_file_in_place(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [SOURCELESS])
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "private.safetensors").write_bytes(DATA)
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert [(e["action"], e["status"]) for e in doc["entries"]] == [("verify", "ok")]
    assert modelsync("verify", manifest).code == 0


def test_a_sourceless_entry_is_fetched_from_a_sha256_mirror(
    tmp_path: Path, fileserver: FileServer
) -> None:
    fileserver.add_bytes(f"/cas/sha256/{SHA}", DATA)
    mirror = f"{fileserver.url}/cas/sha256/{{sha256}}"
    manifest = write_manifest(tmp_path / "models.toml", [SOURCELESS], {"mirrors": [mirror]})
    plan = modelsync("plan", manifest)
    assert "download  missing" in plan.stderr and "no source" not in plan.stderr
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert doc["entries"][0]["status"] == "downloaded"
    assert (tmp_path / "models/loras/private.safetensors").read_bytes() == DATA
    assert {r.path for r in fileserver.requests} == {f"/cas/sha256/{SHA}"}


def test_a_sourceless_entry_without_a_mirror_fails_with_a_hint(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [SOURCELESS])
    plan = modelsync("plan", manifest)
    assert plan.code == 0
    assert "missing (no source)" in plan.stderr
    run, doc = apply_json(manifest)
    assert run.code == 1
    error = doc["entries"][0]["error"]
    assert "no url, hf or civitai and no mirror" in error
    assert "settings.mirrors" in error and "loras/private.safetensors" in error
    assert not (tmp_path / "models" / ".modelsync" / "tmp").exists() or not any(
        (tmp_path / "models" / ".modelsync" / "tmp").iterdir()
    )
