"""Many small pinned files are fetched in-process (modelsync/direct.py), through the same
check and placement as aria2's downloads; anything unusual hands a file back to aria2."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelsync.direct import DIRECT_MIN_FILES, DIRECT_WORKERS, TIMEOUT
from tests.clirun import Run, modelsync
from tests.conftest import Served, serve, toml_value
from tests.servers import FileServer

SIZE = 20_000


def write(tmp_path: Path, files: list[Served], extra: str = "") -> Path:
    lines = ['[settings]\nroot = "models"\n' + extra]
    for f in files:
        lines += ["[[models]]", f"url = {toml_value(f.url)}", 'dir = "m"']
        lines += [f"sha256 = {toml_value(f.sha256)}", f"size = {len(f.data)}", ""]
    path = tmp_path / "models.toml"
    path.write_text("\n".join(lines))
    return path


def apply_json(manifest: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", "--no-progress", *args)
    assert run.stdout, run.stderr
    return run, json.loads(run.stdout)


def small_files(fileserver: FileServer, n: int) -> list[Served]:
    return [serve(fileserver, f"/s{i:02d}.bin", SIZE, seed=100 + i) for i in range(n)]


def agents(fileserver: FileServer, path: str) -> set[str]:
    return {
        r.headers.get("user-agent", "").split("/")[0]
        for r in fileserver.requests
        if r.path == path and r.method == "GET"
    }


def placed_right(tmp_path: Path, f: Served) -> bool:
    target = tmp_path / "models" / "m" / Path(f.path).name
    return target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == f.sha256


def test_many_small_files_are_fetched_in_process_on_kept_alive_connections(
    tmp_path: Path, fileserver: FileServer
) -> None:
    files = small_files(fileserver, DIRECT_MIN_FILES + 4)
    manifest = write(tmp_path, files)
    run, report = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert {e["status"] for e in report["entries"]} == {"downloaded"}
    assert all(placed_right(tmp_path, f) for f in files)
    gets = [r for r in fileserver.requests if r.method == "GET"]
    assert len(gets) == len(files)  # one GET each, no probe, no second try
    assert {r.headers.get("user-agent", "").split("/")[0] for r in gets} == {"modelsync"}
    assert len({r.conn for r in gets}) < len(files)  # connections were kept alive
    assert list((tmp_path / "models" / ".modelsync" / "tmp").iterdir()) == []
    # recorded like any download: the next apply reads nothing and asks nobody
    before = len(fileserver.requests)
    again, report = apply_json(manifest)
    assert again.code == 0 and {e["status"] for e in report["entries"]} == {"ok"}
    assert len(fileserver.requests) == before


def test_a_few_small_files_still_go_through_aria2(tmp_path: Path, fileserver: FileServer) -> None:
    files = small_files(fileserver, DIRECT_MIN_FILES - 1)
    run, _report = apply_json(write(tmp_path, files))
    assert run.code == 0, run.stderr
    assert all(agents(fileserver, f.path) == {"aria2"} for f in files)


def test_settings_aria2_options_keep_every_file_on_aria2(
    tmp_path: Path, fileserver: FileServer
) -> None:
    # a user agent or a proxy in [settings.aria2] is aria2's to apply: no in-process fetch
    files = small_files(fileserver, DIRECT_MIN_FILES + 1)
    extra = '[settings.aria2]\nuser-agent = "team-agent/1.0"\n'
    run, _report = apply_json(write(tmp_path, files, extra))
    assert run.code == 0, run.stderr
    assert all(agents(fileserver, f.path) == {"team-agent"} for f in files)


def test_corrupt_bytes_go_to_aria2_and_fail_with_the_usual_words(
    tmp_path: Path, fileserver: FileServer
) -> None:
    files = small_files(fileserver, DIRECT_MIN_FILES + 2)
    bad = files[3]
    fileserver.set_faults(bad.path, corrupt_at=100)
    run, report = apply_json(write(tmp_path, files))
    assert run.code == 1, run.stderr
    by_name = {e["name"]: e for e in report["entries"]}
    entry = by_name[Path(bad.path).name]
    assert entry["status"] == "failed" and "the same bytes twice" in entry["error"]
    assert not (tmp_path / "models" / "m" / Path(bad.path).name).exists()
    assert agents(fileserver, bad.path) == {"modelsync", "aria2"}  # tried here, then by aria2
    assert all(placed_right(tmp_path, f) for f in files if f is not bad)


def test_a_dropped_connection_hands_the_file_to_aria2_which_completes_it(
    tmp_path: Path, fileserver: FileServer
) -> None:
    files = small_files(fileserver, DIRECT_MIN_FILES + 2)
    cut = files[5]
    fileserver.set_faults(cut.path, drop_after=SIZE // 2, drop_times=1)
    run, report = apply_json(write(tmp_path, files))
    assert run.code == 0, run.stderr
    assert {e["status"] for e in report["entries"]} == {"downloaded"}
    assert all(placed_right(tmp_path, f) for f in files)
    assert agents(fileserver, cut.path) == {"modelsync", "aria2"}


def test_a_redirect_to_another_host_is_followed(tmp_path: Path, fileserver: FileServer) -> None:
    # 127.0.0.1 sends each file on to localhost: another origin, as a CDN would be
    files = small_files(fileserver, DIRECT_MIN_FILES + 1)
    for f in files:
        target = "/cdn" + f.path
        fileserver.add_bytes(target, f.data)
        fileserver.set_faults(f.path, redirect=f"http://localhost:{fileserver.port}{target}")
    run, report = apply_json(write(tmp_path, files))
    assert run.code == 0, run.stderr
    assert {e["status"] for e in report["entries"]} == {"downloaded"}
    assert all(placed_right(tmp_path, f) for f in files)
    cdn = [r for r in fileserver.requests if r.path.startswith("/cdn/")]
    assert len(cdn) == len(files) and all(r.headers["host"].startswith("localhost") for r in cdn)


def test_ctrl_c_ends_stalled_in_process_fetches_at_once(
    tmp_path: Path, fileserver: FileServer
) -> None:
    files = small_files(fileserver, DIRECT_MIN_FILES + 4)
    for f in files:
        fileserver.set_faults(f.path, stall_after=SIZE // 2, stall_times=100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelsync", "apply", str(write(tmp_path, files)), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        held = fileserver.wait_until(
            lambda: (
                sum(r.stalled for r in fileserver.requests) >= DIRECT_WORKERS
                or proc.poll() is not None
            ),
            60,
        )
        assert held and proc.poll() is None, "the fetches never reached the server"
        os.killpg(proc.pid, signal.SIGINT)
        # Before a read would time out by itself: the fetches were cut, not waited for.
        _out, err = proc.communicate(timeout=TIMEOUT - 2)
    finally:
        fileserver.release_stalls()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list((tmp_path / "models" / ".modelsync" / "tmp").iterdir()) == []
    assert not (tmp_path / "models" / "m").exists() or not any(
        (tmp_path / "models" / "m").iterdir()
    )
