"""[settings.aria2]: the allowlist, its errors (key and line), and the options reaching a
real aria2c that modelsync spawns."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelsync.aria2 import Aria2Daemon
from modelsync.aria2.options import _spawn_options
from modelsync.commands.apply import ApplyRequest, open_daemon
from modelsync.errors import ManifestError, ModelsyncError, Problem
from modelsync.manifest import load_manifest, resolve_root
from modelsync.tuning import TuningError, option_line, parse_tuning
from modelsync.workspace import Workspace

ENTRY = '\n[[models]]\nurl = "http://127.0.0.1:9/a.safetensors"\ndir = "checkpoints"\n'


def manifest(tmp_path: Path, aria2: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text('[settings]\nroot = "models"\n\n[settings.aria2]\n' + aria2 + ENTRY)
    return path


def problems(tmp_path: Path, aria2: str) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest(tmp_path, aria2))
    return list(info.value.problems)


def test_allowed_options_in_aria2s_words() -> None:
    tuning = parse_tuning(
        {
            "lowest-speed-limit": "100K",
            "timeout": 30,
            "max-tries": 0,
            "min-split-size": "16M",
            "disk-cache": 0,
            "file-allocation": "falloc",
            "async-dns": False,
            "check-certificate": True,
            "user-agent": "team-sync/1.0",
            "all-proxy": "http://user:pa55word@proxy.lan:3128",
            "ca-certificate": "/etc/ssl/certs/ca.pem",
        }
    )
    assert tuning.per_download == {
        "lowest-speed-limit": "102400",
        "timeout": "30",
        "max-tries": "0",
        "min-split-size": "16777216",
        "file-allocation": "falloc",
        "async-dns": "false",
        "user-agent": "team-sync/1.0",
        "all-proxy": "http://user:pa55word@proxy.lan:3128",
    }
    assert tuning.global_only == {
        "disk-cache": "0",
        "check-certificate": "true",
        "ca-certificate": "/etc/ssl/certs/ca.pem",
    }
    assert tuning.hash_ahead  # disk-cache 0: pieces are on disk when aria2 says so
    assert tuning.secrets == ("pa55word",)
    assert not parse_tuning({"disk-cache": "16M"}).hash_ahead


REFUSED = [
    # (option, value, words the message must hold)
    ("rpc-listen-all", True, ["refused", "network"]),
    ("rpc-listen-port", 6800, ["refused", "RPC"]),
    ("enable-rpc", True, ["refused", "modelsync starts"]),
    ("on-download-complete", "/bin/sh", ["refused", "runs a command"]),
    ("on-bt-download-complete", "/bin/sh", ["refused", "runs a command"]),
    ("dir", "/tmp", ["refused", "outside .modelsync/tmp/"]),
    ("out", "x.bin", ["refused", "outside .modelsync/tmp/"]),
    ("input-file", "/tmp/uris", ["refused", "outside .modelsync/tmp/"]),
    ("save-session", "/tmp/s", ["refused", "outside .modelsync/tmp/"]),
    ("conf-path", "/tmp/c", ["refused", "modelsync starts"]),
    ("log", "/tmp/log", ["refused", "outside .modelsync/tmp/"]),
    ("header", "Authorization: Bearer x", ["refused", "every host"]),
    ("no-netrc", False, ["refused", "netrc"]),
    ("follow-torrent", True, ["refused", "BitTorrent"]),
    ("split", 4, ["modelsync sets split itself", "connections in [settings]"]),
    ("max-connection-per-server", 4, ["connections in [settings]", "--connections"]),
    ("max-concurrent-downloads", 2, ["max_concurrent in [settings]", "--jobs"]),
    ("max-overall-download-limit", "1M", ["max_speed in [settings]", "--max-speed"]),
    ("rpc-secret", "s3cret", ["random secret", "$MODELSYNC_ARIA2_SECRET"]),
    ("stream-piece-selector", "default", ["hash them while they download"]),
    ("continue", False, ["resumes partial downloads"]),
    ("checksum", "sha-256=00", ["verifies every file itself"]),
    ("lowest-speed", "1M", ["not an aria2 option", "did you mean 'lowest-speed-limit'"]),
    ("lowest_speed_limit", "1M", ["did you mean 'lowest-speed-limit'"]),
    ("no-such-option", 1, ["not an aria2 option", "allowed: lowest-speed-limit"]),
]


@pytest.mark.parametrize(("key", "value", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_option_names_the_key_and_its_line(
    tmp_path: Path, key: str, value: object, words: list[str]
) -> None:
    literal = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
    (problem,) = problems(tmp_path, f'timeout = 30\n{key} = {literal}\nuser-agent = "x"\n')
    assert problem.key == f"settings.aria2.{key}"
    assert problem.line == 6  # [settings.aria2] is line 4, timeout line 5
    assert problem.message.startswith(f"line 6: [settings.aria2]: key {key!r}: ")
    for word in words:
        assert word in problem.message


BAD_VALUES = [
    ("timeout", '"30"', "a whole number of seconds from 1 to 600"),
    ("timeout", "0", "from 1 to 600"),
    ("connect-timeout", "true", "a whole number of seconds"),
    ("max-tries", "-1", "0 or more"),
    ("lowest-speed-limit", '"fast"', 'a string like "500K"'),
    ("lowest-speed-limit", "1.5", "a rate in bytes per second"),
    ("min-split-size", '"512K"', "a size from 1M to 1024M"),
    ("min-split-size", '"2G"', "a size from 1M to 1024M"),
    ("file-allocation", '"fast"', 'one of "none", "prealloc", "trunc", "falloc"'),
    ("check-certificate", '"false"', "true or false"),
    ("async-dns", "1", "true or false"),
    ("user-agent", "5", "a string in quotes"),
    ("user-agent", '"a\\nb"', "a string in quotes (one line)"),
    ("all-proxy", '"socks5://proxy:1080"', "[http://][USER:PASSWORD@]HOST[:PORT]"),
    ("ca-certificate", '"certs/ca.pem"', "an absolute path"),
]


@pytest.mark.parametrize(("key", "literal", "expected"), BAD_VALUES)
def test_wrong_value_says_the_expected_form(
    tmp_path: Path, key: str, literal: str, expected: str
) -> None:
    (problem,) = problems(tmp_path, f"{key} = {literal}\n")
    assert problem.key == f"settings.aria2.{key}"
    assert problem.line == 5
    assert expected in problem.message
    assert f", e.g. {key} = " in problem.message


def test_every_bad_option_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, 'dir = "/tmp"\ntimeout = 30\nsplit = 2\nretry-wait = "3"\n')
    assert [(p.key, p.line) for p in found] == [
        ("settings.aria2.dir", 5),
        ("settings.aria2.split", 7),
        ("settings.aria2.retry-wait", 8),
    ]


def test_other_spellings_of_the_table(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[settings]\nroot = "m"\naria2.dir = "/x"\n' + ENTRY)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (problem,) = info.value.problems
    assert (problem.key, problem.line) == ("settings.aria2.dir", 3)

    path.write_text('[settings]\nroot = "m"\naria2 = { timeout = 5, split = 3 }\n' + ENTRY)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (problem,) = info.value.problems
    assert (problem.key, problem.line) == ("settings.aria2.split", 3)

    path.write_text('[settings]\nroot = "m"\naria2 = "fast"\n' + ENTRY)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (problem,) = info.value.problems
    assert (problem.key, problem.line) == ("settings.aria2", 3)
    assert "must be a table of aria2 options" in problem.message


def test_option_line_stops_at_the_next_table() -> None:
    text = "[settings.aria2]\ntimeout = 5\n\n[[models]]\nsplit = 3\n"
    assert option_line(text, "timeout") == 2
    assert option_line(text, "split") == 1  # not the entry's key: the table's line
    assert option_line("version = 1\n", "split") is None


def test_a_valid_table_loads(tmp_path: Path) -> None:
    loaded = load_manifest(
        manifest(tmp_path, 'lowest-speed-limit = "1M"\ncheck-certificate = false\n')
    )
    assert loaded.settings.aria2.per_download == {"lowest-speed-limit": "1048576"}
    assert loaded.settings.aria2.global_only == {"check-certificate": "false"}
    assert load_manifest(manifest(tmp_path, "")).settings.aria2.options == ()


def test_tuning_error_carries_every_problem() -> None:
    with pytest.raises(TuningError) as info:
        parse_tuning({"dir": "/x", "timeout": 5, "out": "y"})
    assert [key for key, _ in info.value.problems] == ["dir", "out"]


def test_spawn_never_takes_the_rpc_wiring_as_an_extra_option() -> None:
    for name in (
        "rpc-secret",
        "rpc-listen-all",
        "enable-rpc",
        "conf-path",
        "Timeout",
        "a\nb",
        "timeout\n",
    ):
        with pytest.raises(ValueError, match="not an option for modelsync's aria2c"):
            _spawn_options(1, 0, {name: "x"})
    assert _spawn_options(1, 0, {"disk-cache": "1048576"})["disk-cache"] == "1048576"


def _workspace(tmp_path: Path, aria2: str) -> Workspace:
    loaded = load_manifest(manifest(tmp_path, aria2))
    env = {"PATH": "/usr/bin:/bin"}
    return Workspace(loaded, resolve_root(loaded, None, env), env)


def test_global_options_reach_modelsyncs_own_aria2c(tmp_path: Path) -> None:
    ws = _workspace(
        tmp_path,
        'disk-cache = "16M"\ncheck-certificate = false\nmin-tls-version = "TLSv1.3"\n'
        'lowest-speed-limit = "1M"\n',
    )
    daemon: Aria2Daemon = open_daemon(ws, ApplyRequest(), 3, 0)
    with daemon:
        assert daemon.spawned
        options = daemon.get_global_option()
    assert options["disk-cache"] == str(16 << 20)
    assert options["check-certificate"] == "false"
    assert options["min-tls-version"] == "TLSv1.3"
    # per-download options go with each download, not into the daemon's globals
    assert options["lowest-speed-limit"] == "0"
    # modelsync's own settings are still its own
    assert options["max-concurrent-downloads"] == "3"
    assert options["stream-piece-selector"] == "default"  # set per download
    assert not list((tmp_path / "models" / ".modelsync").glob("*.conf"))  # no secret left


def test_a_missing_ca_certificate_is_an_error_before_aria2c_starts(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    ws = _workspace(tmp_path, f'ca-certificate = "{missing}"\n')
    with pytest.raises(ModelsyncError) as info:
        open_daemon(ws, ApplyRequest(), 1, 0)
    assert info.value.exit_code == 2
    assert "key 'ca-certificate'" in info.value.message and str(missing) in info.value.message
    assert not (tmp_path / "models" / ".modelsync" / "aria2.pid").exists()
