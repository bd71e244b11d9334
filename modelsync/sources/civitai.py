"""Civitai model versions: the v1 API for metadata, the download redirect for the file.

`GET {CIVITAI_ENDPOINT}/api/v1/model-versions/{id}` names the files of a version with their
size (`sizeKB`, approximate), SHA256 and `downloadUrl`. The download URL answers with a
redirect to a short-lived signed CDN URL; modelsync walks that chain itself, sending the
token (CIVITAI_TOKEN, or CIVITAI_API_TOKEN) only to the Civitai host, and hands aria2 the
CDN URL with no header. A login page (a redirect to /login, or HTML where the file should
be) means the download needs an API key: an authentication error, never a "model".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from modelsync.errors import SourceError, SourceUnreachable
from modelsync.manifest import Entry
from modelsync.redact import host_of
from modelsync.remote import RemoteFile
from modelsync.sources.http import (
    bearer,
    checked_endpoint,
    error_kind,
    origin,
    redirect_target,
)
from modelsync.sources.url import entry_mirrors

if TYPE_CHECKING:
    import requests

    from modelsync.sources import SourceContext

CIVITAI = "https://civitai.com"
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com"})
KEYS_PAGE = "https://civitai.com/user/account"
MAX_HOPS = 5
_MAX_SIZE_KB = 1 << 40  # a PiB: no model file is larger
_REDIRECTS = {301, 302, 303, 307, 308}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class CivitaiRef:
    """A model version, and which of its files (default: the primary one)."""

    version_id: int
    file: str | None = None  # a file name (`file = "..."` in the manifest)
    type: str | None = None  # `?type=` of a download link, e.g. "Config"
    format: str | None = None  # `?format=` of a download link, e.g. "SafeTensor"


def endpoint(env: Mapping[str, str]) -> str:
    """$CIVITAI_ENDPOINT (checked: a malformed one is exit 2), else civitai.com."""
    value = (env.get("CIVITAI_ENDPOINT", "").strip() or CIVITAI).rstrip("/")
    return checked_endpoint("CIVITAI_ENDPOINT", value)


def token_variable(env: Mapping[str, str]) -> str | None:
    """The variable the token comes from: CIVITAI_TOKEN, else CIVITAI_API_TOKEN."""
    for name in ("CIVITAI_TOKEN", "CIVITAI_API_TOKEN"):
        if env.get(name, "").strip():
            return name
    return None


def token(env: Mapping[str, str]) -> str | None:
    name = token_variable(env)
    return env[name].strip() if name else None


def is_civitai_url(url: str, env: Mapping[str, str]) -> bool:
    """On civitai.com or on the $CIVITAI_ENDPOINT origin."""
    where = origin(url)
    return where[1] in CIVITAI_HOSTS or where == origin(endpoint(env))


def parse_civitai_url(url: str) -> CivitaiRef:
    """`/models/<id>[/<slug>]?modelVersionId=<v>` or `/api/download/models/<v>[?type=&format=]`.

    Raises ValueError (with the reason) for any other link.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if segments[:3] == ["api", "download", "models"] and len(segments) == 4:
        if _ID.fullmatch(segments[3]):
            return CivitaiRef(int(segments[3]), type=query.get("type"), format=query.get("format"))
    elif segments[:1] == ["models"] and len(segments) in (2, 3) and _ID.fullmatch(segments[1]):
        version = query.get("modelVersionId", "")
        if _ID.fullmatch(version):
            return CivitaiRef(int(version))
        raise ValueError("a model page without ?modelVersionId=: the version is not pinned")
    raise ValueError("not a model version or download link")


def civitai_ref(entry: Entry, env: Mapping[str, str]) -> CivitaiRef:
    if entry.civitai is not None:
        return CivitaiRef(entry.civitai, file=entry.file)
    assert entry.url is not None
    try:
        return parse_civitai_url(entry.url)
    except ValueError as exc:
        raise SourceError(
            f"{entry.display_name}: {host_of(entry.url)}{urlsplit(entry.url).path}: {exc}",
            "open the version on civitai.com and copy its link (…/models/<id>?modelVersionId=<v>)"
            ", or write civitai = <version id>",
        ) from None


def resolve(entry: Entry, ctx: SourceContext) -> RemoteFile:
    """Name, approximate size, SHA256 and download URL of the chosen file; no download."""
    ref = civitai_ref(entry, ctx.env)
    version = _version(entry, ctx, ref)
    f = _pick_file(entry, ctx, ref, version)
    name = str(f.get("name") or "")
    if entry.filename is None and (not name or "/" in name or "\\" in name or name in {".", ".."}):
        _fail(
            ctx,
            f"{entry.display_name}: Civitai names the file of version {ref.version_id} "
            f"{name!r}, which cannot be used as a file name",
            'set filename = "..." in the entry',
        )
    hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
    published = str((hashes or {}).get("SHA256") or "").lower()
    sha256 = published if _SHA256.fullmatch(published) else None
    size_kb = f.get("sizeKB")
    # An estimate: any number the API sends (Python's json reads Infinity and NaN too)
    # that is not a plausible size is no estimate at all.
    size = None
    if isinstance(size_kb, (int, float)) and 0 < size_kb < _MAX_SIZE_KB:
        size = round(size_kb * 1024)
    download = f.get("downloadUrl") or version.get("downloadUrl")
    if not isinstance(download, str) or not download:
        download = f"{endpoint(ctx.env)}/api/download/models/{ref.version_id}"
    checked = redirect_target(endpoint(ctx.env) + "/", download)
    if checked is None:
        _fail(
            ctx,
            f"{entry.display_name}: Civitai's download link for model version "
            f"{ref.version_id} is not an http(s) URL",
            "check CIVITAI_ENDPOINT" if endpoint(ctx.env) != CIVITAI else "try again later",
        )
    download = checked
    filename = name or entry.filename or f"civitai-{ref.version_id}"
    mirrors = entry_mirrors(entry, ctx.settings, filename=filename, sha256=sha256)
    return RemoteFile(
        urls=tuple(dict.fromkeys([download, *mirrors])),
        mirrors=tuple(m for m in mirrors if m != download),
        filename=filename,
        size=size,
        sha256=sha256,
        size_is_exact=False,
    )


def locate(entry: Entry, ctx: SourceContext, resolved: RemoteFile) -> RemoteFile:
    """Walk the download URL's redirects to the signed CDN URL (the token stays on Civitai)."""
    import requests

    ref = civitai_ref(entry, ctx.env)
    tok = token(ctx.env)
    home = origin(endpoint(ctx.env))
    url, mirrors = resolved.urls[0], resolved.urls[1:]
    for _ in range(MAX_HOPS):
        send = tok if origin(url) == home else None
        try:
            with ctx.session.get(
                url,
                headers=dict(bearer(send)),
                allow_redirects=False,
                stream=True,  # headers only: the body (the file itself) is never read
                timeout=ctx.timeout,
            ) as response:
                status = response.status_code
                location = response.headers.get("Location")
                content_type = response.headers.get("Content-Type", "").lower()
        except requests.RequestException as exc:
            _unreachable(entry, ctx, url, exc)
        except ValueError:  # requests could not even parse the Location it was sent
            _bad_redirect(entry, ctx, ref, url)
        if status in _REDIRECTS and location:
            target = redirect_target(url, location)
            if target is None:
                _bad_redirect(entry, ctx, ref, url)
            if urlsplit(target).path.rstrip("/").endswith("/login"):
                _auth_error(entry, ctx, ref)
            if origin(target)[1] != origin(url)[1]:
                # Another host: the signed CDN URL. aria2 follows any further hops itself.
                # (The same host upgraded to https is followed here: the token is still
                # sent only to the exact Civitai origin.)
                return replace(resolved, urls=tuple(dict.fromkeys([target, *mirrors])), headers=())
            url = target
            continue
        if status == 200 and "text/html" in content_type:
            _auth_error(entry, ctx, ref)  # the login wall, served where the file should be
        if status in (200, 206):
            # Served by Civitai itself: aria2 needs the token, so no mirrors on other hosts.
            headers = bearer(send)
            urls = (url,) if headers else tuple(dict.fromkeys([url, *mirrors]))
            return replace(resolved, urls=urls, headers=headers)
        if status in (401, 403):
            _auth_error(entry, ctx, ref)
        if status == 404:
            _fail(
                ctx,
                f"{entry.display_name}: {host_of(url)} has no download for model version "
                f"{ref.version_id} (404)",
                "the file may have been removed; check the version on civitai.com",
            )
        _fail(
            ctx,
            f"{entry.display_name}: {host_of(url)} answered {status} to the download of model "
            f"version {ref.version_id}",
            "try again later",
        )
    _fail(
        ctx,
        f"{entry.display_name}: more than {MAX_HOPS} redirects from {host_of(resolved.urls[0])} "
        f"for model version {ref.version_id}",
        "try again later; if it persists, the download link is broken",
    )


def latest_version(model_id: int, ctx: SourceContext) -> tuple[int, str | None]:
    """The latest version of a Civitai model, and its name: the first of `modelVersions`
    in `GET /api/v1/models/{id}` (the API lists them newest first)."""
    import requests

    api = f"{endpoint(ctx.env)}/api/v1/models/{model_id}"
    hint = (
        "open the model page, pick a version and copy its link (it ends in "
        "?modelVersionId=<v>), or write civitai:<version id>"
    )
    try:
        with ctx.session.get(
            api,
            headers={"Accept": "application/json", **dict(bearer(token(ctx.env)))},
            timeout=ctx.timeout,
        ) as response:
            status = response.status_code
            doc = response.json() if status == 200 else None
    except (requests.RequestException, ValueError) as exc:
        raise SourceError(
            ctx.redact(
                f"cannot ask {host_of(api)} for the versions of model {model_id}: "
                f"{type(exc).__name__}"
            ),
            hint,
        ) from None
    versions = doc.get("modelVersions") if isinstance(doc, dict) else None
    first = versions[0] if isinstance(versions, list) and versions else None
    first = first if isinstance(first, dict) else {}
    version = first.get("id")
    if status == 404:
        raise SourceError(f"{host_of(api)} has no model {model_id}", hint)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SourceError(
            f"{host_of(api)} answered {status} without a version for model {model_id}", hint
        )
    name = first.get("name")
    return version, name if isinstance(name, str) else None


def version_by_hash(sha256: str, ctx: SourceContext) -> CivitaiRef | None:
    """The model version holding a file with this SHA256, or None when Civitai knows none:
    `GET /api/v1/model-versions/by-hash/{sha256}` (404 for an unknown hash). The ref names
    the file when it is not the version's primary one, which `civitai = <id>` alone would
    download instead.

    Raises SourceUnreachable when the server does not answer, SourceError for an answer
    that is neither the version document nor a 404."""
    import requests

    digest = sha256.strip().lower()
    api = f"{endpoint(ctx.env)}/api/v1/model-versions/by-hash/{digest}"
    where = host_of(api)
    try:
        with ctx.session.get(
            api,
            headers={"Accept": "application/json", **dict(bearer(token(ctx.env)))},
            timeout=ctx.timeout,
        ) as response:
            status = response.status_code
            doc = _json(response) if status == 200 else None
    except requests.RequestException as exc:
        hint = "check the network connection and proxy settings" + (
            f", and CIVITAI_ENDPOINT ({endpoint(ctx.env)})" if endpoint(ctx.env) != CIVITAI else ""
        )
        message = f"cannot reach {where} ({error_kind(exc)})"
        raise SourceUnreachable(ctx.redact(message), ctx.redact(hint), host=where) from None
    if status == 404:
        return None
    if status != 200:
        raise SourceError(f"{where} answered {status} to a lookup by hash", "try again later")
    version = doc.get("id") if isinstance(doc, dict) else None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SourceError(
            f"{where} did not answer a lookup by hash with a model version document",
            "check CIVITAI_ENDPOINT" if endpoint(ctx.env) != CIVITAI else "try again later",
        )
    matched = [
        f
        for f in (files if isinstance(files, list) else [])
        if isinstance(f, dict)
        and isinstance(f.get("hashes"), dict)
        and str(f["hashes"].get("SHA256") or "").lower() == digest
    ]
    if not matched or matched[0].get("primary"):
        return CivitaiRef(version)
    name = matched[0].get("name")
    return CivitaiRef(version, file=name if isinstance(name, str) and name else None)


def _version(entry: Entry, ctx: SourceContext, ref: CivitaiRef) -> dict[str, Any]:
    import requests

    api = f"{endpoint(ctx.env)}/api/v1/model-versions/{ref.version_id}"
    try:
        with ctx.session.get(
            api,
            headers={"Accept": "application/json", **dict(bearer(token(ctx.env)))},
            timeout=ctx.timeout,
        ) as response:
            status = response.status_code
            doc = _json(response) if status == 200 else None
    except requests.RequestException as exc:
        _unreachable(entry, ctx, api, exc)
    where = host_of(api)
    if status == 404:
        _fail(
            ctx,
            f"{entry.display_name}: {where} has no model version {ref.version_id}",
            "civitai = … takes a model *version* id: the modelVersionId in the model page's "
            "URL, not the model id",
        )
    if status in (401, 403):
        _auth_error(entry, ctx, ref)
    if status != 200:
        _fail(
            ctx,
            f"{entry.display_name}: {where} answered {status} for model version {ref.version_id}",
            "try again later",
        )
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        _fail(
            ctx,
            f"{entry.display_name}: {where} did not answer with a model version document "
            f"for {ref.version_id}",
            "check CIVITAI_ENDPOINT" if endpoint(ctx.env) != CIVITAI else "try again later",
        )
    return doc


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _pick_file(
    entry: Entry, ctx: SourceContext, ref: CivitaiRef, version: dict[str, Any]
) -> dict[str, Any]:
    files = [f for f in version["files"] if isinstance(f, dict)]
    names = ", ".join(repr(f.get("name")) for f in files) or "none"
    if ref.file is not None:
        chosen = [f for f in files if f.get("name") == ref.file] or [
            f for f in files if str(f.get("name", "")).casefold() == ref.file.casefold()
        ]
        if not chosen:
            _fail(
                ctx,
                f"{entry.display_name}: model version {ref.version_id} has no file {ref.file!r}",
                f"set `file` to one of: {names}",
            )
        return chosen[0]
    if ref.type or ref.format:
        chosen = [
            f
            for f in files
            if (f.get("type") == ref.type if ref.type else f.get("primary"))
            and (ref.format is None or (f.get("metadata") or {}).get("format") == ref.format)
        ]
    else:
        chosen = [f for f in files if f.get("primary")] or files[:1]
    if not chosen:
        _fail(
            ctx,
            f"{entry.display_name}: model version {ref.version_id} has no such file",
            f"its files: {names}",
        )
    return chosen[0]


def _bad_redirect(entry: Entry, ctx: SourceContext, ref: CivitaiRef, url: str) -> NoReturn:
    _fail(
        ctx,
        f"{entry.display_name}: {host_of(url)} redirected the download of model version "
        f"{ref.version_id} to something that is not an http(s) URL",
        "try again later; if it persists, the download link is broken",
    )


def _auth_error(entry: Entry, ctx: SourceContext, ref: CivitaiRef) -> NoReturn:
    variable = token_variable(ctx.env)
    if variable is None:
        _fail(
            ctx,
            f"{entry.display_name}: Civitai requires a login to download model version "
            f"{ref.version_id} (it answered with its sign-in page, not the file)",
            f"create an API key at {KEYS_PAGE} (API Keys), then set CIVITAI_TOKEN to it",
        )
    _fail(
        ctx,
        f"{entry.display_name}: Civitai refused the API key in {variable} for model version "
        f"{ref.version_id} (it answered with its sign-in page, not the file)",
        f"the key may be expired or mistyped: create a new one at {KEYS_PAGE} and set "
        "CIVITAI_TOKEN to it",
    )


def _unreachable(entry: Entry, ctx: SourceContext, url: str, exc: Exception) -> NoReturn:
    # "connection refused", "name resolution failed", "timeout": what requests' exception
    # class name (ConnectionError) hides.
    reason = error_kind(exc)
    hint = "check the network connection and proxy settings" + (
        f", and CIVITAI_ENDPOINT ({endpoint(ctx.env)})" if endpoint(ctx.env) != CIVITAI else ""
    )
    message = f"{entry.display_name}: cannot reach {host_of(url)} ({reason})"
    # `from None`: the requests/urllib3 exception behind it may quote URLs and headers.
    raise SourceUnreachable(ctx.redact(message), ctx.redact(hint), host=host_of(url)) from None


def _fail(ctx: SourceContext, message: str, hint: str) -> NoReturn:
    # `from None`: the requests/urllib3 exception behind it may quote URLs and headers.
    raise SourceError(ctx.redact(message), ctx.redact(hint)) from None
