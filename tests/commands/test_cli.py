"""The command line itself: usage errors, --version, -h, help text, completion, JSON errors."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import filelock
import pytest

from tests.clirun import Run, modelsync

SHA = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
# Pinned by sha256 and size: plan and apply reach no source before they need aria2.
MANIFEST = f"""[settings]
root = "models"

[[models]]
name = "vae"
url = "http://127.0.0.1:9/vae.safetensors"
dir = "vae"
size = 10
sha256 = "{SHA}"
"""
COMMANDS = ["plan", "verify", "apply", "lock", "add", "doctor", "version"]


def good_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MANIFEST)
    return path


def assert_usage_error(run: Run, usage: str, reason: str) -> None:
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert usage in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and reason in errors[0], run.stderr


@pytest.mark.parametrize(
    ("args", "usage", "reason"),
    [
        (["bogus"], "Usage: modelsync [OPTIONS] COMMAND", "No such command 'bogus'"),
        (["--bogus"], "Usage: modelsync [OPTIONS] COMMAND", "No such option: --bogus"),
        (["plan", "--bogus"], "Usage: modelsync plan [OPTIONS]", "No such option: --bogus"),
        (["plan"], "Usage: modelsync plan [OPTIONS]", "Missing argument 'MANIFEST'"),
        (
            ["add", "m.toml", "https://example.com/x.bin"],
            "Usage: modelsync add [OPTIONS]",
            "'--dir': missing: a file needs the folder",
        ),
        (["apply", "m.toml", "--jobs"], "Usage: modelsync apply", "Option '--jobs' requires"),
        (["apply", "m.toml", "--jobs", "0"], "Usage: modelsync apply", "'--jobs': must be 1 or"),
        (["apply", "m.toml", "--jobs", "x"], "Usage: modelsync apply", "must be a whole number"),
        (
            ["apply", "m.toml", "--connections", "32"],
            "Usage: modelsync apply",
            "'--connections': must be 16 or less",
        ),
        (
            ["apply", "m.toml", "--lock-timeout", "soon"],
            "Usage: modelsync apply",
            "'--lock-timeout': must be a number",
        ),
    ],
)
def test_usage_errors_show_the_usage_line_and_exit_2(
    tmp_path: Path, args: list[str], usage: str, reason: str
) -> None:
    run = modelsync(*args, cwd=tmp_path)
    assert_usage_error(run, usage, reason)
    assert "--help" in run.stderr  # the hint says where to read more
    assert run.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_prints_the_help_and_exits_2(tmp_path: Path) -> None:
    run = modelsync(cwd=tmp_path)
    assert_usage_error(run, "Usage: modelsync [OPTIONS] COMMAND", "no command given")
    assert "Commands:" in run.stderr and "apply" in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["version"]])
def test_version(args: list[str]) -> None:
    run = modelsync(*args)
    assert (run.code, run.stdout, run.stderr) == (0, f"modelsync {version('modelsync')}\n", "")


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]], ids=lambda c: c[0] if c else "")
def test_dash_h_is_help_everywhere(command: list[str]) -> None:
    short = modelsync(*command, "-h")
    assert short.code == 0, short.stderr
    assert short.stdout.startswith(f"Usage: {' '.join(['modelsync', *command])} [OPTIONS]")
    assert short.stdout == modelsync(*command, "--help").stdout


def test_help_names_types_in_words_and_gives_an_example() -> None:
    text = modelsync("apply", "-h").stdout
    for option in (
        "--root DIR",
        "--only NAME|TAG",
        "--jobs N",
        "--connections N",
        "--max-speed RATE",
        "--lock-timeout SECONDS",
        "--aria2-url URL",
        "--aria2-secret SECRET",
    ):
        assert option in text, option
    for command in COMMANDS:
        text = modelsync(command, "-h").stdout
        for python_type in ("TEXT", "INTEGER", "FLOAT", "PATH", "<list", "list[str]"):
            assert python_type not in text, (command, python_type)
        assert f"Example:\n    modelsync {command}" in text, command
    assert "{SOURCE}" in modelsync("add", "-h").stdout.splitlines()[0]


@pytest.mark.parametrize("command", [[], ["plan"], ["apply"], ["verify"]])
def test_help_lists_the_exit_codes(command: list[str]) -> None:
    text = modelsync(*command, "--help").stdout
    lines = text[text.index("Exit codes:") :].splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["0", "1", "2", "130"]


def test_show_completion_for_an_explicit_shell(tmp_path: Path) -> None:
    run = modelsync("--show-completion", "bash", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "_modelsync_completion()" in run.stdout and "_MODELSYNC_COMPLETE" in run.stdout
    assert "complete -o default -F _modelsync_completion modelsync" in run.stdout
    zsh = modelsync("--show-completion=zsh", cwd=tmp_path)
    assert zsh.code == 0 and zsh.stdout.startswith("#compdef modelsync")
    # What the bash script asks for when the user types `modelsync ap<TAB>`:
    env = {"_MODELSYNC_COMPLETE": "complete_bash", "COMP_WORDS": "modelsync ap", "COMP_CWORD": "1"}
    assert modelsync(cwd=tmp_path, env=env).stdout.split() == ["apply"]
    env |= {"COMP_WORDS": "modelsync apply m.toml --lock", "COMP_CWORD": "3"}
    assert modelsync(cwd=tmp_path, env=env).stdout.split() == ["--locked", "--lock-timeout"]


def json_error(run: Run, command: str | None, exit_code: int = 2) -> dict[str, Any]:
    """The one JSON document of a failure, checked against the human error on stderr."""
    assert run.code == exit_code, run.stderr
    assert "Traceback" not in run.stderr and "error:" in run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] == 1 and doc["command"] == command
    assert set(doc["error"]) == {"message", "hint", "exit_code", "problems"}
    assert doc["error"]["exit_code"] == exit_code
    assert doc["error"]["message"] in run.stderr
    error: dict[str, Any] = doc["error"]
    return error


@pytest.mark.parametrize("command", ["plan", "verify", "apply"])
def test_json_error_lists_the_manifest_problems(tmp_path: Path, command: str) -> None:
    manifest = tmp_path / "models.toml"
    manifest.write_text(
        MANIFEST.replace('dir = "vae"', 'dir = "vae"\ntags = "sdxl"\nsha265 = "x"')
        + "\n[settings.extra]\n"
    )
    error = json_error(modelsync(command, manifest, "--json", cwd=tmp_path), command)
    assert error["message"] == f"{manifest}: invalid manifest (3 problem(s))"
    settings, tags, unknown = error["problems"]
    assert settings == {
        "entry": None,
        "key": "settings.extra",
        "line": 13,
        "message": "[settings]: unknown key 'extra' "
        "(known keys: root, max_concurrent, connections, max_speed, max_file_size, mirrors, "
        "mirror_first, aria2, link, store)",
    }
    assert [tags, unknown] == [
        {
            "entry": "models[0] (vae)",
            "key": "tags",
            "line": 8,
            "message": "line 8: models[0] (vae): key 'tags': "
            'tags must be a list of strings, e.g. tags = ["sdxl"]',
        },
        {
            "entry": "models[0] (vae)",
            "key": "sha265",
            "line": 9,
            "message": "line 9: models[0] (vae): unknown key 'sha265'; did you mean 'sha256'? "
            "(known keys: name, url, hf, file, revision, include, exclude, civitai, dir, "
            "filename, sha256, xxh3_128, size, tags, mirrors, priority, connections, "
            "optional)",
        },
    ]
    for problem in error["problems"]:
        assert f"  - {problem['message']}\n" in run_text(tmp_path, command, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.toml"]


def run_text(tmp_path: Path, command: str, manifest: Path) -> str:
    """The human output of the same failure, without --json."""
    return modelsync(command, manifest, cwd=tmp_path).stderr


def test_json_error_for_a_missing_manifest(tmp_path: Path) -> None:
    error = json_error(modelsync("plan", tmp_path / "nope.toml", "--json"), "plan")
    assert [p["message"] for p in error["problems"]] == ["file not found; check the path"]


def test_json_error_when_the_lock_is_held(tmp_path: Path) -> None:
    manifest = good_manifest(tmp_path)
    own = tmp_path / "models" / ".modelsync"
    own.mkdir(parents=True)
    with filelock.FileLock(own / "lock"):
        run = modelsync("apply", manifest, "--json", "--lock-timeout", "0", cwd=tmp_path)
    error = json_error(run, "apply")
    assert "another modelsync apply is still working" in error["message"]
    assert "--lock-timeout" in error["hint"] and error["problems"] == []
    assert not (tmp_path / "models" / "vae").exists()


def test_json_error_when_aria2_does_not_answer(tmp_path: Path) -> None:
    manifest = good_manifest(tmp_path)
    run = modelsync("apply", manifest, "--json", "--aria2-url", "http://127.0.0.1:9/jsonrpc")
    error = json_error(run, "apply")
    assert "127.0.0.1:9" in error["message"] and error["hint"]


def test_json_error_for_a_usage_error(tmp_path: Path) -> None:
    run = modelsync("apply", good_manifest(tmp_path), "--jobs", "0", "--json", cwd=tmp_path)
    error = json_error(run, "apply")
    assert error["message"] == "Invalid value for '--jobs': must be 1 or more"
    assert "Usage: modelsync apply" in run.stderr
    unknown = modelsync("bogus", "--json", cwd=tmp_path)
    assert json_error(unknown, None)["message"] == "No such command 'bogus'."


def test_json_error_when_modelsyncs_own_folder_is_a_file(tmp_path: Path) -> None:
    """A file where modelsync's own folder belongs: the disk says no, still one document."""
    manifest = good_manifest(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".modelsync").write_text("not a folder")
    assert modelsync("plan", manifest, "--json", cwd=tmp_path).code == 0  # plan writes nothing
    run = modelsync("apply", manifest, "--json", cwd=tmp_path)
    error = json_error(run, "apply", exit_code=2)
    assert ".modelsync" in error["message"] + str(error["hint"])
