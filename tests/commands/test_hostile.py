"""Faults of the world around apply: files that change upstream, a full disk, folders it
cannot or must not write, and servers that lie. Each ends in a correct file or a clear
per-entry error, never a hang, never a write outside root (real CLI, real aria2c)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelsync.layout import tmp_name
from tests.clirun import Run, modelsync
from tests.conftest import serve, write_manifest
from tests.servers import FileServer

MIB = 1 << 20


def apply_json(manifest: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", *args)
    assert run.stdout, run.stderr
    return run, json.loads(run.stdout)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in doc["entries"]}


def start_apply(manifest: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "modelsync", "apply", str(manifest), "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def leftovers(root: Path) -> list[str]:
    tmp = root / ".modelsync/tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def sidecar(root: Path, relpath: str) -> Path:
    return root / ".modelsync/tmp" / (tmp_name(relpath) + ".want")


def knows_the_version(path: Path) -> bool:
    """The download recorded which version upstream it is of (its ETag, from one HEAD)."""
    try:
        return "upstream" in path.read_text()
    except FileNotFoundError:
        return False


# ---- the file changes upstream ------------------------------------------------------------


def test_a_partial_of_an_older_version_is_not_resumed(
    tmp_path: Path, fileserver: FileServer
) -> None:
    old = serve(fileserver, "/m.bin", 16 * MIB, seed=1)
    fileserver.set_faults("/m.bin", rate_limit=MIB, stall_after=6 * MIB, stall_times=10)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": old.url}])
    root = tmp_path / "models"
    proc = start_apply(manifest)
    # Bytes keep flowing (each chunk wakes wait_until) well after the download knows its
    # version; then every connection stalls at 6 MiB: most of the file is in the partial.
    assert fileserver.wait_until(
        lambda: (
            knows_the_version(sidecar(root, "m.bin"))
            and len([r for r in fileserver.requests if r.stalled]) >= 2
        ),
        60,
    )
    proc.kill()
    proc.communicate(timeout=60)

    new = serve(fileserver, "/m.bin", 16 * MIB, seed=2)  # same size, new ETag
    fileserver.reset_faults()
    fileserver.release_stalls()
    fileserver.reset_log()
    run = modelsync("apply", manifest)
    assert run.code == 0, run.stderr
    assert (root / "m.bin").read_bytes() == new.data  # not old bytes with a new tail
    said = " ".join(run.stderr.split())
    assert "m.bin: the file changed upstream since its partial download began (ETag" in said
    assert fileserver.bytes_served("/m.bin") >= len(new.data)  # started over, not resumed
    assert leftovers(root) == []


def test_a_file_that_changes_between_segments_is_downloaded_again(
    tmp_path: Path, fileserver: FileServer
) -> None:
    old = serve(fileserver, "/m.bin", 24 * MIB, seed=3)
    fileserver.set_faults("/m.bin", rate_limit=2 * MIB, stall_after=4 * MIB, stall_times=10)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": old.url}])
    root = tmp_path / "models"
    proc = start_apply(manifest)
    assert fileserver.wait_until(
        lambda: (
            knows_the_version(sidecar(root, "m.bin"))
            and any(r.stalled for r in fileserver.requests)
        ),
        60,
    )
    # Upstream publishes a new version of the same size while the segments are open:
    # the connections break, aria2 fetches the rest of each segment from the new one.
    new = serve(fileserver, "/m.bin", 24 * MIB, seed=4)
    fileserver.stop()
    fileserver.reset_faults()
    fileserver.start()
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert (root / "m.bin").read_bytes() == new.data
    said = " ".join(err.split())
    assert "m.bin: the file changed upstream during the download (ETag" in said
    assert "starting over" in said
    assert leftovers(root) == []


# ---- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs; the tests run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_that_entry_and_keeps_the_others(
    tmp_path: Path, fileserver: FileServer, small_disk: Path
) -> None:
    a = serve(fileserver, "/a.bin", MIB, seed=5)
    big = serve(fileserver, "/big.bin", 8 * MIB, seed=6)
    c = serve(fileserver, "/c.bin", 300_000, seed=7)
    # No sizes known ahead: the preflight space check cannot see it coming.
    entries = [{"url": a.url, "priority": 90}, {"url": big.url}, {"url": c.url, "priority": 10}]
    root = small_disk / "models"
    manifest = write_manifest(tmp_path / "models.toml", entries, {"root": str(root)})
    run, doc = apply_json(manifest, "--jobs", "1")
    assert run.code == 1, run.stderr
    entries_ = by_name(doc)
    assert entries_["a.bin"]["status"] == "downloaded"
    assert entries_["c.bin"]["status"] == "downloaded"
    assert entries_["big.bin"]["status"] == "failed"
    assert entries_["big.bin"]["error"].startswith(f"no space left on {small_disk} (needs ")
    assert "MiB more); free some space and run apply again" in entries_["big.bin"]["error"]
    assert (root / "a.bin").read_bytes() == a.data and (root / "c.bin").read_bytes() == c.data
    assert leftovers(root) == []  # the partial that filled the disk is gone

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert {n: e["status"] for n, e in by_name(doc).items()} == {
        "a.bin": "ok",
        "big.bin": "downloaded",
        "c.bin": "ok",
    }
    assert (root / "big.bin").read_bytes() == big.data


def fill(disk: Path) -> Path:
    """Another process takes every free byte."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    return filler


def test_a_disk_filled_by_another_process_during_a_download(
    tmp_path: Path, fileserver: FileServer, small_disk: Path
) -> None:
    a = serve(fileserver, "/a.bin", 500_000, seed=20)
    big = serve(fileserver, "/big.bin", 2 * MIB, seed=21)
    root = small_disk / "models"
    settings = {"root": str(root)}
    first = write_manifest(tmp_path / "a.toml", [{"url": a.url}], settings)
    assert modelsync("apply", first).code == 0
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": a.url}, {"url": big.url}], settings
    )
    fileserver.set_faults("/big.bin", stall_after=MIB)
    proc = start_apply(manifest, "--json")
    assert fileserver.wait_until(lambda: any(r.stalled for r in fileserver.requests), 60)
    filler = fill(small_disk)
    fileserver.release_stalls()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    got = by_name(json.loads(out))
    assert got["a.bin"]["status"] == "ok" and (root / "a.bin").read_bytes() == a.data
    assert got["big.bin"]["error"].startswith(f"no space left on {small_disk} (needs ")
    assert leftovers(root) == []

    filler.unlink()  # space freed: the next apply completes
    fileserver.reset_faults()
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert by_name(doc)["big.bin"]["status"] == "downloaded"
    assert (root / "big.bin").read_bytes() == big.data


def test_a_disk_already_full_is_said_before_anything(
    tmp_path: Path, fileserver: FileServer, small_disk: Path
) -> None:
    a = serve(fileserver, "/a.bin", 100_000, seed=22)
    b = serve(fileserver, "/b.bin", 100_000, seed=23)
    root = small_disk / "models"
    settings = {"root": str(root)}
    first = write_manifest(tmp_path / "a.toml", [{"url": a.url}], settings)
    assert modelsync("apply", first).code == 0
    manifest = write_manifest(tmp_path / "models.toml", [{"url": a.url}, {"url": b.url}], settings)
    filler = fill(small_disk)
    run = modelsync("apply", manifest)
    assert run.code == 2, run.stderr
    said = " ".join(run.stderr.split())
    assert f"error: no space left on {small_disk}: modelsync cannot even write its own" in said
    assert "moving it aside" not in said  # state.db (the learned pins) is not the culprit
    assert sorted(p.name for p in (root / ".modelsync").glob("state.db*"))[0] == "state.db"
    assert not list((root / ".modelsync").glob("*.corrupt*"))

    filler.unlink()
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert {n: e["status"] for n, e in by_name(doc).items()} == {
        "a.bin": "ok",
        "b.bin": "downloaded",
    }


# ---- folders it cannot, or must not, write ---------------------------------------------------


def test_a_read_only_root_is_a_clear_error(
    tmp_path: Path, fileserver: FileServer, small_disk: Path
) -> None:
    f = serve(fileserver, "/m.bin", 1000, seed=8)
    root = small_disk / "models"
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url}], {"root": str(root)})
    assert modelsync("apply", manifest).code == 0  # .modelsync/ exists, then the disk goes ro
    (root / "m.bin").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    run = modelsync("apply", manifest)
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"cannot use {root} as the models folder" in run.stderr
    assert "Read-only file system" in run.stderr
    assert fileserver.bytes_served("/m.bin") == 1000  # nothing fetched for nowhere


def test_a_folder_it_may_not_write_fails_that_entry_and_keeps_the_download(
    tmp_path: Path, fileserver: FileServer
) -> None:
    lora = serve(fileserver, "/lora.bin", 100_000, seed=9)
    ckpt = serve(fileserver, "/ckpt.bin", 100_000, seed=10)
    entries = [
        {"url": lora.url, "dir": "loras", "sha256": lora.sha256, "size": 100_000},
        {"url": ckpt.url, "dir": "checkpoints"},
    ]
    manifest = write_manifest(tmp_path / "models.toml", entries)
    loras = tmp_path / "models/loras"
    loras.mkdir(parents=True)
    # root ignores modes: an immutable folder is what denies root a write.
    subprocess.run(["chattr", "+i", str(loras)], check=True)
    try:
        run, doc = apply_json(manifest)
    finally:
        subprocess.run(["chattr", "-i", str(loras)], check=True)
    assert run.code == 1, run.stderr
    got = by_name(doc)
    assert got["ckpt.bin"]["status"] == "downloaded"
    assert got["lora.bin"]["status"] == "failed"
    assert got["lora.bin"]["error"].startswith(
        f"cannot write {loras}/lora.bin: permission denied for its folder"
    )
    fileserver.reset_log()
    run, doc = apply_json(manifest)  # the folder is writable again: placed, not fetched
    assert run.code == 0, run.stderr
    assert by_name(doc)["lora.bin"]["status"] == "downloaded"
    assert (loras / "lora.bin").read_bytes() == lora.data
    assert fileserver.bytes_served("/lora.bin") == 0


def test_a_folder_that_is_another_mount_is_said_in_words(
    tmp_path: Path, fileserver: FileServer, small_disk: Path
) -> None:
    f = serve(fileserver, "/m.bin", 1000, seed=24)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "dir": "big"}])
    big = tmp_path / "models/big"
    big.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(small_disk), str(big)], check=True)
    try:
        run, doc = apply_json(manifest)
    finally:
        subprocess.run(["umount", str(big)], check=True)
    assert run.code == 1, run.stderr
    assert by_name(doc)["m.bin"]["error"].startswith(
        f"cannot place {big}/m.bin: its folder is another file system (a mount inside root)"
    )


def test_a_target_that_is_a_folder_is_not_downloaded(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/m.bin", 1000, seed=11)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url}])
    (tmp_path / "models/m.bin").mkdir(parents=True)
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    error = by_name(doc)["m.bin"]["error"]
    assert (
        error
        == f"{tmp_path}/models/m.bin is a folder, not a file; move it away or change the filename"
    )
    assert [r for r in fileserver.requests if r.method == "GET"] == []
    assert (tmp_path / "models/m.bin").is_dir()


def test_a_folder_swapped_for_a_link_out_of_root_is_not_written_through(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/lora.bin", 2 * MIB, seed=12)
    fileserver.set_faults("/lora.bin", stall_after=MIB)
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": f.url, "dir": "loras", "sha256": f.sha256}]
    )
    loras, outside = tmp_path / "models/loras", tmp_path / "outside"
    loras.mkdir(parents=True)
    outside.mkdir()
    proc = start_apply(manifest, "--json")
    assert fileserver.wait_until(lambda: any(r.stalled for r in fileserver.requests), 60)
    loras.rename(tmp_path / "models/loras-was")  # after the plan, before the placement
    loras.symlink_to(outside)
    fileserver.release_stalls()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    error = by_name(json.loads(out))["lora.bin"]["error"]
    assert error.startswith(f"{loras} is a link to {outside}, outside {tmp_path}/models: ")
    assert list(outside.iterdir()) == []  # nothing written outside root


# ---- servers that lie ------------------------------------------------------------------------


def test_a_content_length_longer_than_the_body(tmp_path: Path, fileserver: FileServer) -> None:
    free = serve(fileserver, "/free.bin", MIB, seed=13)
    pinned = serve(fileserver, "/pinned.bin", MIB, seed=14)
    fileserver.set_faults(extra_length=1000)
    entries = [{"url": free.url}, {"url": pinned.url, "sha256": pinned.sha256, "size": MIB}]
    manifest = write_manifest(tmp_path / "models.toml", entries)
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    got = by_name(doc)
    assert got["free.bin"]["error"] == (
        f"the server announced {MIB + 1000} bytes but the body ended early and it refuses "
        "the rest: its Content-Length is wrong or the file is cut short there"
    )
    assert got["pinned.bin"]["error"] == (
        f"the server announced {MIB + 1000} bytes, more than the file's {MIB} bytes; "
        "the download was stopped and removed"
    )
    said = " ".join(run.stderr.split())  # started over once (it might have shrunk), no more
    assert said.count("ended early and it refuses the rest; starting over") == 1
    ranges = [r.range for r in fileserver.requests if r.path == "/free.bin"]
    # whole-file requests and asks for the missing tail only (how many of each is aria2's
    # own retry timing, which varies under load: the "starting over" count above is ours)
    assert ranges[0] is None, ranges
    assert {r for r in ranges if r is not None} == {f"bytes={MIB}-{MIB + 999}"}, ranges
    assert leftovers(tmp_path / "models") == []


def test_an_endless_body_stops_at_the_pinned_size_or_max_file_size(
    tmp_path: Path, fileserver: FileServer
) -> None:
    pinned = serve(fileserver, "/pinned.bin", MIB, seed=15)
    free = serve(fileserver, "/free.bin", MIB, seed=16)
    fileserver.set_faults(endless=True, rate_limit=8 * MIB)
    entries = [{"url": pinned.url, "sha256": pinned.sha256, "size": MIB}, {"url": free.url}]
    manifest = write_manifest(tmp_path / "models.toml", entries, {"max_file_size": "2M"})
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    got = by_name(doc)
    assert got["pinned.bin"]["error"] == (
        f"the server kept sending past the file's {MIB} bytes (an endless body); "
        "the download was stopped and removed"
    )
    assert got["free.bin"]["error"] == (
        f"the server kept sending past settings.max_file_size ({2 * MIB} bytes) "
        "(an endless body); the download was stopped and removed"
    )
    assert leftovers(tmp_path / "models") == []


def test_a_redirect_loop(tmp_path: Path, fileserver: FileServer) -> None:
    fileserver.set_faults("/m.bin", redirect="/m.bin")
    manifest = write_manifest(tmp_path / "models.toml", [{"url": fileserver.url_for("/m.bin")}])
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    assert by_name(doc)["m.bin"]["error"] == f"too many redirects from {fileserver.url}/m.bin"
    assert leftovers(tmp_path / "models") == []


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
def test_an_html_page_instead_of_the_file(
    tmp_path: Path, fileserver: FileServer, pinned: bool
) -> None:
    page = b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n"
    url = fileserver.add_bytes("/m.bin", page, content_type="text/html; charset=utf-8")
    entry: dict[str, Any] = {"url": url}
    if pinned:
        entry["sha256"] = "ab" * 32
    manifest = write_manifest(tmp_path / "models.toml", [entry])
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    assert by_name(doc)["m.bin"]["error"].startswith(
        "the server sent an HTML page (text/html), not the file; "
    )
    assert not (tmp_path / "models/m.bin").exists()
    assert leftovers(tmp_path / "models") == []


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
def test_a_gzip_encoded_body_becomes_the_file(
    tmp_path: Path, fileserver: FileServer, pinned: bool
) -> None:
    data = b"weights " * 200_000  # compressible: smaller on the wire than its pinned size
    url = fileserver.add_bytes("/m.bin", data)
    fileserver.set_faults(gzip=True)  # Content-Encoding: gzip, though aria2 did not ask
    entry: dict[str, Any] = {"url": url}
    if pinned:
        entry |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = write_manifest(tmp_path / "models.toml", [entry])
    run, _doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/m.bin").read_bytes() == data
    assert fileserver.bytes_served("/m.bin") == len(gzip.compress(data, mtime=0))


def test_a_server_that_ignores_range_gives_a_correct_file(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/m.bin", 20 * MIB, seed=17)  # several segments asked for
    fileserver.set_faults(no_range=True)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "sha256": f.sha256}])
    run = modelsync("apply", manifest)
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/m.bin").read_bytes() == f.data


def test_a_first_byte_slower_than_the_watchdog_is_an_error_not_a_hang(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/m.bin", 1000, seed=18)
    fileserver.set_faults(first_byte_delay=30)  # each request; stop() ends the waits
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url}])
    run, doc = apply_json(manifest, "--stall-timeout", "1")
    assert run.code == 1, run.stderr
    assert by_name(doc)["m.bin"]["error"] == "no progress for 1s (gave up after 4 attempts)"
    assert leftovers(tmp_path / "models") == []


def test_a_slow_first_byte_within_the_watchdog_is_waited_for(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/m.bin", 1000, seed=19)
    fileserver.set_faults(first_byte_delay=1)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url}])
    run = modelsync("apply", manifest, "--stall-timeout", "20")
    assert run.code == 0, run.stderr
    assert "retrying" not in run.stderr
    assert (tmp_path / "models/m.bin").read_bytes() == f.data
