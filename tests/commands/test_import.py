"""`modelsync import` itself: bad input is exit 2 with nothing written; the readers of
each kind have their own tests (tests/core/test_import_*.py, tests/commands/test_import_*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsync.manifest import load_manifest
from tests.clirun import modelsync


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ([], "Missing argument 'SOURCE'"),
        (
            ["x.json", "--from", "bogus"],
            "Invalid value for '--from': 'bogus' is not one of 'workflow', 'png'",
        ),
        (["x.json", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    run = modelsync("import", *args, cwd=tmp_path)
    assert run.code == 2
    assert "Usage: modelsync import [OPTIONS]" in run.stderr
    assert reason in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_source_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    run = modelsync("import", "nope.json", "--json", cwd=tmp_path)
    assert run.code == 2
    assert json.loads(run.stdout)["error"]["message"] == "nope.json: no such file or folder"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [
        b'{"hello": "world"}',
        b"not json at all",
        b"\x00\x01\x02",
        b"[1, 2, 3]",
        b'\x13\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{}}',  # a model file
    ],
    ids=["other-json", "text", "binary", "json-list", "safetensors"],
)
def test_input_of_no_known_kind_is_exit_2_with_the_fix(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "thing.json").write_bytes(content)
    run = modelsync("import", "thing.json", cwd=tmp_path)
    assert run.code == 2
    assert "thing.json: not a ComfyUI workflow, a ComfyUI-Manager model list" in run.stderr
    assert "--from workflow|png|comfyui-manager|folder" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.json"]


def test_an_invalid_manifest_is_exit_2_before_anything_is_read(tmp_path: Path) -> None:
    manifest = tmp_path / "models.toml"
    manifest.write_text("[[models]]\nurl = 3\n")
    (tmp_path / "thing.json").write_text('{"hello": "world"}')
    run = modelsync("import", "thing.json", "-o", "models.toml", cwd=tmp_path)
    assert run.code == 2
    assert "models[0]" in run.stderr and "url" in run.stderr
    assert manifest.read_text() == "[[models]]\nurl = 3\n"


def test_an_empty_model_list_is_taken_as_one_and_adds_nothing(tmp_path: Path) -> None:
    (tmp_path / "model-list.json").write_text('{"models": []}')
    run = modelsync("import", "model-list.json", "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert (doc["added"], doc["created"]) == ([], False)
    assert not (tmp_path / "models.toml").exists()


def test_a_crlf_manifest_keeps_its_bytes_and_its_line_endings(tmp_path: Path) -> None:
    """A manifest written on Windows: the text is kept byte for byte, the new entry
    follows its CRLF line endings, and it still loads."""
    before = b'# our models\r\n[settings]\r\nroot = "models"  # ComfyUI\r\n'
    (tmp_path / "models.toml").write_bytes(before)
    catalog = {
        "models": [
            {
                "name": "x",
                "type": "lora",
                "save_path": "default",
                "filename": "x.safetensors",
                "url": "http://127.0.0.1:9/x.safetensors",
            }
        ]
    }
    (tmp_path / "list.json").write_text(json.dumps(catalog))
    run = modelsync("import", "list.json", "--offline", cwd=tmp_path)
    assert run.code == 0, run.stderr
    after = (tmp_path / "models.toml").read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    assert b"\n" not in after.replace(b"\r\n", b"")  # every line ends in CRLF
    assert [e.filename for e in load_manifest(tmp_path / "models.toml").models] == ["x.safetensors"]
