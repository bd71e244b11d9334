"""Shared fixtures: local servers and manifests on disk."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import tempfile
from collections.abc import Iterator
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


@pytest.fixture
def foreign_aria2(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A user's own aria2c (ComfyUI-Manager's, say), with a known secret: its URL and secret."""
    secret = "foreign-secret-7d2e"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            find_aria2c(),
            "--enable-rpc",
            f"--rpc-listen-port={port}",
            f"--rpc-secret={secret}",
            "--no-conf",
            "--disable-ipv6",
            f"--dir={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/jsonrpc", secret
    finally:
        proc.terminate()
        proc.wait(10)


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
