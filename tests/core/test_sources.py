"""Sources in process: URL rewriting (tables), dispatch, and resolve/locate against the fake
Hugging Face Hub and fake Civitai (errors, caching, tokens kept to their own host)."""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelsync.errors import SourceError
from modelsync.manifest import Entry, Settings
from modelsync.sources import SourceContext, locate, needs_network, resolve, source_of
from modelsync.sources.civitai import CivitaiRef, parse_civitai_url
from modelsync.sources.http import origin
from modelsync.sources.huggingface import canonical_url, parse_hub_url, parse_repo
from tests.conftest import blob
from tests.servers import SIGNATURE_MARK, FakeCivitai, FakeHub

HF_TOKEN = "hf_UNITLEAK_9d2c41f7aa"
CIV_TOKEN = "civ_UNITLEAK_73be0c55d1"
END = "http://127.0.0.1:9"  # an HF_ENDPOINT for the pure tests (never contacted)

# -- Hugging Face links (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        (
            "https://huggingface.co/org/repo/blob/main/unet/model.safetensors?download=true",
            {},
            "https://huggingface.co/org/repo/resolve/main/unet/model.safetensors",
        ),
        (
            "https://huggingface.co/org/repo/resolve/main/model.safetensors?download=true",
            {"HF_ENDPOINT": END + "/"},
            END + "/org/repo/resolve/main/model.safetensors",
        ),
        (
            "https://huggingface.co/datasets/org/data/blob/v1.0/train/part%200.parquet",
            {"HF_ENDPOINT": END},
            END + "/datasets/org/data/resolve/v1.0/train/part%200.parquet",
        ),
        (
            "https://hf.co/org/repo/raw/main/config.json",
            {},
            "https://huggingface.co/org/repo/resolve/main/config.json",
        ),
        (
            "https://huggingface.co/org/repo/blob/refs%2Fpr%2F1/a.bin",
            {},
            "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/a.bin",
        ),
        (  # a legacy repo id without an organisation
            "https://huggingface.co/gpt2/resolve/main/config.json",
            {},
            "https://huggingface.co/gpt2/resolve/main/config.json",
        ),
        (  # a repo named like a link keyword
            "https://huggingface.co/org/blob/blob/main/x.bin",
            {},
            "https://huggingface.co/org/blob/resolve/main/x.bin",
        ),
        (  # a link on the HF_ENDPOINT host itself
            END + "/org/repo/blob/main/x.bin",
            {"HF_ENDPOINT": END},
            END + "/org/repo/resolve/main/x.bin",
        ),
        ("https://example.com/org/repo/blob/main/x.bin", {}, None),
        ("https://cdn-lfs.huggingface.co/repos/ab/cd/abcd?X-Amz-Signature=s", {}, None),
        ("http://127.0.0.1:10/org/repo/resolve/main/x.bin", {"HF_ENDPOINT": END}, None),
    ],
)
def test_hub_links_are_rewritten_to_resolve_urls(
    url: str, env: dict[str, str], expected: str | None
) -> None:
    assert canonical_url(url, env) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://huggingface.co/org/repo",
        "https://huggingface.co/org/repo/tree/main/unet",
        "https://huggingface.co/org/repo/resolve/main/",
        "https://huggingface.co/org/repo/resolve/main",
        "https://huggingface.co/datasets/org",
    ],
)
def test_hub_pages_that_are_not_files_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_hub_url(url)


@pytest.mark.parametrize(
    ("hf", "expected"),
    [
        ("org/name", ("model", "org/name")),
        ("datasets/org/name", ("dataset", "org/name")),
        ("spaces/org/app", ("space", "org/app")),
        ("gpt2", ("model", "gpt2")),
        ("/org/name/", ("model", "org/name")),
    ],
)
def test_hf_repo_ids(hf: str, expected: tuple[str, str]) -> None:
    assert parse_repo(hf) == expected


def test_parsed_hub_link_keeps_repo_type_revision_and_path() -> None:
    ref = parse_hub_url("https://huggingface.co/datasets/org/data/blob/v2/a/b%20c.csv")
    assert (ref.repo_type, ref.repo_id, ref.revision, ref.path) == (
        "dataset",
        "org/data",
        "v2",
        "a/b c.csv",
    )


# -- Civitai links (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://civitai.com/models/4201?modelVersionId=130072", CivitaiRef(130072)),
        (
            "https://civitai.com/models/4201/realistic-vision?modelVersionId=130072&x=1",
            CivitaiRef(130072),
        ),
        ("https://civitai.com/api/download/models/128713", CivitaiRef(128713)),
        (
            "https://civitai.com/api/download/models/128713?type=Config&format=Other",
            CivitaiRef(128713, type="Config", format="Other"),
        ),
    ],
)
def test_civitai_links(url: str, expected: CivitaiRef) -> None:
    assert parse_civitai_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://civitai.com/models/4201",  # no version: not pinned
        "https://civitai.com/models/4201?modelVersionId=abc",
        "https://civitai.com/api/download/models/",
        "https://civitai.com/images/123",
    ],
)
def test_civitai_links_without_a_version_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_civitai_url(url)


@pytest.mark.parametrize(
    ("fields", "env", "expected"),
    [
        ({"url": "https://example.com/a.bin"}, {}, "url"),
        ({"url": "https://huggingface.co/o/r/resolve/main/a.bin"}, {}, "hf"),
        ({"url": END + "/o/r/resolve/main/a.bin"}, {"HF_ENDPOINT": END}, "hf"),
        ({"url": END + "/o/r/resolve/main/a.bin"}, {}, "url"),
        ({"url": "https://civitai.com/api/download/models/1", "filename": "a.bin"}, {}, "civitai"),
        ({"url": "https://www.civitai.com/models/1?modelVersionId=2", "name": "m"}, {}, "civitai"),
        ({"hf": "o/r", "file": "a.bin"}, {}, "hf"),
        ({"civitai": 5}, {}, "civitai"),
    ],
)
def test_dispatch(fields: dict[str, Any], env: dict[str, str], expected: str) -> None:
    entry = Entry(**fields)
    assert source_of(entry, env) == expected
    assert needs_network(entry, env) == (expected != "url")


def test_origin_makes_default_ports_explicit() -> None:
    assert origin("https://Huggingface.co/x") == origin("https://huggingface.co:443/y")
    assert origin("http://localhost:80/") != origin("http://127.0.0.1/")
    assert origin("http://127.0.0.1:1/") != origin("http://127.0.0.1:2/")


# -- Hugging Face against the fake Hub ------------------------------------------------------------

MODEL = blob(300_000, seed=11)
SMALL = b'{"architectures": ["Test"]}'


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.token = HF_TOKEN
        hub.ungranted_tokens.add("hf_valid_but_not_granted")
        hub.lfs_threshold = 1024  # SMALL stays in git (no sha256), MODEL is LFS
        hub.add_repo("org/model", {"unet/model.safetensors": MODEL, "config.json": SMALL})
        hub.add_repo("org/gated", {"w.safetensors": MODEL}, gated=True)
        hub.add_repo("org/private", {"config.json": SMALL}, private=True)
        yield hub


@pytest.fixture(autouse=True)
def stored_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where huggingface_hub looks for a stored token: an empty temp dir, not the machine's.

    Telemetry off: huggingface_hub would otherwise fetch its agent registry from the
    endpoint it read at import (huggingface.co in this process) and cache it in HF_HOME.
    """
    import huggingface_hub.constants

    path = tmp_path / "hf-home" / "token"
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    return path


def hf_ctx(hub: FakeHub, **env: str) -> SourceContext:
    return SourceContext(Settings(), {"HF_ENDPOINT": hub.url, **env})


def heads(hub: FakeHub) -> list[str]:
    return [r.path for r in hub.requests if r.method == "HEAD"]


def test_hf_lfs_file_resolves_to_commit_size_and_sha256(hub: FakeHub) -> None:
    ctx = hf_ctx(hub)
    remote = resolve(Entry(hf="org/model", file="unet/model.safetensors"), ctx)
    commit = hub.repos[("model", "org/model")].branches["main"]
    assert (remote.commit, remote.size, remote.size_is_exact) == (commit, len(MODEL), True)
    assert remote.sha256 == hashlib.sha256(MODEL).hexdigest()
    assert remote.filename == "model.safetensors"
    # The origin URL is pinned to the commit and carries no signature and no header.
    assert remote.urls == (hub.resolve_url("org/model", "unet/model.safetensors", commit),)
    assert remote.headers == ()
    assert hub.cdn.requests == []  # metadata only: the CDN is never asked


def test_hf_git_file_has_no_sha256(hub: FakeHub) -> None:
    remote = resolve(Entry(hf="org/model", file="config.json"), hf_ctx(hub))
    assert (remote.size, remote.sha256) == (len(SMALL), None)  # its etag is a git sha1


def test_hf_locate_hands_the_cdn_url_without_headers(hub: FakeHub) -> None:
    ctx = hf_ctx(hub, HF_TOKEN=HF_TOKEN)
    entry = Entry(hf="org/model", file="unet/model.safetensors", mirrors=("http://m.lan/a",))
    located = locate(entry, ctx)
    assert located.urls[0].startswith(hub.cdn.url) and SIGNATURE_MARK in located.urls[0]
    assert located.urls[1:] == ("http://m.lan/a",)
    assert located.headers == ()
    assert all(r.headers.get("authorization") == f"Bearer {HF_TOKEN}" for r in hub.requests)


def test_hf_file_served_by_the_hub_gets_the_token_and_no_foreign_mirror(hub: FakeHub) -> None:
    ctx = hf_ctx(hub, HF_TOKEN=HF_TOKEN)
    entry = Entry(hf="org/private", file="config.json", mirrors=("http://m.lan/c",))
    located = locate(entry, ctx)
    commit = hub.repos[("model", "org/private")].branches["main"]
    assert located.urls == (hub.resolve_url("org/private", "config.json", commit),)
    assert located.headers == (("Authorization", f"Bearer {HF_TOKEN}"),)
    public = locate(Entry(hf="org/model", file="config.json"), hf_ctx(hub))
    assert public.headers == ()  # no token: no header at all


def test_stored_token_is_used_without_hf_token(hub: FakeHub, stored_token: Path) -> None:
    stored_token.parent.mkdir(parents=True)
    stored_token.write_text(HF_TOKEN + "\n")
    ctx = hf_ctx(hub)
    located = locate(Entry(hf="org/private", file="config.json"), ctx)
    assert located.headers == (("Authorization", f"Bearer {HF_TOKEN}"),)
    assert HF_TOKEN in ctx.secrets  # redacted like the environment's tokens
    assert ctx.redact(f"oops {HF_TOKEN}") == "oops ***"


def test_resolve_is_cached_and_locate_reuses_its_head(hub: FakeHub) -> None:
    ctx = hf_ctx(hub)
    entry = Entry(hf="org/model", file="unet/model.safetensors")
    first = resolve(entry, ctx)
    assert resolve(entry, ctx) is first
    located = locate(entry, ctx)
    assert len(heads(hub)) == 1
    assert locate(entry, ctx) is located
    assert len(heads(hub)) == 1
    fresh = locate(entry, ctx, fresh=True)
    assert len(heads(hub)) == 2
    assert fresh.urls[0] != located.urls[0]  # a newly signed URL
    resolve(entry, ctx, fresh=True)
    assert len(heads(hub)) == 3


def test_fresh_locate_stays_on_the_resolved_commit(hub: FakeHub) -> None:
    ctx = hf_ctx(hub)
    entry = Entry(hf="org/model", file="unet/model.safetensors")
    remote = resolve(entry, ctx)
    hub.add_repo("org/model", {"unet/model.safetensors": b"new bytes" * 200})  # main moves
    located = locate(entry, ctx, fresh=True)
    assert heads(hub)[-1] == f"/org/model/resolve/{remote.commit}/unet/model.safetensors"
    assert hashlib.sha256(MODEL).hexdigest() in located.urls[0]  # the CDN path of the old bytes


def test_hf_url_entry_pinned_by_a_lock_revision(hub: FakeHub) -> None:
    """lockfile.source_entry sets `revision` on url entries served by the Hub."""
    commit = hub.repos[("model", "org/model")].branches["main"]
    url = "https://huggingface.co/org/model/blob/main/config.json?download=true"
    entry = Entry(url=url).model_copy(update={"revision": commit})
    resolve(entry, hf_ctx(hub))
    assert heads(hub) == [f"/org/model/resolve/{commit}/config.json"]


def hf_error(entry: Entry, ctx: SourceContext) -> SourceError:
    with pytest.raises(SourceError) as info:
        resolve(entry, ctx)
    exc = info.value
    # Raised `from None`: a traceback would not show the library's exception (URLs, headers).
    assert exc.__cause__ is None and exc.__suppress_context__
    text = str(exc) + "".join(traceback.format_exception(exc))
    assert HF_TOKEN not in text and "Traceback" not in str(exc)
    assert exc.exit_code == 1
    return exc


@pytest.mark.parametrize(
    ("fields", "token", "message", "hint"),
    [
        (
            {"hf": "org/gated", "file": "w.safetensors", "name": "gated"},
            "",
            "gated: org/gated is a gated repository and no Hugging Face token is set",
            "accept the license on {hub}/org/gated, then set HF_TOKEN",
        ),
        (
            {"hf": "org/gated", "file": "w.safetensors", "name": "gated"},
            "hf_valid_but_not_granted",
            "your token has no access",
            "accept the license on {hub}/org/gated",
        ),
        (
            {"hf": "org/missing", "file": "a.bin"},
            "",
            "a.bin: repository org/missing not found",
            "set HF_TOKEN",
        ),
        (
            {"hf": "org/private", "file": "config.json"},
            "",
            "repository org/private not found",
            "if it is private, set HF_TOKEN",
        ),
        (
            {"hf": "org/model", "file": "unet/model.safetensors", "revision": "v9"},
            "",
            "model.safetensors: revision 'v9' not found in org/model",
            "fix `revision`",
        ),
        (
            {"hf": "org/model", "file": "unet/nope.safetensors"},
            "",
            "file 'unet/nope.safetensors' not found in org/model at revision 'main'",
            "check `file`",
        ),
        (
            {"hf": "org/model", "file": "config.json"},
            "hf_invalid_token_1234",
            "rejected the Hugging Face token (401)",
            "invalid or expired",
        ),
    ],
    ids=["gated", "gated-ungranted", "missing", "private", "revision", "file", "bad-token"],
)
def test_hf_errors_say_what_to_do(
    hub: FakeHub, fields: dict[str, Any], token: str, message: str, hint: str
) -> None:
    exc = hf_error(Entry(**fields), hf_ctx(hub, HF_TOKEN=token))
    assert message in exc.message
    assert hint.format(hub=hub.url) in exc.hint
    if token:
        assert token not in str(exc)


def test_hf_unreachable_endpoint() -> None:
    with FakeHub() as down:
        url = down.url
    ctx = SourceContext(Settings(), {"HF_ENDPOINT": url, "HF_TOKEN": HF_TOKEN})
    exc = hf_error(Entry(hf="org/model", file="a.bin"), ctx)
    assert f"cannot reach {url.removeprefix('http://')}" in exc.message
    assert "HF_ENDPOINT" in exc.hint


def test_hf_page_link_is_a_source_error() -> None:
    entry = Entry(url="https://huggingface.co/org/repo/tree/main/unet", filename="x.bin")
    with pytest.raises(SourceError, match="Hugging Face page, not a file"):
        resolve(entry, SourceContext(Settings(), {}))


# -- Civitai against the fake API ---------------------------------------------------------------

LORA = blob(200_000, seed=21)
EXTRA = blob(5_000, seed=22)


@pytest.fixture
def civ() -> Iterator[FakeCivitai]:
    with FakeCivitai() as civ:
        civ.token = CIV_TOKEN
        civ.add_version(101, [("lora.safetensors", LORA), ("extra.safetensors", EXTRA)])
        civ.add_version(202, [("private.safetensors", LORA)], requires_auth=True)
        yield civ


def civ_ctx(civ: FakeCivitai, **env: str) -> SourceContext:
    return SourceContext(Settings(), {"CIVITAI_ENDPOINT": civ.url, **env})


def civ_error(entry: Entry, ctx: SourceContext, *, located: bool = False) -> SourceError:
    with pytest.raises(SourceError) as info:
        (locate if located else resolve)(entry, ctx)
    exc = info.value
    assert exc.__cause__ is None and exc.__suppress_context__
    assert CIV_TOKEN not in str(exc) and exc.exit_code == 1
    return exc


def test_civitai_resolves_the_primary_file(civ: FakeCivitai) -> None:
    remote = resolve(Entry(civitai=101), civ_ctx(civ))
    assert remote.filename == "lora.safetensors"
    assert remote.sha256 == hashlib.sha256(LORA).hexdigest()  # published upper case
    assert remote.size == len(LORA) and not remote.size_is_exact
    assert remote.urls == (civ.download_url(101),) and remote.headers == ()
    assert [r.path for r in civ.requests] == ["/api/v1/model-versions/101"]


def test_civitai_file_picks_another_file(civ: FakeCivitai) -> None:
    remote = resolve(Entry(civitai=101, file="extra.safetensors"), civ_ctx(civ))
    assert remote.filename == "extra.safetensors"
    assert remote.sha256 == hashlib.sha256(EXTRA).hexdigest()
    exc = civ_error(Entry(civitai=101, file="nope.bin"), civ_ctx(civ))
    assert "has no file 'nope.bin'" in exc.message
    assert "'lora.safetensors', 'extra.safetensors'" in exc.hint


def test_civitai_locate_sends_the_token_to_civitai_only(civ: FakeCivitai) -> None:
    located = locate(Entry(civitai=202), civ_ctx(civ, CIVITAI_TOKEN=CIV_TOKEN))
    assert located.urls[0].startswith(civ.cdn.url) and SIGNATURE_MARK in located.urls[0]
    assert located.headers == ()
    assert {r.headers.get("authorization") for r in civ.requests} == {f"Bearer {CIV_TOKEN}"}
    assert civ.cdn.requests == []  # the signed URL is for aria2; modelsync never fetches it


def test_civitai_api_token_variable_works_too(civ: FakeCivitai) -> None:
    located = locate(Entry(civitai=202), civ_ctx(civ, CIVITAI_API_TOKEN=CIV_TOKEN))
    assert located.urls[0].startswith(civ.cdn.url)


@pytest.mark.parametrize("mode", ["login-redirect", "html", "401"])
def test_civitai_login_wall_is_an_auth_error(civ: FakeCivitai, mode: str) -> None:
    civ.auth_failure = mode  # type: ignore[assignment]
    exc = civ_error(Entry(civitai=202, name="priv"), civ_ctx(civ), located=True)
    assert exc.message.startswith("priv: Civitai requires a login to download model version 202")
    assert "civitai.com/user/account" in exc.hint and "CIVITAI_TOKEN" in exc.hint
    assert civ.cdn.requests == []


def test_civitai_wrong_token_is_named_not_shown(civ: FakeCivitai) -> None:
    wrong = "civ_WRONGKEY_0a1b2c3d"
    exc = civ_error(Entry(civitai=202), civ_ctx(civ, CIVITAI_TOKEN=wrong), located=True)
    assert "refused the API key in CIVITAI_TOKEN" in exc.message
    assert wrong not in str(exc)


def test_civitai_unknown_version(civ: FakeCivitai) -> None:
    exc = civ_error(Entry(civitai=999), civ_ctx(civ))
    assert "civitai-999: " in exc.message and "has no model version 999" in exc.message
    assert "version" in exc.hint


def test_civitai_model_page_without_version_is_refused(civ: FakeCivitai) -> None:
    entry = Entry(url="https://civitai.com/models/4201", name="m")
    exc = civ_error(entry, civ_ctx(civ))
    assert "modelVersionId" in exc.message
    assert civ.requests == []
