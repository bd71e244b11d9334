"""Shared fixtures: local servers and manifests on disk."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import FakeCivitai, FakeHub, FileServer

# Hermetic: huggingface_hub must not read a developer's token or cache, nor ping
# huggingface.co for telemetry (it reads both at import, hence here and not in a fixture).
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="modelsync-tests-hf-")
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN"):
    os.environ.pop(_name, None)


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
