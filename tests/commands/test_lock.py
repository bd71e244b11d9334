"""The lock file end to end: the real CLI, a real aria2c, local servers (file, Hub, Civitai)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import xxhash

from modelsync.lockfile import Lock, LockedEntry, dumps_lock
from tests.clirun import Run, modelsync
from tests.conftest import Served, blob, serve, write_manifest
from tests.servers import SIGNATURE_MARK, FakeCivitai, FakeHub, FileServer

KEY_ORDER = ["fingerprint", "path", "url", "commit", "size", "estimated_size"]
KEY_ORDER += ["sha256", "xxh3_128"]


def sources_env(hub: FakeHub | None = None, civitai: FakeCivitai | None = None) -> dict[str, str]:
    env = {"CIVITAI_TOKEN": "", "CIVITAI_API_TOKEN": ""}
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    if civitai is not None:
        env["CIVITAI_ENDPOINT"] = civitai.url
    return env


def read_lock(manifest: Path) -> dict[str, Any]:
    return tomllib.loads(manifest.with_suffix(".lock").read_text())


def plan_json(manifest: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    run = modelsync("plan", manifest, "--json", env=env)
    assert run.code in (0, 1), run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def apply_json(manifest: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Run, Any]:
    run = modelsync("apply", manifest, "--json", *args, env=env)
    return run, json.loads(run.stdout) if run.stdout else {}


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["status"] for e in doc["entries"]}


def unpinned(s: Served, dir: str = "misc") -> dict[str, Any]:
    return {"url": s.url, "dir": dir}


def pinned(s: Served, dir: str = "misc", **extra: Any) -> dict[str, Any]:
    return {"url": s.url, "dir": dir, "sha256": s.sha256, **extra}


def test_lock_downloads_an_unpinned_url_once_and_apply_then_holds_it_to_the_pin(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/free.bin", 3 << 20, seed=1)
    manifest = write_manifest(tmp_path / "models.toml", [unpinned(f)])

    run = modelsync("lock", manifest)
    assert run.code == 0, run.stderr
    locked = read_lock(manifest)["models"]["free.bin"]
    assert locked["sha256"] == f.sha256
    assert locked["xxh3_128"] == xxhash.xxh3_128_hexdigest(f.data)
    assert locked["size"] == len(f.data)
    assert locked["path"] == "misc/free.bin"
    assert fileserver.bytes_served("/free.bin") == len(f.data)  # downloaded exactly once
    target = tmp_path / "models/misc/free.bin"
    assert target.read_bytes() == f.data
    assert "added" in run.stderr and "free.bin" in run.stderr
    assert "run `modelsync lock`" not in run.stderr  # no advice to run what is running

    # The file landed verified, and the lock pins it: no warning, nothing to do, no request.
    fileserver.reset_log()
    doc = plan_json(manifest)
    assert statuses(doc) == {"free.bin": "ok"} and doc["warnings"] == []
    run, doc = apply_json(manifest, "--locked")
    assert run.code == 0, run.stderr
    assert statuses(doc) == {"free.bin": "ok"}
    assert fileserver.requests == []

    # Pinned by the lock, a changed file is repaired.
    damaged = bytearray(f.data)
    damaged[777] ^= 0xFF
    target.write_bytes(bytes(damaged))
    run, doc = apply_json(manifest, "--locked")
    assert run.code == 0, run.stderr
    assert statuses(doc) == {"free.bin": "repaired"}
    assert target.read_bytes() == f.data


def test_lock_output_is_deterministic_sorted_and_holds_no_timestamp_query_or_token(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 1000, seed=2)
    b = serve(fileserver, "/b.bin", 2000, seed=3)
    signed = {
        "url": f"http://user:pa55word@127.0.0.1:{fileserver.port}/b.bin"
        f"?X-Amz-Signature={SIGNATURE_MARK}abc&token=tok_SECRET",
        "dir": "misc",
        "sha256": b.sha256,
    }
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"name": "zeta", **pinned(a)}, {"name": "alpha", **signed}],
    )
    assert modelsync("lock", manifest).code == 0
    lock = manifest.with_suffix(".lock")
    first = lock.read_bytes()
    mtime = lock.stat().st_mtime_ns
    assert fileserver.requests == []  # published/manifest hashes: nothing to download
    assert not (tmp_path / "models").exists()  # nor anything written under root

    run = modelsync("lock", manifest)
    assert run.code == 0, run.stderr
    assert lock.read_bytes() == first
    assert lock.stat().st_mtime_ns == mtime  # not even rewritten
    assert "up to date" in run.stderr

    text = first.decode()
    assert text.startswith("# ") and "generated" in text.splitlines()[0]
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert SIGNATURE_MARK not in text and "?" not in text
    assert "tok_SECRET" not in text and "pa55word" not in text and "user" not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", text)
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == ['[models."alpha"]', '[models."zeta"]']
    data = tomllib.loads(text)
    assert data["version"] == 1
    assert data["models"]["alpha"]["url"] == f"http://127.0.0.1:{fileserver.port}/b.bin"
    for entry in data["models"].values():
        assert list(entry) == [k for k in KEY_ORDER if k in entry]


def test_apply_locked_refuses_a_missing_or_stale_lock_and_names_the_entries(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 1000, seed=4)
    b = serve(fileserver, "/b.bin", 1000, seed=5)
    manifest = write_manifest(tmp_path / "models.toml", [pinned(a), unpinned(b)])
    root = tmp_path / "models"

    run = modelsync("apply", manifest, "--locked")
    assert run.code == 2
    assert "models.lock does not exist" in run.stderr and "modelsync lock" in run.stderr
    assert fileserver.requests == [] and not root.exists()

    assert modelsync("lock", manifest).code == 0
    # Edit b (another folder) and add c: the lock no longer matches them.
    c = serve(fileserver, "/c.bin", 1000, seed=6)
    write_manifest(manifest, [pinned(a), unpinned(b, dir="other"), unpinned(c)])
    fileserver.reset_log()
    run = modelsync("apply", manifest, "--locked")
    assert run.code == 2
    assert "b.bin (changed)" in run.stderr and "c.bin (new)" in run.stderr
    assert "a.bin" not in run.stderr
    assert "run `modelsync lock" in run.stderr
    assert fileserver.requests == []
    # --only a current entry is fine.
    run = modelsync("apply", manifest, "--locked", "--only", "a.bin")
    assert run.code == 0, run.stderr

    # Without --locked, stale entries follow the manifest, with a warning.
    run, doc = apply_json(manifest)
    assert run.code == 0, run.stderr
    warnings = "\n".join(doc["warnings"])
    assert "b.bin: changed in the manifest since models.lock was written" in warnings
    assert "c.bin: added to the manifest since models.lock was written" in warnings
    assert "a.bin" not in warnings
    assert (root / "other/b.bin").read_bytes() == b.data

    # Editing a pin makes the entry stale too.
    write_manifest(manifest, [pinned(a, size=len(a.data)), unpinned(b, dir="other")])
    run = modelsync("apply", manifest, "--locked")
    assert run.code == 2 and "a.bin (changed)" in run.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("version = 1\n[models.x\n", "TOML syntax error"),
        ("version = 1\ncolour = 1\n", "colour"),
        ('version = 1\n[models."a.bin"]\nfingerprint = "00"\npath = "a.bin"\n', "fingerprint"),
        (
            f'[models."a.bin"]\nfingerprint = "{"0" * 64}"\npath = "../../etc/passwd"\n'
            f'sha256 = "{"0" * 64}"\n',
            "path",
        ),
        (f'[models."a.bin"]\nfingerprint = "{"0" * 64}"\npath = "a.bin"\n', "sha256 or xxh3"),
    ],
    ids=["syntax", "unknown-key", "bad-hash", "escaping-path", "unpinned"],
)
def test_a_broken_lock_is_an_exit_2_error_naming_the_file(
    tmp_path: Path, fileserver: FileServer, content: str, problem: str
) -> None:
    a = serve(fileserver, "/a.bin", 1000, seed=7)
    manifest = write_manifest(tmp_path / "models.toml", [pinned(a)])
    manifest.with_suffix(".lock").write_text(content)
    # Every command that reads the lock refuses it (all of them for one case: CLI start-up costs).
    for command in ("plan", "apply", "lock") if problem == "TOML syntax error" else ("plan",):
        run = modelsync(command, manifest)
        assert run.code == 2, (command, run.stderr)
        assert "models.lock: invalid lock file" in run.stderr and problem in run.stderr
        assert "Traceback" not in run.stderr
    assert manifest.with_suffix(".lock").read_text() == content
    assert fileserver.requests == [] and not (tmp_path / "models").exists()


def test_lock_reports_changes_keeps_going_past_a_failure_and_exits_1(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 1000, seed=8)
    b = serve(fileserver, "/b.bin", 1000, seed=9)
    gone = {"url": fileserver.url_for("/missing.bin"), "dir": "misc"}
    manifest = write_manifest(tmp_path / "models.toml", [pinned(a), unpinned(b), gone])

    run = modelsync("lock", manifest)
    assert run.code == 1
    assert "missing.bin" in run.stderr and "failed" in run.stderr
    models = read_lock(manifest)["models"]
    assert set(models) == {"a.bin", "b.bin"}  # written for the entries that could be locked
    assert models["b.bin"]["sha256"] == b.sha256

    # Drop a, repin b by hand, drop the missing one: removed / updated / exit 0.
    write_manifest(manifest, [pinned(b)])
    run = modelsync("lock", manifest)
    assert run.code == 0, run.stderr
    assert re.search(r"removed\s+a\.bin", run.stderr)
    assert re.search(r"updated\s+b\.bin", run.stderr)
    assert set(read_lock(manifest)["models"]) == {"b.bin"}


def test_xxh3_is_locked_once_the_file_is_verified_and_kept_after(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 5000, seed=10)
    manifest = write_manifest(tmp_path / "models.toml", [pinned(a)])
    assert modelsync("lock", manifest).code == 0
    assert "xxh3_128" not in read_lock(manifest)["models"]["a.bin"]  # not known before
    assert fileserver.requests == []

    assert modelsync("apply", manifest).code == 0
    run = modelsync("lock", manifest, "--upgrade")  # a current entry changes only then
    assert run.code == 0 and re.search(r"updated\s+a\.bin\s+\(.*xxh3_128", run.stderr)
    assert read_lock(manifest)["models"]["a.bin"]["xxh3_128"] == xxhash.xxh3_128_hexdigest(a.data)
    before = manifest.with_suffix(".lock").read_bytes()

    (tmp_path / "models/misc/a.bin").unlink()  # a property of the bytes, not of this disk
    assert modelsync("lock", manifest).code == 0
    assert manifest.with_suffix(".lock").read_bytes() == before


def test_lock_after_apply_leaves_a_current_lock_byte_identical(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 5000, seed=14)  # sha256 pinned, size learned by apply
    b = serve(fileserver, "/b.bin", 3000, seed=15)  # unpinned: trust on first use
    manifest = write_manifest(tmp_path / "models.toml", [pinned(a), unpinned(b)])
    assert modelsync("lock", manifest).code == 0
    lock = manifest.with_suffix(".lock")
    first = lock.read_bytes()
    mtime = lock.stat().st_mtime_ns

    run, doc = apply_json(manifest)
    assert run.code == 0 and statuses(doc) == {"a.bin": "downloaded", "b.bin": "ok"}
    run = modelsync("lock", manifest)
    assert run.code == 0, run.stderr
    assert "up to date" in run.stderr and "updated" not in run.stderr
    assert lock.read_bytes() == first and lock.stat().st_mtime_ns == mtime
    assert "xxh3_128" not in read_lock(manifest)["models"]["a.bin"]  # --upgrade adds it


@pytest.mark.parametrize("upstream_changed", [False, True], ids=["same", "changed-upstream"])
def test_lock_never_pins_an_unpinned_file_changed_since_apply_downloaded_it(
    tmp_path: Path, fileserver: FileServer, upstream_changed: bool
) -> None:
    f = serve(fileserver, "/free.bin", 40_000, seed=16)
    manifest = write_manifest(tmp_path / "models.toml", [unpinned(f)])
    run, doc = apply_json(manifest)
    assert run.code == 0 and statuses(doc) == {"free.bin": "downloaded"}
    target = tmp_path / "models/misc/free.bin"
    damaged = bytearray(f.data)
    damaged[777] ^= 0xFF  # same size: only its learned pin's hashes tell
    target.write_bytes(bytes(damaged))
    served = serve(fileserver, "/free.bin", 40_000, seed=17) if upstream_changed else f
    fileserver.reset_log()

    # Trust on first use: the first use was apply's download, not the bytes on disk now.
    run = modelsync("lock", manifest)
    assert run.code == 0, run.stderr
    assert read_lock(manifest)["models"]["free.bin"]["sha256"] == served.sha256
    assert target.read_bytes() == served.data  # repaired, then pinned
    assert fileserver.bytes_served("/free.bin") == len(served.data)
    if upstream_changed:  # the pin moves with the source: lock says so
        assert f"(was {f.sha256}; the file changed upstream)" in run.stderr
    doc = plan_json(manifest)
    assert statuses(doc) == {"free.bin": "ok"} and doc["warnings"] == []


def test_hf_lock_pins_the_commit_plan_asks_nothing_and_upgrade_moves_it(
    tmp_path: Path, hub: FakeHub, civitai: FakeCivitai
) -> None:
    old = blob(40_000, seed=11)
    commit = hub.add_repo("org/sdxl", files={"unet/model.safetensors": old})
    lora = blob(3000, seed=12)
    civitai.add_version(128713, files=[("lora.safetensors", lora)])
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"hf": "org/sdxl", "file": "unet/model.safetensors", "revision": "main", "dir": "unet"},
            {"civitai": 128713, "dir": "loras"},
        ],
    )
    env = sources_env(hub, civitai)
    run = modelsync("lock", manifest, env=env)
    assert run.code == 0, run.stderr
    models = read_lock(manifest)["models"]
    hf_lock = models["model.safetensors"]
    assert hf_lock["commit"] == commit and hf_lock["path"] == "unet/model.safetensors"
    assert hf_lock["size"] == len(old) and "?" not in hf_lock["url"]
    civ_lock = models["civitai-128713"]
    assert civ_lock["path"] == "loras/lora.safetensors"
    assert "size" not in civ_lock and civ_lock["estimated_size"] == len(lora)  # sizeKB: approx.
    assert hub.cdn.requests == [] and civitai.cdn.requests == []  # metadata only

    # main moves on; a current lock keeps the old commit, and plan asks no server at all.
    new = blob(50_000, seed=13)
    hub.add_repo("org/sdxl", files={"unet/model.safetensors": new})
    for server in (hub, hub.cdn, civitai, civitai.cdn):
        server.reset_log()
    doc = plan_json(manifest, env=env)
    assert {e["path"]: e["action"] for e in doc["entries"]} == {
        "unet/model.safetensors": "download",
        "loras/lora.safetensors": "download",
    }
    assert doc["warnings"] == []
    assert doc["totals"]["download_bytes"] == len(old) + len(lora)
    assert [hub.requests, hub.cdn.requests, civitai.requests, civitai.cdn.requests] == [[]] * 4

    run = modelsync("lock", manifest, env=env)
    assert run.code == 0 and "up to date" in run.stderr
    assert hub.requests == [] and civitai.requests == []

    run, doc = apply_json(manifest, "--locked", env=env)
    assert run.code == 0, run.stderr
    assert (tmp_path / "models/unet/model.safetensors").read_bytes() == old  # the locked commit
    assert (tmp_path / "models/loras/lora.safetensors").read_bytes() == lora

    run = modelsync("lock", manifest, "--upgrade", env=env)
    assert run.code == 0, run.stderr
    assert re.search(rf"updated\s+model\.safetensors\s+\(.*commit {commit[:12]} -> ", run.stderr)
    upgraded = read_lock(manifest)["models"]
    assert upgraded["model.safetensors"]["sha256"] != hf_lock["sha256"]
    assert upgraded["civitai-128713"]["size"] == len(lora)  # exact, once verified here
    run, doc = apply_json(manifest, "--locked", env=env)
    assert run.code == 0, run.stderr
    assert statuses(doc)["model.safetensors"] == "repaired"
    assert (tmp_path / "models/unet/model.safetensors").read_bytes() == new


def test_hf_file_without_published_sha256_is_downloaded_and_pinned(
    tmp_path: Path, hub: FakeHub
) -> None:
    config = b'{"model_type": "test"}\n'
    hub.lfs_threshold = 1024  # a small, non-LFS file: the Hub publishes no sha256 for it
    commit = hub.add_repo("org/sdxl", files={"config.json": config})
    manifest = write_manifest(
        tmp_path / "models.toml", [{"hf": "org/sdxl", "file": "config.json", "dir": "cfg"}]
    )
    env = sources_env(hub)
    run = modelsync("lock", manifest, env=env)
    assert run.code == 0, run.stderr
    locked = read_lock(manifest)["models"]["config.json"]
    assert locked["commit"] == commit
    assert locked["sha256"] == Served("", config, "").sha256
    assert (tmp_path / "models/cfg/config.json").read_bytes() == config
    hub.reset_log()
    assert modelsync("apply", manifest, "--locked", env=env).code == 0
    assert hub.requests == []


def test_lock_text_round_trips_names_and_paths_that_need_escaping() -> None:
    names = ["plain", 'with "quotes"', "back\\slash", "tab\tand\u007fdel", "ünïcode ✓", "a.b"]
    lock = Lock(
        models={
            name: LockedEntry(fingerprint="0" * 64, path=f"d/{i}.bin", sha256="a" * 64)
            for i, name in enumerate(names)
        }
    )
    text = dumps_lock(lock, 'odd "name".toml')
    data = tomllib.loads(text)
    assert sorted(data["models"]) == sorted(names)
    assert Lock.model_validate(data) == lock
    assert dumps_lock(Lock.model_validate(data), 'odd "name".toml') == text
