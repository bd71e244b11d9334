"""Mirrors through the real CLI and a real aria2c: an origin FileServer (127.0.0.1) and a
mirror FileServer (localhost, so that aria2 takes them for two hosts)."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers.fake_hf import FakeHub
from tests.servers.fileserver import FileServer

MIB = 1 << 20
HF_TOKEN = "hf_mirrortesttoken"


@pytest.fixture
def mirror() -> Iterator[FileServer]:
    with FileServer(url_host="localhost") as server:
        yield server


def apply_json(manifest: Path, env: dict[str, str] | None = None) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", "--no-progress", env=env)
    assert run.stdout, run.stderr
    return run, json.loads(run.stdout)


def closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gets(server: FileServer) -> list[str]:
    return [r.path for r in server.requests if r.method == "GET"]


def test_origin_and_mirror_serve_one_download_together(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    # 24 MiB: three 8 MiB segments; throttled so that every connection is under way
    # before the first finishes. aria2 opens the second one to the host not in use.
    f = serve(fileserver, "/m/model.bin", 24 * MIB)
    mirror.add_bytes(f"/sha256/{f.sha256}", f.data)
    for server in (fileserver, mirror):
        server.faults.rate_limit = 8 * MIB
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": f.url, "sha256": f.sha256}],
        {"mirrors": [f"{mirror.url}/sha256/{{sha256}}"]},
    )
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert doc["entries"][0]["status"] == "downloaded"
    assert (tmp_path / "models/model.bin").read_bytes() == f.data
    assert fileserver.bytes_served("/m/model.bin") > 0
    assert mirror.bytes_served(f"/sha256/{f.sha256}") > 0
    assert "wrong bytes" not in run.stderr


def test_a_corrupt_mirror_is_bypassed_and_named(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    f = serve(fileserver, "/m/model.bin", 24 * MIB)
    mirror.add_bytes(f"/sha256/{f.sha256}", blob(len(f.data), seed=99))  # same size, wrong
    for server in (fileserver, mirror):
        server.faults.rate_limit = 8 * MIB
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"name": "base", "url": f.url, "sha256": f.sha256}],
        {"mirrors": [f"{mirror.url}/sha256/{{sha256}}"]},
    )
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert doc["entries"][0]["status"] == "downloaded"
    assert (tmp_path / "models/model.bin").read_bytes() == f.data
    host = f"localhost:{mirror.port}"
    assert f"retrying from the origin alone, without mirror {host}" in run.stderr
    assert (
        f"mirror {host} served wrong bytes for base; downloaded from the origin instead"
        in run.stderr
    )
    # The second download came from the origin alone: every byte of the file again.
    assert fileserver.bytes_served("/m/model.bin") >= len(f.data)
    assert not any((tmp_path / "models/.modelsync/tmp").iterdir())


def test_a_corrupt_mirror_first_falls_back_and_is_named(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    f = serve(fileserver, "/m/model.bin", 1 * MIB)
    mirror.add_bytes("/files/model.bin", blob(len(f.data), seed=7))
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"name": "base", "url": f.url, "sha256": f.sha256}],
        {"mirrors": [f"{mirror.url}/files/{{filename}}"], "mirror_first": True},
    )
    run, _ = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/model.bin").read_bytes() == f.data
    assert f"mirror localhost:{mirror.port} served wrong bytes for base" in run.stderr
    assert gets(mirror) and gets(fileserver) == ["/m/model.bin"]


def test_the_origin_serving_wrong_bytes_too_still_fails(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    """Only once the origin alone brought its bytes does the corrupt-twice rule apply."""
    f = serve(fileserver, "/m/model.bin", 1 * MIB)
    fileserver.faults.corrupt_at = 1000
    mirror.add_bytes("/files/model.bin", blob(len(f.data), seed=7))
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"name": "base", "url": f.url, "sha256": f.sha256}],
        {"mirrors": [f"{mirror.url}/files/{{filename}}"], "mirror_first": True},
    )
    run, doc = apply_json(manifest)
    assert run.code == 1
    assert "the server sends the same bytes twice" in doc["entries"][0]["error"]
    assert "served wrong bytes" not in run.stderr  # the origin is no better: nobody blamed
    assert len(gets(fileserver)) == 2  # the origin's own two tries
    assert not (tmp_path / "models/model.bin").exists()


def test_an_unpinned_entry_never_mixes_in_a_mirror(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    """Nothing would tell a mirror's bytes from the origin's: the origin alone."""
    f = serve(fileserver, "/m/model.bin", 24 * MIB)
    other = mirror.add_bytes("/model.bin", blob(len(f.data), seed=8))
    fileserver.faults.rate_limit = 8 * MIB
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "mirrors": [other]}])
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert doc["entries"][0]["status"] == "downloaded"
    assert (tmp_path / "models/model.bin").read_bytes() == f.data
    assert mirror.requests == []


def test_a_dead_mirror_and_a_404_mirror_do_not_fail_the_apply(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    f = serve(fileserver, "/m/model.bin", 24 * MIB)
    dead = f"http://127.0.0.1:{closed_port()}/sha256/{{sha256}}"
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": f.url, "sha256": f.sha256}],
        {"mirrors": [dead, f"{mirror.url}/sha256/{{sha256}}"]},
    )
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert doc["entries"][0]["status"] == "downloaded"
    assert (tmp_path / "models/model.bin").read_bytes() == f.data
    assert all(r.status == 404 for r in mirror.requests)


def test_mirror_first_asks_the_origin_nothing_on_a_hit_and_falls_back_on_a_miss(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    hit = serve(fileserver, "/m/hit.bin", 2 * MIB, seed=1)
    miss = serve(fileserver, "/m/miss.bin", 2 * MIB, seed=2)
    mirror.add_bytes(f"/sha256/{hit.sha256}", hit.data)
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": hit.url, "sha256": hit.sha256}, {"url": miss.url, "sha256": miss.sha256}],
        {"mirrors": [f"{mirror.url}/sha256/{{sha256}}"], "mirror_first": True},
    )
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert [e["status"] for e in doc["entries"]] == ["downloaded", "downloaded"]
    assert (tmp_path / "models/hit.bin").read_bytes() == hit.data
    assert (tmp_path / "models/miss.bin").read_bytes() == miss.data
    assert {r.path for r in fileserver.requests} == {"/m/miss.bin"}  # not one for hit.bin
    assert f"/sha256/{miss.sha256}" in gets(mirror)  # asked first, 404
    assert "mirror" not in run.stderr  # a mirror without a file is no news


def test_mirror_first_with_a_dead_mirror_says_so_and_uses_the_origin(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/m/model.bin", 1 * MIB)
    port = closed_port()
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"name": "base", "url": f.url, "sha256": f.sha256}],
        {"mirrors": [f"http://127.0.0.1:{port}/{{sha256}}"], "mirror_first": True},
    )
    run, _ = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/model.bin").read_bytes() == f.data
    assert f"base: mirror 127.0.0.1:{port}: connection refused" in run.stderr


def test_filename_and_name_templates(
    tmp_path: Path, fileserver: FileServer, mirror: FileServer
) -> None:
    by_file = blob(MIB, seed=3)
    by_name = blob(MIB, seed=4)
    mirror.add_bytes("/by-file/a b.safetensors", by_file)
    mirror.add_bytes("/by-name/my model.bin", by_name)
    unpinned = serve(fileserver, "/m/unpinned.bin", 1000, seed=5)
    sha = {d: hashlib.sha256(d).hexdigest() for d in (by_file, by_name)}
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"filename": "a b.safetensors", "sha256": sha[by_file], "dir": "x"},
            {"name": "my model", "filename": "m.bin", "sha256": sha[by_name], "dir": "y"},
            {"url": unpinned.url},  # no sha256: the {sha256} template is left out for it
        ],
        {
            "mirrors": [
                f"{mirror.url}/by-file/{{filename}}",
                f"{mirror.url}/by-name/{{name}}.bin",
                f"{mirror.url}/cas/{{sha256}}",
            ]
        },
    )
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    assert [e["status"] for e in doc["entries"]] == ["downloaded"] * 3
    assert (tmp_path / "models/x/a b.safetensors").read_bytes() == by_file
    assert (tmp_path / "models/y/m.bin").read_bytes() == by_name
    assert (tmp_path / "models/unpinned.bin").read_bytes() == unpinned.data
    targets = {r.target for r in mirror.requests}
    assert "/by-file/a%20b.safetensors" in targets and "/by-name/my%20model.bin" in targets
    assert not any("{" in t or "%7B" in t for t in targets)  # no placeholder left unfilled


@pytest.mark.parametrize("mirror_first", [False, True])
def test_a_token_never_reaches_a_mirror(
    tmp_path: Path, mirror: FileServer, mirror_first: bool
) -> None:
    data = b'{"private": true}\n'
    with FakeHub() as hub:
        hub.token = HF_TOKEN
        hub.lfs_threshold = 1024  # kept in git: served by the Hub itself, with the token
        hub.add_repo("org/private", files={"config.json": data}, private=True)
        mirror.add_bytes("/files/config.json", data)
        manifest = write_manifest(
            tmp_path / "models.toml",
            [
                {
                    "hf": "org/private",
                    "file": "config.json",
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ],
            {"mirrors": [f"{mirror.url}/files/{{filename}}"], "mirror_first": mirror_first},
        )
        run, _ = apply_json(manifest, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN})
        hub_gets = [r for r in hub.requests if r.method == "GET" and "resolve" in r.path]
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/config.json").read_bytes() == data
    assert not any("authorization" in r.headers for r in mirror.requests)
    assert HF_TOKEN not in run.stderr + run.stdout
    if mirror_first:  # the mirror alone, without the header; the Hub only answered the HEAD
        assert gets(mirror) == ["/files/config.json"] and not hub_gets
    else:  # the download carries the token: no mirror in it at all
        assert not mirror.requests and hub_gets
