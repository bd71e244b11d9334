"""Several attached aria2 daemons (--aria2-url several times, $COMFYUI_MANAGER_ARIA2_SERVERS):
downloads are spread across them, and one that dies has its downloads moved to the others."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelsync.aria2 import Aria2Daemon
from modelsync.download import Job, aria2_options
from modelsync.layout import Layout
from modelsync.reconcile import Action, ActionKind
from modelsync.remote import Desired, RemoteFile
from tests.clirun import modelsync
from tests.conftest import FOREIGN_SECRET, ForeignAria2, Served, serve, toml_value
from tests.servers import FileServer

MIB = 1 << 20
Start = Callable[[int], list[ForeignAria2]]


def write(tmp_path: Path, files: list[Served]) -> Path:
    lines = ['[settings]\nroot = "models"\nmax_concurrent = 8']
    for f in files:
        lines += ["\n[[models]]", f"url = {toml_value(f.url)}", 'dir = "m"']
        lines.append(f"sha256 = {toml_value(f.sha256)}")
    path = tmp_path / "models.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def placed(tmp_path: Path, files: list[Served]) -> None:
    for f in files:
        data = (tmp_path / "models" / "m" / Path(f.path).name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256, f.path


def some_files(fileserver: FileServer, n: int) -> list[Served]:
    return [serve(fileserver, f"/f{i}.bin", MIB, seed=i) for i in range(n)]


def test_two_daemons_share_the_work(
    tmp_path: Path, fileserver: FileServer, foreign_aria2s: Start
) -> None:
    a, b = foreign_aria2s(2)
    files = some_files(fileserver, 4)
    manifest = write(tmp_path, files)
    run = modelsync(
        "apply",
        manifest,
        "--no-progress",
        "--aria2-url",
        a.url,
        "--aria2-url",
        b.url,
        env={"MODELSYNC_ARIA2_SECRET": FOREIGN_SECRET},
    )
    assert run.code == 0, run.stderr
    placed(tmp_path, files)
    # least loaded first: with all four queued at once, each daemon got two
    assert len(a.completed()) == 2, a.completed()
    assert len(b.completed()) == 2, b.completed()
    assert FOREIGN_SECRET not in run.stdout + run.stderr


def test_comfyui_manager_servers_list(
    tmp_path: Path, fileserver: FileServer, foreign_aria2s: Start
) -> None:
    a, b = foreign_aria2s(2)
    files = some_files(fileserver, 2)
    run = modelsync(
        "apply",
        write(tmp_path, files),
        "--no-progress",
        env={
            "COMFYUI_MANAGER_ARIA2_SERVERS": f"{a.url}, {b.url}",
            "COMFYUI_MANAGER_ARIA2_SECRET": FOREIGN_SECRET,
        },
    )
    assert run.code == 0, run.stderr
    placed(tmp_path, files)
    assert a.completed() and b.completed()


def test_a_bad_url_in_the_list_is_a_usage_error_naming_it(
    tmp_path: Path, fileserver: FileServer, foreign_aria2s: Start
) -> None:
    (a,) = foreign_aria2s(1)
    files = some_files(fileserver, 1)
    run = modelsync(
        "apply",
        write(tmp_path, files),
        "--no-progress",
        env={
            "MODELSYNC_ARIA2_URL": f"{a.url},ftp://nowhere:6800",
            "MODELSYNC_ARIA2_SECRET": FOREIGN_SECRET,
        },
    )
    assert run.code == 2, run.stderr
    assert "ftp://nowhere:6800" in run.stderr and "MODELSYNC_ARIA2_URL" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "models" / "m").exists()
    assert fileserver.requests == []


def test_a_daemon_killed_mid_apply_has_its_downloads_moved(
    tmp_path: Path, fileserver: FileServer, foreign_aria2s: Start
) -> None:
    a, b = foreign_aria2s(2)
    files = some_files(fileserver, 4)
    for f in files:
        fileserver.set_faults(f.path, stall_after=MIB // 4, stall_times=100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    env["MODELSYNC_ARIA2_SECRET"] = FOREIGN_SECRET
    argv = [sys.executable, "-m", "modelsync", "apply", str(write(tmp_path, files))]
    proc = subprocess.Popen(
        [*argv, "--no-progress", "--aria2-url", f"{a.url},{b.url}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        held = fileserver.wait_until(
            lambda: (
                len({r.path for r in fileserver.requests if r.stalled}) == 4
                or proc.poll() is not None
            ),
            60,
        )
        assert held and proc.poll() is None, "the downloads never reached the server"
        a.proc.kill()
        a.proc.wait(10)
    finally:
        for f in files:
            fileserver.set_faults(f.path)
        fileserver.release_stalls()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    placed(tmp_path, files)
    assert len(b.completed()) == 4, b.completed()
    assert "stopped answering" in err and a.url in err


def test_an_attached_daemon_resumes_our_partial_instead_of_renaming_it(
    tmp_path: Path, fileserver: FileServer, foreign_aria2s: Start
) -> None:
    # A daemon of the user's keeps aria2's defaults (auto-file-renaming=true): when a
    # download moves to it from a dead daemon, the partial may be on disk before any
    # control file is; it must be written in place, not saved beside as "name.1.bin".
    (daemon,) = foreign_aria2s(1)
    (f,) = some_files(fileserver, 1)
    tmp = Layout(tmp_path).partial("m/f0.bin")
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(f.data[: MIB // 2])
    desired = Desired(name="f0", path="m/f0.bin", size=len(f.data), sha256=f.sha256)
    job = Job(Action(ActionKind.DOWNLOAD, desired), None, tmp)
    remote = RemoteFile(urls=(f.url,), filename="f0.bin", size=len(f.data))
    attached = Aria2Daemon.attach(daemon.url, FOREIGN_SECRET)
    try:
        gid = attached.add([f.url], aria2_options(job, remote, 4))
        deadline = time.monotonic() + 30
        while not attached.status([gid])[0].stopped and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a condition with a deadline
        assert attached.status([gid])[0].status == "complete"
    finally:
        attached.close()
    assert daemon.completed() == [tmp.name]
    assert sorted(p.name for p in tmp.parent.iterdir()) == [tmp.name]
    assert hashlib.sha256(tmp.read_bytes()).hexdigest() == f.sha256
