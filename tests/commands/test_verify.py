"""verify and plan on files placed by hand: no server needed, the cache is refreshed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.clirun import modelsync
from tests.conftest import blob, write_manifest


def place(root: Path, rel: str, data: bytes) -> dict[str, Any]:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {
        "url": f"http://127.0.0.1:9/{path.name}",  # never contacted
        "dir": str(Path(rel).parent),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def verify_json(manifest: Path, *args: str) -> tuple[int, dict[str, str]]:
    run = modelsync("verify", manifest, "--json", *args)
    doc = json.loads(run.stdout)
    return run.code, {e["name"]: e["status"] for e in doc["entries"]}


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_verify_reports_ok_missing_corrupt(tmp_path: Path, strict: bool) -> None:
    root = tmp_path / "models"
    good, bad, gone, short = blob(5000, 1), blob(6000, 2), blob(10, 3), blob(100, 4)
    entries = [
        place(root, "a/good.bin", good),
        place(root, "a/bad.bin", bad),
        place(root, "b/gone.bin", gone),
        place(root, "b/short.bin", short),
    ]
    entries[1]["xxh3_128"] = xxhash.xxh3_128(bad).hexdigest()  # takes the fast path
    (root / "b/gone.bin").unlink()
    damaged = bytearray(bad)
    damaged[100] ^= 1
    (root / "a/bad.bin").write_bytes(bytes(damaged))
    (root / "b/short.bin").write_bytes(short[:-1])
    manifest = write_manifest(tmp_path / "models.toml", entries)
    code, statuses = verify_json(manifest, *(["--strict"] if strict else []))
    assert code == 1
    assert statuses == {
        "good.bin": "ok",
        "bad.bin": "corrupt",
        "gone.bin": "missing",
        "short.bin": "corrupt",
    }


def test_verify_fills_the_stat_cache_and_plan_trusts_it(tmp_path: Path) -> None:
    root = tmp_path / "models"
    data = blob(4096, 5)
    manifest = write_manifest(tmp_path / "models.toml", [place(root, "ckpt/m.bin", data)])
    plan = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert plan["entries"][0]["action"] == "verify"  # present, never verified
    assert modelsync("plan", manifest, "--check").code == 1
    assert verify_json(manifest) == (0, {"m.bin": "ok"})
    assert modelsync("plan", manifest, "--check").code == 0
    # Same size, new content, new mtime: the cache no longer vouches for it.
    (root / "ckpt/m.bin").write_bytes(blob(4096, 6))
    plan = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert plan["entries"][0]["action"] == "verify"


def test_verify_of_an_empty_root_creates_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": "http://127.0.0.1:9/x.bin", "dir": "d", "sha256": "0" * 64}],
    )
    assert verify_json(manifest) == (1, {"x.bin": "missing"})
    assert not (tmp_path / "models").exists()
