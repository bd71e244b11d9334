"""Hugging Face and Civitai entries end to end: the real CLI, a real aria2c, the fake Hub and
fake Civitai (each with its CDN on `localhost`, another host name than the API's 127.0.0.1)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.clirun import Run, modelsync
from tests.conftest import blob, write_manifest
from tests.servers import (
    SIGNATURE_MARK,
    CivitaiFile,
    FakeCivitai,
    FakeHub,
    FileServer,
    RequestRecord,
)

MIB = 1 << 20
# Distinctive: any occurrence in output or on disk is a leak, not a coincidence.
HF_TOKEN = "hf_E2ELEAKCHECK_6f1e0b9d4c"
CIV_TOKEN = "civ_E2ELEAKCHECK_2a7c5e3f90"

MODEL = blob(MIB + 11, seed=31)
DATA = blob(300_000, seed=32)
LORA = blob(600_000, seed=33)
EXTRA = blob(70_000, seed=34)
CONFIG = b'{"_class_name": "UNet2DConditionModel"}\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.token = HF_TOKEN
        hub.ungranted_tokens.add("hf_valid_but_not_granted_0d9e")
        hub.lfs_threshold = 1024  # CONFIG stays in git, served by the Hub itself
        hub.add_repo("org/model", {"unet/model.safetensors": MODEL, "config.json": CONFIG})
        hub.add_repo("org/data", {"train.parquet": DATA}, repo_type="dataset")
        hub.add_repo("org/gated", {"w.safetensors": MODEL}, gated=True)
        hub.add_repo("org/private", {"config.json": CONFIG}, private=True)
        yield hub


@pytest.fixture
def civ() -> Iterator[FakeCivitai]:
    with FakeCivitai() as civ:
        civ.token = CIV_TOKEN
        # A non-primary file of another type: the download link selects by type and format.
        civ.add_version(
            101, [("lora.safetensors", LORA), CivitaiFile("a.yaml", EXTRA, type="Config")]
        )
        civ.add_version(202, [("private.safetensors", LORA)], requires_auth=True)
        yield civ


def environment(tmp_path: Path, hub: FakeHub, civ: FakeCivitai, **tokens: str) -> dict[str, str]:
    """Endpoints on the fakes; no token but those given; an empty huggingface_hub home."""
    return {
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civ.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": "",
        "CIVITAI_TOKEN": "",
        "CIVITAI_API_TOKEN": "",
        **tokens,
    }


def apply_json(manifest: Path, env: dict[str, str], *args: str) -> tuple[Run, dict[str, Any]]:
    run = modelsync("apply", manifest, "--json", "--no-progress", *args, env=env)
    return run, json.loads(run.stdout) if run.stdout else {}


def only_entry(doc: dict[str, Any]) -> dict[str, Any]:
    [entry] = doc["entries"]
    assert isinstance(entry, dict)
    return entry


def root_of(tmp_path: Path) -> Path:
    return tmp_path / "models"


def assert_no_leak(tmp_path: Path, run: Run, *secrets: str) -> None:
    """No token in the output, nor in any file modelsync wrote (state.db, tmp/, lock...)."""
    for secret in secrets:
        assert secret not in run.stdout and secret not in run.stderr
    assert SIGNATURE_MARK not in run.stdout and SIGNATURE_MARK not in run.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"{secret} leaked into {path}"


def authorizations(requests: list[RequestRecord]) -> set[str | None]:
    return {r.headers.get("authorization") for r in requests}


def hub_calls(hub: FakeHub) -> list[RequestRecord]:
    """The Hub requests modelsync makes: without huggingface_hub's own telemetry call
    (`GET /api/agent-harnesses`, anonymous, cached a day in HF_HOME)."""
    return [r for r in hub.requests if r.path != "/api/agent-harnesses"]


def leftovers(tmp_path: Path) -> list[str]:
    tmp = root_of(tmp_path) / ".modelsync" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


# -- Hugging Face -----------------------------------------------------------------------------

HF_ENTRIES: list[tuple[Callable[[FakeHub], dict[str, Any]], str, bytes, str]] = [
    (
        lambda hub: {"hf": "org/model", "file": "unet/model.safetensors"},
        "model.safetensors",
        MODEL,
        "/org/model/resolve/main/unet/model.safetensors",
    ),
    (
        lambda hub: {"hf": "datasets/org/data", "file": "train.parquet"},
        "train.parquet",
        DATA,
        "/datasets/org/data/resolve/main/train.parquet",
    ),
    (  # a page link on huggingface.co: /blob/ → /resolve/, ?download=true dropped, rewritten
        lambda hub: {
            "url": "https://huggingface.co/org/model/blob/main/unet/model.safetensors?download=true"
        },
        "model.safetensors",
        MODEL,
        "/org/model/resolve/main/unet/model.safetensors",
    ),
    (  # a link on the HF_ENDPOINT host itself
        lambda hub: {"url": f"{hub.url}/datasets/org/data/blob/main/train.parquet"},
        "train.parquet",
        DATA,
        "/datasets/org/data/resolve/main/train.parquet",
    ),
]


@pytest.mark.parametrize(
    ("fields", "filename", "data", "head_path"),
    HF_ENTRIES,
    ids=["hf-model", "hf-dataset", "blob-url-on-huggingface.co", "url-on-endpoint"],
)
def test_hf_file_downloads_through_the_cdn_and_verifies(
    tmp_path: Path,
    hub: FakeHub,
    civ: FakeCivitai,
    fields: Callable[[FakeHub], dict[str, Any]],
    filename: str,
    data: bytes,
    head_path: str,
) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [{**fields(hub), "dir": "hf"}])
    env = environment(tmp_path, hub, civ, HF_TOKEN=HF_TOKEN)
    run, doc = apply_json(manifest, env)
    assert run.code == 0, run.stderr
    entry = only_entry(doc)
    assert (entry["status"], entry["path"], entry["size"]) == (
        "downloaded",
        f"hf/{filename}",
        len(data),
    )
    assert (root_of(tmp_path) / "hf" / filename).read_bytes() == data
    assert "unpinned" not in run.stderr and "no sha256" not in run.stderr  # LFS sha256 pins it
    # Metadata from the Hub (with the token), bytes from the CDN (without it).
    assert head_path in [r.path for r in hub_calls(hub) if r.method == "HEAD"]
    assert authorizations(hub_calls(hub)) == {f"Bearer {HF_TOKEN}"}
    assert hub.cdn.bytes_served() >= len(data)
    assert authorizations(hub.cdn.requests) == {None}
    assert_no_leak(tmp_path, run, HF_TOKEN)

    hub.reset_log()
    hub.cdn.reset_log()
    run, doc = apply_json(manifest, env)
    assert (run.code, only_entry(doc)["status"]) == (0, "ok")
    assert hub.cdn.requests == []  # in sync: metadata at most, never content


def test_hf_published_sha256_rejects_corrupt_bytes(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai
) -> None:
    hub.cdn.faults.corrupt_at = 500_007
    manifest = write_manifest(
        tmp_path / "models.toml", [{"hf": "org/model", "file": "unet/model.safetensors"}]
    )
    run, doc = apply_json(manifest, environment(tmp_path, hub, civ))
    assert run.code == 1
    entry = only_entry(doc)
    assert entry["status"] == "failed" and f"sha256 expected {sha(MODEL)}" in entry["error"]
    assert not (root_of(tmp_path) / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("token_from", ["HF_TOKEN", "stored token"])
def test_private_file_served_by_the_hub_gets_the_token(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai, token_from: str
) -> None:
    """A small file kept in git is served by the Hub itself: aria2 needs the header there."""
    env = environment(tmp_path, hub, civ)
    if token_from == "HF_TOKEN":
        env["HF_TOKEN"] = HF_TOKEN
    else:  # huggingface_hub's stored token (`hf auth login`), under HF_HOME
        (tmp_path / "hf-home").mkdir()
        (tmp_path / "hf-home" / "token").write_text(HF_TOKEN)
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"hf": "org/private", "file": "config.json", "dir": "cfg", "name": "cfg"}],
    )
    run, doc = apply_json(manifest, env)
    assert run.code == 0, run.stderr
    assert only_entry(doc)["status"] == "downloaded"
    assert (root_of(tmp_path) / "cfg/config.json").read_bytes() == CONFIG
    assert "cfg: no sha256" in run.stderr  # a git file publishes no sha256: unpinned
    gets = [r for r in hub_calls(hub) if r.method == "GET"]
    assert gets and authorizations(gets) == {f"Bearer {HF_TOKEN}"}  # aria2, on the Hub
    assert hub.cdn.requests == []
    assert_no_leak(root_of(tmp_path), run, HF_TOKEN)  # tmp_path/hf-home holds the stored one


@pytest.mark.parametrize(
    ("token", "message", "hint"),
    [
        ("", "no Hugging Face token is set", "then set HF_TOKEN"),
        ("hf_valid_but_not_granted_0d9e", "your token has no access", "with the account"),
    ],
    ids=["no-token", "ungranted-token"],
)
def test_gated_repo_fails_with_advice(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai, token: str, message: str, hint: str
) -> None:
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"hf": "org/gated", "file": "w.safetensors", "name": "gated-unet", "dir": "unet"},
            {"hf": "org/model", "file": "config.json", "dir": "cfg"},
        ],
    )
    env = environment(tmp_path, hub, civ, HF_TOKEN=token)
    run, doc = apply_json(manifest, env)
    assert run.code == 1
    by_name = {e["name"]: e for e in doc["entries"]}
    assert by_name["config.json"]["status"] == "downloaded"  # the others still go on
    failed = by_name["gated-unet"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("gated-unet: org/gated is a gated repository")
    assert message in failed["error"] and hint in failed["error"]
    assert f"accept the license on {hub.url}/org/gated" in run.stderr
    assert "Traceback" not in run.stderr
    assert hub.cdn.requests == []
    assert not (root_of(tmp_path) / "unet").exists()
    if token:
        assert_no_leak(tmp_path, run, token)


def test_wrong_revision_is_a_clear_error(tmp_path: Path, hub: FakeHub, civ: FakeCivitai) -> None:
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"hf": "org/model", "file": "unet/model.safetensors", "revision": "v9.9"}],
    )
    run = modelsync("plan", manifest, env=environment(tmp_path, hub, civ))
    assert run.code == 1
    assert "model.safetensors: revision 'v9.9' not found in org/model" in run.stderr
    assert "fix `revision`" in run.stderr
    assert "Traceback" not in run.stderr


def test_plan_asks_the_hub_and_civitai_api_never_a_cdn(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai
) -> None:
    manifest = write_manifest(
        tmp_path / "models.toml",
        [
            {"hf": "org/model", "file": "unet/model.safetensors", "dir": "unet"},
            {"civitai": 202, "dir": "loras"},
        ],
    )
    env = environment(tmp_path, hub, civ, HF_TOKEN=HF_TOKEN, CIVITAI_TOKEN=CIV_TOKEN)
    run = modelsync("plan", manifest, "--json", env=env)
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    sizes = {e["path"]: (e["action"], e["size"]) for e in doc["entries"]}
    assert sizes == {
        "unet/model.safetensors": ("download", len(MODEL)),
        "loras/private.safetensors": ("download", len(LORA)),  # sizeKB: an estimate
    }
    assert [r.method for r in hub_calls(hub)] == ["HEAD"]
    assert [r.path for r in civ.requests] == ["/api/v1/model-versions/202"]
    assert hub.cdn.requests == [] and civ.cdn.requests == []
    assert not root_of(tmp_path).exists()


# -- Civitai ----------------------------------------------------------------------------------

CIVITAI_ENTRIES: list[tuple[Callable[[FakeCivitai], dict[str, Any]], str, bytes]] = [
    (lambda civ: {"civitai": 202}, "private.safetensors", LORA),
    (lambda civ: {"civitai": 101, "file": "a.yaml"}, "a.yaml", EXTRA),
    (
        lambda civ: {
            "url": "https://civitai.com/models/77/some-lora?modelVersionId=202",
            "name": "lora",
        },
        "private.safetensors",
        LORA,
    ),
    (
        lambda civ: {"url": f"{civ.url}/api/download/models/202", "name": "lora"},
        "private.safetensors",
        LORA,
    ),
]


@pytest.mark.parametrize(
    ("fields", "filename", "data"),
    CIVITAI_ENTRIES,
    ids=["version-id", "non-primary-file", "model-page-url", "download-url"],
)
def test_civitai_downloads_via_the_signed_cdn_redirect(
    tmp_path: Path,
    hub: FakeHub,
    civ: FakeCivitai,
    fields: Callable[[FakeCivitai], dict[str, Any]],
    filename: str,
    data: bytes,
) -> None:
    manifest = write_manifest(tmp_path / "models.toml", [{**fields(civ), "dir": "loras"}])
    env = environment(tmp_path, hub, civ, CIVITAI_TOKEN=CIV_TOKEN)
    run, doc = apply_json(manifest, env)
    assert run.code == 0, run.stderr
    entry = only_entry(doc)
    assert (entry["status"], entry["path"]) == ("downloaded", f"loras/{filename}")
    assert (root_of(tmp_path) / "loras" / filename).read_bytes() == data
    assert "unpinned" not in run.stderr and "no sha256" not in run.stderr  # SHA256 published
    downloads = [r for r in civ.requests if r.path.startswith("/api/download/")]
    assert downloads and authorizations(civ.requests) == {f"Bearer {CIV_TOKEN}"}
    assert civ.cdn.bytes_served() >= len(data)
    assert authorizations(civ.cdn.requests) == {None}
    assert_no_leak(tmp_path, run, CIV_TOKEN)


@pytest.mark.parametrize("mode", ["login-redirect", "html", "401"])
def test_civitai_login_wall_is_an_auth_error_not_a_model(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai, mode: str
) -> None:
    civ.auth_failure = mode  # type: ignore[assignment]
    manifest = write_manifest(
        tmp_path / "models.toml", [{"civitai": 202, "dir": "loras", "name": "style-lora"}]
    )
    run, doc = apply_json(manifest, environment(tmp_path, hub, civ))
    assert run.code == 1
    entry = only_entry(doc)
    assert entry["status"] == "failed"
    assert entry["error"].startswith("style-lora: Civitai requires a login")
    assert "CIVITAI_TOKEN" in entry["error"] and "civitai.com/user/account" in entry["error"]
    assert "Traceback" not in run.stderr
    loras = root_of(tmp_path) / "loras"
    assert not loras.exists() or list(loras.iterdir()) == []
    # Nothing was fetched: at most the executor's small `.want` note is left in tmp/.
    assert [p for p in leftovers(tmp_path) if not p.endswith(".want")] == []
    assert civ.cdn.requests == []


def test_civitai_refused_token_is_named_never_shown(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai
) -> None:
    wrong = "civ_WRONGKEY_E2E_51f0c2"
    manifest = write_manifest(tmp_path / "models.toml", [{"civitai": 202, "name": "lora"}])
    run, doc = apply_json(manifest, environment(tmp_path, hub, civ, CIVITAI_API_TOKEN=wrong))
    assert run.code == 1
    assert "refused the API key in CIVITAI_API_TOKEN" in only_entry(doc)["error"]
    assert_no_leak(tmp_path, run, wrong)


# -- signed URLs expire -----------------------------------------------------------------------


def first_url_born_expired(cdn: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first URL the CDN signs is already expired (403), as if it had aged mid-run."""
    sign = cdn.signed_url
    count = itertools.count()

    def signed_url(path: str, *, ttl: float = 3600.0, filename: str | None = None) -> str:
        return sign(path, ttl=-1.0 if next(count) == 0 else ttl, filename=filename)

    monkeypatch.setattr(cdn, "signed_url", signed_url)


def signature(record: RequestRecord) -> str:
    return parse_qs(record.query).get("X-Amz-Signature", [""])[0]


@pytest.mark.parametrize("source", ["hf", "civitai"])
def test_expired_signed_url_is_resolved_again_on_retry(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    entry: dict[str, Any]
    if source == "hf":
        cdn, entry = hub.cdn, {"hf": "org/model", "file": "unet/model.safetensors"}
        filename, data = "model.safetensors", MODEL
    else:
        cdn, entry = civ.cdn, {"civitai": 202}
        filename, data = "private.safetensors", LORA
    first_url_born_expired(cdn, monkeypatch)
    manifest = write_manifest(tmp_path / "models.toml", [{**entry, "dir": "m"}])
    env = environment(tmp_path, hub, civ, HF_TOKEN=HF_TOKEN, CIVITAI_TOKEN=CIV_TOKEN)
    run, doc = apply_json(manifest, env)
    assert run.code == 0, run.stderr
    assert only_entry(doc)["status"] == "downloaded"
    assert (root_of(tmp_path) / "m" / filename).read_bytes() == data
    expired = [r for r in cdn.requests if r.status == 403]
    served = [r for r in cdn.requests if r.status in (200, 206)]
    assert expired and served
    assert {signature(r) for r in expired}.isdisjoint({signature(r) for r in served})
    if source == "hf":  # the Hub was asked again for a fresh CDN URL
        assert len([r for r in hub_calls(hub) if r.method == "HEAD"]) >= 2
    else:  # the download URL was walked again
        assert len([r for r in civ.requests if r.path == "/api/download/models/202"]) >= 2
    assert_no_leak(tmp_path, run, HF_TOKEN, CIV_TOKEN)


def test_token_given_to_aria2_never_shows_in_its_command_line(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai
) -> None:
    """The one case where aria2 carries the token (a git file on the Hub): over RPC only."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **environment(tmp_path, hub, civ), "HF_TOKEN": HF_TOKEN}
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"hf": "org/private", "file": "config.json", "dir": "cfg", "name": "cfg"}],
    )
    hub.faults.first_byte_delay = 1.0  # hold aria2's request open while we look at it
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelsync", "apply", str(manifest), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert hub.wait_until(
            lambda: any("aria2" in r.headers.get("user-agent", "") for r in hub.requests), 60
        )
        pid = int((root_of(tmp_path) / ".modelsync" / "aria2.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "aria2c" in cmdline and HF_TOKEN not in cmdline
        assert "rpc-secret" not in cmdline  # the RPC secret is in a deleted 0600 file
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert HF_TOKEN not in out + err


def test_two_civitai_versions_with_one_file_name_do_not_fight(
    tmp_path: Path, hub: FakeHub, civ: FakeCivitai
) -> None:
    """Civitai names files only after resolution: two entries meeting at one path."""
    civ.add_version(303, [("lora.safetensors", EXTRA)])
    manifest = write_manifest(
        tmp_path / "models.toml",
        [{"civitai": 101, "dir": "loras"}, {"civitai": 303, "dir": "loras"}],
    )
    run, doc = apply_json(manifest, environment(tmp_path, hub, civ))
    assert run.code == 1, run.stderr
    statuses = {e["name"]: e["status"] for e in doc["entries"]}
    assert statuses == {"civitai-101": "downloaded", "civitai-303": "failed"}
    [failed] = [e for e in doc["entries"] if e["status"] == "failed"]
    assert "resolves to loras/lora.safetensors, the file of civitai-101" in failed["error"]
    assert (root_of(tmp_path) / "loras/lora.safetensors").read_bytes() == LORA
