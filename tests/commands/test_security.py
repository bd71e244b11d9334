"""Security as tests, through the real CLI: no secret anywhere a person or another process
can read it, and a manifest or lock from someone else cannot make modelsync write, delete
or send a token where it should not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsync.aria2 import find_aria2c
from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.core.test_security import listening_addresses
from tests.servers import SIGNATURE_MARK, FakeCivitai, FakeHub, FileServer, RequestRecord

MIB = 1 << 20
# Distinctive: any occurrence in output, on disk or in a process's arguments is a leak.
HF_TOKEN = "hf_SECURITYLEAK_8c1d3a7e"
CIV_TOKEN = "civ_SECURITYLEAK_5e9f0b2c"
URL_SECRET = "qs_SECURITYLEAK_77a1"  # a signed query string written in the manifest
MODEL = blob(2 * MIB, seed=71)
LORA = blob(2 * MIB, seed=72)
PLAIN = blob(2 * MIB, seed=73)
CONFIG = b'{"private": true}\n'  # kept in git: the Hub serves it, aria2 carries the token
HOLD = 256 * 1024  # each download stops here until the test lets it go on


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.token = HF_TOKEN
        hub.lfs_threshold = 1024
        hub.add_repo("org/private", {"w.safetensors": MODEL, "config.json": CONFIG}, private=True)
        yield hub


@pytest.fixture
def civ() -> Iterator[FakeCivitai]:
    with FakeCivitai() as civ:
        civ.token = CIV_TOKEN
        civ.add_version(202, [("private.safetensors", LORA)], requires_auth=True)
        yield civ


def spy_aria2c(folder: Path) -> Path:
    """An aria2c wrapper that keeps a copy of the private config file (and its mode) for the
    test, then becomes the real aria2c (exec: same pid, same command line)."""
    folder.mkdir()
    script = folder / "aria2c"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --conf-path=*) conf="${a#--conf-path=}";; esac; done\n'
        f'stat -c %a "$conf" > "{folder}/mode"\n'
        f'cp "$conf" "{folder}/conf"\n'
        f'exec "{find_aria2c()}" "$@"\n'
    )
    script.chmod(0o755)
    return script


def rpc_secret(spy: Path) -> str:
    lines = (spy / "conf").read_text().splitlines()
    [secret] = [line.split("=", 1)[1] for line in lines if line.startswith("rpc-secret=")]
    return secret


def authorizations(requests: list[RequestRecord]) -> set[str | None]:
    return {r.headers.get("authorization") for r in requests}


def contents(paths: list[Path]) -> dict[str, bytes]:
    """What each file holds; one that vanished since it was listed is left out."""
    out = {}
    for p in paths:
        try:
            out[str(p)] = p.read_bytes()
        except FileNotFoundError:
            continue
    return out


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def assert_nowhere(secrets: list[str], texts: dict[str, bytes]) -> None:
    for where, content in texts.items():
        for secret in secrets:
            assert secret.encode() not in content, f"{secret} shows in {where}"


def test_no_secret_in_output_files_or_process_arguments_while_apply_runs(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai, fileserver: FileServer
) -> None:
    """An apply held mid-download (each server stalls its body) is looked at from outside:
    `ps` (the command lines), aria2c's environment and sockets, its config file, the files
    under root; then its output, --verbose, --log-file, --metrics-file, the lock, state.db."""
    plain = fileserver.add_bytes("/plain.bin", PLAIN)
    for server in (hub.cdn, civ.cdn, fileserver):
        server.faults.stall_after = HOLD
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"hf": "org/private", "file": "w.safetensors", "dir": "m"},
            {"hf": "org/private", "file": "config.json", "dir": "m"},
            {"civitai": 202, "dir": "m", "filename": "lora.safetensors"},
            {"url": f"{plain}?X-Amz-Signature={URL_SECRET}", "dir": "m", "filename": "p.bin"},
        ],
    )
    spy = tmp_path / "spy"
    wrapper = spy_aria2c(spy)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MODELSYNC_", "HF_"))},
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civ.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": HF_TOKEN,
        "CIVITAI_TOKEN": CIV_TOKEN,
        "MODELSYNC_ARIA2C": str(wrapper),
    }
    log_file, metrics_file = tmp_path / "apply.log", tmp_path / "apply.prom"
    root = tmp_path / "models"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelsync", "apply", str(manifest), "--no-progress",
         "--verbose", "--log-file", str(log_file), "--metrics-file", str(metrics_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for server in (hub.cdn, civ.cdn, fileserver):
            assert server.wait_until(lambda s=server: any(r.stalled for r in s.requests), 60)
        secret = rpc_secret(spy)
        secrets = [HF_TOKEN, CIV_TOKEN, URL_SECRET, SIGNATURE_MARK, secret]
        aria2_pid = int((root / ".modelsync" / "aria2.pid").read_text())
        aria2_cmdline = Path(f"/proc/{aria2_pid}/cmdline").read_bytes()
        assert b"--rpc-listen-all=false" in aria2_cmdline.split(b"\0")
        # ps: neither process shows a secret in its arguments
        assert_nowhere(
            secrets,
            {
                "modelsync's command line": Path(f"/proc/{proc.pid}/cmdline").read_bytes(),
                "aria2c's command line": aria2_cmdline,
                "aria2c's environment": Path(f"/proc/{aria2_pid}/environ").read_bytes(),
                **contents(files_under(root)),  # aria2 renames its temporaries meanwhile
            },
        )
        # the RPC: 128 random bits, on 127.0.0.1 only, its config file private and gone
        assert len(secret) == 32 and int(secret, 16) >= 0
        assert listening_addresses(aria2_pid) and all(
            address == "127.0.0.1" for address, _ in listening_addresses(aria2_pid)
        )
        assert (spy / "mode").read_text().strip() == "600"
        [conf] = [a for a in aria2_cmdline.split(b"\0") if a.startswith(b"--conf-path=")]
        assert not Path(conf.decode().partition("=")[2]).exists()
    finally:
        for server in (hub.cdn, civ.cdn, fileserver):
            server.faults.stall_after = None
            server.release_stalls()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert (root / "m" / "w.safetensors").read_bytes() == MODEL
    assert (root / "m" / "lora.safetensors").read_bytes() == LORA
    # the lock and verify, --json and --verbose, after the run
    locked = modelsync("lock", manifest, env=env)
    verified = modelsync("verify", manifest, "--json", env=env)
    planned = modelsync("plan", manifest, env=env)
    assert locked.code == verified.code == planned.code == 0, locked.stderr + verified.stderr
    assert_nowhere(
        secrets,
        {
            "apply's stdout": out,
            "apply's stderr": err,
            "lock": (locked.stdout + locked.stderr).encode(),
            "verify --json": (verified.stdout + verified.stderr).encode(),
            "plan": (planned.stdout + planned.stderr).encode(),
            **{str(p): p.read_bytes() for p in [log_file, metrics_file] if p.exists()},
            **{str(p): p.read_bytes() for p in files_under(root)},  # state.db, tmp/, the lock
            str(manifest.with_suffix(".lock")): manifest.with_suffix(".lock").read_bytes(),
        },
    )
    assert log_file.exists() and metrics_file.exists()
    # aria2 saved no session and nothing is left beside state.db in .modelsync/
    own = sorted(p.name for p in (root / ".modelsync").iterdir())
    assert not [name for name in own if "session" in name or name.endswith(".conf")], own
    assert list((root / ".modelsync" / "tmp").iterdir()) == []
    # tokens went to their own hosts only
    assert authorizations(hub.cdn.requests) == {None}
    assert authorizations(civ.cdn.requests) == {None}
    assert authorizations(fileserver.requests) == {None}


def test_a_token_in_an_endpoint_url_never_shows_when_it_fails(tmp_path: Path) -> None:
    """A token written into $HF_ENDPOINT's URL (userinfo), a server that refuses the
    connection, and --verbose: the error names the host, never the token."""
    manifest = write_manifest(tmp_path / "models.toml", [{"hf": "org/r", "file": "a.bin"}])
    for args in (("plan",), ("apply", "--verbose", "--no-progress"), ("plan", "--json")):
        env = {"HF_ENDPOINT": f"http://user:{HF_TOKEN}@127.0.0.1:9", "HF_TOKEN": HF_TOKEN}
        run = modelsync(*args, manifest, env=env)
        assert run.code == 1, run.stderr
        assert "127.0.0.1" in run.stdout + run.stderr and "Traceback" not in run.stderr
        assert HF_TOKEN not in run.stdout + run.stderr


@pytest.mark.parametrize("variable", ["HF_ENDPOINT", "CIVITAI_ENDPOINT"])
@pytest.mark.parametrize("value", ["http://[::1", "http://127.0.0.1:99999", "ftp://hub"])
def test_a_malformed_endpoint_is_a_clear_error(tmp_path: Path, variable: str, value: str) -> None:
    manifest = write_manifest(
        tmp_path / "models.toml", [{"hf": "org/r", "file": "a.bin"}, {"civitai": 7}]
    )
    closed = "http://127.0.0.1:9"  # the other source asks nothing outside this machine
    env = {"HF_ENDPOINT": closed, "CIVITAI_ENDPOINT": closed, variable: value}
    run = modelsync("plan", manifest, env=env)
    assert run.code == 2, run.stderr
    assert f"${variable} is not an http(s) URL" in run.stderr and "Traceback" not in run.stderr


def test_a_token_for_an_http_endpoint_on_another_machine_is_warned_about(
    tmp_path: Path, hub: FakeHub
) -> None:
    """0.0.0.0 reaches this machine on Linux but is not a loopback name: it stands for an
    http endpoint elsewhere on the network."""
    manifest = write_manifest(
        tmp_path / "models.toml", [{"hf": "org/private", "file": "w.safetensors"}]
    )
    env = {"HF_ENDPOINT": f"http://0.0.0.0:{hub.port}", "HF_TOKEN": HF_TOKEN}
    run = modelsync("plan", manifest, "--json", env=env)
    assert run.code == 0, run.stderr
    [warning] = json.loads(run.stdout)["warnings"]
    assert "$HF_ENDPOINT is http://0.0.0.0" in warning and "unencrypted" in warning
    assert HF_TOKEN not in run.stdout + run.stderr
    # the same endpoint on 127.0.0.1 never leaves the machine: no warning
    run = modelsync("plan", manifest, "--json", env={**env, "HF_ENDPOINT": hub.url})
    assert json.loads(run.stdout)["warnings"] == []
    # the token that `hf auth login` stored is sent as well, so it is warned about too
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(HF_TOKEN)
    stored = {"HF_ENDPOINT": env["HF_ENDPOINT"], "HF_HOME": str(tmp_path / "hf-home")}
    run = modelsync("plan", manifest, "--json", env=stored)
    assert run.code == 0, run.stderr
    [warning] = json.loads(run.stdout)["warnings"]
    assert "token file" in warning and "unencrypted" in warning
    assert HF_TOKEN not in run.stdout + run.stderr


# -- tokens go to their own host only --------------------------------------------------------


def test_userinfo_tricks_do_not_get_the_hub_token(
    tmp_path: Path, hub: FakeHub, fileserver: FileServer
) -> None:
    """`https://huggingface.co@evil/…` is a URL on evil (userinfo before the "@"), and
    `http://<hub host:port>@evil/…` too: the Hub's token never goes there."""
    served = serve(fileserver, "/org/private/resolve/main/w.safetensors", 1000, seed=5)
    evil = f"127.0.0.1:{fileserver.port}{served.path}"
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"url": f"http://huggingface.co@{evil}", "filename": "a.bin", "sha256": served.sha256},
            {"url": f"http://127.0.0.1:{hub.port}@{evil}", "filename": "b.bin"},
        ],
    )
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN}
    run = modelsync("apply", manifest, "--no-progress", env=env)
    assert run.code == 0, run.stderr
    assert fileserver.requests and all(
        HF_TOKEN not in (r.headers.get("authorization") or "") for r in fileserver.requests
    )
    assert hub.requests == []  # not mistaken for a Hub file either
    assert HF_TOKEN not in run.stdout + run.stderr


def test_a_redirect_from_the_hub_to_another_port_gets_no_token(
    tmp_path: Path, hub: FakeHub, fileserver: FileServer
) -> None:
    """Same host name, another port: another origin, so no token (HF's check is by origin)."""
    served = serve(fileserver, "/elsewhere.bin", 5000, seed=6)
    hub.add_repo("org/moved", {"a.bin": served.data}, private=True)
    hub.set_faults("/org/moved/resolve/main/a.bin", redirect=served.url)
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"hf": "org/moved", "file": "a.bin", "sha256": served.sha256}],
    )
    run = modelsync("apply", manifest, "--no-progress", env={"HF_ENDPOINT": hub.url,
                                                             "HF_TOKEN": HF_TOKEN})  # fmt: skip
    assert run.code == 0, run.stderr
    assert authorizations(hub.requests) == {f"Bearer {HF_TOKEN}"}
    assert fileserver.requests and authorizations(fileserver.requests) == {None}


# -- writes and deletions stay inside root ---------------------------------------------------


def lock_text(path: str, sha256: str, fingerprint: str) -> str:
    return (
        f'version = 1\n\n[models."a.bin"]\nfingerprint = "{fingerprint}"\n'
        f'path = "{path}"\nsha256 = "{sha256}"\nsize = 1000\n'
    )


@pytest.mark.parametrize("path", ["../outside/a.bin", "/tmp/a.bin", "m/../../a.bin", "./a.bin"])
def test_a_lock_cannot_point_outside_root(
    tmp_path: Path, fileserver: FileServer, path: str
) -> None:
    from modelsync.lockfile import fingerprint
    from modelsync.manifest import load_manifest

    served = serve(fileserver, "/a.bin", 1000, seed=7)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": served.url, "dir": "m"}])
    entry = load_manifest(manifest).models[0]
    manifest.with_suffix(".lock").write_text(lock_text(path, served.sha256, fingerprint(entry)))
    run = modelsync("apply", manifest, "--no-progress")
    assert run.code == 2, run.stderr
    assert "invalid lock file" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "outside").exists() and not (tmp_path / "models").exists()


def test_a_lock_naming_another_path_inside_root_is_not_used(
    tmp_path: Path, fileserver: FileServer
) -> None:
    """A lock entry whose path is not where the manifest's entry points is stale: the file
    goes where the manifest says, nothing is written at the lock's path."""
    from modelsync.lockfile import fingerprint
    from modelsync.manifest import load_manifest

    served = serve(fileserver, "/a.bin", 1000, seed=8)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": served.url, "dir": "m"}])
    entry = load_manifest(manifest).models[0]
    lock = lock_text("other/a.bin", served.sha256, fingerprint(entry))
    manifest.with_suffix(".lock").write_text(lock)
    run = modelsync("apply", manifest, "--no-progress")
    assert run.code == 0, run.stderr
    root = tmp_path / "models"
    assert (root / "m" / "a.bin").read_bytes() == served.data
    assert not (root / "other").exists()


def test_a_symlink_at_the_target_is_replaced_not_written_through(
    tmp_path: Path, fileserver: FileServer
) -> None:
    served = serve(fileserver, "/a.bin", 1000, seed=9)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"not yours")
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": served.url, "dir": "m", "sha256": served.sha256}]
    )
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "a.bin").symlink_to(victim)
    run = modelsync("apply", manifest, "--no-progress")
    assert run.code == 0, run.stderr
    target = tmp_path / "models" / "m" / "a.bin"
    assert not target.is_symlink() and target.read_bytes() == served.data
    assert victim.read_bytes() == b"not yours"


def test_a_folder_that_leads_outside_root_is_refused(
    tmp_path: Path, fileserver: FileServer
) -> None:
    served = serve(fileserver, "/a.bin", 1000, seed=10)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m").symlink_to(outside)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": served.url, "dir": "m/sub"}])
    for command in (("plan",), ("apply", "--no-progress")):
        run = modelsync(*command, manifest)
        assert run.code == 2, run.stderr
        assert "outside root" in run.stderr
    assert list(outside.iterdir()) == [] and fileserver.requests == []


def test_prune_never_deletes_through_a_symlinked_folder(tmp_path: Path, hub: FakeHub) -> None:
    """A repository's folder is managed as a whole, subfolders included; a subfolder that
    is a symlink to elsewhere is not followed, so the files there stay."""
    hub.add_repo("org/repo", {"unet/a.safetensors": MODEL})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.safetensors").write_bytes(b"mine")
    repo_dir = tmp_path / "models" / "repo"
    repo_dir.mkdir(parents=True)
    (repo_dir / "linked").symlink_to(outside)
    manifest = write_manifest(tmp_path / "models.toml", [{"hf": "org/repo"}])
    run = modelsync("apply", manifest, "--prune", "--yes", "--no-progress",
                    env={"HF_ENDPOINT": hub.url})  # fmt: skip
    assert run.code == 0, run.stderr
    assert (repo_dir / "unet" / "a.safetensors").read_bytes() == MODEL
    assert (outside / "precious.safetensors").read_bytes() == b"mine"


# -- file names --------------------------------------------------------------------------------


def test_long_and_spaced_names_are_placed(tmp_path: Path, fileserver: FileServer) -> None:
    """A 255-byte name (the most a file system takes; modelsync's name for it in tmp/
    is longer by a prefix and a suffix) and names with spaces land where they should."""
    longest = "\u00e9" * 125 + "x.bin"  # 255 bytes in UTF-8
    spaced = "my model (v2).safetensors"
    a = serve(fileserver, "/a.bin", 3000, seed=11)
    b = serve(fileserver, "/b c.bin", 3000, seed=12)
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"url": a.url, "dir": "long names", "filename": longest, "sha256": a.sha256},
            {"url": b.url, "dir": "long names", "filename": spaced, "sha256": b.sha256},
        ],
    )
    run = modelsync("apply", manifest, "--no-progress")
    assert run.code == 0, run.stderr
    folder = tmp_path / "models" / "long names"
    assert (folder / longest).read_bytes() == a.data
    assert (folder / spaced).read_bytes() == b.data
    assert modelsync("verify", manifest).code == 0


def test_a_256_byte_name_is_an_exit_2_error_before_anything_happens(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 3000, seed=13)
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": a.url, "filename": "n" * 252 + ".bin"}]
    )
    run: Run = modelsync("apply", manifest, "--no-progress")
    assert run.code == 2, run.stderr
    assert "256 bytes long" in run.stderr and "models[0]" in run.stderr
    assert "Traceback" not in run.stderr and fileserver.requests == []
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "bad", ["dir\x00x/a.bin", "d" * 256 + "/a.bin", "a\x00.bin", "f" * 256, "sub/\x07.bin"]
)
def test_a_hostile_repository_lock_fails_that_file_alone(
    tmp_path: Path, hub: FakeHub, bad: str
) -> None:
    """A lock from someone else listing a repository file whose path no file system takes
    (a NUL byte, a 256-byte folder): that file fails, the others are planned, nothing
    crashes. ('..' and absolute paths: test_a_lock_cannot_point_outside_root.)"""
    from modelsync.lockfile import Lock, dumps_lock, fingerprint
    from modelsync.manifest import load_manifest

    manifest = write_manifest(tmp_path / "models.toml", [{"hf": "org/repo", "name": "repo"}])
    entry = load_manifest(manifest).models[0]
    files = {
        "ok.bin": {"size": 3, "sha256": "a" * 64},
        bad: {"size": 3, "sha256": "b" * 64},
    }
    models = {"repo": {"fingerprint": fingerprint(entry), "commit": "c" * 40, "files": files}}
    lock = Lock.model_validate({"models": models})
    manifest.with_suffix(".lock").write_text(dumps_lock(lock, "models.toml"))
    run = modelsync("plan", manifest, "--json", env={"HF_ENDPOINT": hub.url})
    assert run.code == 1 and "Traceback" not in run.stderr, run.stderr
    entries = {e["name"]: e for e in json.loads(run.stdout)["entries"]}
    assert entries["repo/ok.bin"]["action"] == "download"
    assert "which modelsync will not write" in entries[f"repo/{bad}"]["error"]
    assert hub.requests == []  # the listing came from the lock


def test_credentials_and_signatures_written_in_a_url_never_show(
    tmp_path: Path, fileserver: FileServer
) -> None:
    """A manifest's own URL with a password and a signed query string: used for the
    download (basic auth goes to that host), shown nowhere, locked without them — on
    success and on failure, with --verbose."""
    served = serve(fileserver, "/ok.bin", 5000, seed=14)
    password, signature = "pw_SECURITYLEAK_31", f"{SIGNATURE_MARK}url_0c9a"
    host = f"127.0.0.1:{fileserver.port}"
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"url": f"http://me:{password}@{host}/ok.bin?X-Amz-Signature={signature}",
             "filename": "ok.bin", "sha256": served.sha256},
            {"url": f"http://me:{password}@{host}/missing.bin?X-Amz-Signature={signature}",
             "filename": "missing.bin"},
        ],
    )  # fmt: skip
    runs = [
        modelsync("apply", manifest, "--no-progress", "--verbose"),
        modelsync("apply", manifest, "--json", "--verbose"),
        modelsync("plan", manifest, "--json"),
        modelsync("lock", manifest),
    ]
    assert [r.code for r in runs] == [1, 1, 0, 1], runs[0].stderr  # plan: nothing failed yet
    assert "missing.bin" in runs[0].stderr and "404" in runs[0].stderr
    assert (tmp_path / "models" / "ok.bin").read_bytes() == served.data
    assert_nowhere(
        [password, signature],
        {
            **{f"run {i}": (r.stdout + r.stderr).encode() for i, r in enumerate(runs)},
            **{str(p): p.read_bytes() for p in files_under(tmp_path / "models")},
            "the lock": manifest.with_suffix(".lock").read_bytes(),
        },
    )


def test_no_secret_when_the_root_vanishes_mid_run(tmp_path: Path, fileserver: FileServer) -> None:
    """The models folder deleted while a download is held (a user's `rm -rf`, an unmounted
    disk): apply fails in words, with --verbose, and no token or signature shows."""
    import shutil

    served = serve(fileserver, "/a.bin", MIB, seed=15)
    fileserver.faults.stall_after = HOLD
    signed = f"{served.url}?X-Amz-Signature={SIGNATURE_MARK}root_1d"
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": signed, "dir": "m", "filename": "a.bin", "sha256": served.sha256}],
    )
    env = {**os.environ, "HF_TOKEN": HF_TOKEN, "CIVITAI_TOKEN": CIV_TOKEN}
    command = [sys.executable, "-m", "modelsync", "apply", str(manifest), "--verbose"]
    proc = subprocess.Popen(
        [*command, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert fileserver.wait_until(lambda: any(r.stalled for r in fileserver.requests), 60)
        aria2_pid = int((tmp_path / "models" / ".modelsync" / "aria2.pid").read_text())
        for _ in range(100):  # aria2 may write into tmp/ while it is being removed
            shutil.rmtree(tmp_path / "models", ignore_errors=True)
            if not (tmp_path / "models").exists():
                break
    finally:
        fileserver.faults.stall_after = None
        fileserver.release_stalls()
        out, err = proc.communicate(timeout=120)
    text = (out + err).decode()
    assert "Traceback" not in text
    if proc.returncode == 0:
        # aria2 lost its file with the folder, made it again and started over (a file
        # full of holes, found by its hash, then downloaded again): whole or nothing
        placed = tmp_path / "models" / "m" / "a.bin"
        assert placed.read_bytes() == served.data, err.decode()
    else:
        # the entry fails, or the run stops at the first file it cannot write: in words
        assert proc.returncode == 1, err.decode()
        assert "failed" in text or "error:" in text
    assert_nowhere([HF_TOKEN, CIV_TOKEN, SIGNATURE_MARK], {"apply's output": out + err})
    assert (
        not Path(f"/proc/{aria2_pid}").exists()
        or "zombie" in Path(f"/proc/{aria2_pid}/status").read_text()
    )
