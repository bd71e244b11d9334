"""Faults of the process table: aria2c killed mid-apply (restarted, resumed), modelsync
itself killed again and again, SIGTERM / SIGHUP. The real CLI, a real aria2c, the local
file server; downloads are held mid-way with `stall_after` to reach each point for sure."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsync.aria2.binary import find_aria2c
from modelsync.partials import control_bytes
from tests.clirun import modelsync
from tests.commands.test_apply import apply_json, entry, root_of, start_apply, wait_for_bytes
from tests.conftest import Served, serve, write_manifest
from tests.servers import FileServer

MIB = 1 << 20


def own(tmp_path: Path) -> Path:
    return root_of(tmp_path) / ".modelsync"


def aria2c_of(root: Path) -> list[int]:
    """Every live aria2c started for `root` (its conf file and working folder are there)."""
    mark = os.fsencode(root / ".modelsync")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.fsencode(os.readlink(proc / "cwd"))
        except OSError:  # gone meanwhile, or a zombie
            continue
        if b"aria2c" in cmdline and (mark in cmdline or cwd == mark):
            found.append(int(proc.name))
    return found


def managed_aria2c(tmp_path: Path) -> int:
    pid = int((own(tmp_path) / "aria2.pid").read_text())
    assert pid in aria2c_of(root_of(tmp_path)), "the pid file names no aria2c of this root"
    return pid


def hold(server: FileServer, proc: subprocess.Popen[str], n: int, since: int = 0) -> None:
    """Block until `n` responses (among requests from number `since` on) are held by
    `stall_after`: the downloads are mid-way and stay there."""

    def held() -> bool:
        return sum(r.stalled for r in server.requests[since:]) >= n or proc.poll() is not None

    server.wait_until(held, 60)
    if proc.poll() is not None or not held():
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(
            f"apply never got held mid-way (exit {proc.returncode}):\n{out}\n{err}"
        )


def wait_for_saved_progress(tmp_path: Path, count: int, at_least: int) -> None:
    """aria2 saves its control files every second: wait until `count` of them hold
    `at_least` bytes, which is what survives a kill -9 of aria2c."""
    tmp = own(tmp_path) / "tmp"
    deadline = time.monotonic() + 20
    while sum((control_bytes(c) or 0) >= at_least for c in tmp.glob("*.aria2")) < count:
        assert time.monotonic() < deadline, "aria2 never saved its control files"
        time.sleep(0.05)  # polling a file another process writes: nothing to wait on


def assert_nothing_left(tmp_path: Path) -> None:
    """Whatever way apply ended: no aria2c of this root, no config file (it holds the RPC
    secret), no pid file."""
    assert aria2c_of(root_of(tmp_path)) == []
    assert list(own(tmp_path).glob("aria2-rpc-*.conf")) == []
    assert not (own(tmp_path) / "aria2.pid").exists()


def assert_placed(tmp_path: Path, files: list[Served]) -> None:
    for f in files:
        assert (root_of(tmp_path) / "checkpoints" / f.path.lstrip("/")).read_bytes() == f.data


def stopped(proc: subprocess.Popen[str]) -> str:
    """The apply's stderr once it exited (killed after 60 s: a hang fails, not blocks)."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"apply did not exit:\n{err}") from None
    return err


def test_aria2c_killed_mid_apply_is_restarted_and_resumes(
    tmp_path: Path, fileserver: FileServer
) -> None:
    files = [serve(fileserver, f"/r{i}.bin", 40 * MIB, seed=i) for i in (1, 2)]
    fileserver.set_faults(stall_after=24 * MIB)  # the first response of each file
    manifest = write_manifest(tmp_path / "models.toml", [entry(f) for f in files])
    proc = start_apply(manifest, "--connections", "1")
    hold(fileserver, proc, 2)
    wait_for_saved_progress(tmp_path, 2, 24 * MIB)
    fileserver.reset_faults()  # the resumed requests go through (the held ones stay held)
    os.kill(managed_aria2c(tmp_path), signal.SIGKILL)
    err = stopped(proc)

    assert proc.returncode == 0, err
    assert "aria2c stopped (killed by signal 9); restarted it (1 of 2), resuming 2 downloads" in err
    assert_placed(tmp_path, files)
    # Resumed from the control files: 2 x 24 MiB before the kill, 2 x 16 MiB after it
    # (plus what aria2's first, Range-less request of each resume pulls in). Starting
    # over would take 2 x 40 MiB more: 128 MiB.
    served, data = fileserver.bytes_served(), sum(len(f.data) for f in files)
    assert served < 1.5 * data, served / MIB
    assert all(
        r.range is None or r.range.startswith(f"bytes={24 * MIB}-") for r in fileserver.requests
    ), [r.range for r in fileserver.requests]
    assert_nothing_left(tmp_path)
    assert sorted((own(tmp_path) / "tmp").iterdir()) == []


def test_aria2c_dying_a_third_time_fails_its_entries_and_keeps_partials(
    tmp_path: Path, fileserver: FileServer
) -> None:
    files = [serve(fileserver, f"/d{i}.bin", 40 * MIB, seed=i) for i in (3, 4)]
    fileserver.set_faults(stall_after=8 * MIB, stall_times=1000)  # every response, 8 MiB in
    manifest = write_manifest(tmp_path / "models.toml", [entry(f) for f in files])
    proc = start_apply(manifest, "--connections", "1")
    since = 0
    for _ in range(3):
        hold(fileserver, proc, 2, since)  # this aria2c's two downloads, mid-way
        since = len(fileserver.requests)
        os.kill(managed_aria2c(tmp_path), signal.SIGKILL)
    err = stopped(proc)

    assert proc.returncode == 1, err
    assert "restarted it (1 of 2), resuming 2 downloads" in err
    assert "restarted it (2 of 2), resuming 2 downloads" in err
    assert "aria2c stopped 3 times during this apply (last: killed by signal 9)" in err
    assert "partial downloads are kept: run apply again to resume" in err
    assert_nothing_left(tmp_path)
    tmp = own(tmp_path) / "tmp"
    assert len(list(tmp.glob("*.aria2"))) == 2  # the partials, for the next apply
    for f in files:
        assert not (root_of(tmp_path) / "checkpoints" / f.path.lstrip("/")).exists()

    fileserver.reset_faults()
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert {e["status"] for e in doc["entries"]} == {"downloaded"}
    assert_placed(tmp_path, files)


@pytest.fixture
def users_aria2(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """An aria2c modelsync attaches to (ComfyUI-Manager's, say): process, URL, secret."""
    secret = "users-secret-51ac"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [find_aria2c(), "--enable-rpc", f"--rpc-listen-port={port}", f"--rpc-secret={secret}"]
    proc = subprocess.Popen(
        [*argv, "--no-conf", "--disable-ipv6", f"--dir={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}/jsonrpc", secret
    finally:
        proc.kill()
        proc.wait(10)


def test_attached_aria2_that_dies_is_not_restarted(
    tmp_path: Path,
    fileserver: FileServer,
    users_aria2: tuple[subprocess.Popen[bytes], str, str],
) -> None:
    daemon, url, secret = users_aria2
    f = serve(fileserver, "/a.bin", 16 * MIB, seed=7)
    fileserver.set_faults(stall_after=8 * MIB)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    proc = start_apply(manifest, "--connections", "1", "--aria2-url", url, "--aria2-secret", secret)
    hold(fileserver, proc, 1)
    daemon.kill()  # not ours to start again: its owner decides
    err = stopped(proc)

    assert proc.returncode == 1, err
    assert "aria2 stopped during the download" in err and "run apply again" in err
    assert "restarted" not in err
    assert aria2c_of(root_of(tmp_path)) == []  # modelsync started none of its own

    fileserver.reset_faults()
    code, _doc, err = apply_json(manifest)  # its own aria2c this time
    assert code == 0, err
    assert_placed(tmp_path, [f])


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["term", "hup"]
)
def test_sigterm_and_sighup_stop_apply_like_ctrl_c(
    tmp_path: Path, fileserver: FileServer, sig: signal.Signals, code: int
) -> None:
    files = [serve(fileserver, f"/t{i}.bin", 16 * MIB, seed=i) for i in (5, 6)]
    fileserver.set_faults(stall_after=8 * MIB)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f) for f in files])
    proc = start_apply(manifest, "--connections", "1")
    hold(fileserver, proc, 2)
    proc.send_signal(sig)  # modelsync alone, as `kill`, docker stop or a closed terminal do
    err = stopped(proc)

    assert proc.returncode == code, err
    assert f"stopped by {sig.name}; partial downloads are kept for the next run" in err
    assert "Traceback" not in err
    assert_nothing_left(tmp_path)  # aria2c stopped, not left to notice on its own
    plan = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert {e["action"] for e in plan["entries"]} == {"resume"}  # the partials are kept

    fileserver.reset_faults()
    # The lock is free: a second apply starts at once (it would give up after 0.5 s).
    again = modelsync("apply", manifest, "--lock-timeout", "0.5")
    assert again.code == 0, again.stderr
    assert "waiting for another apply" not in again.stderr
    assert_placed(tmp_path, files)


def test_apply_killed_again_and_again_loses_nothing(tmp_path: Path, fileserver: FileServer) -> None:
    files = [serve(fileserver, f"/k{i}.bin", 16 * MIB, seed=10 + i) for i in range(4)]
    data = sum(len(f.data) for f in files)
    # Throttled, so that each kill lands mid-way and the orphaned aria2c, which runs on
    # until it notices (--stop-with-process), does not finish the files meanwhile.
    fileserver.set_faults(rate_limit=MIB)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f) for f in files])
    for step in (5 * MIB, 9 * MIB, 13 * MIB):  # bytes served before each kill
        proc = start_apply(manifest)
        wait_for_bytes(fileserver, proc, fileserver.bytes_served() + step)
        proc.send_signal(signal.SIGKILL)  # modelsync alone: no cleanup of its own runs
        stopped(proc)
        assert proc.returncode == -signal.SIGKILL
    assert fileserver.bytes_served() < data  # the kills did land mid-way

    fileserver.set_faults(rate_limit=8 * MIB)
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert {e["status"] for e in doc["entries"]} <= {"downloaded", "ok"}
    assert_placed(tmp_path, files)
    assert modelsync("verify", manifest).code == 0
    served = fileserver.bytes_served()
    assert served < 1.5 * data, served / MIB
    assert_nothing_left(tmp_path)
    assert sorted((own(tmp_path) / "tmp").iterdir()) == []
