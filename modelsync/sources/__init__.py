"""Sources turn a manifest entry into a RemoteFile. They never download the file.

Two questions, two functions:

- `resolve`: what the file is (name, size, published hashes, Hugging Face commit, the
  origin URL without any signature). Plan and lock use it; results are cached per run.
- `locate`: where aria2 can fetch it right now (redirects to other hosts already followed,
  signed CDN URLs, headers only for the final URL's own host). Called at every aria2 add,
  with fresh=True on retries because signed URLs expire.

Dispatch: `hf` entries and `url` entries on huggingface.co / $HF_ENDPOINT go to
huggingface.py; `civitai` entries and civitai.com model/download links go to civitai.py;
every other URL is used as written (url.py, no network), and so are the mirrors of an
entry pinned by hash alone (no url, hf nor civitai).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from modelsync.manifest import Entry, Settings
from modelsync.redact import redact
from modelsync.remote import RemoteFile, RepoListing

if TYPE_CHECKING:
    import requests

#: Environment variables that hold tokens: their values are redacted from every message.
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")

SourceName = Literal["url", "hf", "civitai", "none"]


@dataclass
class SourceContext:
    """What sources may read: settings, environment (tokens, endpoints), a per-run cache.

    Endpoints and tokens are read from `env` at call time, never from module globals.
    """

    settings: Settings
    env: Mapping[str, str]
    cache: dict[str, RemoteFile] = field(default_factory=dict)  # resolve(), by entry name
    located: dict[str, RemoteFile] = field(default_factory=dict)  # locate(), by entry name
    timeout: float = 20.0  # seconds, per metadata request
    extra_secrets: set[str] = field(default_factory=set, init=False)  # e.g. a stored HF token
    _session: requests.Session | None = field(default=None, init=False, repr=False)

    @property
    def session(self) -> requests.Session:
        """One HTTP session per run (connection reuse across entries); created on first use."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.headers["User-Agent"] = _user_agent()
        return self._session

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every token value known to this run, for redaction."""
        values = {self.env.get(name, "").strip() for name in TOKEN_VARIABLES}
        return tuple(sorted(v for v in values | self.extra_secrets if v))

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def source_of(entry: Entry, env: Mapping[str, str]) -> SourceName:
    """Which source handles `entry`: url entries on Hugging Face or Civitai hosts are theirs."""
    if entry.source != "url":
        return entry.source
    assert entry.url is not None
    special = _special_hosts(env.get("HF_ENDPOINT", ""), env.get("CIVITAI_ENDPOINT", ""))
    if _host(entry.url) not in special:  # string ops: this runs for every url entry
        return "url"
    from . import civitai, huggingface

    if huggingface.is_hub_url(entry.url, env):
        return "hf"
    if civitai.is_civitai_url(entry.url, env):
        return "civitai"
    return "url"


@functools.lru_cache(maxsize=8)
def _special_hosts(hf_endpoint: str, civitai_endpoint: str) -> frozenset[str]:
    """The hosts whose URLs go to the Hugging Face or Civitai source, for the values of
    $HF_ENDPOINT and $CIVITAI_ENDPOINT (cached: 10,000 url entries ask 40,000 times)."""
    from . import civitai, huggingface

    env = {"HF_ENDPOINT": hf_endpoint, "CIVITAI_ENDPOINT": civitai_endpoint}
    hub, civ = huggingface.endpoint(env), civitai.endpoint(env)
    return frozenset({*huggingface.HUB_HOSTS, *civitai.CIVITAI_HOSTS, _host(hub), _host(civ)})


def token_over_http(kind: SourceName, env: Mapping[str, str]) -> str | None:
    """A warning when `kind`'s token would travel unencrypted: its endpoint ($HF_ENDPOINT,
    $CIVITAI_ENDPOINT) is `http:` on another machine than this one; else None."""
    from urllib.parse import urlsplit

    from . import civitai, huggingface

    if kind == "hf":
        names, where = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), huggingface.endpoint(env)
        variable = "HF_ENDPOINT"
    elif kind == "civitai":
        names, where = ("CIVITAI_TOKEN", "CIVITAI_API_TOKEN"), civitai.endpoint(env)
        variable = "CIVITAI_ENDPOINT"
    else:
        return None
    parts = urlsplit(where)
    if parts.scheme.lower() != "http" or _is_loopback(parts.hostname or ""):
        return None
    held = next((f"${n}" for n in names if env.get(n, "").strip()), None)
    if held is None and kind == "hf" and _stored_hf_token():
        held = "huggingface_hub's token file (`hf auth login`)"
    if held is None:
        return None
    return (
        f"${variable} is {parts.scheme}://{parts.netloc.rpartition('@')[2]} (http, not https): "
        f"the token in {held} travels unencrypted; use an https endpoint"
    )


def _stored_hf_token() -> bool:
    """Whether huggingface_hub has a token stored (sent when no HF_TOKEN is set)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import OIDCError

    try:
        return bool(get_token())
    except (OSError, OIDCError):
        return False


def _is_loopback(host: str) -> bool:
    """This machine itself (localhost, 127.0.0.0/8, ::1): nothing crosses a network."""
    import ipaddress

    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(url: str) -> str:
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0].partition("#")[0]
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal keeps its colons
        return host.partition("]")[0].lower() + "]"
    return host.partition(":")[0].lower()


def resolve(entry: Entry, ctx: SourceContext, *, fresh: bool = False) -> RemoteFile:
    """Resolve one entry's metadata; `fresh` bypasses the per-run cache.

    Never fetches file content. Raises SourceError (exit 1) naming the entry.
    """
    key = entry.display_name
    if not fresh and key in ctx.cache:
        return ctx.cache[key]
    kind = source_of(entry, ctx.env)
    if kind == "hf":
        from . import huggingface

        remote = huggingface.resolve(entry, ctx)
    elif kind == "civitai":
        from . import civitai

        remote = civitai.resolve(entry, ctx)
    else:
        from . import url as url_source

        remote = url_source.resolve(entry, ctx)
    ctx.cache[key] = remote
    return remote


def locate(entry: Entry, ctx: SourceContext, *, fresh: bool = False) -> RemoteFile:
    """Where aria2 can fetch `entry` right now: final URLs (redirects to other hosts
    already followed, signed) and only headers meant for those URLs' own hosts.

    Called when a download is added to aria2, and again with fresh=True on each retry.
    The bytes stay those that `resolve` described: Hugging Face files are re-located at
    the commit they resolved to, Civitai files through the same download URL.
    """
    key = entry.display_name
    if not fresh and key in ctx.located:
        return ctx.located[key]
    remote = resolve(entry, ctx)
    if not fresh and key in ctx.located:  # the HEAD of resolve said where it is now
        return ctx.located[key]
    kind = source_of(entry, ctx.env)
    if kind == "hf":
        from . import huggingface

        located = huggingface.locate(entry, ctx, remote)
    elif kind == "civitai":
        from . import civitai

        located = civitai.locate(entry, ctx, remote)
    else:
        located = remote
    ctx.located[key] = located
    return located


def list_repository(entry: Entry, ctx: SourceContext) -> RepoListing:
    """The files a repository entry selects, at the commit its revision points to."""
    from . import huggingface

    return huggingface.list_repo(entry, ctx)


def repository_url(entry: Entry, env: Mapping[str, str]) -> str:
    """The page of a repository entry's repo (plain: for the lock and messages)."""
    from . import huggingface

    assert entry.hf is not None
    repo_type, repo_id = huggingface.parse_repo(entry.hf)
    ref = huggingface.HubFile(repo_id, "", "main", repo_type)
    return f"{huggingface.endpoint(env)}/{ref.repo_path}"


def needs_network(entry: Entry, env: Mapping[str, str] | None = None) -> bool:
    """True when resolving `entry` asks a server (HF/Civitai metadata)."""
    return source_of(entry, env or {}) in ("hf", "civitai")


def modelsync_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelsync")
    except PackageNotFoundError:
        return "unknown"


def _user_agent() -> str:
    return f"modelsync/{modelsync_version()}"
