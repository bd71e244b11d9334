"""apply with [settings.aria2]: refused options stop it before anything is touched; allowed
ones reach each download, on modelsync's own aria2c and on an attached one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelsync.aria2 import Aria2Daemon
from tests.clirun import modelsync
from tests.conftest import serve, toml_value
from tests.servers import FileServer

MIB = 1 << 20


def write(tmp_path: Path, aria2: dict[str, Any], entries: list[dict[str, Any]]) -> Path:
    lines = ['[settings]\nroot = "models"\n\n[settings.aria2]']
    lines += [f"{key} = {toml_value(value)}" for key, value in aria2.items()]
    for entry in entries:
        lines.append("\n[[models]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    path = tmp_path / "models.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


REFUSED = [
    ("rpc-listen-all", True, "refused"),  # opens the RPC to the network
    ("on-download-complete", "/bin/sh", "runs a command"),
    ("dir", "/tmp", "outside .modelsync/tmp/"),
    ("save-session", "/tmp/session", "outside .modelsync/tmp/"),
    ("split", 4, "use connections in [settings]"),
    ("max-concurrent-downloads", 2, "use max_concurrent"),
    ("rpc-secret", "s3cret-value", "$MODELSYNC_ARIA2_SECRET"),
    ("lowest-speed", "1M", "did you mean 'lowest-speed-limit'"),
    ("timeout", "30", "a whole number of seconds from 1 to 600"),  # a wrong type
    ("check-certificate", "no", "true or false"),
]


@pytest.mark.parametrize(("key", "value", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_option_exits_2_and_touches_nothing(
    tmp_path: Path, fileserver: FileServer, key: str, value: Any, words: str
) -> None:
    f = serve(fileserver, "/a.bin", MIB, seed=1)
    manifest = write(tmp_path, {"max-tries": 5, key: value}, [{"url": f.url, "dir": "c"}])
    run = modelsync("apply", manifest, "--json")
    assert run.code == 2, run.stderr
    assert f"line 6: [settings.aria2]: key {key!r}: " in run.stderr
    assert words in run.stderr
    (problem,) = json.loads(run.stdout)["error"]["problems"]
    assert (problem["key"], problem["line"]) == (f"settings.aria2.{key}", 6)
    assert not (tmp_path / "models").exists()  # no root, no .modelsync/
    assert fileserver.requests == []
    assert "s3cret-value" not in run.stderr  # the refused secret's value is not echoed
    assert "Traceback" not in run.stderr


def test_per_download_options_reach_the_download(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/model.bin", 20 * MIB, seed=2)
    aria2 = {"user-agent": "team-sync/1.0", "disk-cache": "4M", "min-split-size": "16M"}
    manifest = write(tmp_path, aria2, [{"url": f.url, "dir": "c", "sha256": f.sha256}])
    run = modelsync("apply", manifest, "--json")
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/c/model.bin").read_bytes() == f.data  # verified, in place
    gets = [r for r in fileserver.requests if r.method == "GET"]
    assert gets and {r.headers.get("user-agent") for r in gets} == {"team-sync/1.0"}
    # min-split-size 16M (the user's, over modelsync's 8M): 20 MiB makes at most 2 parts
    assert len({r.range for r in gets}) <= 2


def test_attached_daemon_gets_options_per_download_and_keeps_its_globals(
    tmp_path: Path, fileserver: FileServer, foreign_aria2: tuple[str, str]
) -> None:
    url, secret = foreign_aria2
    f = serve(fileserver, "/held.bin", 4 * MIB, seed=3)
    fileserver.set_faults("/held.bin", stall_after=MIB, stall_times=100)
    aria2 = {
        "lowest-speed-limit": "1K",
        "user-agent": "team-sync/2.0",
        "max-tries": 7,
        "disk-cache": "32M",  # global only: not for a daemon modelsync does not own
        "check-certificate": False,
    }
    manifest = write(tmp_path, aria2, [{"url": f.url, "dir": "c", "sha256": f.sha256}])
    with Aria2Daemon.attach(url, secret) as user:
        before = user.get_global_option()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
        env |= {"MODELSYNC_ARIA2_URL": url, "MODELSYNC_ARIA2_SECRET": secret}
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelsync", "apply", str(manifest), "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            held = fileserver.wait_until(
                lambda: any(r.stalled for r in fileserver.requests) or proc.poll() is not None, 60
            )
            assert held and proc.poll() is None, "the download never reached the server"
            (active,) = user.client.tell_active(["gid"])
            options = user.client.get_option(active["gid"])
            after = user.get_global_option()
        finally:
            fileserver.release_stalls()
            fileserver.set_faults("/held.bin")
            fileserver.release_stalls()
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert options["lowest-speed-limit"] == "1024"
    assert options["user-agent"] == "team-sync/2.0"
    assert options["max-tries"] == "7"
    for key in ("disk-cache", "check-certificate", "lowest-speed-limit", "user-agent"):
        assert after[key] == before[key], key  # the user's daemon keeps its globals
    assert (tmp_path / "models/c/held.bin").read_bytes() == f.data
    assert secret not in err
    assert "[settings.aria2] disk-cache, check-certificate: not applied to the aria2 at" in err
