"""`modelsync init`: a commented starter manifest that is valid as written, never over a file."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from modelsync.commands.init import create_exclusive, starter_text
from modelsync.manifest import Entry, Settings, load_manifest
from tests.clirun import modelsync


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def uncommented(block: str) -> str:
    """What an editor's "toggle comment" makes of a block: one `#` (and a space) less."""
    return "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines()) + "\n"


def example_blocks(text: str) -> list[str]:
    """The commented-out examples: paragraphs whose uncommented text holds a table header."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return [
        p
        for p in paragraphs
        if all(line.startswith("#") for line in p.splitlines())
        and re.search(r"^\[\[models\]\]|^\[settings\.", uncommented(p), re.MULTILINE)
    ]


@pytest.fixture
def starter(tmp_path: Path) -> str:
    run = modelsync("init", cwd=tmp_path)
    assert run.code == 0, run.stderr
    return (tmp_path / "models.toml").read_text(encoding="utf-8")


def test_init_writes_models_toml_that_loads_and_plans_nothing_to_do(tmp_path: Path) -> None:
    run = modelsync("init", cwd=tmp_path)
    assert run.code == 0, run.stderr
    path = tmp_path / "models.toml"
    assert f"wrote {path}" in run.stderr
    for step in ("modelsync add models.toml", "modelsync plan models.toml"):
        assert step in run.stderr
    assert "modelsync lock models.toml" in run.stderr
    assert "modelsync apply models.toml" in run.stderr
    assert run.stdout == ""
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["models.toml"]  # no temporary file left

    manifest = load_manifest(path)
    assert manifest.models == ()
    assert manifest.settings == Settings(root="models")  # every other setting at its default

    plan = modelsync("plan", "models.toml", cwd=tmp_path)
    assert plan.code == 0, plan.stderr
    assert "nothing to do" in plan.stderr


def test_init_takes_a_path_and_names_it_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    run = modelsync("init", "team/sdxl.toml", cwd=tmp_path)
    assert run.code == 0, run.stderr
    text = (tmp_path / "team" / "sdxl.toml").read_text(encoding="utf-8")
    assert "modelsync plan sdxl.toml" in text
    assert "modelsync plan team/sdxl.toml" in run.stderr
    load_manifest(tmp_path / "team" / "sdxl.toml")


def test_the_starter_sets_or_shows_every_setting(starter: str) -> None:
    active = tomllib.loads(starter)["settings"]
    shown = set(active) | set(re.findall(r"^# \[settings\.(\w+)\]", starter, re.MULTILINE))
    shown |= set(re.findall(r"^#+ (\w+) = ", starter, re.MULTILINE))  # shown, commented out
    assert shown >= set(Settings.model_fields)


EXPECTED_KINDS = [
    ("url", False),  # (source, repository)
    ("hf", False),
    ("hf", True),
    ("civitai", False),
    ("none", False),
]


def test_every_commented_example_validates_once_uncommented(starter: str, tmp_path: Path) -> None:
    """Guards the template against drift from what load_manifest accepts."""
    blocks = [b for b in example_blocks(starter) if "# [[models]]" in b]
    assert len(blocks) == len(EXPECTED_KINDS)
    path = tmp_path / "example.toml"
    for block, (source, repo) in zip(blocks, EXPECTED_KINDS, strict=True):
        path.write_text(starter + "\n" + uncommented(block), encoding="utf-8")
        (entry,) = load_manifest(path).models
        assert (entry.source, entry.is_repo) == (source, repo), block

    # all of them at once: no two examples clash by name or path
    path.write_text(starter + "".join("\n" + uncommented(b) for b in blocks), encoding="utf-8")
    entries = load_manifest(path).models
    assert len(entries) == len(EXPECTED_KINDS)
    # every entry key appears in some example, the per-entry controls set
    shown = {key for b in blocks for key in tomllib.loads(uncommented(b))["models"][0]}
    assert shown == set(Entry.model_fields)
    assert any(e.priority != 50 for e in entries)
    assert any(e.connections for e in entries)
    assert any(e.optional for e in entries)


def test_the_commented_aria2_table_validates_once_uncommented(starter: str, tmp_path: Path) -> None:
    (block,) = [b for b in example_blocks(starter) if "# [settings.aria2]" in b]
    # its `## key = value` lines (a proxy to fill in) are options too: uncomment them as well
    every_option = re.sub(r"^## (?=[\w-]+ = )", "# ", block, flags=re.MULTILINE)
    assert every_option != block
    path = tmp_path / "example.toml"
    for text in (block, every_option):
        path.write_text(starter + "\n" + uncommented(text), encoding="utf-8")
        settings = load_manifest(path).settings
        assert settings != Settings(root="models")  # the table was read, not ignored
    options = tomllib.loads(uncommented(every_option))["settings"]["aria2"]
    assert {"lowest-speed-limit", "timeout", "max-tries", "all-proxy"} <= set(options)


def test_init_refuses_to_overwrite_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    original = b"# mine\r\n[[models]]\nurl = 'http://x/a.bin'\n"
    path.write_bytes(original)
    run = modelsync("init", cwd=tmp_path)
    assert run.code == 2
    assert "models.toml already exists" in run.stderr
    assert "Traceback" not in run.stderr
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["models.toml"]

    run = modelsync("init", "models.toml", "--json", cwd=tmp_path)
    assert run.code == 2
    doc = json.loads(run.stdout)
    assert doc["command"] == "init"
    assert doc["error"]["exit_code"] == 2
    assert "already exists" in doc["error"]["message"]
    assert path.read_bytes() == original


def test_init_refuses_a_dangling_symlink_and_a_folder(tmp_path: Path) -> None:
    link = tmp_path / "models.toml"
    link.symlink_to(tmp_path / "elsewhere.toml")
    run = modelsync("init", cwd=tmp_path)
    assert run.code == 2 and "already exists" in run.stderr
    assert link.is_symlink() and not (tmp_path / "elsewhere.toml").exists()

    (tmp_path / "folder.toml").mkdir()
    run = modelsync("init", "folder.toml", cwd=tmp_path)
    assert run.code == 2 and "folder.toml already exists" in run.stderr


def test_init_refuses_a_missing_folder_and_creates_none(tmp_path: Path) -> None:
    run = modelsync("init", "nope/models.toml", cwd=tmp_path)
    assert run.code == 2
    assert f"{tmp_path / 'nope'} does not exist" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_json_prints_one_document(tmp_path: Path) -> None:
    run = modelsync("init", "starter.toml", "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {
        "schema": 1,
        "command": "init",
        "path": str(tmp_path / "starter.toml"),
        "created": True,
    }
    assert run.stderr == ""
    load_manifest(tmp_path / "starter.toml")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["init", "--bogus"], "No such option: --bogus"),
        (["init", "a.toml", "b.toml"], "unexpected extra argument"),
    ],
)
def test_init_usage_errors_exit_2_with_the_usage_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    run = modelsync(*args, cwd=tmp_path)
    assert run.code == 2
    assert "Usage: modelsync init [OPTIONS] [MANIFEST]" in run.stderr
    assert says in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_linked_into_place_so_a_file_created_meanwhile_is_kept(
    tmp_path: Path,
) -> None:
    """The race after init's existence check: the final step itself refuses to replace."""
    path = tmp_path / "models.toml"
    path.write_bytes(b"theirs\n")
    with pytest.raises(FileExistsError):
        create_exclusive(path, starter_text(path))
    assert path.read_bytes() == b"theirs\n"
    assert [p.name for p in tmp_path.iterdir()] == ["models.toml"]
