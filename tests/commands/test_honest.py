"""Honest answers: what plan, verify and lock say after corruption, offline, or twice."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.clirun import modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers import FileServer


def doc_of(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    run = modelsync(*args, "--json", env=env)
    assert run.stdout, run.stderr
    return run.code, json.loads(run.stdout)


def by_name(doc: dict[str, Any], key: str) -> dict[str, str]:
    return {e["name"]: e[key] for e in doc["entries"]}


def flip_a_byte(path: Path, offset: int = 100) -> None:
    """Same size, other content: only a hash tells."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fast", [False, True], ids=["sha256", "xxh3"])
def test_plan_says_repair_for_a_file_that_verify_found_corrupt(
    tmp_path: Path, fileserver: FileServer, fast: bool
) -> None:
    f = serve(fileserver, "/m.bin", 50_000, seed=20)
    entry: dict[str, Any] = {"url": f.url, "dir": "d", "sha256": f.sha256, "size": len(f.data)}
    if fast:  # both hashes pinned: verify re-checks xxh3_128 alone
        entry["xxh3_128"] = xxhash.xxh3_128_hexdigest(f.data)
    manifest = write_manifest(tmp_path / "models.toml", [entry])
    assert modelsync("apply", manifest).code == 0
    flip_a_byte(tmp_path / "models/d/m.bin")

    code, doc = doc_of("verify", manifest)
    assert code == 1 and by_name(doc, "status") == {"m.bin": "corrupt"}
    code, doc = doc_of("plan", manifest)
    assert code == 0 and by_name(doc, "action") == {"m.bin": "repair"}
    run = modelsync("plan", manifest)
    assert f"sha256 expected {f.sha256}, got " in run.stderr  # the mismatch is the reason


def test_plan_says_repair_after_apply_found_a_file_corrupt_and_could_not_fetch_it(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/m.bin", 50_000, seed=21)
    entry = {"url": f.url, "dir": "d", "sha256": f.sha256, "size": len(f.data)}
    manifest = write_manifest(tmp_path / "models.toml", [entry])
    target = tmp_path / "models/d/m.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(f.data)
    flip_a_byte(target)
    fileserver.remove("/m.bin")  # the repair cannot download it

    code, doc = doc_of("apply", manifest)
    assert code == 1 and by_name(doc, "status") == {"m.bin": "failed"}
    code, doc = doc_of("plan", manifest)
    assert by_name(doc, "action") == {"m.bin": "repair"}  # not hashed again to find out


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_offline_plan_of_entries_pinned_by_sha256_and_size(tmp_path: Path) -> None:
    data = blob(30_000, seed=22)
    sha256 = hashlib.sha256(data).hexdigest()
    port = closed_port()
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "CIVITAI_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    pins = {"sha256": sha256, "size": len(data)}
    hf = {"hf": "org/sdxl", "file": "unet/model.safetensors", "dir": "unet", **pins}
    other = blob(20_000, seed=23)  # other bytes: not reusable from the file placed below
    other_pins = {"sha256": hashlib.sha256(other).hexdigest(), "size": len(other)}
    named_civitai = {"civitai": 11, "filename": "lora.safetensors", "dir": "loras", **other_pins}
    civitai = {"civitai": 12, "dir": "loras", **pins}  # its file name: only Civitai knows it
    manifest = write_manifest(tmp_path / "models.toml", [hf, named_civitai, civitai])

    code, doc = doc_of("plan", manifest, env=env)
    assert code == 1  # the unnamed Civitai entry
    assert by_name(doc, "action") == {
        "model.safetensors": "download",
        "lora.safetensors": "download",
        "civitai-12": "download",
    }
    statuses = by_name(doc, "status")
    assert statuses == {"model.safetensors": "pending", "lora.safetensors": "pending"} | {
        "civitai-12": "failed"
    }
    assert "set filename" in modelsync("plan", manifest, env=env).stderr
    assert {e["path"] for e in doc["entries"]} >= {
        "unet/model.safetensors",
        "loras/lora.safetensors",
    }
    warnings = "\n".join(doc["warnings"])
    assert f"model.safetensors: 127.0.0.1:{port} was not reached" in warnings
    assert f"lora.safetensors: 127.0.0.1:{port} was not reached" in warnings

    # Without the unnamed entry: plan exits 0; a file in place is verified and ok, offline.
    manifest = write_manifest(tmp_path / "models.toml", [hf, named_civitai])
    assert doc_of("plan", manifest, env=env)[0] == 0
    target = tmp_path / "models/unet/model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    code, doc = doc_of("apply", manifest, "--only", "model.safetensors", env=env)
    assert code == 0 and by_name(doc, "status") == {"model.safetensors": "ok"}
    code, doc = doc_of("plan", manifest, env=env)
    assert code == 0
    assert by_name(doc, "action") == {"model.safetensors": "ok", "lora.safetensors": "download"}
    # A download still needs the source: apply fails that entry, naming the host.
    code, doc = doc_of("apply", manifest, env=env)
    assert code == 1
    assert by_name(doc, "status") == {"model.safetensors": "ok", "lora.safetensors": "failed"}
    (failed,) = [e for e in doc["entries"] if e["status"] == "failed"]
    assert f"127.0.0.1:{port}" in failed["error"]


def test_an_unpinned_download_is_judged_against_its_learned_pin(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/free.bin", 40_000, seed=23)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "dir": "d"}])
    target = tmp_path / "models/d/free.bin"
    code, doc = doc_of("apply", manifest)
    assert code == 0 and by_name(doc, "status") == {"free.bin": "downloaded"}

    # In place and as downloaded: not "ok" (nothing vouches for it), yet in sync.
    code, doc = doc_of("plan", manifest)
    assert code == 0 and by_name(doc, "status") == {"free.bin": "unpinned"}
    assert by_name(doc, "action") == {"free.bin": "ok"}
    assert modelsync("plan", manifest, "--check").code == 0
    assert "no hash pinned: run `modelsync lock` to pin it" in modelsync("plan", manifest).stderr
    code, doc = doc_of("verify", manifest)
    assert code == 0 and by_name(doc, "status") == {"free.bin": "unpinned"}
    run = modelsync("verify", manifest)
    assert "no hash pinned: run `modelsync lock` to pin it" in run.stderr

    # Changed on disk (same size): corrupt for verify, repair for plan, repaired by apply.
    flip_a_byte(target)
    code, doc = doc_of("verify", manifest)
    assert code == 1 and by_name(doc, "status") == {"free.bin": "corrupt"}
    (entry,) = doc["entries"]
    assert f"changed since it was downloaded unpinned: sha256 expected {f.sha256}" in entry["error"]
    code, doc = doc_of("plan", manifest)
    assert by_name(doc, "action") == {"free.bin": "repair"}
    assert modelsync("plan", manifest, "--check").code == 1
    code, doc = doc_of("apply", manifest)
    assert code == 0 and by_name(doc, "status") == {"free.bin": "repaired"}
    assert target.read_bytes() == f.data

    # A file cut short is a repair too, found without hashing.
    target.write_bytes(f.data[:-1])
    code, doc = doc_of("plan", manifest)
    assert by_name(doc, "action") == {"free.bin": "repair"}

    # Changed upstream as well: the new download becomes the learned pin, and apply says so.
    new = serve(fileserver, "/free.bin", 40_000, seed=24)
    run = modelsync("apply", manifest)
    assert run.code == 0 and "repaired" in run.stderr
    assert target.read_bytes() == new.data
    expected = f"free.bin: unpinned; the new download becomes its learned pin: sha256 {new.sha256}"
    assert f"{expected} (was {f.sha256}; the file changed upstream)" in run.stderr
    code, doc = doc_of("verify", manifest)
    assert code == 0 and by_name(doc, "status") == {"free.bin": "unpinned"}


def test_a_file_placed_by_hand_for_an_unpinned_entry_is_unpinned_not_ok(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": "http://127.0.0.1:9/hand.bin", "dir": "d"}]
    )
    target = tmp_path / "models/d/hand.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(blob(1000, seed=25))
    code, doc = doc_of("verify", manifest)
    assert code == 0 and by_name(doc, "status") == {"hand.bin": "unpinned"}
    code, doc = doc_of("plan", manifest)
    assert code == 0 and by_name(doc, "status") == {"hand.bin": "unpinned"}


def test_a_pin_dropped_again_leaves_the_file_judged_by_what_apply_placed_last(
    tmp_path: Path, fileserver: FileServer
) -> None:
    old = serve(fileserver, "/m.bin", 30_000, seed=26)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": old.url, "dir": "d"}])
    assert modelsync("apply", manifest).code == 0  # learned: the old bytes

    # Upstream moves on; the user pins the new bytes, apply fetches them, the pin goes again.
    new = serve(fileserver, "/m.bin", 30_000, seed=27)
    pinned = write_manifest(
        tmp_path / "models.toml", [{"url": new.url, "dir": "d", "sha256": new.sha256}]
    )
    code, doc = doc_of("apply", pinned)
    assert code == 0 and by_name(doc, "status") == {"m.bin": "repaired"}
    manifest = write_manifest(tmp_path / "models.toml", [{"url": new.url, "dir": "d"}])
    fileserver.reset_log()

    # The file is what modelsync placed last: in sync, not "changed since it was downloaded".
    code, doc = doc_of("plan", manifest)
    assert code == 0 and by_name(doc, "action") == {"m.bin": "ok"}
    assert by_name(doc, "status") == {"m.bin": "unpinned"}
    code, doc = doc_of("verify", manifest)
    assert code == 0 and by_name(doc, "status") == {"m.bin": "unpinned"}
    code, doc = doc_of("apply", manifest)
    assert code == 0 and by_name(doc, "status") == {"m.bin": "ok"}
    assert fileserver.requests == []
    # ...and still judged: changed on disk, it is corrupt.
    flip_a_byte(tmp_path / "models/d/m.bin")
    code, doc = doc_of("verify", manifest)
    assert code == 1 and by_name(doc, "status") == {"m.bin": "corrupt"}
