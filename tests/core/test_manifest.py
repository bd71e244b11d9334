"""Bad manifests: exit 2, a message naming entry and key, nothing created under root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelsync.errors import ManifestError, Problem
from modelsync.manifest import load_manifest, parse_rate, resolve_root
from tests.clirun import modelsync

SHA = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
HEADER = '[settings]\nroot = "models"\n\n'
GOOD = (
    f'[[models]]\nurl = "http://127.0.0.1:9/a.safetensors"\ndir = "checkpoints"\nsha256 = "{SHA}"\n'
)

BAD_CASES = [
    # (id, manifest body, fragments that must all appear in stderr)
    ("toml-syntax", '[[models]]\nurl = "http://x/a"\ndir = = "c"\n', ["line 6, column 7", "TOML"]),
    (
        "unknown-key",
        GOOD.replace("sha256", "sha265"),
        ["models[0] (a.safetensors)", "'sha265'", "did you mean 'sha256'", "line 7"],
    ),
    (
        "unknown-setting",
        "[settings]\nmax_concurent = 2\n" + GOOD,
        ["'max_concurent'", "max_concurrent"],
    ),
    ("unknown-top-level", "modles = []\n" + HEADER + GOOD, ["'modles'", "did you mean 'models'"]),
    (
        "two-sources",
        GOOD.replace('dir = "checkpoints"', 'dir = "checkpoints"\nhf = "org/repo"\nfile = "a"'),
        ["models[0]", "two sources", "url and hf"],
    ),
    ("no-source", '[[models]]\nname = "lonely"\ndir = "x"\n', ["models[0] (lonely)", "no source"]),
    (
        "include-on-a-file",
        '[[models]]\nhf = "org/repo"\nfile = "a.bin"\ninclude = ["*.bin"]\n',
        ["models[0] (a.bin)", "include and exclude are for repository entries"],
    ),
    (
        "sha256-on-a-repo",
        f'[[models]]\nhf = "org/repo"\nsha256 = "{SHA}"\n',
        ["models[0]", "sha256 is for single files", "modelsync lock"],
    ),
    (
        "sourceless-without-filename",
        f'[[models]]\ndir = "x"\nsha256 = "{SHA}"\n',
        ["models[0]", "needs filename"],
    ),
    (
        "priority-out-of-range",
        GOOD + "priority = 101\n",
        ["priority must be a whole number from 0 to 100", "got 101"],
    ),
    ("optional-not-bool", GOOD + 'optional = "yes"\n', ["optional must be true or false"]),
    ("connections-zero", GOOD + "connections = 0\n", ["connections must be", "got 0"]),
    (
        "short-hash",
        GOOD.replace(SHA, SHA[:-1]),
        ["models[0]", "'sha256'", "64 hex characters, got 63"],
    ),
    ("non-hex-hash", GOOD.replace(SHA, "z" * 64), ["'sha256'", "hexadecimal"]),
    ("bad-xxh3", GOOD + 'xxh3_128 = "123"\n', ["'xxh3_128'", "32 hex"]),
    ("absolute-dir", GOOD.replace('"checkpoints"', '"/etc"'), ["'dir'", "not absolute"]),
    ("dotdot-dir", GOOD.replace('"checkpoints"', '"a/../../b"'), ["'dir'", "'..'"]),
    ("dotdot-filename", GOOD + 'filename = ".."\n', ["'filename'", "plain file name"]),
    ("slash-filename", GOOD + 'filename = "x/y.bin"\n', ["'filename'"]),
    ("negative-size", GOOD + "size = -1\n", ["'size'"]),
    ("bad-rate", '[settings]\nmax_speed = "fast"\n' + GOOD, ["'max_speed'", "50M"]),
    ("too-many-connections", "[settings]\nconnections = 32\n" + GOOD, ["'connections'", "16"]),
    (
        "duplicate-path",
        GOOD + GOOD.replace("[[models]]", '[[models]]\nname = "other"'),
        ["models[1] (other)", "also the target of models[0]"],
    ),
    (
        "duplicate-name",
        GOOD + GOOD.replace('dir = "checkpoints"', 'dir = "vae"'),
        ["models[1]", "already used by models[0]"],
    ),
    # no [[models]] at all is valid (init's starter); a misspelt header is not
    ("misspelt-models", GOOD.replace("[[models]]", "[[model]]"), ["'model'", "'models'"]),
    ("url-scheme", GOOD.replace("http://127.0.0.1:9", "ftp://h"), ["url must start with http"]),
    ("version", "version = 2\n" + HEADER + GOOD, ["version"]),
    (
        "url-name-escapes",
        GOOD.replace("a.safetensors", "..%2F..%2Fevil.bin"),
        ["models[0]", "safe file name", "set filename"],
    ),
    ("hf-file-dotdot", '[[models]]\nhf = "org/r"\nfile = "x/.."\n', ["safe file name"]),
]


@pytest.mark.parametrize(
    ("body", "fragments"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_manifest_exits_2_and_touches_nothing(
    tmp_path: Path, body: str, fragments: list[str]
) -> None:
    body = body if "[settings]" in body else HEADER + body
    manifest = tmp_path / "models.toml"
    manifest.write_text(body)
    for command in (["plan"], ["verify"]):
        run = modelsync(*command, manifest, cwd=tmp_path)
        assert run.code == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert "models.toml" in run.stderr
        for fragment in fragments:
            assert fragment in run.stderr, f"{fragment!r} not in {run.stderr}"
        assert run.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.toml"]


def test_missing_manifest(tmp_path: Path) -> None:
    run = modelsync("plan", tmp_path / "nope.toml", cwd=tmp_path)
    assert run.code == 2
    assert "nope.toml" in run.stderr and "not found" in run.stderr
    assert "Traceback" not in run.stderr


def test_several_problems_reported_at_once(tmp_path: Path) -> None:
    manifest = tmp_path / "models.toml"
    manifest.write_text(HEADER + GOOD.replace("sha256", "sha265") + '\n[[models]]\nname = "x"\n')
    run = modelsync("plan", manifest, cwd=tmp_path)
    assert run.code == 2
    assert "'sha265'" in run.stderr and "models[1] (x)" in run.stderr


def test_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").symlink_to(outside)
    manifest = tmp_path / "models.toml"
    manifest.write_text(HEADER + GOOD)
    run = modelsync("plan", manifest, cwd=tmp_path)
    assert run.code == 2
    assert "models[0]" in run.stderr and "outside root" in run.stderr
    assert sorted(os.listdir(root)) == ["checkpoints"] and not any(outside.iterdir())


def test_only_that_matches_nothing_is_a_usage_error(tmp_path: Path) -> None:
    manifest = tmp_path / "models.toml"
    manifest.write_text(HEADER + GOOD)
    run = modelsync("plan", manifest, "--only", "nothing", cwd=tmp_path)
    assert run.code == 2 and "matches no entry" in run.stderr and "a.safetensors" in run.stderr


def test_defaults_and_normalisation(tmp_path: Path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '[settings]\nmax_speed = "50M"\n'
        '[[models]]\nurl = "https://h/x/a%20b.safetensors?download=true"\ndir = "./ckpt/"\n'
        f'sha256 = "{SHA.upper()}"\n'
        '[[models]]\nhf = "org/repo"\nfile = "unet/model.safetensors"\ndir = "unet"\ntags = ["t"]\n'
        '[[models]]\ncivitai = 128713\ndir = "loras"\n'
    )
    m = load_manifest(manifest)
    a, b, c = m.models
    assert m.settings.max_speed == 50 * 1024 * 1024
    assert a.display_name == "a b.safetensors" and a.relpath() == "ckpt/a b.safetensors"
    assert a.sha256 == SHA
    assert b.display_name == "model.safetensors" and b.relpath() == "unet/model.safetensors"
    assert c.display_name == "civitai-128713" and c.relpath() is None
    assert [e.display_name for e in m.select(["t"])] == ["model.safetensors"]
    assert [e.display_name for e in m.select(["civitai-128713", "a b.safetensors"])] == [
        "a b.safetensors",
        "civitai-128713",
    ]
    assert m.lock_path == tmp_path / "m.lock"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("500K", 512000), ("1G", 1 << 30), ("1.5M", 1572864), ("2MiB/s", 2 << 20)],
)
def test_parse_rate(text: str, value: int) -> None:
    assert parse_rate(text) == value


def test_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "teams" / "m.toml"
    manifest.parent.mkdir()
    manifest.write_text(HEADER + GOOD)
    m = load_manifest(manifest)
    chosen = resolve_root(m, None, {})
    assert chosen.path == tmp_path / "teams" / "models" and chosen.creatable
    assert chosen.origin == "settings.root in m.toml"
    env = resolve_root(m, None, {"MODELSYNC_ROOT": str(tmp_path / "env")})
    assert (env.path, env.origin, env.creatable) == (tmp_path / "env", "$MODELSYNC_ROOT", False)
    cli = resolve_root(m, str(tmp_path / "cli"), {"MODELSYNC_ROOT": "x"})
    assert (cli.path, cli.origin, cli.creatable) == (tmp_path / "cli", "--root", False)
    bare = load_manifest(_write(tmp_path / "bare.toml", GOOD))
    monkeypatch.chdir(tmp_path)
    assert resolve_root(bare, None, {}).path == tmp_path


def test_plan_json_on_a_fresh_root(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "models.toml", HEADER + GOOD + "size = 10\n")
    run = modelsync("plan", manifest, "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] == 1 and doc["command"] == "plan"
    [entry] = doc["entries"]
    assert entry == {
        "name": "a.safetensors",
        "path": "checkpoints/a.safetensors",
        "action": "download",
        "status": "pending",
        "size": 10,
        "bytes_downloaded": 0,
        "error": None,
    }
    assert doc["totals"]["download_bytes"] == 10 and doc["totals"]["free_bytes"] > 0
    assert not (tmp_path / "models").exists()  # plan never writes under root
    check = modelsync("plan", manifest, "--check", cwd=tmp_path)
    assert check.code == 1


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "models.toml", HEADER + GOOD)
    (tmp_path / "models").write_text("not a folder")
    for command in ("plan", "apply", "verify"):
        run = modelsync(command, manifest, cwd=tmp_path)
        assert run.code == 2, run.stderr
        assert "is not a folder" in run.stderr and "Traceback" not in run.stderr


ENTRY = '[[models]]\nname = "x"\nurl = "http://127.0.0.1:9/x.bin"\n'  # lines 4-6 after HEADER
TAGS_WORDS = 'tags must be a list of strings, e.g. tags = ["sdxl"]'
SIZE_WORDS = "size must be a whole number of bytes, e.g. size = 6938078334"
TYPE_CASES = [
    # (id, manifest, the one problem line: our words, never pydantic's)
    (
        "tags-string",
        HEADER + ENTRY + 'tags = "sdxl"',
        f"line 7: models[0] (x): key 'tags': {TAGS_WORDS}",
    ),
    (
        "tags-of-ints",
        HEADER + ENTRY + "tags = [1]",
        f"line 7: models[0] (x): key 'tags': {TAGS_WORDS}",
    ),
    (
        "size-word",
        HEADER + ENTRY + 'size = "big"',
        f"line 7: models[0] (x): key 'size': {SIZE_WORDS}",
    ),
    (
        "size-quoted",
        HEADER + ENTRY + 'size = "12"',
        f"line 7: models[0] (x): key 'size': {SIZE_WORDS}",
    ),
    (
        "size-bool",
        HEADER + ENTRY + "size = true",
        f"line 7: models[0] (x): key 'size': {SIZE_WORDS}",
    ),
    (
        "size-float",
        HEADER + ENTRY + "size = 1.5",
        f"line 7: models[0] (x): key 'size': {SIZE_WORDS}",
    ),
    (
        "size-negative",
        HEADER + ENTRY + "size = -1",
        f"line 7: models[0] (x): key 'size': {SIZE_WORDS}; got -1",
    ),
    (
        "civitai-word",
        HEADER + '[[models]]\nname = "x"\ncivitai = "abc"',
        "line 6: models[0] (x): key 'civitai': civitai must be a whole number "
        "(the model version id), e.g. civitai = 128713",
    ),
    (
        "mirrors-string",
        HEADER + ENTRY + 'mirrors = "http://m/x.bin"',
        "line 7: models[0] (x): key 'mirrors': mirrors must be a list of URLs, "
        'e.g. mirrors = ["https://mirror.example/model.safetensors"]',
    ),
    (
        "max-concurrent-quoted",
        '[settings]\nmax_concurrent = "4"\n' + ENTRY,
        "[settings]: key 'max_concurrent': max_concurrent must be a whole number from 1 to 64, "
        "e.g. max_concurrent = 4",
    ),
    (
        "connections-range",
        "[settings]\nconnections = 99\n" + ENTRY,
        "[settings]: key 'connections': connections must be a whole number from 0 to 16 "
        "(0: automatic, one per 8 MiB), e.g. connections = 8; got 99",
    ),
    (
        "root-number",
        "[settings]\nroot = 5\n" + ENTRY,
        "[settings]: key 'root': root must be a folder in quotes, e.g. root = \"models\"",
    ),
    (
        "max-speed-list",  # was a TypeError traceback
        "[settings]\nmax_speed = [1]\n" + ENTRY,
        '[settings]: key \'max_speed\': expected a rate like "0", "500K", "50M" or "1G"; got [1]',
    ),
    (
        "models-as-table",
        HEADER + ENTRY.replace("[[models]]", "[models]"),
        "key 'models': models must be an array of tables, "
        "e.g. [[models]] (two pairs of brackets) above each entry",
    ),
    (
        "settings-not-a-table",
        "settings = 5\n" + ENTRY,
        "key 'settings': settings must be a table, "
        "e.g. [settings] (one pair of brackets) above its keys",
    ),
    (
        "entry-not-a-table",
        "models = [1]\n",
        "models[0]: entry must be a table, e.g. [[models]] above the entry's keys",
    ),
    (
        "version-quoted",
        'version = "1"\n' + HEADER + ENTRY,
        "key 'version': version must be 1 (the only manifest format so far), e.g. version = 1",
    ),
]


@pytest.mark.parametrize(
    ("body", "line"), [c[1:] for c in TYPE_CASES], ids=[c[0] for c in TYPE_CASES]
)
def test_type_errors_in_our_words(tmp_path: Path, body: str, line: str) -> None:
    manifest = _write(tmp_path / "models.toml", body + "\n")
    run = modelsync("plan", manifest, cwd=tmp_path)
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr and "Input should" not in run.stderr
    assert f"invalid manifest (1 problem(s)):\n  - {line}\n" in run.stderr, run.stderr


def problems_of(path: Path) -> tuple[Problem, ...]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return info.value.problems


def test_problems_carry_entry_key_and_line(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path / "m.toml",
        "[settings]\nmax_concurrent = 0\n\n" + ENTRY + 'tags = "sdxl"\nsha265 = "x"\n',
    )
    settings, tags, unknown = problems_of(manifest)
    assert (settings.entry, settings.key, settings.line) == (None, "settings.max_concurrent", 2)
    assert (tags.entry, tags.key, tags.line) == ("models[0] (x)", "tags", 7)
    assert (unknown.entry, unknown.key, unknown.line) == ("models[0] (x)", "sha265", 8)
    assert str(tags) == tags.message == f"line 7: models[0] (x): key 'tags': {TAGS_WORDS}"
    twice = _write(tmp_path / "twice.toml", HEADER + ENTRY + "\n" + ENTRY.replace(".bin", ".pt"))
    [duplicate] = problems_of(twice)
    assert (duplicate.entry, duplicate.key, duplicate.line) == ("models[1] (x)", "name", 9)
    assert "already used by models[0]" in duplicate.message
    syntax = _write(tmp_path / "syntax.toml", HEADER + "x = = 1\n")
    assert [(p.entry, p.key, p.line) for p in problems_of(syntax)] == [(None, None, 4)]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "manifests").glob("*.toml")), ids=lambda p: p.name
)
def test_the_example_manifests_are_valid(path: Path) -> None:
    manifest = load_manifest(path)
    assert manifest.models, f"{path.name} has no entries"
