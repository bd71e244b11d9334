"""Shared fixtures: local servers and manifests on disk."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsync.aria2 import find_aria2c
from tests.servers import FakeCivitai, FakeHub, FileServer

# Hermetic: huggingface_hub must not read a developer's token or cache, nor ping
# huggingface.co for telemetry (it reads both at import, hence here and not in a fixture).
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="modelsync-tests-hf-")
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN"):
    os.environ.pop(_name, None)


FOREIGN_SECRET = "foreign-secret-7d2e"


@dataclass
class ForeignAria2:
    """A user's own aria2c (ComfyUI-Manager's, say): its RPC URL and process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path  # aria2's own log (notice level): "Download complete: PATH" per finished file

    def completed(self) -> list[str]:
        """Names of the files this daemon finished."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        marker = "Download complete: "
        return [
            Path(line.split(marker, 1)[1].strip()).name
            for line in text.splitlines()
            if marker in line
        ]


def _start_foreign_aria2(where: Path, log: Path) -> ForeignAria2:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            find_aria2c(),
            "--enable-rpc",
            f"--rpc-listen-port={port}",
            f"--rpc-secret={FOREIGN_SECRET}",
            "--no-conf",
            "--disable-ipv6",
            f"--dir={where}",
            f"--log={log}",
            "--log-level=notice",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port, proc)
    return ForeignAria2(f"http://127.0.0.1:{port}/jsonrpc", proc, log)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until aria2c's RPC port accepts connections (a condition polled, with a deadline)."""
    deadline = time.monotonic() + 15
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)  # polling a condition with a deadline
    raise RuntimeError(f"aria2c never listened on port {port}")


@pytest.fixture
def foreign_aria2s(tmp_path: Path) -> Iterator[Callable[[int], list[ForeignAria2]]]:
    """Starts N foreign aria2c daemons (one secret, FOREIGN_SECRET, for all)."""
    started: list[ForeignAria2] = []

    def start(n: int) -> list[ForeignAria2]:
        first = len(started)
        new = [
            _start_foreign_aria2(tmp_path, tmp_path / f"aria2-{first + i}.log") for i in range(n)
        ]
        started.extend(new)
        return new

    try:
        yield start
    finally:
        for one in started:
            if one.proc.poll() is None:
                one.proc.terminate()
        for one in started:
            one.proc.wait(10)


@pytest.fixture
def foreign_aria2(
    foreign_aria2s: Callable[[int], list[ForeignAria2]],
) -> tuple[str, str]:
    """A user's own aria2c (ComfyUI-Manager's, say), with a known secret: its URL and secret."""
    return foreign_aria2s(1)[0].url, FOREIGN_SECRET


@pytest.fixture
def fileserver() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    """An empty fake Hub (tests that need repos set up override it in their module)."""
    with FakeHub() as server:
        yield server


@pytest.fixture
def civitai() -> Iterator[FakeCivitai]:
    with FakeCivitai() as server:
        yield server


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Served:
    """A file the server holds, with its pins."""

    path: str
    data: bytes
    url: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def serve(server: FileServer, path: str, size: int, seed: int = 0) -> Served:
    data = blob(size, seed)
    return Served(path, data, server.add_bytes(path, data))


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def write_manifest(
    path: Path, entries: list[dict[str, Any]], settings: dict[str, Any] | None = None
) -> Path:
    lines = ["[settings]"]
    for key, value in ({"root": "models"} | (settings or {})).items():
        lines.append(f"{key} = {toml_value(value)}")
    for entry in entries:
        lines.append("\n[[models]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
