"""`modelsync mirror export` through the real CLI: the content-addressed tree, its index,
incremental exports, refused files, and the tree serving as a `{sha256}` mirror."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers import FakeHub
from tests.servers.fileserver import FileServer

MIB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(root: Path, relpath: str, data: bytes) -> dict[str, Any]:
    """A file in root and the manifest entry that pins it (its URL is never asked)."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    folder, _, name = relpath.rpartition("/")
    return {"url": f"http://127.0.0.1:9/{name}", "dir": folder, "sha256": sha(data)}


def export(manifest: Path, dest: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("mirror", "export", manifest, dest, "--json", *args)
    assert run.stdout, run.stderr
    return run, json.loads(run.stdout)


def stats(dest: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file in the tree."""
    return {
        str(p.relative_to(dest)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    root = tmp_path / "models"
    a, b = blob(3 * MIB, seed=1), blob(5000, seed=2)
    entries = [put(root, "checkpoints/base.safetensors", a), put(root, "vae/vae.bin", b)]
    return write_manifest(tmp_path / "models.toml", entries), a, b


def test_export_writes_the_tree_and_a_sorted_index(
    tmp_path: Path, two_files: tuple[Path, bytes, bytes]
) -> None:
    manifest, a, b = two_files
    dest = tmp_path / "mirror"
    run, doc = export(manifest, dest)
    assert run.code == 0, run.stderr
    assert doc["totals"]["written"] == 2 and doc["totals"]["present"] == 0
    assert doc["totals"]["written_bytes"] == len(a) + len(b)
    assert (dest / "sha256" / sha(a)).read_bytes() == a
    assert (dest / "sha256" / sha(b)).read_bytes() == b
    # auto: one filesystem here, so the blob is the root's file itself (no second copy)
    root_file = tmp_path / "models/checkpoints/base.safetensors"
    assert (dest / "sha256" / sha(a)).stat().st_ino == root_file.stat().st_ino
    index = json.loads((dest / "index.json").read_text())
    assert index["schema"] == 1
    assert [(e["path"], e["name"], e["size"], e["sha256"]) for e in index["entries"]] == [
        ("checkpoints/base.safetensors", "base.safetensors", len(a), sha(a)),
        ("vae/vae.bin", "vae.bin", len(b), sha(b)),
    ]
    assert all(len(e["xxh3_128"]) == 32 for e in index["entries"])
    assert sorted(p.name for p in dest.iterdir()) == ["index.json", "sha256"]  # no tmp left


def test_a_second_export_writes_nothing(
    tmp_path: Path, two_files: tuple[Path, bytes, bytes]
) -> None:
    manifest, _, _ = two_files
    dest = tmp_path / "mirror"
    first, _ = export(manifest, dest, "--link", "copy")
    assert first.code == 0, first.stderr
    before = stats(dest)
    run = modelsync("mirror", "export", manifest, dest)
    assert run.code == 0, run.stderr
    assert "Export: 0 written (0 B), 2 already there" in run.stderr
    assert stats(dest) == before  # no blob nor index rewritten: inodes and mtimes as they were
    again, doc = export(manifest, dest, "--verify")  # reads the blobs, rewrites nothing
    assert again.code == 0 and doc["totals"]["written"] == 0
    assert stats(dest) == before


def test_a_changed_manifest_adds_only_the_new_blob(
    tmp_path: Path, two_files: tuple[Path, bytes, bytes]
) -> None:
    manifest, a, b = two_files
    dest = tmp_path / "mirror"
    assert export(manifest, dest, "--link", "copy")[0].code == 0
    before = stats(dest)
    c = blob(7000, seed=3)
    entries = [
        put(tmp_path / "models", "checkpoints/base.safetensors", a),
        put(tmp_path / "models", "vae/vae.bin", b),
        put(tmp_path / "models", "loras/style.safetensors", c),
    ]
    write_manifest(manifest, entries)
    run, doc = export(manifest, dest, "--link", "copy")
    assert run.code == 0, run.stderr
    assert doc["totals"]["written"] == 1 and doc["totals"]["present"] == 2
    assert [e["name"] for e in doc["entries"] if e["status"] == "written"] == ["style.safetensors"]
    after = stats(dest)
    assert {k: after[k] for k in before if k != "index.json"} == {
        k: v for k, v in before.items() if k != "index.json"
    }
    assert set(after) - set(before) == {f"sha256/{sha(c)}"}
    index = json.loads((dest / "index.json").read_text())
    assert [e["path"] for e in index["entries"]] == [
        "checkpoints/base.safetensors",
        "loras/style.safetensors",
        "vae/vae.bin",
    ]


def test_a_corrupt_or_missing_file_is_refused_and_the_rest_exported(tmp_path: Path) -> None:
    root = tmp_path / "models"
    good, bad = blob(4000, seed=1), blob(4000, seed=2)
    entries = [put(root, "a/good.bin", good), put(root, "a/bad.bin", bad)]
    (root / "a/bad.bin").write_bytes(blob(4000, seed=9))  # same size, other bytes
    entries.append({"url": "http://127.0.0.1:9/gone.bin", "dir": "a", "sha256": sha(b"x")})
    manifest = write_manifest(tmp_path / "models.toml", entries)
    dest = tmp_path / "mirror"
    run, doc = export(manifest, dest)
    assert run.code == 1
    status = {e["name"]: e["status"] for e in doc["entries"]}
    assert status == {"good.bin": "written", "bad.bin": "corrupt", "gone.bin": "missing"}
    bad_entry = next(e for e in doc["entries"] if e["name"] == "bad.bin")
    assert f"sha256 expected {sha(bad)}" in bad_entry["error"]
    assert sorted(p.name for p in (dest / "sha256").iterdir()) == [sha(good)]
    index = json.loads((dest / "index.json").read_text())
    assert [e["name"] for e in index["entries"]] == ["good.bin"]
    assert sorted(p.name for p in dest.iterdir()) == ["index.json", "sha256"]
    human = modelsync("mirror", "export", manifest, dest)
    assert human.code == 1
    assert "corrupt" in human.stderr and "a/bad.bin" in human.stderr


def test_a_file_changed_after_apply_is_refused(tmp_path: Path, fileserver: FileServer) -> None:
    """The stat cache vouches only for the file it hashed: one edited since is hashed."""
    f = serve(fileserver, "/m/model.bin", 2 * MIB)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "sha256": f.sha256}])
    assert modelsync("apply", manifest, "--no-progress").code == 0
    with open(tmp_path / "models/model.bin", "r+b") as out:
        out.seek(1000)
        out.write(b"\xff" * 16)
    run, doc = export(manifest, tmp_path / "mirror")
    assert run.code == 1
    assert doc["entries"][0]["status"] == "corrupt"
    assert not any((tmp_path / "mirror/sha256").iterdir())


def test_the_lock_pins_what_the_manifest_does_not(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/m/model.bin", 1 * MIB)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url}])
    assert modelsync("apply", manifest, "--no-progress").code == 0
    _, doc = export(manifest, tmp_path / "mirror")
    assert doc["entries"][0]["status"] == "unpinned"  # nothing to export it as
    assert not any((tmp_path / "mirror/sha256").iterdir())
    assert modelsync("lock", manifest, "--no-progress").code == 0
    run, doc = export(manifest, tmp_path / "mirror")
    assert run.code == 0, run.stderr
    assert doc["entries"][0]["status"] == "written"
    assert (tmp_path / "mirror/sha256" / f.sha256).read_bytes() == f.data


def test_the_exported_tree_is_a_sha256_mirror_for_a_fresh_root(
    tmp_path: Path, fileserver: FileServer
) -> None:
    one = serve(fileserver, "/m/one.bin", 2 * MIB, seed=1)
    two = serve(fileserver, "/m/two.bin", 1 * MIB, seed=2)
    entries = [{"url": one.url, "sha256": one.sha256}, {"url": two.url, "sha256": two.sha256}]
    first = write_manifest(tmp_path / "first.toml", entries, {"root": "first"})
    assert modelsync("apply", first, "--no-progress").code == 0
    dest = tmp_path / "mirror"
    assert export(first, dest)[0].code == 0
    fileserver.reset_log()
    with FileServer(root=dest, url_host="localhost") as mirror:
        settings = {
            "root": "second",
            "mirrors": [f"{mirror.url}/sha256/{{sha256}}"],
            "mirror_first": True,
        }
        second = write_manifest(tmp_path / "second.toml", entries, settings)
        run = modelsync("apply", second, "--no-progress", "--json")
        assert run.code == 0, run.stderr
        assert {r.path for r in mirror.requests if r.method == "GET"} == {
            f"/sha256/{one.sha256}",
            f"/sha256/{two.sha256}",
        }
    assert (tmp_path / "second/one.bin").read_bytes() == one.data
    assert (tmp_path / "second/two.bin").read_bytes() == two.data
    assert [r for r in fileserver.requests if r.method == "GET"] == []  # the origin: nothing


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "no command given"),
        (["export"], "Missing argument 'MANIFEST'"),
        (["export", "models.toml"], "Missing argument 'DIR'"),
        (["export", "models.toml", "out", "--link", "reflink"], "--link"),
        (["export", "models.toml", "out", "--root", "does-not-exist"], "does not exist"),
        (["export", "models.toml", "a-file/out"], "cannot write to"),
        (["export", "models.toml", "a-file"], "is not a folder"),
    ],
)
def test_usage_errors_exit_2_and_touch_nothing(
    tmp_path: Path, two_files: tuple[Path, bytes, bytes], args: list[str], says: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    run = modelsync("mirror", *args, cwd=tmp_path)
    assert run.code == 2, run.stderr
    assert says in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    if not args:
        assert "export" in run.stderr  # the group's help lists its command


def test_a_usage_error_under_json_is_a_json_document(tmp_path: Path) -> None:
    run = modelsync("mirror", "export", tmp_path / "missing.toml", tmp_path / "out", "--json")
    assert run.code == 2
    doc = json.loads(run.stdout)
    assert doc["command"] == "mirror"
    assert "missing.toml" in doc["error"]["message"]
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == []


def test_a_repository_entry_exports_each_file_the_lock_pins(tmp_path: Path) -> None:
    weights, config = blob(2 * MIB, seed=5), b'{"_class_name": "UNet"}\n'
    with FakeHub() as hub:
        hub.lfs_threshold = 1024  # config.json stays in git: pinned by its git blob id
        hub.add_repo("org/sdxl", {"unet/model.safetensors": weights, "unet/config.json": config})
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}
        manifest = write_manifest(tmp_path / "models.toml", [{"hf": "org/sdxl"}])
        assert modelsync("apply", manifest, "--no-progress", env=env).code == 0
        assert modelsync("lock", manifest, "--no-progress", env=env).code == 0
    # the Hub is gone: the lock alone says what each file is
    run = modelsync("mirror", "export", manifest, tmp_path / "mirror", "--json", env=env)
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert {e["path"]: e["status"] for e in doc["entries"]} == {
        "sdxl/unet/config.json": "skipped",  # no sha256 to be asked for from a mirror
        "sdxl/unet/model.safetensors": "written",
    }
    assert [p.name for p in (tmp_path / "mirror/sha256").iterdir()] == [sha(weights)]
    assert (tmp_path / "mirror/sha256" / sha(weights)).read_bytes() == weights


def test_another_filesystem_gets_a_copy_and_hardlink_refuses_it(
    tmp_path: Path, two_files: tuple[Path, bytes, bytes]
) -> None:
    manifest, a, _ = two_files
    shm = Path("/dev/shm")  # tmpfs: another filesystem than tmp_path's on this machine
    assert shm.stat().st_dev != tmp_path.stat().st_dev
    dest = Path(tempfile.mkdtemp(prefix="modelsync-test-mirror-", dir=shm))
    try:
        run, doc = export(manifest, dest / "hard", "--link", "hardlink")
        assert run.code == 1
        assert {e["status"] for e in doc["entries"]} == {"failed"}
        assert "cannot hardlink (another filesystem)" in doc["entries"][0]["error"]
        assert not any((dest / "hard/sha256").iterdir())
        run, doc = export(manifest, dest / "auto")
        assert run.code == 0, run.stderr
        assert {e["how"] for e in doc["entries"]} == {"copy"}
        blob_path = dest / "auto/sha256" / sha(a)
        assert blob_path.read_bytes() == a
        assert blob_path.stat().st_mode & 0o777 == 0o644
    finally:
        shutil.rmtree(dest)


@pytest.mark.parametrize("link", ["auto", "copy"])
def test_a_blob_is_checked_before_it_is_published(
    tmp_path: Path, fileserver: FileServer, link: str
) -> None:
    """The stat cache vouches for a file edited behind its back (same size, inode and
    mtime): the bytes written to the tree are hashed, found wrong, and never published."""
    f = serve(fileserver, "/m/model.bin", 2 * MIB)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": f.url, "sha256": f.sha256}])
    assert modelsync("apply", manifest, "--no-progress").code == 0
    path = tmp_path / "models/model.bin"
    st = path.stat()
    with open(path, "r+b") as out:
        out.seek(5000)
        out.write(b"\x00" * 8)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    dest = tmp_path / "mirror"
    run, doc = export(manifest, dest, "--link", link)
    assert run.code == 1
    entry = doc["entries"][0]
    assert entry["status"] == "corrupt"
    assert f"expected {f.sha256}" in entry["error"] and "not exported" in entry["error"]
    assert not any((dest / "sha256").iterdir())
    assert sorted(p.name for p in dest.iterdir()) == ["index.json", "sha256"]
    assert json.loads((dest / "index.json").read_text())["entries"] == []
