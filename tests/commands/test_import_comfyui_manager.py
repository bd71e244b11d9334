"""`modelsync import model-list.json` end to end (real CLI): ComfyUI-Manager's model list
becomes manifest entries that `plan` loads, importing twice changes nothing, and what cannot
be imported is said (tests/fixtures/import/comfyui-manager/model-list.json: real entries
of ComfyUI-Manager's list plus crafted edge cases)."""

from __future__ import annotations

import json
import shutil
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import Run, modelsync

FIXTURE = Path(__file__).parent.parent / "fixtures" / "import" / "comfyui-manager"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def network_off() -> dict[str, str]:
    """Every request (proxies, the Hub, Civitai) goes to a closed local port."""
    nowhere = f"http://127.0.0.1:{closed_port()}"
    proxies = {
        name: nowhere
        for base in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
        for name in (base, base.lower())
    }
    return {**proxies, "NO_PROXY": "", "no_proxy": "", "HF_ENDPOINT": nowhere,
            "CIVITAI_ENDPOINT": nowhere}  # fmt: skip


@pytest.fixture
def model_list(tmp_path: Path) -> Path:
    return Path(shutil.copy(FIXTURE / "model-list.json", tmp_path / "model-list.json"))


def imported(tmp_path: Path, *args: str) -> Run:
    return modelsync("import", "model-list.json", "-o", "models.toml", *args, cwd=tmp_path)


def plan_loads(tmp_path: Path) -> dict[str, Any]:
    """`plan --json` with the network off: entries may fail to resolve, but the manifest
    loads (exit 2 would be an invalid manifest)."""
    (tmp_path / "root").mkdir(exist_ok=True)
    run = modelsync(
        "plan", "models.toml", "--root", "root", "--json", cwd=tmp_path, env=network_off()
    )
    assert run.code in (0, 1), run.stderr + run.stdout
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["command"] == "plan"
    return report


def test_filtered_import_writes_entries_that_plan_loads_and_twice_changes_nothing(
    tmp_path: Path, model_list: Path
) -> None:
    filters = ["--filter", "janus", "--filter", "EasyNegative", "--filter", "upscale",
               "--filter", "mobile_sam"]  # fmt: skip
    first = imported(tmp_path, *filters)
    assert first.code == 0, first.stderr
    manifest = tmp_path / "models.toml"
    text = manifest.read_bytes()
    entries = tomllib.loads(text.decode())["models"]
    assert entries == [
        {"url": "https://huggingface.co/ai-forever/Real-ESRGAN/resolve/main/RealESRGAN_x2.pth",
         "dir": "upscale_models", "filename": "RealESRGAN_x2.pth"},
        {"url": "https://heibox.uni-heidelberg.de/f/578df07c8fc04ffbadf3/?dl=1",
         "dir": "upscale_models/ldsr", "filename": "last.ckpt"},
        {"civitai": 9208, "dir": "embeddings/SD1.5", "filename": "easynegative.safetensors"},
        {"url": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
         "dir": "sams", "filename": "mobile_sam.pt"},
        {"hf": "deepseek-ai/Janus-Pro-1B", "dir": "Janus-Pro/Janus-Pro-1B"},
    ]  # fmt: skip
    assert "# RealESRGAN x2 (upscale)\n[[models]]\n" in text.decode()
    report = plan_loads(tmp_path)
    assert len(report["entries"]) == 5

    second = imported(tmp_path, *filters, "--json")
    assert second.code == 0, second.stderr
    assert manifest.read_bytes() == text
    result = json.loads(second.stdout)
    assert result["added"] == []
    assert len(result["skipped"]) == 5


def test_the_whole_list_imports_says_what_it_could_not_and_plan_loads_it(
    tmp_path: Path, model_list: Path
) -> None:
    run = imported(tmp_path, "--json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    paths = [a["path"] for a in result["added"]]
    assert len(paths) == len(set(paths)) == 12  # 21 models: 2 duplicates, 5 refused, 2 unresolved
    assert "etc/MoGe_safetensors/" in paths and "Janus-Pro/Janus-Pro-1B/" in paths
    assert {u["origin"] for u in result["unresolved"]} == {
        "model-list.json: crafted: no url",
        "model-list.json: crafted: ftp url",
    }
    warnings = "\n".join(result["warnings"])
    for name in ("escapes models", "absolute", "in a custom node", "windows path",
                 "path as filename", "SDXL base from a mirror"):  # fmt: skip
        assert f"model-list.json: crafted: {name}: " in warnings
    text = (tmp_path / "models.toml").read_text()
    assert "size" not in {k for e in tomllib.loads(text)["models"] for k in e}
    assert "custom_nodes" not in text and "escape" not in text
    plan_loads(tmp_path)

    again = imported(tmp_path)
    assert again.code == 0
    assert (tmp_path / "models.toml").read_text() == text
    assert "Import: 0 added, 12 skipped, 2 unresolved" in again.stderr
    assert "warning: model-list.json: crafted: in a custom node: skipped: save_path" in again.stderr


def test_strict_exits_1_when_a_model_could_not_be_imported(
    tmp_path: Path, model_list: Path
) -> None:
    assert imported(tmp_path, "--filter", "nourl", "--strict").code == 1
    assert imported(tmp_path, "--filter", "mobile_sam", "--strict").code == 0


def test_a_list_given_with_from_that_is_not_one_is_exit_2_and_nothing_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "model-list.json").write_text('{"models": [{"name": "a", "directory": "vae"}]}')
    run = imported(tmp_path, "--from", "comfyui-manager")
    assert run.code == 2
    assert 'not a ComfyUI-Manager model list (its "models" have no save_path or type)' in run.stderr
    assert not (tmp_path / "models.toml").exists()
