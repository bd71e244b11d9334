"""doctor: really asks each hub (token accepted? endpoint answers? proxy lets it through?),
checks the root it is given, finds aria2c; prints ok/warn/fail with a fix, never a token.

Every test points HF_ENDPOINT and CIVITAI_ENDPOINT at local servers (or a closed local
port): doctor must never try the real hosts from the test suite.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import Run, modelsync
from tests.conftest import write_manifest
from tests.servers import FakeCivitai, FakeHub

HF_TOKEN = "hf_doctorSecretToken123"
CIVITAI_TOKEN = "civ_doctorSecretToken456"
# No proxy from the developer's environment, and NO_PROXY must not hide 127.0.0.1.
NO_PROXY_ENV = {
    name: ""
    for base in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
    for name in (base, base.lower())
}


@pytest.fixture
def hubs() -> Iterator[tuple[FakeHub, FakeCivitai]]:
    with FakeHub() as hub, FakeCivitai() as civ:
        hub.token, civ.token = HF_TOKEN, CIVITAI_TOKEN
        yield hub, civ


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def doctor(*args: str | Path, env: dict[str, str]) -> Run:
    # Python lets an empty http_proxy hide HTTP_PROXY: a proxy is set in both spellings.
    proxies = {k.lower(): v for k, v in env.items() if k.endswith("_PROXY")}
    return modelsync("doctor", *args, env=NO_PROXY_ENV | env | proxies)


def assert_no_secret(run: Run) -> None:
    for secret in (HF_TOKEN, CIVITAI_TOKEN, "proxypass"):
        assert secret not in run.stdout + run.stderr


def test_doctor_checks_that_the_hubs_accept_the_tokens_without_printing_them(
    tmp_path: Path, hubs: tuple[FakeHub, FakeCivitai]
) -> None:
    hub, civ = hubs
    manifest = write_manifest(tmp_path / "m.toml", [{"url": "http://127.0.0.1:9/a.bin"}])
    env = {
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civ.url,
        "HF_TOKEN": HF_TOKEN,
        "CIVITAI_TOKEN": CIVITAI_TOKEN,
    }
    run = doctor(manifest, env=env)
    assert run.code == 0, run.stderr
    assert "ok   aria2 RPC: answers on 127.0.0.1" in run.stderr
    assert f"ok   root: {tmp_path / 'models'} (from settings.root in m.toml)" in run.stderr
    hub_host, civ_host = hub.url.removeprefix("http://"), civ.url.removeprefix("http://")
    assert f"ok   Hugging Face token: HF_TOKEN is accepted by {hub_host} (user" in run.stderr
    assert f"ok   Civitai token: CIVITAI_TOKEN is accepted by {civ_host} (user" in run.stderr
    assert f"ok   Hugging Face endpoint: {hub.url} answers (HTTP 200)" in run.stderr
    assert_no_secret(run)
    # Each token went to its own hub only, as `Authorization: Bearer`.
    assert [r.headers.get("authorization") for r in hub.requests] == [f"Bearer {HF_TOKEN}"]
    assert [r.path for r in civ.requests] == ["/api/v1/me"]
    assert civ.requests[0].headers.get("authorization") == f"Bearer {CIVITAI_TOKEN}"

    run = doctor(manifest, "--json", env=env)
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] == 1 and doc["command"] == "doctor"
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["Hugging Face token"]["status"] == "ok"
    assert set(by_name["root"]) == {"name", "status", "detail", "fix"}
    assert_no_secret(run)


def test_doctor_fails_when_a_hub_rejects_its_token(hubs: tuple[FakeHub, FakeCivitai]) -> None:
    hub, civ = hubs
    hub.token, civ.token = "hf_anotherToken", "civ_anotherToken"
    env = {
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civ.url,
        "HF_TOKEN": HF_TOKEN,
        "CIVITAI_API_TOKEN": CIVITAI_TOKEN,
    }
    run = doctor(env=env)
    assert run.code == 1, run.stderr
    hub_host, civ_host = hub.url.removeprefix("http://"), civ.url.removeprefix("http://")
    assert f"fail Hugging Face token: HF_TOKEN is not accepted by {hub_host} (HTTP 401)" in (
        run.stderr
    )
    assert f"fix: create a new token at {hub.url}/settings/tokens" in run.stderr
    assert f"fail Civitai token: CIVITAI_API_TOKEN is not accepted by {civ_host}" in run.stderr
    assert "ok   Hugging Face endpoint" in run.stderr  # it answered; the token is the problem
    assert_no_secret(run)


def test_doctor_without_tokens_is_fine_for_public_models(
    hubs: tuple[FakeHub, FakeCivitai],
) -> None:
    hub, civ = hubs
    run = doctor(env={"HF_ENDPOINT": hub.url, "CIVITAI_ENDPOINT": civ.url})
    assert run.code == 0, run.stderr
    assert "ok   Hugging Face token: not set: public repos only" in run.stderr
    assert "ok   Civitai token: not set" in run.stderr
    assert all("authorization" not in r.headers for r in hub.requests + civ.requests)


def test_doctor_fails_naming_an_endpoint_that_does_not_answer(
    hubs: tuple[FakeHub, FakeCivitai],
) -> None:
    hub, _ = hubs
    port = closed_port()
    env = {
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": f"http://127.0.0.1:{port}",
        "CIVITAI_TOKEN": CIVITAI_TOKEN,
    }
    run = doctor(env=env)
    assert run.code == 1, run.stderr
    assert (
        f"fail Civitai endpoint: cannot reach 127.0.0.1:{port} (connection refused)" in run.stderr
    )
    assert "fix: nothing listens at" in run.stderr and "CIVITAI_ENDPOINT" in run.stderr
    assert "warn Civitai token: CIVITAI_TOKEN is set but was not checked" in run.stderr
    assert "ok   Hugging Face endpoint" in run.stderr
    assert_no_secret(run)

    run = doctor(env={"HF_ENDPOINT": "http://hub.doctor-test.invalid", "CIVITAI_ENDPOINT": hub.url})
    assert run.code == 1, run.stderr
    assert (
        "fail Hugging Face endpoint: cannot reach hub.doctor-test.invalid (name resolution failed)"
        in run.stderr
    )


def test_doctor_names_a_proxy_that_refuses_without_its_password(
    hubs: tuple[FakeHub, FakeCivitai],
) -> None:
    hub, civ = hubs
    proxy = f"http://user:proxypass@127.0.0.1:{closed_port()}"
    env = {
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civ.url,
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
    }
    run = doctor(env=env)
    assert run.code == 1, run.stderr
    shown = proxy.replace("user:proxypass@", "")
    assert f"fail proxy: proxy {shown} refused or failed the request to" in run.stderr
    assert "fix: check HTTPS_PROXY / HTTP_PROXY / ALL_PROXY" in run.stderr
    assert hub.requests == [] and civ.requests == []  # nothing went around the proxy
    assert_no_secret(run)


def test_doctor_says_the_proxy_lets_requests_through(hubs: tuple[FakeHub, FakeCivitai]) -> None:
    """The fake Hub serves absolute-form requests, so it can stand in for a proxy: the
    endpoints' names do not resolve, only the proxy can reach anything."""
    hub, _ = hubs
    env = {
        "HF_ENDPOINT": "http://hub.doctor-test.invalid",
        "CIVITAI_ENDPOINT": "http://civitai.doctor-test.invalid",
        "HTTP_PROXY": hub.url,
        "HF_TOKEN": HF_TOKEN,
    }
    run = doctor(env=env)
    assert run.code == 0, run.stderr
    assert f"ok   proxy: {hub.url} lets requests to hub.doctor-test.invalid through" in run.stderr
    assert "ok   Hugging Face token: HF_TOKEN is accepted" in run.stderr
    assert hub.requests[0].target == "http://hub.doctor-test.invalid/api/whoami-v2"
    assert_no_secret(run)


def test_doctor_checks_the_root_given_without_a_manifest(
    tmp_path: Path, hubs: tuple[FakeHub, FakeCivitai]
) -> None:
    hub, civ = hubs
    env = {"HF_ENDPOINT": hub.url, "CIVITAI_ENDPOINT": civ.url}
    missing = tmp_path / "typo"
    run = doctor("--root", missing, env=env)
    assert run.code == 1, run.stderr
    assert (
        f"fail root: {missing} (from --root) does not exist; it is created only from "
        "settings.root" in run.stderr
    )
    assert "fix: create it" in run.stderr
    assert not missing.exists()

    run = doctor("--root", tmp_path, env=env)
    assert run.code == 0, run.stderr
    assert f"ok   root: {tmp_path} (from --root): writable" in run.stderr
    assert "free space:" in run.stderr

    run = doctor(env=env | {"MODELSYNC_ROOT": str(missing)})
    assert run.code == 1 and "(from $MODELSYNC_ROOT) does not exist" in run.stderr


def test_doctor_fails_on_missing_aria2c(tmp_path: Path, hubs: tuple[FakeHub, FakeCivitai]) -> None:
    hub, civ = hubs
    env = {
        "MODELSYNC_ARIA2C": str(tmp_path / "no-aria2c"),
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civ.url,
    }
    run = doctor(env=env)
    assert run.code == 1
    assert "fail aria2c" in run.stderr and "MODELSYNC_ARIA2C" in run.stderr
    assert "fix:" in run.stderr
