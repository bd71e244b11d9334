"""Reuse before download, link modes, the shared store and gc: real CLI, real aria2c,
the local FileServer (whose request log shows what was not downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import Run, modelsync
from tests.conftest import Served, serve, write_manifest
from tests.servers import FileServer


def apply_json(manifest: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    run = modelsync("apply", manifest, "--json", "--no-progress", *args, env=env)
    assert run.stdout, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    doc["_run"] = run
    return doc


def gets(server: FileServer) -> int:
    return sum(1 for r in server.requests if r.method == "GET")


def entry(f: Served, **more: Any) -> dict[str, Any]:
    return {"url": f.url, "sha256": f.sha256, "size": len(f.data), **more}


def test_a_file_present_under_another_name_is_linked_not_downloaded(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/model.safetensors", 300_000, seed=1)
    first = write_manifest(tmp_path / "a.toml", [entry(f, dir="checkpoints")])
    assert apply_json(first)["_run"].code == 0
    before = gets(fileserver)
    second = write_manifest(
        tmp_path / "b.toml", [entry(f, dir="loras", filename="renamed.safetensors")]
    )
    plan = modelsync("plan", second, "--json")
    [e] = json.loads(plan.stdout)["entries"]
    assert e["action"] == "link"
    human = modelsync("plan", second).stderr
    assert "link  from checkpoints/model.safetensors" in human
    doc = apply_json(second)
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert [x["status"] for x in doc["entries"]] == ["linked"]
    assert gets(fileserver) == before  # the server saw no request
    root = tmp_path / "models"
    assert (root / "loras/renamed.safetensors").read_bytes() == f.data
    assert modelsync("verify", second).code == 0


def test_a_blob_in_the_hugging_face_cache_is_reused(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/vae.safetensors", 200_000, seed=2)
    blobs = tmp_path / "hf-cache" / "models--org--vae" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f.sha256).write_bytes(f.data)
    manifest = write_manifest(tmp_path / "models.toml", [entry(f, dir="vae")])
    env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    plan = modelsync("plan", manifest, env=env)
    assert "link  from the Hugging Face cache (org/vae)" in plan.stderr
    doc = apply_json(manifest, env=env)
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert doc["entries"][0]["status"] == "linked"
    assert gets(fileserver) == 0
    assert (tmp_path / "models/vae/vae.safetensors").read_bytes() == f.data


def test_a_donor_that_no_longer_holds_the_bytes_is_downloaded_instead(
    tmp_path: Path, fileserver: FileServer
) -> None:
    """A damaged cache blob (right size, wrong bytes): checked before use, never placed."""
    f = serve(fileserver, "/vae.safetensors", 200_000, seed=3)
    blobs = tmp_path / "hf-cache" / "models--org--vae" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f.sha256).write_bytes(b"\0" * len(f.data))
    manifest = write_manifest(tmp_path / "models.toml", [entry(f, dir="vae")])
    doc = apply_json(manifest, env={"HF_HUB_CACHE": str(tmp_path / "hf-cache")})
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert doc["entries"][0]["status"] == "downloaded"
    assert "does not hold the bytes" in doc["_run"].stderr
    assert (tmp_path / "models/vae/vae.safetensors").read_bytes() == f.data


def roots_with_store(tmp_path: Path, f: Served) -> tuple[Path, Path, dict[str, str]]:
    env = {"MODELSYNC_STORE": str(tmp_path / "store")}
    comfy = write_manifest(
        tmp_path / "comfy.toml", [entry(f, dir="checkpoints")], {"root": "comfy/models"}
    )
    forge = write_manifest(
        tmp_path / "forge.toml",
        [entry(f, dir="Stable-diffusion")],
        {"root": "forge/models", "link": "hardlink"},
    )
    return comfy, forge, env


def test_two_roots_sharing_a_store_hold_one_copy(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/sd.safetensors", 400_000, seed=4)
    comfy, forge, env = roots_with_store(tmp_path, f)
    assert apply_json(comfy, env=env)["_run"].code == 0
    doc = apply_json(forge, env=env)
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert doc["entries"][0]["status"] == "linked"
    assert gets(fileserver) == 1
    a = tmp_path / "comfy/models/checkpoints/sd.safetensors"
    b = tmp_path / "forge/models/Stable-diffusion/sd.safetensors"
    blob = tmp_path / "store" / "sha256" / f.sha256[:2] / f.sha256
    assert os.stat(a).st_ino == os.stat(b).st_ino == os.stat(blob).st_ino


def test_a_hardlinked_copy_modified_in_place_is_repaired_not_shared(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/sd.safetensors", 400_000, seed=5)
    comfy, forge, env = roots_with_store(tmp_path, f)
    assert apply_json(comfy, env=env)["_run"].code == 0
    assert apply_json(forge, env=env)["_run"].code == 0
    b = tmp_path / "forge/models/Stable-diffusion/sd.safetensors"
    with open(b, "r+b") as fh:  # edited in place: every hardlink sees it
        fh.seek(10)
        fh.write(b"EDITED")
    plan = json.loads(modelsync("plan", comfy, "--json", env=env).stdout)
    assert plan["entries"][0]["action"] == "verify"  # the stat cache saw the change
    doc = apply_json(comfy, env=env)
    assert doc["_run"].code == 0, doc["_run"].stderr
    assert doc["entries"][0]["status"] == "repaired"
    a = tmp_path / "comfy/models/checkpoints/sd.safetensors"
    assert a.read_bytes() == f.data
    assert os.stat(a).st_ino != os.stat(b).st_ino  # a new file, not written through the link
    blob = tmp_path / "store" / "sha256" / f.sha256[:2] / f.sha256
    assert blob.read_bytes() == f.data  # the edited blob left the store with the repair
    doc = apply_json(forge, env=env)
    assert doc["entries"][0]["status"] in ("repaired", "linked")
    assert b.read_bytes() == f.data


def test_gc_removes_only_unreferenced_blobs(tmp_path: Path, fileserver: FileServer) -> None:
    kept = serve(fileserver, "/kept.safetensors", 100_000, seed=6)
    dropped = serve(fileserver, "/dropped.safetensors", 150_000, seed=7)
    env = {"MODELSYNC_STORE": str(tmp_path / "store")}
    manifest = write_manifest(
        tmp_path / "models.toml",
        [entry(kept, dir="loras"), entry(dropped, dir="loras")],
        {"link": "copy"},  # copies: only the roots' stat caches say what is referenced
    )
    assert apply_json(manifest, env=env)["_run"].code == 0
    (tmp_path / "models/loras/dropped.safetensors").unlink()
    listing = modelsync("gc", "--json", env=env)
    assert listing.code == 0, listing.stderr
    doc = json.loads(listing.stdout)
    assert [b["sha256"] for b in doc["unreferenced"]] == [dropped.sha256]
    assert (doc["removed"], doc["kept"]) == (False, 1)
    store = tmp_path / "store" / "sha256"
    assert (store / dropped.sha256[:2] / dropped.sha256).exists()  # listed, not removed
    removed = modelsync("gc", "--yes", env=env)
    assert removed.code == 0
    assert "removed 1 blob(s), 146.5 KiB freed" in removed.stderr
    assert not (store / dropped.sha256[:2] / dropped.sha256).exists()
    assert (store / kept.sha256[:2] / kept.sha256).read_bytes() == kept.data


@pytest.mark.parametrize("args", [[], ["--store", "nowhere"]])
def test_gc_without_a_store_is_exit_2(tmp_path: Path, args: list[str]) -> None:
    run: Run = modelsync("gc", *args, cwd=tmp_path)
    assert run.code == 2
    assert "modelsync gc:" in run.stderr and "--store" in run.stderr


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink"])
def test_link_modes(tmp_path: Path, fileserver: FileServer, mode: str) -> None:
    f = serve(fileserver, "/m.safetensors", 120_000, seed=8)
    first = write_manifest(tmp_path / "a.toml", [entry(f, dir="a")])
    assert apply_json(first)["_run"].code == 0
    second = write_manifest(tmp_path / "b.toml", [entry(f, dir="b")], {"link": mode})
    doc = apply_json(second)
    assert doc["entries"][0]["status"] == "linked", doc["_run"].stderr
    a, b = tmp_path / "models/a/m.safetensors", tmp_path / "models/b/m.safetensors"
    assert b.read_bytes() == f.data
    assert b.is_symlink() == (mode == "symlink")
    assert (os.stat(a).st_ino == os.stat(b).st_ino) == (mode in ("hardlink", "symlink"))
