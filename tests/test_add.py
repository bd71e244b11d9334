"""`modelsync add`: resolve a source, append an entry, keep the manifest's own text."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from modelsync.addcmd import parse_source
from modelsync.manifest import load_manifest
from tests.clirun import modelsync
from tests.conftest import blob, serve
from tests.servers import FakeCivitai, FakeHub, FileServer

ORIGINAL = """\
# Team models — reviewed in PRs.
version = 1

[settings]
root   = "models"        # relative to this file
max_concurrent = 2

[[models]]   # the base checkpoint
name = "base"
url  = 'https://example.invalid/base.safetensors'
dir  = "checkpoints"
sha256 = "31E35C80FC4829D14F90153F4C74CD59C90B779F6AFE05A74CD6120B893F7E5B"
tags = [ "sdxl",
         "base" ]

# VAEs below
[[models]]
hf = "madebyollin/sdxl-vae-fp16-fix"
file = "sdxl.vae.safetensors"
dir = "vae"
"""  # no trailing blank line; odd spacing and comments on purpose


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(ORIGINAL)
    return path


def added_entry(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = tomllib.loads(path.read_text())["models"][-1]
    return entry


def test_add_hf_civitai_and_url_appends_entries_and_keeps_the_text_byte_for_byte(
    manifest: Path, hub: FakeHub, civitai: FakeCivitai, fileserver: FileServer
) -> None:
    unet = blob(30_000, seed=1)
    hub.add_repo("org/sdxl", files={"unet/diffusion_pytorch_model.safetensors": unet})
    lora = blob(4000, seed=2)
    civitai.add_version(128713, files=[("detail-tweaker.safetensors", lora)])
    f = serve(fileserver, "/upscalers/4x.pth", 2000, seed=3)
    env = {"HF_ENDPOINT": hub.url, "CIVITAI_ENDPOINT": civitai.url}

    run = modelsync(
        "add", manifest, "hf://org/sdxl/unet/diffusion_pytorch_model.safetensors@main",
        "--dir", "unet", "--name", "sdxl-unet", env=env,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    text = manifest.read_text()
    assert text.startswith(ORIGINAL)
    assert added_entry(manifest) == {
        "name": "sdxl-unet",
        "hf": "org/sdxl",
        "file": "unet/diffusion_pytorch_model.safetensors",
        "revision": "main",
        "dir": "unet",
        "size": len(unet),
        "sha256": hashlib.sha256(unet).hexdigest(),
    }
    assert "sdxl-unet" in run.stderr and "unet/diffusion_pytorch_model.safetensors" in run.stderr

    run = modelsync("add", manifest, "civitai:128713", "--dir", "loras", env=env)
    assert run.code == 0, run.stderr
    assert manifest.read_text().startswith(text)
    entry = added_entry(manifest)
    assert entry == {"civitai": 128713, "dir": "loras", "sha256": hashlib.sha256(lora).hexdigest()}
    text = manifest.read_text()

    run = modelsync("add", manifest, f.url, "--dir", "upscale_models", env=env)
    assert run.code == 0, run.stderr
    assert manifest.read_text().startswith(text)
    assert added_entry(manifest) == {"url": f.url, "dir": "upscale_models"}
    assert "unpinned" in run.stderr and "modelsync lock" in run.stderr
    assert fileserver.requests == []  # add never downloads

    loaded = load_manifest(manifest)
    assert [e.display_name for e in loaded.models] == [
        "base", "sdxl.vae.safetensors", "sdxl-unet", "civitai-128713", "4x.pth",
    ]  # fmt: skip
    assert hub.cdn.requests == [] and civitai.cdn.requests == []  # metadata only


def test_a_url_added_unpinned_is_pinned_by_lock(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/a.bin", 3000, seed=4)
    manifest = tmp_path / "models.toml"  # `add` starts a manifest that does not exist yet
    run = modelsync("add", manifest, f.url, "--dir", "misc", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert manifest.read_text() == f'[[models]]\nurl = "{f.url}"\ndir = "misc"\n'
    assert modelsync("apply", manifest, "--locked", cwd=tmp_path).code == 2  # unpinned, no lock
    assert modelsync("lock", manifest, cwd=tmp_path).code == 0
    run = modelsync("apply", manifest, "--locked", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert (tmp_path / "misc/a.bin").read_bytes() == f.data


@pytest.mark.parametrize(
    ("source", "args", "says"),
    [
        ("https://example.invalid/base.safetensors", [], "already has this source"),
        ("https://example.invalid/other.safetensors", ["--name", "base"], "name 'base'"),
        ("https://example.invalid/x/sdxl.vae.safetensors", ["--name", "v2"], "already downloads"),
    ],
    ids=["same-source", "same-name", "same-path"],
)
def test_add_refuses_duplicates_and_leaves_the_manifest_alone(
    manifest: Path, source: str, args: list[str], says: str
) -> None:
    folder = "vae" if "vae" in source else "checkpoints"
    run = modelsync("add", manifest, source, "--dir", folder, *args)
    assert run.code == 2
    assert says in run.stderr and "nothing was added" in run.stderr
    assert manifest.read_text() == ORIGINAL


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("ftp://example.invalid/a.bin", "is not a URL, hf://"),
        ("models/a.bin", "is not a URL, hf://"),
        ("hf://org", "expected hf://org/repo/path"),
        ("hf://org/repo/file.bin@", "expected hf://org/repo/path"),
        ("civitai:abc", "model *version* id"),
        ("civitai:0", "model *version* id"),
    ],
)
def test_add_rejects_a_malformed_source_with_exit_2(manifest: Path, source: str, says: str) -> None:
    run = modelsync("add", manifest, source, "--dir", "x")
    assert run.code == 2
    assert says in run.stderr and "Traceback" not in run.stderr
    assert manifest.read_text() == ORIGINAL


def test_add_rejects_a_bad_dir_and_an_invalid_manifest(manifest: Path, tmp_path: Path) -> None:
    run = modelsync("add", manifest, "https://example.invalid/a.bin", "--dir", "../up")
    assert run.code == 2 and "dir" in run.stderr and ".." in run.stderr
    assert manifest.read_text() == ORIGINAL

    broken = tmp_path / "broken.toml"
    broken.write_text(ORIGINAL.replace('dir = "vae"', 'dri = "vae"'))
    run = modelsync("add", broken, "https://example.invalid/a.bin", "--dir", "x")
    assert run.code == 2 and "did you mean 'dir'" in run.stderr


def test_a_source_that_cannot_be_resolved_exits_1_and_writes_nothing(
    manifest: Path, hub: FakeHub
) -> None:
    hub.add_repo("org/sdxl", files={"a.safetensors": b"x" * 100})
    env = {"HF_ENDPOINT": hub.url}
    for source in ("hf://org/missing/a.safetensors", "hf://org/sdxl/nope.safetensors"):
        run = modelsync("add", manifest, source, "--dir", "x", env=env)
        assert run.code == 1, run.stderr
        assert "Traceback" not in run.stderr
        assert manifest.read_text() == ORIGINAL
    assert hub.requests  # it asked the (fake) Hub


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf://org/repo/file.bin", {"hf": "org/repo", "file": "file.bin"}),
        (
            "hf://org/repo/unet/model.safetensors@v1.0",
            {"hf": "org/repo", "file": "unet/model.safetensors", "revision": "v1.0"},
        ),
        (
            "hf://org/repo/unet/model.safetensors@refs/pr/1",
            {"hf": "org/repo", "file": "unet/model.safetensors", "revision": "refs/pr/1"},
        ),
        (
            "hf://org/repo@refs%2Fpr%2F1/unet/a@b.safetensors",
            {"hf": "org/repo", "file": "unet/a@b.safetensors", "revision": "refs/pr/1"},
        ),
        (
            "hf://org/repo@abc123/unet/model.safetensors",
            {"hf": "org/repo", "file": "unet/model.safetensors", "revision": "abc123"},
        ),
        (
            "hf://datasets/org/name/data/train.parquet",
            {"hf": "datasets/org/name", "file": "data/train.parquet"},
        ),
        ("civitai:128713", {"civitai": 128713}),
        ("https://h.example/a.bin?x=1", {"url": "https://h.example/a.bin?x=1"}),
    ],
)
def test_parse_source(source: str, expected: dict[str, Any]) -> None:
    assert parse_source(source) == expected
