"""Honest answers: what plan, verify and lock say after corruption, offline, or twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.clirun import modelsync
from tests.conftest import serve, write_manifest
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
