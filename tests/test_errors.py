"""Errors in words a user can act on: a wrong pin, HTTP statuses, hosts that do not answer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers import FileServer

MIB = 1 << 20


def apply_json(manifest: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", *args)
    return run, json.loads(run.stdout) if run.stdout else {}


def only_entry(doc: dict[str, Any]) -> dict[str, Any]:
    [entry] = doc["entries"]
    return dict(entry)


def full_downloads(server: FileServer, path: str, size: int) -> int:
    assert server.bytes_served(path) % size == 0  # whole files only, no partial attempt
    return server.bytes_served(path) // size


# ---- a wrong pin is not the server's fault -----------------------------------------------


def test_wrong_pin_in_manifest_is_named_with_its_line(
    tmp_path: Path, fileserver: FileServer
) -> None:
    served = serve(fileserver, "/model.bin", 2 * MIB, seed=1)
    pinned = hashlib.sha256(b"other bytes").hexdigest()
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"name": "a", "url": served.url, "sha256": served.sha256},
            {"name": "m", "url": served.url, "filename": "m.bin", "sha256": pinned},
        ],
    )
    line = [n for n, text in enumerate(manifest.read_text().splitlines(), 1) if pinned in text]
    run = modelsync("apply", manifest, "--only", "m")
    assert run.code == 1, run.stderr
    message = (
        f"the server sends the same bytes twice (sha256 {served.sha256}); the pin in "
        f"models.toml line {line[0]} may be wrong or the file changed upstream; "
        f"sha256 expected {pinned}, got {served.sha256}"
    )
    assert message in " ".join(run.stderr.split()), run.stderr
    assert "the server sends wrong bytes" not in run.stderr
    # Downloaded twice, whole, and never a third time.
    assert full_downloads(fileserver, "/model.bin", len(served.data)) == 2
    assert not (tmp_path / "models" / "m.bin").exists()


def test_pin_from_the_lock_that_upstream_changed_names_the_lock(
    tmp_path: Path, fileserver: FileServer
) -> None:
    served = serve(fileserver, "/model.bin", MIB, seed=2)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": served.url}])
    assert modelsync("lock", manifest).code == 0
    (tmp_path / "models" / "model.bin").unlink(missing_ok=True)  # lock may have placed it
    changed = blob(MIB, seed=3)
    fileserver.add_bytes("/model.bin", changed)  # the file changed upstream
    fileserver.reset_log()
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    actual = hashlib.sha256(changed).hexdigest()
    error = only_entry(doc)["error"]
    assert error.startswith(f"the server sends the same bytes twice (sha256 {actual}); ")
    assert "the pin in models.lock may be wrong or the file changed upstream" in error
    assert f"expected {served.sha256}, got {actual}" in error
    assert full_downloads(fileserver, "/model.bin", MIB) == 2
