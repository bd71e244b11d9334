"""Adopting a models folder (importers/folder.py): every file hashed (cached in the folder's
state.db) and given the public source found for it: the Hugging Face cache (a blob named by
the file's sha256), Civitai's lookup by hash (the fake Civitai), else none (pinned by hash)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from modelsync.importers import Findings, ImportInputError, ImportOptions
from modelsync.importers.folder import UNKNOWN, hub_cache_dir, read
from modelsync.manifest import Entry
from tests.conftest import blob
from tests.servers import FakeCivitai

CIV = blob(70_000, seed=31)  # known to the fake Civitai by its hash
HUB = blob(90_000, seed=32)  # in the fake Hugging Face cache
MINE = blob(50_000, seed=33)  # known to nobody
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CIV_TOKEN = "civ_FOLDERLEAK_5e1f0a"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hf_cache(
    cache: Path, repo: str, files: dict[str, bytes], *, commit: str = COMMIT, kind: str = "models"
) -> None:
    """The hub cache layout: blobs/<sha256>, snapshots/<commit>/<path> → the blob, refs/main."""
    base = cache / f"{kind}--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for path, data in files.items():
        target = base / "blobs" / sha256(data)
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        link = base / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A working models folder, with what must not be imported beside the models."""
    root = tmp_path / "models"
    write(root / "checkpoints" / "civ.safetensors", CIV)
    write(root / "diffusion_models" / "flux.safetensors", HUB)
    write(root / "loras" / "mine.safetensors", MINE)
    write(root / "checkpoints" / "put_checkpoints_here", b"")  # ComfyUI's placeholder
    write(root / ".hidden" / "x.safetensors", MINE)
    write(root / "loras" / ".DS_Store", b"junk")
    write(root / ".modelsync" / "tmp" / "partial.safetensors", MINE)
    return root


@pytest.fixture
def hf(tmp_path: Path) -> Path:
    cache = tmp_path / "hf-cache"
    hf_cache(cache, "org/flux", {"transformer/flux1-dev.safetensors": HUB})
    return cache


@pytest.fixture
def civitai_env(civitai: FakeCivitai, hf: Path) -> dict[str, str]:
    civitai.add_version(4242, [("civ.safetensors", CIV)])
    return {"CIVITAI_ENDPOINT": civitai.url, "HF_HUB_CACHE": str(hf), "CIVITAI_TOKEN": CIV_TOKEN}


def by_target(findings: Findings) -> dict[str, dict[str, object]]:
    return {f.target: f.values for f in findings.found}


def test_three_kinds_of_entry(
    models: Path, civitai: FakeCivitai, civitai_env: dict[str, str]
) -> None:
    findings = read(models, ImportOptions(env=civitai_env))

    assert by_target(findings) == {
        "checkpoints/civ.safetensors": {
            "civitai": 4242,
            "dir": "checkpoints",
            "filename": "civ.safetensors",
            "size": len(CIV),
            "sha256": sha256(CIV),
        },
        "diffusion_models/flux.safetensors": {
            "hf": "org/flux",
            "file": "transformer/flux1-dev.safetensors",
            "revision": COMMIT,
            "dir": "diffusion_models",
            "filename": "flux.safetensors",
            "size": len(HUB),
            "sha256": sha256(HUB),
        },
        "loras/mine.safetensors": {
            "dir": "loras",
            "filename": "mine.safetensors",
            "size": len(MINE),
            "sha256": sha256(MINE),
        },
    }
    comments = {f.target: f.comment for f in findings.found}
    assert comments["loras/mine.safetensors"] == UNKNOWN
    for found in findings.found:
        Entry.model_validate(found.values)
    assert findings.warnings == [] and findings.unresolved == []
    # Only what the HF cache did not name was looked up; the token went to Civitai.
    asked = [r.path.rpartition("/")[2] for r in civitai.requests]
    assert asked == [sha256(CIV), sha256(MINE)]
    assert {r.headers["authorization"] for r in civitai.requests} == {f"Bearer {CIV_TOKEN}"}


def test_a_second_import_reads_no_file(models: Path, civitai_env: dict[str, str]) -> None:
    seen: list[tuple[int, int]] = []
    options = ImportOptions(
        env=civitai_env, progress=lambda done, total: seen.append((done, total))
    )
    first = read(models, options)
    total = len(CIV) + len(HUB) + len(MINE)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert (models / ".modelsync" / "state.db").is_file()

    # Other bytes of the same size and mtime: a read of the file would see them.
    mine = models / "loras" / "mine.safetensors"
    st = mine.stat()
    with open(mine, "r+b") as f:
        f.write(b"\0" * 1000)
    os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns))
    seen.clear()
    second = read(models, options)
    assert seen == []  # nothing hashed
    assert by_target(second) == by_target(first)  # the cached hashes, of the bytes seen first

    os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a changed stat
    third = read(models, options)
    assert seen == [(0, len(MINE)), (len(MINE), len(MINE))]
    assert by_target(third)["loras/mine.safetensors"]["sha256"] != sha256(MINE)


def test_offline_asks_civitai_nothing(
    models: Path, civitai: FakeCivitai, civitai_env: dict[str, str]
) -> None:
    findings = read(models, ImportOptions(env=civitai_env, offline=True))
    assert civitai.requests == []
    civ = by_target(findings)["checkpoints/civ.safetensors"]
    assert "civitai" not in civ and civ["sha256"] == sha256(CIV)
    assert "hf" in by_target(findings)["diffusion_models/flux.safetensors"]  # a local lookup
    assert {f.comment for f in findings.found if "hf" not in f.values} == {UNKNOWN}


def test_filters_keep_paths_containing_a_text(
    tmp_path: Path, models: Path, civitai: FakeCivitai, civitai_env: dict[str, str]
) -> None:
    (models / "vae.safetensors").symlink_to(write(tmp_path / "outside.safetensors", MINE))
    findings = read(models, ImportOptions(env=civitai_env, filters=("LORAS/", "flux")))
    assert sorted(by_target(findings)) == [
        "diffusion_models/flux.safetensors",
        "loras/mine.safetensors",
    ]
    assert findings.warnings == []  # nothing about what the filters leave out
    assert len(civitai.requests) == 1  # mine.safetensors (flux is in the HF cache)


def test_a_comfyui_install_means_its_models_folder(
    tmp_path: Path, models: Path, civitai_env: dict[str, str]
) -> None:
    install = tmp_path
    (install / "comfy").mkdir()
    findings = read(install, ImportOptions(env=civitai_env, offline=True))
    assert findings.warnings == [f"{install} is a ComfyUI install: importing its models/ folder"]
    assert "checkpoints/civ.safetensors" in by_target(findings)
    assert (models / ".modelsync" / "state.db").is_file()


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ImportInputError, match="not a folder"):
        read(write(tmp_path / "a.safetensors", b"x"), ImportOptions())
    with pytest.raises(ImportInputError, match="not a folder"):
        read(tmp_path / "missing", ImportOptions())


def test_a_file_that_cannot_be_read_is_named(models: Path, civitai_env: dict[str, str]) -> None:
    gone = models / "loras" / "mine.safetensors"

    def progress(done: int, total: int) -> None:
        if done == 0:  # after the walk, before hashing: the file goes away meanwhile
            gone.unlink()

    findings = read(models, ImportOptions(env=civitai_env, offline=True, progress=progress))
    assert "loras/mine.safetensors" not in by_target(findings)
    assert len(findings.found) == 2
    assert findings.warnings == ["loras/mine.safetensors: cannot read: No such file or directory"]


def test_links_inside_kept_outside_warned(tmp_path: Path, models: Path) -> None:
    outside = write(tmp_path / "elsewhere" / "big.safetensors", MINE)
    (models / "vae").mkdir()
    (models / "vae" / "big.safetensors").symlink_to(outside)
    (models / "upscale_models").symlink_to(outside.parent, target_is_directory=True)
    (models / "vae" / "same.safetensors").symlink_to(models / "loras" / "mine.safetensors")

    findings = read(models, ImportOptions(offline=True, env={"HF_HUB_CACHE": str(tmp_path)}))
    targets = by_target(findings)
    assert targets["vae/same.safetensors"]["sha256"] == sha256(MINE)
    assert "vae/big.safetensors" not in targets
    assert not any(t.startswith("upscale_models/") for t in targets)
    assert sorted(findings.warnings) == [
        f"upscale_models: a link to a folder outside this one ({outside.parent}): not "
        "imported; import that folder on its own if its files belong in the manifest",
        f"vae/big.safetensors: a link to a file outside the folder ({outside}): not imported",
    ]


def test_a_download_in_flight_is_not_imported(models: Path) -> None:
    write(models / "loras" / "new.safetensors", MINE[:1000])
    write(models / "loras" / "new.safetensors.aria2", b"control")
    findings = read(models, ImportOptions(offline=True, filters=("new",)))
    assert findings.found == []
    assert findings.warnings == [
        "loras/new.safetensors: a download in flight (new.safetensors.aria2 beside it): "
        "not imported"
    ]


def test_civitai_non_primary_file_is_named(
    models: Path, civitai: FakeCivitai, civitai_env: dict[str, str]
) -> None:
    civitai.add_version(77, [("model.safetensors", HUB), ("mine.safetensors", MINE)])
    findings = read(models, ImportOptions(env=civitai_env, filters=("mine",)))
    assert by_target(findings)["loras/mine.safetensors"] == {
        "civitai": 77,
        "file": "mine.safetensors",
        "dir": "loras",
        "filename": "mine.safetensors",
        "size": len(MINE),
        "sha256": sha256(MINE),
    }


def test_a_dataset_in_the_hub_cache(tmp_path: Path, models: Path) -> None:
    cache = tmp_path / "other-cache"
    hf_cache(cache, "org/data", {"weights/mine.bin": MINE}, kind="datasets")
    findings = read(models, ImportOptions(offline=True, env={"HF_HUB_CACHE": str(cache)}))
    mine = by_target(findings)["loras/mine.safetensors"]
    assert (mine["hf"], mine["file"], mine["revision"]) == (
        "datasets/org/data",
        "weights/mine.bin",
        COMMIT,
    )


def test_civitai_errors_stop_the_lookups_with_one_warning(
    models: Path, civitai: FakeCivitai, civitai_env: dict[str, str]
) -> None:
    civitai.faults.fail_first = 100
    civitai.faults.fail_status = 500
    findings = read(models, ImportOptions(env=civitai_env))
    assert len(civitai.requests) == 1
    assert findings.warnings == [
        "Civitai lookup by hash stopped at checkpoints/civ.safetensors: "
        f"127.0.0.1:{civitai.port} answered 500 to a lookup by hash; 1 more file(s) not "
        "looked up (try again later)"
    ]
    assert [f.comment for f in findings.found if "hf" not in f.values] == [UNKNOWN, UNKNOWN]


def test_civitai_unreachable_gives_one_warning(models: Path, hf: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"CIVITAI_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(hf)}
    findings = read(models, ImportOptions(env=env))
    (warning,) = findings.warnings
    assert warning.startswith(
        "Civitai lookup by hash stopped at checkpoints/civ.safetensors: cannot reach "
        f"127.0.0.1:{port} (connection refused); 1 more file(s) not looked up"
    )
    assert len(findings.found) == 3


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}, "/a"),
        ({"HUGGINGFACE_HUB_CACHE": "/a", "HF_HOME": "/b"}, "/a"),
        ({"HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/b/hub"),
        ({"XDG_CACHE_HOME": "/c", "HOME": "/h"}, "/c/huggingface/hub"),
        ({"HOME": "/h"}, "/h/.cache/huggingface/hub"),
    ],
)
def test_hub_cache_dir(env: dict[str, str], expected: str) -> None:
    assert hub_cache_dir(env) == Path(expected)


def test_an_interrupted_import_keeps_the_hashes_it_finished(tmp_path: Path) -> None:
    """Ctrl-C while a large file is hashed: the files already hashed are in the cache, so
    the next import of a folder of hundreds of GB does not start from nothing."""
    root = tmp_path / "models"
    small = write(root / "loras" / "a.safetensors", MINE)
    big = root / "loras" / "b.safetensors"
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:
        f.truncate(64 * 1024 * 1024)

    def stop_in_the_big_file(done: int, total: int) -> None:
        if done > len(MINE) + 32 * 1024 * 1024:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        read(root, ImportOptions(offline=True, progress=stop_in_the_big_file))

    seen: list[tuple[int, int]] = []
    again = read(root, ImportOptions(offline=True, progress=lambda d, t: seen.append((d, t))))
    assert seen[0] == (0, big.stat().st_size)  # only the big file is hashed again
    assert by_target(again)["loras/a.safetensors"]["sha256"] == sha256(small.read_bytes())
