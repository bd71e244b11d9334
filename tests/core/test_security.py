"""Security properties of the core, as tests: the private aria2c (where it listens, its
secret, its files) and who a token may go to."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from modelsync.aria2 import Aria2Daemon
from modelsync.errors import Aria2Unavailable
from modelsync.manifest import Entry, Settings
from modelsync.sources import SourceContext, locate, source_of, token_over_http
from tests.core.test_aria2 import wait_for
from tests.servers import FileServer


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", link):
            inodes.add(m[1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            if family == socket.AF_INET:
                raw = raw[::-1]  # /proc prints the 32-bit word in host (little-endian) order
            else:
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    return tmp_path / "session"


def spawn(session_dir: Path) -> Aria2Daemon:
    return Aria2Daemon.spawn(max_concurrent=2, max_overall_speed=0, session_dir=session_dir)


def test_own_aria2c_listens_on_loopback_only(session_dir: Path) -> None:
    with spawn(session_dir) as daemon:
        assert daemon.pid is not None
        assert listening_addresses(daemon.pid) == {("127.0.0.1", daemon.port)}


def test_rpc_secret_is_128_random_bits_new_for_every_daemon(session_dir: Path) -> None:
    with spawn(session_dir) as first, spawn(session_dir) as second:
        secrets = [d._secret.reveal() for d in (first, second)]
        for secret in secrets:
            assert re.fullmatch(r"[0-9a-f]{32}", secret)  # 32 hex digits: 128 bits
        assert secrets[0] != secrets[1]
        # each daemon takes its own secret only
        with pytest.raises(Aria2Unavailable, match="rejected the RPC secret"):
            Aria2Daemon.attach(second.url, secrets[0])
        with pytest.raises(Aria2Unavailable, match="rejected the RPC secret"):
            Aria2Daemon.attach(second.url, None)


def test_own_aria2c_saves_no_session_and_leaves_no_file_behind(
    session_dir: Path, tmp_path: Path, fileserver: FileServer
) -> None:
    url = fileserver.add_bytes("/a.bin", b"x" * 100_000)
    out = tmp_path / "out"
    with spawn(session_dir) as daemon:
        options = daemon.get_global_option()
        for option in ("save-session", "input-file", "log", "server-stat-of", "save-cookies"):
            assert not options.get(option), option
        conf = Path(options["conf-path"])
        assert not conf.exists()  # deleted once the RPC answered
        gid = daemon.add([url], {"dir": str(out), "out": "a.bin"})
        wait_for(lambda: daemon.status([gid])[0].stopped, what="the download to finish")
    assert sorted(p.name for p in out.iterdir()) == ["a.bin"]  # no control file left
    assert list(session_dir.iterdir()) == []  # no session, no config, no log


# -- who gets a token -----------------------------------------------------------------------

TOKEN = "tok_VALUE_1234"
HUB_ENV = {"HF_TOKEN": "hf_tok", "CIVITAI_TOKEN": "civ_tok"}


@pytest.mark.parametrize(
    ("url", "source"),
    [
        ("https://huggingface.co/org/r/resolve/main/a.bin", "hf"),
        ("https://hf.co/org/r/resolve/main/a.bin", "hf"),
        ("https://civitai.com/api/download/models/1", "civitai"),
        # userinfo: the host is what follows the last "@"
        ("https://huggingface.co@evil.example/org/r/resolve/main/a.bin", "url"),
        ("https://huggingface.co:443@evil.example/org/r/resolve/main/a.bin", "url"),
        ("https://civitai.com@evil.example/api/download/models/1", "url"),
        # look-alike hosts
        ("https://huggingface.co.evil.example/org/r/resolve/main/a.bin", "url"),
        ("https://evil-huggingface.co/org/r/resolve/main/a.bin", "url"),
        ("https://civitai.com.evil.example/api/download/models/1", "url"),
        ("https://xn--huggingface-.co/org/r/resolve/main/a.bin", "url"),
        # the path or query naming the host changes nothing
        ("https://evil.example/huggingface.co/org/r/resolve/main/a.bin", "url"),
        ("https://evil.example/a.bin?u=https://huggingface.co/", "url"),
        ("https://evil.example#@huggingface.co/a.bin", "url"),
    ],
)
def test_only_the_sources_own_hosts_get_its_token(url: str, source: str) -> None:
    entry = Entry(url=url, filename="a.bin")
    assert source_of(entry, HUB_ENV) == source
    if source == "url":  # a plain URL: as written, and never a header
        ctx = SourceContext(Settings(), HUB_ENV)
        assert locate(entry, ctx).headers == ()


@pytest.mark.parametrize(
    ("env", "kind", "warned"),
    [
        ({"HF_ENDPOINT": "http://hub.lan", "HF_TOKEN": TOKEN}, "hf", "$HF_ENDPOINT"),
        ({"HF_ENDPOINT": "http://hub.lan", "HUGGING_FACE_HUB_TOKEN": TOKEN}, "hf", "$HUGGING"),
        (
            {"CIVITAI_ENDPOINT": "HTTP://civ.lan:8080", "CIVITAI_API_TOKEN": TOKEN},
            "civitai",
            ":8080",
        ),
        ({"HF_ENDPOINT": "http://u:pw@hub.lan", "HF_TOKEN": TOKEN}, "hf", "http://hub.lan"),
        ({"HF_ENDPOINT": "https://hub.lan", "HF_TOKEN": TOKEN}, "hf", None),
        ({"HF_ENDPOINT": "http://hub.lan"}, "hf", None),  # no token: nothing to protect
        ({"HF_ENDPOINT": "http://127.0.0.1:8080", "HF_TOKEN": TOKEN}, "hf", None),  # this machine
        ({"HF_ENDPOINT": "http://localhost:8080", "HF_TOKEN": TOKEN}, "hf", None),
        ({"HF_ENDPOINT": "http://[::1]:8080", "HF_TOKEN": TOKEN}, "hf", None),
        ({"HF_ENDPOINT": "http://hub.lan", "HF_TOKEN": TOKEN}, "civitai", None),
    ],
)
def test_a_token_for_an_http_endpoint_is_warned_about(
    env: dict[str, str], kind: str, warned: str | None
) -> None:
    warning = token_over_http(kind, env)  # type: ignore[arg-type]
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning and "unencrypted" in warning
        assert TOKEN not in warning and "pw" not in warning
