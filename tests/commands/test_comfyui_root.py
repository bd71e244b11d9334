"""A ComfyUI install given as root (its folder, not its models/ folder) means models/."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clirun import modelsync
from tests.conftest import serve, write_manifest
from tests.servers import FileServer


def comfyui(tmp_path: Path) -> Path:
    install = tmp_path / "ComfyUI"
    (install / "models" / "checkpoints").mkdir(parents=True)
    (install / "comfy").mkdir()
    (install / "main.py").write_text("# ComfyUI\n")
    return install


def test_a_comfyui_install_as_root_uses_its_models_folder(
    tmp_path: Path, fileserver: FileServer
) -> None:
    install = comfyui(tmp_path)
    f = serve(fileserver, "/sd.safetensors", 40_000, seed=1)
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": f.url, "dir": "checkpoints", "sha256": f.sha256}],
        {"root": "ComfyUI"},
    )
    run = modelsync("apply", manifest, "--no-progress")
    assert run.code == 0, run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith(f"root: {install / 'models'} (from settings.root in models.toml; ")
    assert "ComfyUI/ is a ComfyUI install: using its models/ folder" in first
    assert (install / "models" / "checkpoints" / "sd.safetensors").read_bytes() == f.data
    assert not (install / "checkpoints").exists()

    doc = json.loads(modelsync("plan", manifest, "--json", "--root", str(install)).stdout)
    assert doc["root"] == str(install / "models")
    assert [e["status"] for e in doc["entries"]] == ["ok"]


def test_a_folder_without_main_py_or_comfy_is_taken_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "root" / "models").mkdir(parents=True)
    manifest = write_manifest(tmp_path / "models.toml", [], {"root": "root"})
    doc = json.loads(modelsync("plan", manifest, "--json").stdout)
    assert doc["root"] == str(tmp_path / "root")
