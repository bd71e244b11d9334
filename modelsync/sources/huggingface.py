"""Hugging Face files: metadata through huggingface_hub (one HEAD, never the content).

`get_hf_file_metadata` asks `HEAD {endpoint}/{repo}/resolve/{revision}/{path}` and stops at
the redirect to the CDN: the commit (`X-Repo-Commit`), the LFS sha256 (`X-Linked-Etag`), the
size (`X-Linked-Size`) and the signed CDN URL (`Location`) all come off that one response, and
the token never leaves the Hub. Small files kept in git (not LFS) are served by the Hub itself
and publish no sha256 (their ETag is a git sha1).

The endpoint (`HF_ENDPOINT`) and the token (`HF_TOKEN`, else huggingface_hub's stored token)
are read at call time and passed explicitly: huggingface_hub reads its own globals at import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeGuard, TypeVar
from urllib.parse import unquote, urlsplit

# huggingface_hub pings its endpoint for telemetry on first use; a sync tool must not make
# requests nobody asked for (it reads this at import, so set it before any import of it).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from modelsync.errors import SourceError, SourceUnreachable
from modelsync.manifest import Entry
from modelsync.redact import host_of, redact_urls
from modelsync.remote import RemoteFile, RepoFile, RepoListing
from modelsync.sources.http import (
    bearer,
    checked_endpoint,
    origin,
    redirect_target,
    same_origin,
)
from modelsync.sources.url import entry_mirrors

if TYPE_CHECKING:
    from huggingface_hub import HfFileMetadata

    from modelsync.sources import SourceContext

HUB = "https://huggingface.co"
HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
RepoType = Literal["model", "dataset", "space"]
_PREFIXES: dict[str, RepoType] = {"datasets": "dataset", "spaces": "space"}
_FILE_LINKS = ("resolve", "blob", "raw")  # /blob/ is the page of a file, /raw/ its git blob
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-fA-F]{40}")  # a git object id: a commit, a blob
T = TypeVar("T")


@dataclass(frozen=True)
class HubFile:
    """One file of one repo at one revision."""

    repo_id: str  # "org/name"
    path: str  # path inside the repo
    revision: str = "main"
    repo_type: RepoType = "model"

    @property
    def repo_path(self) -> str:
        """The repo's page path: "org/name", "datasets/org/name"."""
        prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[self.repo_type]
        return prefix + self.repo_id

    def url(self, endpoint: str, revision: str | None = None) -> str:
        """`{endpoint}/{repo}/resolve/{revision}/{path}`, as huggingface_hub builds it."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(
            self.repo_id,
            self.path,
            repo_type=None if self.repo_type == "model" else self.repo_type,
            revision=revision or self.revision,
            endpoint=endpoint,
        )


def endpoint(env: Mapping[str, str]) -> str:
    """$HF_ENDPOINT (checked: a malformed one is exit 2), else huggingface.co."""
    return checked_endpoint("HF_ENDPOINT", (env.get("HF_ENDPOINT", "").strip() or HUB).rstrip("/"))


def is_hub_url(url: str, env: Mapping[str, str]) -> bool:
    """On huggingface.co (hf.co) or on the $HF_ENDPOINT origin."""
    where = origin(url)
    return where[1] in HUB_HOSTS or where == origin(endpoint(env))


def parse_repo(hf: str) -> tuple[RepoType, str]:
    """ "org/name" → model; "datasets/org/name" → dataset; "spaces/org/name" → space."""
    first, _, rest = hf.strip().strip("/").partition("/")
    if first in _PREFIXES and rest:
        return _PREFIXES[first], rest
    return "model", hf.strip().strip("/")


def parse_hub_url(url: str) -> HubFile:
    """A file link on the Hub → the file. Raises ValueError for any other Hub page.

    `/blob/` (the file's page) and `/raw/` become `/resolve/`; the query (`?download=true`)
    is dropped. Path segments are percent-decoded one by one, so a revision like
    `refs%2Fpr%2F1` stays one segment.
    """
    segments = [unquote(s) for s in urlsplit(url).path.split("/")[1:]]
    repo_type: RepoType = "model"
    if segments and segments[0] in _PREFIXES:
        repo_type = _PREFIXES[segments[0]]
        segments = segments[1:]
    # "org/name/resolve/rev/path", or a legacy repo without org: "gpt2/resolve/rev/path"
    for at in (2, 1):
        if len(segments) > at + 2 and segments[at] in _FILE_LINKS and all(segments[:at]):
            path = "/".join(segments[at + 2 :])
            if segments[at + 1] and path and not path.endswith("/"):
                return HubFile("/".join(segments[:at]), path, segments[at + 1], repo_type)
    raise ValueError("not a link to a file")


def canonical_url(url: str, env: Mapping[str, str]) -> str | None:
    """The resolve URL on the endpoint in use for a Hub file link; None when not on the Hub.

    Raises ValueError for a Hub page that is not a file.
    """
    if not is_hub_url(url, env):
        return None
    return parse_hub_url(url).url(endpoint(env))


def hub_file(entry: Entry, env: Mapping[str, str]) -> HubFile:
    """The file an `hf` entry, or a `url` entry on the Hub, points at."""
    if entry.hf is not None:
        assert entry.file is not None  # validated by the manifest
        repo_type, repo_id = parse_repo(entry.hf)
        return HubFile(repo_id, entry.file.strip("/"), entry.revision or "main", repo_type)
    assert entry.url is not None
    try:
        ref = parse_hub_url(entry.url)
    except ValueError:
        raise SourceError(
            f"{entry.display_name}: {host_of(entry.url)}{urlsplit(entry.url).path} is a "
            "Hugging Face page, not a file",
            f"link the file itself: {endpoint(env)}/<org>/<repo>/resolve/<revision>/<path>, "
            'or use hf = "<org>/<repo>" with file = "<path>"',
        ) from None
    # A lock pins url entries served by the Hub to a commit too (see lockfile.source_entry).
    return replace(ref, revision=entry.revision) if entry.revision else ref


def token(ctx: SourceContext) -> str | None:
    """HF_TOKEN (or the legacy HUGGING_FACE_HUB_TOKEN), else huggingface_hub's stored token."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = ctx.env.get(name, "").strip()
        if value:
            return value
    from huggingface_hub import get_token
    from huggingface_hub.errors import OIDCError

    try:
        stored = get_token()
    except (OSError, OIDCError):
        return None
    if stored:
        ctx.extra_secrets.add(stored)
    return stored


def resolve(entry: Entry, ctx: SourceContext) -> RemoteFile:
    """Commit, size and sha256 (LFS) from one HEAD; remembers where the content is now."""
    ref = hub_file(entry, ctx.env)
    hub = endpoint(ctx.env)
    tok = token(ctx)
    meta = _metadata(entry, ctx, ref, ref.revision, tok)
    commit = meta.commit_hash
    etag = (meta.etag or "").lower()
    sha256 = etag if _SHA256.fullmatch(etag) else None  # else a git sha1: not a sha256
    pinned_url = ref.url(hub, commit or ref.revision)
    filename = PurePosixPath(ref.path).name
    mirrors = entry_mirrors(entry, ctx.settings, filename=filename, sha256=sha256)
    resolved = RemoteFile(
        urls=tuple(dict.fromkeys([pinned_url, *mirrors])),
        mirrors=tuple(m for m in mirrors if m != pinned_url),
        filename=filename,
        size=meta.size if _is_size(meta.size) else None,  # a server that is not the Hub
        sha256=sha256,
        commit=commit,
    )
    # The same HEAD told where the content is: the first aria2 add needs no second request.
    ctx.located[entry.display_name] = _located(resolved, meta.location, tok)
    return resolved


def locate(entry: Entry, ctx: SourceContext, resolved: RemoteFile) -> RemoteFile:
    """A fresh CDN URL for the commit `resolved` pinned (the branch may have moved since)."""
    ref = hub_file(entry, ctx.env)
    tok = token(ctx)
    meta = _metadata(entry, ctx, ref, resolved.commit or ref.revision, tok)
    return _located(resolved, meta.location, tok)


def _located(resolved: RemoteFile, location: str, tok: str | None) -> RemoteFile:
    hub_url, mirrors = resolved.urls[0], resolved.urls[1:]
    target = redirect_target(hub_url, location)
    if target is None:  # a server that is not the Hub, or a broken answer
        raise SourceError(
            f"{host_of(hub_url)} sent {resolved.filename} to no http(s) URL", "try again later"
        )
    location = target
    if not same_origin(location, hub_url):
        # A CDN (signed URL): aria2 gets it with no Authorization header at all.
        return replace(resolved, urls=(location, *mirrors), headers=())
    # Served by the Hub itself (files kept in git): the commit-pinned URL, with the token
    # for a private repo. aria2 sends headers to every URL of a download, so mirrors on
    # other hosts are left out when there is a token to send.
    if tok:
        return replace(resolved, urls=(hub_url,), headers=bearer(tok))
    return replace(resolved, headers=())


def _metadata(
    entry: Entry, ctx: SourceContext, ref: HubFile, revision: str, tok: str | None
) -> HfFileMetadata:
    from huggingface_hub import get_hf_file_metadata

    from modelsync.sources import modelsync_version

    hub = endpoint(ctx.env)
    at = replace(ref, revision=revision)
    return _call_hub(
        entry,
        ctx,
        at,
        tok,
        lambda: get_hf_file_metadata(
            ref.url(hub, revision),
            token=tok or False,
            timeout=ctx.timeout,
            library_name="modelsync",
            library_version=modelsync_version(),
            endpoint=hub,
        ),
    )


def _hub_error(
    entry: Entry, ctx: SourceContext, ref: HubFile, revision: str, tok: str | None, exc: Exception
) -> NoReturn:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = endpoint(ctx.env)
    name, repo, page = entry.display_name, ref.repo_path, f"{hub}/{ref.repo_path}"
    tokens_page = f"{hub}/settings/tokens"
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else 0
    if isinstance(exc, GatedRepoError):
        if tok:
            message = f"{name}: {repo} is a gated repository and your token has no access to it"
            hint = (
                f"accept the license on {page} with the account that owns the token "
                "(access may need the authors' approval), then run again"
            )
        else:
            message = f"{name}: {repo} is a gated repository and no Hugging Face token is set"
            hint = (
                f"accept the license on {page}, then set HF_TOKEN to a read token of that "
                f"account ({tokens_page})"
            )
    elif isinstance(exc, RepositoryNotFoundError):
        message = f"{name}: repository {repo} not found on {host_of(hub)}"
        hint = "check the repo id (a dataset is written datasets/<org>/<name>)"
        hint += (
            "; if it is private, your token has no access to it"
            if tok
            else f"; if it is private, set HF_TOKEN to a token with access ({tokens_page})"
        )
    elif isinstance(exc, RevisionNotFoundError):
        message = f"{name}: revision {revision!r} not found in {repo}"
        hint = f"fix `revision`: a branch, tag or commit of {page}"
    elif isinstance(exc, EntryNotFoundError):
        message = f"{name}: file {ref.path!r} not found in {repo} at revision {revision!r}"
        hint = f"check `file` (a path inside the repo, as listed on {page}/tree/{revision})"
    elif status == 401:
        message = f"{name}: {host_of(hub)} rejected the Hugging Face token (401)"
        hint = (
            f"the token in HF_TOKEN (or the stored one) is invalid or expired: create one at "
            f"{tokens_page}, or unset it for public repos"
        )
    elif status == 403:
        message = f"{name}: {host_of(hub)} refused access to {repo} (403)"
        hint = f"give the token read access to {repo} ({tokens_page})"
    elif status == 429:
        message = f"{name}: {host_of(hub)} is rate limiting requests (429)"
        hint = "wait a few minutes and run again; a token (HF_TOKEN) raises the limits"
    else:
        message = f"{name}: {host_of(hub)} answered {status or 'an error'} for {repo}"
        hint = "try again later"
    raise SourceError(ctx.redact(message), ctx.redact(hint)) from None


# ---- whole repositories ------------------------------------------------------------------


def list_repo(entry: Entry, ctx: SourceContext) -> RepoListing:
    """The files of a repository entry at its revision, in one API call (nothing
    downloaded): the commit, and each file's path, size and published hashes."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    assert entry.hf is not None and entry.file is None
    repo_type, repo_id = parse_repo(entry.hf)
    revision = entry.revision or "main"
    ref = HubFile(repo_id, "", revision, repo_type)
    hub = endpoint(ctx.env)
    tok = token(ctx)
    api = HfApi(endpoint=hub, token=tok or False, library_name="modelsync")
    info = _call_hub(
        entry,
        ctx,
        ref,
        tok,
        lambda: api.repo_info(
            repo_id,
            revision=revision,
            repo_type=None if repo_type == "model" else repo_type,
            files_metadata=True,
            timeout=ctx.timeout,
        ),
    )
    listed = [_listed_file(sib) for sib in getattr(info, "siblings", None) or []]
    if not isinstance(info.sha, str) or not _COMMIT.fullmatch(info.sha) or None in listed:
        # A server that is not the Hub (a wrong HF_ENDPOINT), or a broken answer.
        raise SourceError(
            f"{entry.display_name}: {host_of(hub)} did not answer with a repository listing "
            f"(a commit and each file's path and size) for {ref.repo_path}",
            "try again later" + (f"; check HF_ENDPOINT ({redact_urls(hub)})" if hub != HUB else ""),
        )
    files = list(
        filter_repo_objects(
            [f for f in listed if f is not None],
            allow_patterns=list(entry.include) or None,
            ignore_patterns=list(entry.exclude) or None,
            key=lambda f: f.path,
        )
    )
    return RepoListing(info.sha.lower(), tuple(sorted(files, key=lambda f: f.path)))


def _listed_file(sibling: Any) -> RepoFile | None:
    """One file of the Hub's listing, its published hashes kept only when well formed;
    None when it has no path or no size."""
    path, lfs = getattr(sibling, "rfilename", None), getattr(sibling, "lfs", None)
    size = getattr(lfs if lfs is not None else sibling, "size", None)
    if not isinstance(path, str) or not path or not _is_size(size):
        return None
    sha256 = str(getattr(lfs, "sha256", None) or "").lower() if lfs is not None else ""
    blob = str(getattr(sibling, "blob_id", None) or "").lower() if lfs is None else ""
    return RepoFile(
        path,
        size,
        sha256 if _SHA256.fullmatch(sha256) else None,
        git_sha1=blob if _COMMIT.fullmatch(blob) else None,
    )


def _is_size(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _call_hub(
    entry: Entry, ctx: SourceContext, ref: HubFile, tok: str | None, call: Callable[[], T]
) -> T:
    """`call` (a huggingface_hub request), its failures turned into our errors."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    hub = endpoint(ctx.env)
    try:
        return call()
    except HfHubHTTPError as exc:
        _hub_error(entry, ctx, ref, ref.revision, tok, exc)
    except OfflineModeIsEnabled:
        raise SourceError(
            f"{entry.display_name}: HF_HUB_OFFLINE is set, so {ref.repo_path} cannot be resolved",
            "unset HF_HUB_OFFLINE (modelsync needs the Hub's metadata to download)",
        ) from None
    except (httpx2.HTTPError, httpx2.InvalidURL, OSError) as exc:  # transport, timeouts
        reason = ctx.redact(str(exc) or type(exc).__name__)
        raise SourceUnreachable(
            f"{entry.display_name}: cannot reach {host_of(hub)} to resolve {ref.repo_path}: "
            f"{reason}",
            "check the network connection and proxy settings"
            + (f", and HF_ENDPOINT ({redact_urls(hub)})" if hub != HUB else ""),
            host=host_of(hub),
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError):
        # huggingface_hub reading an answer that is not the Hub's (fields missing or of
        # another type, a date that is not one): the server's fault, not a crash of ours
        raise SourceError(
            f"{entry.display_name}: {host_of(hub)} answered for {ref.repo_path} with a "
            "document that is not the Hub's",
            "try again later" + (f"; check HF_ENDPOINT ({redact_urls(hub)})" if hub != HUB else ""),
        ) from None
