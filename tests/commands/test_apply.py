"""apply end to end: the real CLI, a real aria2c, a local file server with faults."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import modelsync
from tests.conftest import Served, serve, write_manifest
from tests.servers import FileServer

MIB = 1 << 20


def entry(s: Served, dir: str = "checkpoints", **extra: Any) -> dict[str, Any]:
    return {"url": s.url, "dir": dir, "sha256": s.sha256, "size": len(s.data), **extra}


def root_of(tmp_path: Path) -> Path:
    return tmp_path / "models"


def leftovers(tmp_path: Path) -> list[str]:
    tmp = root_of(tmp_path) / ".modelsync" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def apply_json(manifest: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    run = modelsync("apply", manifest, "--json", *args)
    return run.code, json.loads(run.stdout) if run.stdout else {}, run.stderr


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["status"] for e in doc["entries"]}


def test_fresh_download_lands_verified_then_noop(tmp_path: Path, fileserver: FileServer) -> None:
    files = [
        serve(fileserver, "/big.safetensors", 24 * MIB, seed=1),
        serve(fileserver, "/lora.safetensors", 3 * MIB + 7, seed=2),
        serve(fileserver, "/tiny.bin", 1, seed=3),
    ]
    manifest = write_manifest(
        tmp_path / "models.toml",
        [entry(files[0]), entry(files[1], dir="loras"), entry(files[2], dir="loras")],
    )
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert set(statuses(doc).values()) == {"downloaded"}
    assert sum(e["bytes_downloaded"] for e in doc["entries"]) == sum(len(f.data) for f in files)
    root = root_of(tmp_path)
    assert (root / "checkpoints/big.safetensors").read_bytes() == files[0].data
    assert (root / "loras/lora.safetensors").read_bytes() == files[1].data
    assert (root / "loras/tiny.bin").read_bytes() == files[2].data
    assert leftovers(tmp_path) == []

    fileserver.reset_log()
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert set(statuses(doc).values()) == {"ok"}
    assert fileserver.requests == []  # no network on a synced folder
    assert modelsync("plan", manifest, "--check").code == 0
    assert modelsync("verify", manifest).code == 0


def test_corrupt_bytes_never_reach_final_path(tmp_path: Path, fileserver: FileServer) -> None:
    good = serve(fileserver, "/good.bin", 2 * MIB, seed=1)
    bad = serve(fileserver, "/bad.bin", 2 * MIB, seed=2)
    fileserver.set_faults("/bad.bin", corrupt_at=MIB + 5)
    manifest = write_manifest(tmp_path / "models.toml", [entry(good), entry(bad)])
    code, doc, _err = apply_json(manifest)
    assert code == 1
    assert statuses(doc) == {"good.bin": "downloaded", "bad.bin": "failed"}
    [failed] = [e for e in doc["entries"] if e["status"] == "failed"]
    assert f"sha256 expected {bad.sha256}" in failed["error"]
    assert not (root_of(tmp_path) / "checkpoints/bad.bin").exists()
    assert leftovers(tmp_path) == []
    # Retried once from scratch: the whole file was served twice.
    assert fileserver.bytes_served("/bad.bin") >= 2 * len(bad.data)


@pytest.mark.parametrize(
    "faults",
    [
        {"fail_first": 2, "fail_status": 503},
        {"fail_first": 2, "fail_status": 429},
        {"fail_first": 1, "fail_status": 500},
        {"drop_after": 512 * 1024, "drop_times": 3},
    ],
    ids=["503", "429", "500", "dropped"],
)
def test_transient_failures_recover(
    tmp_path: Path, fileserver: FileServer, faults: dict[str, Any]
) -> None:
    f = serve(fileserver, "/flaky.bin", 4 * MIB, seed=4)
    fileserver.set_faults("/flaky.bin", **faults)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert statuses(doc) == {"flaky.bin": "downloaded"}
    assert (root_of(tmp_path) / "checkpoints/flaky.bin").read_bytes() == f.data


def test_repair_replaces_same_size_corrupt_file(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/m.bin", 3 * MIB, seed=5)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    assert modelsync("apply", manifest).code == 0
    target = root_of(tmp_path) / "checkpoints/m.bin"
    damaged = bytearray(f.data)
    damaged[12345] ^= 0xFF
    target.write_bytes(bytes(damaged))
    plan = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert plan["entries"][0]["action"] == "verify"
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert statuses(doc) == {"m.bin": "repaired"}
    assert target.read_bytes() == f.data


def test_unpinned_entry_is_placed_with_a_warning(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/free.bin", 1000, seed=6)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "dir": "misc"}])
    code, _doc, err = apply_json(manifest)
    assert code == 0, err
    assert "unpinned" in err or "no sha256" in err
    assert (root_of(tmp_path) / "misc/free.bin").read_bytes() == f.data
    fileserver.reset_log()
    assert statuses(apply_json(manifest)[1]) == {"free.bin": "ok"}
    assert fileserver.requests == []


@pytest.fixture
def slow_file(fileserver: FileServer) -> Served:
    f = serve(fileserver, "/slow.bin", 16 * MIB, seed=7)
    fileserver.set_faults("/slow.bin", rate_limit=MIB)
    return f


def start_apply(manifest: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "modelsync", "apply", str(manifest), "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, like a job in a shell
    )


def wait_for_bytes(server: FileServer, proc: subprocess.Popen[str], n: int) -> None:
    """Block until the server has sent `n` bytes; show the apply's output if it never does."""
    if not server.wait_until(lambda: server.bytes_served() >= n or proc.poll() is not None, 60):
        proc.kill()
    if proc.poll() is not None or server.bytes_served() < n:
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"apply exited {proc.returncode} early:\n{out}\n{err}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_apply_resumes(
    tmp_path: Path, fileserver: FileServer, slow_file: Served, sig: signal.Signals
) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [entry(slow_file)])
    proc = start_apply(manifest, "--connections", "2")
    wait_for_bytes(fileserver, proc, 6 * MIB)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
    else:
        proc.send_signal(sig)  # modelsync alone; its aria2c must notice and save its state
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    assert not (root_of(tmp_path) / "checkpoints/slow.bin").exists()

    if sig == signal.SIGINT:
        assert "partial downloads are kept" in err
    plan = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert plan["entries"][0]["action"] == "resume"
    to_download = plan["totals"]["download_bytes"]
    # Still throttled, so aria2's first (Range-less) probe request cannot pull megabytes
    # into socket buffers before it hangs up: what is served is what was needed.
    fileserver.set_faults("/slow.bin", rate_limit=4 * MIB)
    fileserver.reset_log()
    code, doc, err = apply_json(manifest, "--connections", "4")
    assert code == 0, err
    assert (root_of(tmp_path) / "checkpoints/slow.bin").read_bytes() == slow_file.data
    served_again = fileserver.bytes_served("/slow.bin")
    # 6 MiB were served before the interrupt; pieces in flight may be fetched again.
    assert served_again <= len(slow_file.data) - 2 * MIB, served_again
    # plan counted what the resume keeps (aria2's control file), so its figure is what
    # apply then fetched and reports, give or take the probe's bytes in flight.
    assert doc["totals"]["download_bytes"] == to_download
    assert to_download <= served_again <= to_download + MIB, (to_download, served_again)


def test_resume_without_range_support_restarts_cleanly(
    tmp_path: Path, fileserver: FileServer, slow_file: Served
) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [entry(slow_file)])
    proc = start_apply(manifest, "--connections", "2")
    wait_for_bytes(fileserver, proc, 2 * MIB)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    fileserver.set_faults("/slow.bin", no_range=True)
    code, _doc, err = apply_json(manifest)
    assert code == 0, err
    assert (root_of(tmp_path) / "checkpoints/slow.bin").read_bytes() == slow_file.data


def test_second_apply_waits_for_the_lock(
    tmp_path: Path, fileserver: FileServer, slow_file: Served
) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [entry(slow_file)])
    first = start_apply(manifest, "--connections", "2")
    try:
        wait_for_bytes(fileserver, first, 1)
        second = modelsync("apply", manifest, "--lock-timeout", "0.5")
        assert second.code == 2
        assert "waiting for another apply" in second.stderr
        assert "still working" in second.stderr and "--lock-timeout" in second.stderr
        fileserver.reset_faults()
        _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_not_enough_space_is_refused_before_downloading(
    tmp_path: Path, fileserver: FileServer, small_fs: Path
) -> None:
    f = serve(fileserver, "/huge.bin", 4 * MIB, seed=8)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)], {"root": str(small_fs)})
    run = modelsync("apply", manifest)
    assert run.code == 2
    assert "not enough disk space" in run.stderr and str(4 * MIB) in run.stderr
    assert fileserver.requests == []


def test_prune_without_yes_and_no_terminal_refuses_before_anything(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/a.bin", 1000, seed=9)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    run = modelsync("apply", manifest, "--prune")
    assert run.code == 2 and "--yes" in run.stderr
    assert fileserver.requests == [] and not root_of(tmp_path).exists()


def test_prune_with_yes_deletes_only_unmanaged_in_managed_folders(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/a.bin", 1000, seed=10)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    root = root_of(tmp_path)
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints/old.ckpt").write_bytes(b"x" * 10)
    (root / "elsewhere").mkdir()
    (root / "elsewhere/keep.bin").write_bytes(b"y")
    (root / "checkpoints/sub").mkdir()
    (root / "checkpoints/sub/keep.bin").write_bytes(b"z")
    plan = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert plan["unmanaged"] == [{"path": "checkpoints/old.ckpt", "size": 10, "prunable": True}]
    code, _doc, err = apply_json(manifest, "--prune", "--yes")
    assert code == 0, err
    assert not (root / "checkpoints/old.ckpt").exists()
    assert (root / "elsewhere/keep.bin").exists() and (root / "checkpoints/sub/keep.bin").exists()
    assert (root / "checkpoints/a.bin").read_bytes() == f.data


def test_stalled_download_is_re_added(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/stuck.bin", 4 * MIB, seed=11)
    # The first response stops sending after 1 MiB and never closes: only our watchdog
    # (not aria2's 60 s timeout) gets the download going again.
    fileserver.set_faults("/stuck.bin", stall_after=MIB, stall_times=1)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    run = modelsync("apply", manifest, "--connections", "1", "--stall-timeout", "2")
    assert run.code == 0, run.stderr
    assert "no progress for 2s" in run.stderr
    assert (root_of(tmp_path) / "checkpoints/stuck.bin").read_bytes() == f.data
    resumed = [r for r in fileserver.requests if r.range and not r.range.startswith("bytes=0-")]
    assert resumed, "the re-added download should resume, not start over"


@pytest.fixture
def foreign_aria2(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An aria2c someone else runs (ComfyUI-Manager's, say), with a known secret."""
    from modelsync.aria2 import find_aria2c

    secret = "foreign-rpc-secret-5f1c"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            find_aria2c(),
            "--enable-rpc",
            f"--rpc-listen-port={port}",
            f"--rpc-secret={secret}",
            "--no-conf",
            "--disable-ipv6",
            f"--dir={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/jsonrpc", secret
    finally:
        proc.terminate()
        proc.wait(10)


def test_attach_to_a_running_daemon(
    tmp_path: Path, fileserver: FileServer, foreign_aria2: tuple[str, str]
) -> None:
    url, secret = foreign_aria2
    f = serve(fileserver, "/att.bin", 3 * MIB, seed=12)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f)])
    env = {"COMFYUI_MANAGER_ARIA2_SERVER": url, "COMFYUI_MANAGER_ARIA2_SECRET": secret}
    run = modelsync("apply", manifest, "--json", env=env)
    assert run.code == 0, run.stderr
    assert (root_of(tmp_path) / "checkpoints/att.bin").read_bytes() == f.data
    assert secret not in run.stdout + run.stderr
    # The foreign daemon is still up: we attached, we did not own it.
    from modelsync.aria2 import Aria2Daemon

    with Aria2Daemon.attach(url, secret) as daemon:
        assert daemon.version()
    (root_of(tmp_path) / "checkpoints/att.bin").unlink()
    bad_env = {**env, "COMFYUI_MANAGER_ARIA2_SECRET": "wrong-secret-0a9b"}
    wrong = modelsync("apply", manifest, env=bad_env)
    assert wrong.code == 2, wrong.stderr  # nothing was done
    assert "127.0.0.1" in wrong.stderr and "wrong-secret-0a9b" not in wrong.stderr
    assert fileserver.bytes_served("/att.bin") == len(f.data)


def test_redirects_and_empty_files(tmp_path: Path, fileserver: FileServer) -> None:
    real = serve(fileserver, "/store/real.bin", 2 * MIB, seed=13)
    empty = serve(fileserver, "/empty.bin", 0)
    fileserver.set_faults("/moved.bin", redirect=real.url, redirect_status=302)
    moved = Served("/moved.bin", real.data, fileserver.url_for("/moved.bin"))
    manifest = write_manifest(tmp_path / "models.toml", [entry(moved), entry(empty)])
    code, doc, err = apply_json(manifest)
    assert code == 0, err
    assert statuses(doc) == {"moved.bin": "downloaded", "empty.bin": "downloaded"}
    assert (root_of(tmp_path) / "checkpoints/moved.bin").read_bytes() == real.data
    assert (root_of(tmp_path) / "checkpoints/empty.bin").read_bytes() == b""


def test_prune_never_deletes_in_root_itself(tmp_path: Path, fileserver: FileServer) -> None:
    """root = "." with entries in root itself: the manifest and lock sit among the models,
    and root is no folder an entry names through `dir`: nothing there is pruned."""
    f = serve(fileserver, "/a.bin", 1000, seed=14)
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": f.url, "sha256": f.sha256}], {"root": "."}
    )
    assert modelsync("lock", manifest).code == 0
    (tmp_path / "stray.ckpt").write_bytes(b"old")
    (tmp_path / ".hidden").write_bytes(b"editor state")
    code, doc, err = apply_json(manifest, "--prune", "--yes")
    assert code == 0, err
    assert "pruned" not in doc
    assert doc["unmanaged"] == [{"path": "stray.ckpt", "size": 3, "prunable": False}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".hidden",
        ".modelsync",
        "a.bin",
        "models.lock",
        "models.toml",
        "stray.ckpt",
    ]


def test_lock_pins_a_url_with_a_space(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/sp/a b.bin", 2000, seed=15)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url.replace("%20", " ")}])
    run = modelsync("lock", manifest)
    assert run.code == 0, run.stderr
    lock = (tmp_path / "models.lock").read_text()
    assert "/sp/a%20b.bin" in lock and f.sha256 in lock
