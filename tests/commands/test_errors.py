"""Errors in words a user can act on: a wrong pin, HTTP statuses, hosts that do not answer."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from modelsync.aria2.words import describe
from modelsync.redact import redact
from tests.clirun import Run, modelsync
from tests.conftest import blob, serve, write_manifest
from tests.servers import FakeHub, FileServer
from tests.servers.fileserver import SIGNATURE_MARK

MIB = 1 << 20


def apply_json(manifest: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", *args)
    return run, json.loads(run.stdout) if run.stdout else {}


def only_entry(doc: dict[str, Any]) -> dict[str, Any]:
    [entry] = doc["entries"]
    return dict(entry)


def full_downloads(server: FileServer, path: str, size: int) -> int:
    assert server.bytes_served(path) % size == 0  # whole files only, no partial attempt
    return server.bytes_served(path) // size


# ---- a wrong pin is not the server's fault -----------------------------------------------


def test_wrong_pin_in_manifest_is_named_with_its_line(
    tmp_path: Path, fileserver: FileServer
) -> None:
    served = serve(fileserver, "/model.bin", 2 * MIB, seed=1)
    pinned = hashlib.sha256(b"other bytes").hexdigest()
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"name": "a", "url": served.url, "sha256": served.sha256},
            {"name": "m", "url": served.url, "filename": "m.bin", "sha256": pinned},
        ],
    )
    line = [n for n, text in enumerate(manifest.read_text().splitlines(), 1) if pinned in text]
    run = modelsync("apply", manifest, "--only", "m")
    assert run.code == 1, run.stderr
    message = (
        f"the server sends the same bytes twice (sha256 {served.sha256}); the pin in "
        f"models.toml line {line[0]} may be wrong or the file changed upstream; "
        f"sha256 expected {pinned}, got {served.sha256}"
    )
    assert message in " ".join(run.stderr.split()), run.stderr
    assert "the server sends wrong bytes" not in run.stderr
    # Downloaded twice, whole, and never a third time.
    assert full_downloads(fileserver, "/model.bin", len(served.data)) == 2
    assert not (tmp_path / "models" / "m.bin").exists()


def test_pin_from_the_lock_that_upstream_changed_names_the_lock(
    tmp_path: Path, fileserver: FileServer
) -> None:
    served = serve(fileserver, "/model.bin", MIB, seed=2)
    manifest = write_manifest(tmp_path / "models.toml", [{"url": served.url}])
    assert modelsync("lock", manifest).code == 0
    (tmp_path / "models" / "model.bin").unlink(missing_ok=True)  # lock may have placed it
    changed = blob(MIB, seed=3)
    fileserver.add_bytes("/model.bin", changed)  # the file changed upstream
    fileserver.reset_log()
    run, doc = apply_json(manifest)
    assert run.code == 1, run.stderr
    actual = hashlib.sha256(changed).hexdigest()
    error = only_entry(doc)["error"]
    assert error.startswith(f"the server sends the same bytes twice (sha256 {actual}); ")
    in_lock = 'the pin in models.lock [models."model.bin"]'  # the table that holds it
    assert f"{in_lock} may be wrong or the file changed upstream" in error
    assert f"expected {served.sha256}, got {actual}" in error
    assert full_downloads(fileserver, "/model.bin", MIB) == 2


def test_hash_the_hub_publishes_is_named_as_the_pin(tmp_path: Path) -> None:
    data = blob(MIB + 11, seed=4)
    with FakeHub() as hub:
        hub.add_repo("org/model", {"model.safetensors": data})
        hub.cdn.faults.corrupt_at = 500_007  # the CDN sends other bytes than the Hub's LFS pin
        manifest = write_manifest(
            tmp_path / "models.toml", [{"hf": "org/model", "file": "model.safetensors"}]
        )
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}
        run = modelsync("apply", manifest, "--json", env=env)
    assert run.code == 1, run.stderr
    error = only_entry(json.loads(run.stdout))["error"]
    assert error.startswith("the server sends the same bytes twice (sha256 ")
    host = hub.url.removeprefix("http://")
    assert f"the hash that {host} publishes may be wrong or the file changed upstream" in error
    assert f"sha256 expected {hashlib.sha256(data).hexdigest()}, got " in error


# ---- errors in words ---------------------------------------------------------------------

ARIA2_INTERNALS = ("aria2 error", "CUID#", "errorCode")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def apply_human(tmp_path: Path, url: str, *args: str) -> Run:
    manifest = write_manifest(tmp_path / "models.toml", [{"url": url, "filename": "m.bin"}])
    return modelsync("apply", manifest, *args)


def assert_plain(run: Run) -> None:
    """Failed (exit 1), never retried, no aria2 internals, no signature."""
    assert run.code == 1, run.stderr
    for internal in ARIA2_INTERNALS:
        assert internal not in run.stderr
    assert "retrying" not in run.stderr  # a permanent error: no attempts with backoff
    assert SIGNATURE_MARK not in run.stderr + run.stdout


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (404, "Not Found from {url}; check the URL"),
        (401, "Unauthorized from {url}; the server wants credentials"),
        (403, "Forbidden from {url}; the server wants credentials"),
    ],
)
def test_http_error_names_status_and_url_without_its_query(
    tmp_path: Path, fileserver: FileServer, status: int, words: str
) -> None:
    query = ""
    if status == 404:
        query = f"?X-Amz-Signature={SIGNATURE_MARK}abc"
    else:  # unsigned: a signed link's 401/403 may be an expired signature, and is retried
        fileserver.add_bytes("/m.bin", b"x" * 100)
        fileserver.set_faults("/m.bin", fail_first=100, fail_status=status)
    run = apply_human(tmp_path, fileserver.url_for("/m.bin") + query)
    assert_plain(run)
    shown = f"{fileserver.url}/m.bin{'?…' if query else ''}"
    assert f"HTTP {status} {words.format(url=shown)}" in " ".join(run.stderr.split())
    assert len([r for r in fileserver.requests if r.path == "/m.bin"]) == 1


def test_verbose_keeps_aria2s_words_apart(tmp_path: Path, fileserver: FileServer) -> None:
    url = fileserver.url_for("/missing.bin")
    run = apply_human(tmp_path, url, "--verbose")
    assert run.code == 1, run.stderr
    assert f"HTTP 404 Not Found from {url}; check the URL" in run.stderr
    assert "cause: aria2 error 3: Resource not found" in run.stderr
    manifest = tmp_path / "models.toml"
    quiet, doc = apply_json(manifest)
    assert "aria2 error" not in quiet.stderr + quiet.stdout  # --json: the words only
    assert only_entry(doc)["error"].startswith(f"HTTP 404 Not Found from {url}; check the URL")


def test_connection_refused_names_host_and_port(tmp_path: Path) -> None:
    port = closed_port()
    run = apply_human(tmp_path, f"http://127.0.0.1:{port}/m.bin")
    assert_plain(run)
    assert f"connection refused by 127.0.0.1:{port}" in run.stderr


def test_civitai_unreachable_says_why(tmp_path: Path) -> None:
    port = closed_port()
    manifest = write_manifest(tmp_path / "models.toml", [{"civitai": 123}])
    run = modelsync("apply", manifest, env={"CIVITAI_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert run.code == 1, run.stderr
    assert f"cannot reach 127.0.0.1:{port} (connection refused)" in run.stderr
    assert "ConnectionError" not in run.stderr


def test_unresolvable_host_is_named(tmp_path: Path) -> None:
    run = apply_human(tmp_path, "http://nonexistent.invalid/m.bin")
    assert_plain(run)
    assert "cannot resolve host nonexistent.invalid" in run.stderr


def test_server_error_is_retried_in_words(tmp_path: Path, fileserver: FileServer) -> None:
    served = serve(fileserver, "/m.bin", 1000, seed=5)
    fileserver.set_faults("/m.bin", fail_first=1, fail_status=500)  # aria2 does not retry a 500
    run = apply_human(tmp_path, served.url)
    assert run.code == 0, run.stderr
    warning = f"m.bin: HTTP 500 Internal Server Error from {served.url}; retrying"
    assert warning in " ".join(run.stderr.split())
    for internal in ARIA2_INTERNALS:
        assert internal not in run.stderr
    assert (tmp_path / "models" / "m.bin").read_bytes() == served.data


def test_tls_error_names_host_and_port(tmp_path: Path, fileserver: FileServer) -> None:
    url = fileserver.add_bytes("/m.bin", b"x" * 100).replace("http://", "https://")
    run = apply_human(tmp_path, url)  # an https URL of a plain HTTP server
    assert_plain(run)
    host = url.removeprefix("https://").split("/")[0]
    assert f"TLS error with {host} (the handshake failed, or its certificate" in run.stderr


# aria2's (code, errorMessage) pairs as tellStatus reports them (aria2 1.37).
@pytest.mark.parametrize(
    ("code", "message", "words", "permanent"),
    [
        (29, "The response status is not successful. status=503", "HTTP 503 Service", False),
        # A signed link: 403 may mean "expired", and a retry re-resolves it.
        (22, "The response status is not successful. status=403", "HTTP 403 Forbidden", False),
        (22, "The response status is not successful. status=410", "HTTP 410 Gone from", True),
        (22, "The response status is not successful. status=599", "HTTP 599 from", False),
        (2, "Timeout.", "timed out waiting for cdn.example:443", False),
        (
            1,
            "SSL/TLS handshake failure: certificate verify failed",
            "TLS error with cdn.example:443",
            True,
        ),
        (
            19,
            "CUID#7 - Name resolution for cdn.example failed:Temporary failure in name resolution",
            "cannot resolve host cdn.example",
            False,
        ),
        (9, "No space left on device", "not enough disk space", True),
    ],
)
def test_aria2_failures_in_words(code: int, message: str, words: str, permanent: bool) -> None:
    urls = (f"https://cdn.example/f.bin?X-Amz-Signature={SIGNATURE_MARK}1", "https://m.example/f")
    failure = describe(code, message, urls)
    assert words in failure.message
    assert failure.permanent is permanent
    assert "CUID#" not in failure.message and "aria2" not in failure.message
    assert SIGNATURE_MARK not in failure.message
    assert failure.cause == f"aria2 error {code}: {message}"
    if failure.message.startswith("HTTP"):
        assert "https://cdn.example/f.bin?… (and 1 mirror(s))" in failure.message


def test_redaction_keeps_the_sentence_after_a_url() -> None:
    text = f"HTTP 404 from https://h/f.bin?sig={SIGNATURE_MARK}; check the URL"
    assert redact(text) == "HTTP 404 from https://h/f.bin?…; check the URL"
    assert redact(redact(text)) == redact(text)
