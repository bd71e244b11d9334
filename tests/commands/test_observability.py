"""What an operator sees of a run: `--log-file` (JSON lines), `--metrics-file` (Prometheus
text) and `modelsync status` from another terminal. The real CLI, a real aria2c, local
servers; a download is held mid-way by the server (`stall_after`), never by sleeping."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers import SIGNATURE_MARK, FakeHub, FileServer

MIB = 1 << 20
HF_TOKEN = "hf_OBSLEAKCHECK_93b1d0c7aa"
MODEL = blob(MIB + 5, seed=71)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.token = HF_TOKEN
        hub.add_repo("org/model", {"unet/model.safetensors": MODEL})
        yield hub


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        assert ISO_UTC.match(line["ts"]), line
        assert isinstance(line["event"], str)
    return lines


def events_of(
    lines: list[dict[str, Any]], event: str, entry: str | None = None
) -> list[dict[str, Any]]:
    return [x for x in lines if x["event"] == event and (entry is None or x.get("entry") == entry)]


# ---- --log-file --------------------------------------------------------------------------


def test_log_file_has_every_step_of_an_apply_and_no_secret(
    tmp_path: Path, fileserver: FileServer, hub: FakeHub, foreign_aria2: tuple[str, str]
) -> None:
    rpc_url, rpc_secret = foreign_aria2
    flaky = serve(fileserver, "/flaky.bin", 300_000, seed=1)
    fileserver.set_faults("/flaky.bin", fail_first=1, fail_status=500)  # aria2 leaves it to us
    gone = fileserver.url_for("/gone.bin")  # 404
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"url": flaky.url, "dir": "a", "sha256": flaky.sha256},
            {"url": gone, "dir": "a"},
            {"hf": "org/model", "file": "unet/model.safetensors", "dir": "hf"},
        ],
    )
    log = tmp_path / "run.jsonl"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": HF_TOKEN,
        "MODELSYNC_ARIA2_URL": rpc_url,
        "MODELSYNC_ARIA2_SECRET": rpc_secret,
    }
    run = modelsync("apply", manifest, "--no-progress", "--log-file", log, env=env)
    assert run.code == 1, run.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    for secret in (HF_TOKEN, rpc_secret, SIGNATURE_MARK):
        assert secret not in text
    lines = log_lines(log)
    assert lines[0]["event"] == "start" and lines[0]["command"] == "apply"
    assert lines[-1]["event"] == "end" and lines[-1]["exit_code"] == 1

    resolved = {x["entry"]: x for x in events_of(lines, "resolve")}
    assert resolved["flaky.bin"]["source"] == "url" and resolved["flaky.bin"]["ok"] is True
    assert resolved["model.safetensors"]["source"] == "hf"
    assert resolved["model.safetensors"]["host"] == hub.url.split("//")[1]  # the Hub's API
    plans = {x["entry"]: x["action"] for x in events_of(lines, "plan")}
    assert plans == {
        "flaky.bin": "download",
        "gone.bin": "download",
        "model.safetensors": "download",
    }

    (retry,) = events_of(lines, "download_retry", "flaky.bin")
    assert retry["attempt"] == 1 and "HTTP 500" in retry["reason"]
    starts = events_of(lines, "download_start", "flaky.bin")
    assert [s["attempt"] for s in starts] == [1, 2]
    assert starts[0]["url"] == flaky.url
    (finish,) = events_of(lines, "download_finish", "flaky.bin")
    assert finish["bytes"] == 300_000 and finish["rate"] > 0 and finish["attempt"] == 2
    (verify,) = events_of(lines, "verify", "flaky.bin")
    assert verify["ok"] is True and verify["sha256"] == flaky.sha256
    (place,) = events_of(lines, "place", "flaky.bin")
    assert place["path"] == "a/flaky.bin"

    (fail,) = events_of(lines, "download_fail", "gone.bin")
    assert "HTTP 404" in fail["reason"] and fail["attempt"] == 1
    (result,) = events_of(lines, "result", "gone.bin")
    assert result["status"] == "failed"

    (hf_start,) = events_of(lines, "download_start", "model.safetensors")
    assert hf_start["url"].endswith("?…")  # the signed query string is cut
    (hf_result,) = events_of(lines, "result", "model.safetensors")
    assert hf_result["status"] == "downloaded" and hf_result["bytes"] == len(MODEL)

    # The next run appends: the first run's lines stay, the new ones follow.
    run = modelsync("apply", manifest, "--no-progress", "--log-file", log, env=env)
    again = log_lines(log)
    assert again[: len(lines)] == lines and len(again) > len(lines)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_log_file_of_plan_verify_and_lock(tmp_path: Path, fileserver: FileServer) -> None:
    a = serve(fileserver, "/a.bin", 5000, seed=2)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": a.url, "dir": "a"}])
    log = tmp_path / "log" / "steps.jsonl"
    log.parent.mkdir()
    assert modelsync("plan", manifest, "--create-root", "--log-file", log).code == 0
    assert modelsync("lock", manifest, "--no-progress", "--log-file", log).code == 0
    assert modelsync("verify", manifest, "--log-file", log).code == 0
    lines = log_lines(log)
    commands = [x["command"] for x in events_of(lines, "start")]
    assert commands == ["plan", "lock", "apply", "verify"]  # lock downloads the unpinned file
    plan_lines = lines[: next(i for i, x in enumerate(lines) if x["event"] == "end") + 1]
    assert [x["event"] for x in plan_lines] == ["start", "resolve", "plan", "end"]
    assert plan_lines[2]["action"] == "download"
    (locked,) = events_of(lines, "lock")
    assert locked["written"] is True and locked["failed"] == 0
    verified = events_of(lines, "verify", "a.bin")[-1]
    assert verified["status"] == "ok" and verified["bytes"] == 5000


def test_log_file_that_cannot_be_opened_exits_2(tmp_path: Path, fileserver: FileServer) -> None:
    a = serve(fileserver, "/a.bin", 100)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": a.url, "dir": "a"}])
    run = modelsync("plan", manifest, "--create-root", "--log-file", tmp_path / "no" / "x.log")
    assert run.code == 2
    assert "--log-file: cannot open" in run.stderr and "Traceback" not in run.stderr


# ---- --metrics-file ----------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[str, float]:
    """A small parser of the text exposition format: `name{labels}` → value; every sample's
    metric has HELP and TYPE lines before it, each metric family once."""
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_]+="[^"\\]*"\})? (\S+)$')
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helps, f"HELP twice for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name not in types
            types[name] = kind
        else:
            m = sample.match(line)
            assert m, f"not a sample: {line!r}"
            assert m[1] in helps and m[1] in types, f"{m[1]} without HELP/TYPE"
            samples[m[1] + (m[2] or "")] = float(m[3])
    assert text.endswith("\n")
    return samples


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "metrics.prom")


def test_metrics_file_counts_the_run_and_keeps_the_last_success(
    tmp_path: Path, fileserver: FileServer
) -> None:
    a = serve(fileserver, "/a.bin", 200_000, seed=3)
    prom = tmp_path / "textfile" / "metrics.prom"
    prom.parent.mkdir()
    manifest = write_manifest(
        tmp_path / "models.toml", [{"url": a.url, "dir": "a", "sha256": a.sha256}]
    )
    run = modelsync("apply", manifest, "--no-progress", "--metrics-file", prom)
    assert run.code == 0, run.stderr
    assert leftovers(prom.parent) == []  # written beside it, renamed over it
    m = parse_prometheus(prom.read_text())
    assert m['modelsync_files{status="downloaded"}'] == 1
    assert m['modelsync_files{status="failed"}'] == 0
    assert m['modelsync_files{status="pending"}'] == 0
    assert m["modelsync_bytes_downloaded_total"] == 200_000
    assert m["modelsync_bytes_verified_total"] == 200_000
    assert m["modelsync_bytes_total"] == 200_000
    assert m["modelsync_download_rate_bytes"] == 0  # over
    assert m["modelsync_retries_total"] == 0
    assert m["modelsync_apply_running"] == 0
    assert m["modelsync_apply_duration_seconds"] >= 0
    success = m["modelsync_last_success_timestamp_seconds"]
    before = prom.read_text()
    old = prom.open()  # a reader of the old file: replaced by a rename, it keeps it whole

    # A failing run: failures by reason, and the last success stays the earlier one.
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": a.url, "dir": "a", "sha256": a.sha256}, {"url": a.url + "x", "dir": "b"}],
    )
    run = modelsync("apply", manifest, "--no-progress", "--metrics-file", prom)
    assert run.code == 1, run.stderr
    with old:
        assert old.read() == before  # never rewritten in place
    assert leftovers(prom.parent) == []
    m = parse_prometheus(prom.read_text())
    assert m['modelsync_failures_total{reason="not_found"}'] == 1
    assert m['modelsync_files{status="failed"}'] == 1
    assert m['modelsync_files{status="ok"}'] == 1
    assert m["modelsync_last_success_timestamp_seconds"] == success


def test_metrics_file_in_a_missing_folder_exits_2(tmp_path: Path, fileserver: FileServer) -> None:
    a = serve(fileserver, "/a.bin", 100)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": a.url, "dir": "a"}])
    run = modelsync("apply", manifest, "--metrics-file", tmp_path / "no" / "m.prom")
    assert run.code == 2 and "--metrics-file:" in run.stderr
    assert not (tmp_path / "models").exists()


# ---- modelsync status --------------------------------------------------------------------


def start_held_apply(
    tmp_path: Path, fileserver: FileServer, *args: str | Path
) -> tuple[subprocess.Popen[str], Path]:
    """An apply whose one download the server holds after 1 MiB of 4 MiB."""
    f = serve(fileserver, "/held.bin", 4 * MIB, seed=4)
    fileserver.set_faults("/held.bin", stall_after=MIB, stall_times=100)
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"url": f.url, "dir": "c", "sha256": f.sha256, "connections": 1}],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSYNC_", "HF_"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelsync",
            "apply",
            str(manifest),
            "--no-progress",
            *map(str, args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    held = fileserver.wait_until(
        lambda: any(r.stalled for r in fileserver.requests) or proc.poll() is not None, 60
    )
    assert held and proc.poll() is None, "the download never reached the server"
    return proc, manifest


def status_until(
    root: Path, ready: Callable[[dict[str, Any]], bool], attempts: int = 200
) -> dict[str, Any]:
    """`status --json` until `ready` holds: apply rewrites its status file every second,
    so each look is a fresh process reading what apply wrote last."""
    doc: dict[str, Any] = {}
    for _ in range(attempts):
        run = modelsync("status", "--root", root, "--json")
        assert run.code == 0, run.stderr
        doc = json.loads(run.stdout)
        if ready(doc):
            return doc
    raise AssertionError(f"status never got there: {doc}")


def held_mid_way(doc: dict[str, Any]) -> bool:
    return doc["running"] and any(a["done"] == MIB for a in doc["active"])


def test_status_shows_the_held_apply_then_no_apply(tmp_path: Path, fileserver: FileServer) -> None:
    prom = tmp_path / "metrics.prom"
    proc, manifest = start_held_apply(tmp_path, fileserver, "--metrics-file", prom)
    root = tmp_path / "models"
    try:
        doc = status_until(root, held_mid_way)
        human = modelsync("status", manifest)
        live = parse_prometheus(prom.read_text())  # written at the start, every 5 s after
    finally:
        fileserver.set_faults("/held.bin")
        fileserver.release_stalls()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err

    assert doc["schema"] == 1 and doc["command"] == "status" and doc["pid"] == proc.pid
    assert doc["files"] == {"done": 0, "total": 1}
    assert doc["bytes"] == {"done": MIB, "total": 4 * MIB}
    (active,) = doc["active"]
    assert (active["name"], active["path"], active["done"], active["total"]) == (
        "held.bin",
        "c/held.bin",
        MIB,
        4 * MIB,
    )
    assert human.code == 0, human.stderr
    assert f"apply running (pid {proc.pid}" in human.stderr
    assert "0/1 files, 1.0 MiB of 4.0 MiB (25%)" in human.stderr
    assert "c/held.bin" in human.stderr and "1.0 MiB of 4.0 MiB" in human.stderr
    assert live["modelsync_apply_running"] == 1
    assert live['modelsync_files{status="pending"}'] == 1

    after = modelsync("status", "--root", root)
    assert (after.code, after.stderr.splitlines()[-1]) == (0, "no apply running")
    assert not (root / ".modelsync" / "status.json").exists()
    done = json.loads(modelsync("status", "--root", root, "--json").stdout)
    assert (done["running"], done["stale"]) == (False, False)


def test_status_after_a_killed_apply_says_it_stopped_without_finishing(
    tmp_path: Path, fileserver: FileServer
) -> None:
    proc, manifest = start_held_apply(tmp_path, fileserver)
    root = tmp_path / "models"
    try:
        status_until(root, lambda doc: doc["running"])
        proc.kill()
        proc.wait(30)
    finally:
        fileserver.set_faults("/held.bin")
        fileserver.release_stalls()
    proc.communicate()
    run = modelsync("status", manifest)
    assert run.code == 0, run.stderr
    assert f"no apply running (the last one, pid {proc.pid}, stopped without finishing)" in (
        run.stderr
    )
    doc = json.loads(modelsync("status", manifest, "--json").stdout)
    assert (doc["running"], doc["stale"], doc["pid"]) == (False, True, proc.pid)


def test_ctrl_c_removes_the_status_file(tmp_path: Path, fileserver: FileServer) -> None:
    log = tmp_path / "run.jsonl"
    proc, manifest = start_held_apply(tmp_path, fileserver, "--log-file", log)
    root = tmp_path / "models"
    try:
        status_until(root, lambda doc: doc["running"])
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        fileserver.set_faults("/held.bin")
        fileserver.release_stalls()
    assert proc.returncode == 130, err
    assert not (root / ".modelsync" / "status.json").exists()
    run = modelsync("status", manifest)
    assert run.stderr.splitlines()[-1] == "no apply running"
    assert log_lines(log)[-1]["event"] == "interrupted"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "give the MANIFEST or --root DIR"),
        (("--json",), "give the MANIFEST or --root DIR"),
        (("--root",), "requires an argument"),
        (("--bogus", "--root", "x"), "No such option: --bogus"),
    ],
)
def test_status_usage_errors_exit_2(args: tuple[str, ...], words: str) -> None:
    run = modelsync("status", *args)
    assert run.code == 2
    assert "Usage: modelsync status" in run.stderr and words in run.stderr
    if "--json" in args:
        doc = json.loads(run.stdout)
        assert (doc["command"], doc["error"]["exit_code"]) == ("status", 2)


def test_status_of_a_root_without_apply(tmp_path: Path) -> None:
    run: Run = modelsync("status", "--root", tmp_path)
    assert run.code == 0 and run.stderr.splitlines()[-1] == "no apply running"
    doc = json.loads(modelsync("status", "--root", tmp_path, "--json").stdout)
    assert doc == {
        "schema": 1,
        "command": "status",
        "root": str(tmp_path),
        "running": False,
        "stale": False,
        "pid": None,
    }
    assert not (tmp_path / ".modelsync").exists()  # status writes nothing


@pytest.mark.parametrize(
    "command",
    [
        ["sleep", "60"],  # another program
        # a modelsync-looking command line: the pid's start time tells it apart
        [sys.executable, "-c", "import time; time.sleep(60)", "modelsync", "apply"],
    ],
    ids=["other-program", "other-start-time"],
)
def test_status_file_of_a_pid_now_used_by_another_process_is_stale(
    tmp_path: Path, command: list[str]
) -> None:
    """A killed apply's pid, reused since: not an apply running."""
    with subprocess.Popen(command) as other:
        try:
            own = tmp_path / ".modelsync"
            own.mkdir()
            doc = {"schema": 1, "pid": other.pid, "pid_started": 1, "started": "2026-01-01"}
            (own / "status.json").write_text(json.dumps(doc))
            run = modelsync("status", "--root", tmp_path)
            shown = json.loads(modelsync("status", "--root", tmp_path, "--json").stdout)
        finally:
            other.kill()
    assert run.code == 0
    assert f"the last one, pid {other.pid}, stopped without finishing" in run.stderr
    assert (shown["running"], shown["stale"]) == (False, True)
