"""`modelsync add`: resolve a source, append an entry, keep the manifest's own text."""

from __future__ import annotations

import hashlib
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelsync.commands.add import parse_source
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
    assert added_entry(manifest) == {"url": f.url, "dir": "upscale_models", "size": 2000}
    assert "unpinned" in run.stderr and "modelsync lock" in run.stderr
    assert [r.method for r in fileserver.requests] == ["HEAD"]  # add never downloads

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
    assert manifest.read_text() == f'[[models]]\nurl = "{f.url}"\ndir = "misc"\nsize = 3000\n'
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
        ("https://civitai.com/images/5", "not a model version or download link"),
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
        ("https://civitai.com/models/7/x?modelVersionId=9", {"civitai": 9}),
        ("https://www.civitai.com/api/download/models/9", {"civitai": 9}),
        ("https://civitai.com/models/7", {"civitai_model": 7}),  # its latest version, later
        (  # another file than the primary one: the link says which
            "https://civitai.com/api/download/models/9?type=Config",
            {"url": "https://civitai.com/api/download/models/9?type=Config"},
        ),
    ],
)
def test_parse_source(source: str, expected: dict[str, Any]) -> None:
    assert parse_source(source) == expected


# ---- paths, Civitai links and sizes (issue 7) ------------------------------------------------


@pytest.mark.parametrize(
    ("source", "locked"),
    [("civitai = 128713", False), ("civitai = 128713", True), ("url = '{api}'", False)],
    ids=["resolved", "from-lock", "download-link"],
)
def test_add_refuses_the_path_a_civitai_entry_without_filename_downloads_to(
    tmp_path: Path, civitai: FakeCivitai, fileserver: FileServer, source: str, locked: bool
) -> None:
    civitai.add_version(128713, files=[("detail.safetensors", blob(1000, seed=5))])
    manifest = tmp_path / "models.toml"
    source = source.format(api=civitai.download_url(128713))
    manifest.write_text(f'[[models]]\nname = "detail"\n{source}\ndir = "loras"\n')
    env = {"CIVITAI_ENDPOINT": civitai.url}
    if locked:
        assert modelsync("lock", manifest, env=env).code == 0
        civitai.reset_log()
    before = manifest.read_text()
    f = serve(fileserver, "/other/detail.safetensors", 500, seed=6)

    run = modelsync("add", manifest, f.url, "--dir", "loras", "--name", "other", env=env)
    assert run.code == 2, run.stderr
    assert "models[0] (detail)" in run.stderr
    assert "'loras/detail.safetensors'" in run.stderr and "nothing was added" in run.stderr
    assert manifest.read_text() == before
    assert fileserver.requests == []  # refused before asking for the size
    if locked:
        assert civitai.requests == []  # the lock knew the path


def test_add_refuses_a_path_that_differs_only_in_case(manifest: Path) -> None:
    source = "https://example.invalid/x/SDXL.VAE.safetensors"
    run = modelsync("add", manifest, source, "--dir", "VAE", "--name", "v3")
    assert run.code == 2, run.stderr
    assert "models[1] (sdxl.vae.safetensors) already downloads to 'vae/sdxl.vae.safetensors'" in (
        run.stderr
    )
    assert "'VAE/SDXL.VAE.safetensors' differs in case only" in run.stderr
    assert manifest.read_text() == ORIGINAL


@pytest.mark.parametrize(
    "link",
    [
        "{api}/models/4201?modelVersionId=128713",
        "{api}/models/4201/detail-tweaker-lora?modelVersionId=128713",
        "https://civitai.com/models/4201/detail-tweaker-lora?modelVersionId=128713",
        "https://civitai.com/api/download/models/128713",
    ],
    ids=["page", "page-with-slug", "civitai.com", "download-link"],
)
def test_add_turns_a_civitai_link_into_its_version_id(
    tmp_path: Path, civitai: FakeCivitai, link: str
) -> None:
    lora = blob(4000, seed=2)
    civitai.add_version(128713, files=[("detail-tweaker.safetensors", lora)], model_id=4201)
    manifest = tmp_path / "models.toml"
    env = {"CIVITAI_ENDPOINT": civitai.url}
    run = modelsync("add", manifest, link.format(api=civitai.url), "--dir", "loras", env=env)
    assert run.code == 0, run.stderr
    assert added_entry(manifest) == {
        "civitai": 128713,
        "dir": "loras",
        "sha256": hashlib.sha256(lora).hexdigest(),
    }
    assert civitai.cdn.requests == []


def test_add_picks_the_latest_version_of_a_civitai_model_page_without_one(
    tmp_path: Path, civitai: FakeCivitai
) -> None:
    civitai.add_version(100, files=[("old.safetensors", blob(100, seed=7))], model_id=42)
    new = blob(200, seed=8)
    civitai.add_version(200, files=[("new.safetensors", new)], model_id=42, name="v2.0")
    manifest = tmp_path / "models.toml"
    env = {"CIVITAI_ENDPOINT": civitai.url}
    run = modelsync("add", manifest, f"{civitai.url}/models/42/some-name", "--dir", "l", env=env)
    assert run.code == 0, run.stderr
    assert added_entry(manifest) == {
        "civitai": 200,
        "dir": "l",
        "sha256": hashlib.sha256(new).hexdigest(),
    }
    assert "latest version, 200 (v2.0)" in run.stderr

    run = modelsync("add", manifest, f"{civitai.url}/models/43", "--dir", "l", env=env)
    assert run.code == 1 and "has no model 43" in run.stderr and "modelVersionId" in run.stderr


def test_add_records_the_size_a_plain_url_announces_after_redirects(
    tmp_path: Path, fileserver: FileServer
) -> None:
    data = blob(5000, seed=9)
    with FileServer(url_host="localhost") as other:
        target = other.add_bytes("/files/model.safetensors", data)
        fileserver.set_faults("/go/model.safetensors", redirect=target)
        link = fileserver.url_for("/go/model.safetensors")
        manifest = tmp_path / "models.toml"
        env = {"HF_TOKEN": "hf_addSecretToken", "CIVITAI_TOKEN": "civ_addSecretToken"}
        run = modelsync("add", manifest, link, "--dir", "x", env=env)
        assert run.code == 0, run.stderr
        assert added_entry(manifest) == {"url": link, "dir": "x", "size": 5000}
        assert [r.method for r in other.requests] == ["HEAD"]
        assert not any("authorization" in r.headers for r in other.requests)

    missing = fileserver.url_for("/missing.bin")
    run = modelsync("add", manifest, missing, "--dir", "x")
    assert run.code == 0, run.stderr  # the URL may work elsewhere: added, without a size
    assert added_entry(manifest) == {"url": missing, "dir": "x"}
    assert "size unknown" in run.stderr and "answered 404" in run.stderr


def test_add_sees_a_civitai_version_written_as_a_link(tmp_path: Path, civitai: FakeCivitai) -> None:
    civitai.add_version(128713, files=[("detail.safetensors", blob(1000, seed=5))])
    manifest = tmp_path / "models.toml"
    manifest.write_text(f'[[models]]\nurl = "{civitai.download_url(128713)}"\ndir = "a"\n')
    before = manifest.read_text()
    env = {"CIVITAI_ENDPOINT": civitai.url}
    run = modelsync("add", manifest, "civitai:128713", "--dir", "b", env=env)
    assert run.code == 2, run.stderr
    assert "models[0] (128713) already has this source" in run.stderr
    assert manifest.read_text() == before


class _Gzipped(BaseHTTPRequestHandler):
    """Announces the length of a compressed body: not the file's size."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", "123")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_add_writes_no_size_for_a_compressed_response(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gzipped)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        link = f"http://127.0.0.1:{server.server_address[1]}/model.safetensors"
        manifest = tmp_path / "models.toml"
        run = modelsync("add", manifest, link, "--dir", "x")
    finally:
        server.shutdown()
        server.server_close()
    assert run.code == 0, run.stderr
    assert added_entry(manifest) == {"url": link, "dir": "x"}
