"""Repository entries (`hf = "org/repo"` without `file`) end to end: the real CLI, a real
aria2c and the fake Hub (its CDN on `localhost`). Files kept in git (not LFS) are served
by the Hub itself and pinned by their git blob id."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli

from tests.clirun import Run, modelsync
from tests.conftest import blob, write_manifest
from tests.servers import FakeHub, RequestRecord

UNET = blob(3 * (1 << 20) + 5, seed=41)  # LFS
TEXT = blob(200_000, seed=42)  # LFS
ONNX = blob(50_000, seed=43)  # LFS, excluded
UNET_CONFIG = b'{"_class_name": "UNet2DConditionModel", "sample_size": 128}\n'  # git
INDEX = b'{"_class_name": "StableDiffusionXLPipeline"}\n'  # git
README = b"# a model\n"  # git, excluded

FILES = {
    "unet/diffusion_pytorch_model.safetensors": UNET,
    "unet/config.json": UNET_CONFIG,
    "text_encoder/model.safetensors": TEXT,
    "model_index.json": INDEX,
    "onnx/model.onnx": ONNX,
    "README.md": README,
}
SELECTED = sorted(p for p in FILES if not p.startswith("onnx/") and p != "README.md")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.lfs_threshold = 1024  # the JSON files and README stay in git
        hub.add_repo("org/sdxl", FILES)
        hub.add_repo("org/other", {"w.safetensors": TEXT})
        yield hub


def env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}


REPO = {"hf": "org/sdxl", "exclude": ["onnx/*", "*.md"]}


def manifest_of(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    return write_manifest(tmp_path / "models.toml", list(entries) or [REPO])


def run_json(command: str, manifest: Path, e: dict[str, str], *args: str) -> dict[str, Any]:
    run = modelsync(command, manifest, "--json", *args, env=e)
    assert run.stdout, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    doc["_run"] = run
    return doc


def by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in doc["entries"]}


def api_calls(hub: FakeHub) -> list[RequestRecord]:
    return [r for r in hub.requests if r.path.startswith("/api/models/")]


def test_a_repository_expands_into_its_files_under_dir(tmp_path: Path, hub: FakeHub) -> None:
    """include/exclude pick the files; they land under the repo's name keeping their paths;
    plan lists each under the entry; apply downloads them all; verify checks each, the
    files kept in git against their git blob id."""
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path)
    plan = run_json("plan", manifest, e)
    assert sorted(by_path(plan)) == [f"sdxl/{p}" for p in SELECTED]
    assert {x["name"] for x in plan["entries"]} == {f"sdxl/{p}" for p in SELECTED}
    assert plan["totals"]["download_bytes"] == sum(len(FILES[p]) for p in SELECTED)
    assert len(api_calls(hub)) == 1  # one listing call, no HEAD per file

    doc = run_json("apply", manifest, e, "--no-progress")
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert {x["status"] for x in doc["entries"]} == {"downloaded"}
    root = tmp_path / "models"
    for p in SELECTED:
        assert (root / "sdxl" / p).read_bytes() == FILES[p]
    assert not (root / "sdxl" / "onnx").exists() and not (root / "sdxl" / "README.md").exists()

    again = run_json("plan", manifest, e)
    assert {x["status"] for x in again["entries"]} == {"ok"}  # git files too: not "unpinned"
    verify = run_json("verify", manifest, e)
    assert verify["_run"].code == 0
    assert {x["status"] for x in verify["entries"]} == {"ok"}


def test_lock_pins_the_commit_and_every_file_and_apply_locked_asks_no_api(
    tmp_path: Path, hub: FakeHub
) -> None:
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path)
    run = modelsync("lock", manifest, env=e)
    assert run.code == 0, run.stderr
    lock = tomli.loads((tmp_path / "models.lock").read_text())
    locked = lock["models"]["sdxl"]
    assert locked["commit"] == hub.repos[("model", "org/sdxl")].branches["main"]
    assert sorted(locked["files"]) == SELECTED
    unet = locked["files"]["unet/diffusion_pytorch_model.safetensors"]
    assert unet == {"size": len(UNET), "sha256": sha(UNET)}
    assert locked["files"]["unet/config.json"] == {
        "size": len(UNET_CONFIG),
        "git_sha1": git_sha1(UNET_CONFIG),
    }
    assert not (tmp_path / "models" / "sdxl").exists()  # lock downloads nothing here

    hub.reset_log()
    doc = run_json("apply", manifest, e, "--locked", "--no-progress")
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert api_calls(hub) == []  # the lock says which files: no listing asked
    assert all(r.method == "HEAD" or "/resolve/" in r.path for r in hub.requests)


def test_lock_upgrade_follows_files_added_and_removed_upstream(
    tmp_path: Path, hub: FakeHub
) -> None:
    """A file removed upstream leaves the lock on `lock --upgrade` and the disk only with
    --prune; one added is downloaded; a user's own file in the repo folder stays."""
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path)
    assert modelsync("lock", manifest, env=e).code == 0
    assert modelsync("apply", manifest, "--locked", "--no-progress", env=e).code == 0
    root = tmp_path / "models"
    (root / "sdxl" / "notes.txt").write_text("mine")

    changed = {k: v for k, v in FILES.items() if k != "text_encoder/model.safetensors"}
    changed["unet/config.json"] = UNET_CONFIG.replace(b"128", b"256")
    changed["vae/model.safetensors"] = blob(70_000, seed=44)
    hub.add_repo("org/sdxl", changed)
    assert modelsync("lock", manifest, env=e).code == 0  # no --upgrade: the lock stays
    run = modelsync("lock", manifest, "--upgrade", env=e)
    assert run.code == 0, run.stderr
    assert "1 added (vae/model.safetensors)" in run.stderr
    assert "1 removed (text_encoder/model.safetensors)" in run.stderr
    # the shard gains the xxh3_128 apply verified here; the config changed upstream
    assert "2 changed (unet/config.json, unet/diffusion_pytorch_model.safetensors)" in run.stderr, (
        run.stderr
    )

    plan = run_json("plan", manifest, e)
    actions = {x["path"]: x["action"] for x in plan["entries"]}
    assert actions["sdxl/vae/model.safetensors"] == "download"
    assert actions["sdxl/unet/config.json"] == "verify"  # same size: its git id decides
    assert "sdxl/text_encoder/model.safetensors" not in actions
    unmanaged = {u["path"]: u["prunable"] for u in plan["unmanaged"]}
    assert unmanaged == {"sdxl/text_encoder/model.safetensors": True, "sdxl/notes.txt": False}

    doc = run_json("apply", manifest, e, "--locked", "--no-progress")
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert (root / "sdxl/unet/config.json").read_bytes() == changed["unet/config.json"]
    assert by_path(doc)["sdxl/unet/config.json"]["status"] == "repaired"
    assert (root / "sdxl/text_encoder/model.safetensors").exists()  # not without --prune

    pruned = run_json("apply", manifest, e, "--locked", "--prune", "--yes")
    assert pruned["pruned"] == ["sdxl/text_encoder/model.safetensors"]
    assert not (root / "sdxl/text_encoder/model.safetensors").exists()
    assert (root / "sdxl" / "notes.txt").read_text() == "mine"


def test_only_selects_the_whole_repository(tmp_path: Path, hub: FakeHub) -> None:
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path, {**REPO, "tags": ["sdxl"]}, {"hf": "org/other"})
    doc = run_json("apply", manifest, e, "--only", "sdxl", "--no-progress")
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert sorted(by_path(doc)) == [f"sdxl/{p}" for p in SELECTED]
    assert not (tmp_path / "models" / "other").exists()
    plan = run_json("plan", manifest, e)
    # (its bytes are sdxl's text encoder's: reused from there, not downloaded)
    assert {x["path"]: x["action"] for x in plan["entries"] if x["action"] != "ok"} == {
        "other/w.safetensors": "link"
    }


def test_a_corrupt_shard_and_an_edited_config_are_repaired(tmp_path: Path, hub: FakeHub) -> None:
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path)
    assert modelsync("lock", manifest, env=e).code == 0
    assert modelsync("apply", manifest, "--no-progress", env=e).code == 0
    root = tmp_path / "models" / "sdxl"
    shard = root / "unet/diffusion_pytorch_model.safetensors"
    with open(shard, "r+b") as f:  # same size, one byte flipped
        f.seek(1000)
        f.write(bytes([UNET[1000] ^ 0xFF]))
    config = root / "unet/config.json"
    config.write_bytes(UNET_CONFIG.replace(b"128", b"512"))

    verify = run_json("verify", manifest, e)
    assert verify["_run"].code == 1
    statuses = {x["path"]: x["status"] for x in verify["entries"]}
    assert statuses["sdxl/unet/diffusion_pytorch_model.safetensors"] == "corrupt"
    assert statuses["sdxl/unet/config.json"] == "corrupt"
    assert "git blob sha1 expected" in by_path(verify)["sdxl/unet/config.json"]["error"]

    doc = run_json("apply", manifest, e, "--no-progress")
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert shard.read_bytes() == UNET and config.read_bytes() == UNET_CONFIG
    assert run_json("verify", manifest, e)["_run"].code == 0


def test_unmanaged_files_anywhere_in_the_repository_folder(tmp_path: Path, hub: FakeHub) -> None:
    """The repository's whole subtree is managed: stray files in subfolders are listed; a
    model file is prunable, the user's other files are kept; a file in a folder the
    manifest does not manage is not listed at all."""
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path)
    root = tmp_path / "models"
    (root / "sdxl" / "old" / "deep").mkdir(parents=True)
    (root / "sdxl" / "old" / "deep" / "stale.safetensors").write_bytes(b"x" * 10)
    (root / "sdxl" / "unet").mkdir()
    (root / "sdxl" / "unet" / "notes.txt").write_text("mine")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "x.safetensors").write_bytes(b"y")
    plan = run_json("plan", manifest, e)
    assert {u["path"]: u["prunable"] for u in plan["unmanaged"]} == {
        "sdxl/old/deep/stale.safetensors": True,
        "sdxl/unet/notes.txt": False,
    }


def test_a_repository_with_a_path_escaping_root_is_refused(tmp_path: Path, hub: FakeHub) -> None:
    """A subfolder replaced by a symlink to outside root: that file fails, nothing is
    written outside root, the other files arrive."""
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "models" / "sdxl").mkdir(parents=True)
    os.symlink(outside, tmp_path / "models" / "sdxl" / "unet")
    doc = run_json("apply", manifest, e, "--no-progress")
    assert doc["_run"].code == 1
    failed = {x["name"] for x in doc["entries"] if x["status"] == "failed"}
    assert failed == {"sdxl/unet/config.json", "sdxl/unet/diffusion_pytorch_model.safetensors"}
    assert "outside root" in doc["_run"].stderr or all(
        "outside root" in (x["error"] or "") for x in doc["entries"] if x["status"] == "failed"
    )
    assert list(outside.iterdir()) == []
    assert (tmp_path / "models/sdxl/model_index.json").read_bytes() == INDEX


def test_a_repository_that_does_not_exist_fails_with_a_hint(tmp_path: Path, hub: FakeHub) -> None:
    e = env(tmp_path, hub)
    manifest = manifest_of(tmp_path, {"hf": "org/nope"})
    run: Run = modelsync("plan", manifest, env=e)
    assert run.code == 1
    assert "repository org/nope not found" in run.stderr


def test_add_writes_a_repository_entry(tmp_path: Path, hub: FakeHub) -> None:
    e = env(tmp_path, hub)
    manifest = write_manifest(tmp_path / "models.toml", [])
    run = modelsync(
        "add",
        manifest,
        "hf://org/sdxl",
        "--include",
        "*.safetensors",
        "--include",
        "*.json",
        "--exclude",
        "text_encoder/*",
        env=e,
    )
    assert run.code == 0, run.stderr
    [entry] = tomli.loads(manifest.read_text())["models"]
    assert entry == {
        "hf": "org/sdxl",
        "include": ["*.safetensors", "*.json"],
        "exclude": ["text_encoder/*"],
        "dir": "sdxl",
    }
    plan = run_json("plan", manifest, e)
    assert sorted(by_path(plan)) == [
        "sdxl/model_index.json",
        "sdxl/unet/config.json",
        "sdxl/unet/diffusion_pytorch_model.safetensors",
    ]
