"""`doctor`: is this machine ready to sync? Each check says ok, warn or fail, with a fix.

It really asks: aria2c runs and answers RPC, the root is usable, each hub's endpoint answers
one cheap request (through the proxy the environment names, as requests does), and a token
that is set is accepted (`/api/whoami-v2` on Hugging Face, `/api/v1/me` on Civitai).
Tokens are sent only to their own hub and never printed: every detail is redacted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from modelsync.aria2 import Aria2Daemon, aria2c_version, find_aria2c, resolve_attach_settings
from modelsync.errors import ModelsyncError
from modelsync.manifest import RootChoice, Settings
from modelsync.redact import host_of, redact, redact_urls
from modelsync.results import existing_ancestor, free_bytes
from modelsync.sources import SourceContext
from modelsync.sources import civitai as civitai_source
from modelsync.sources import huggingface as hf_source
from modelsync.sources.http import bearer, error_kind

if TYPE_CHECKING:
    import requests

Status = Literal["ok", "warn", "fail"]
TIMEOUT = (3.05, 5.0)  # seconds to connect, to read: a hub slower than that is not fine
LOW_SPACE = 1 << 30
PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # one line, for warn and fail

    @property
    def ok(self) -> bool:
        return self.status != "fail"


# ---- aria2 -------------------------------------------------------------------------------


def check_aria2(env: Mapping[str, str]) -> list[Check]:
    attach = resolve_attach_settings(None, None, env)
    if attach is not None:
        try:
            with Aria2Daemon.attach(*attach) as daemon:
                return [Check("aria2 RPC", "ok", f"attached to {daemon.url}, {daemon.version()}")]
        except ModelsyncError as exc:
            return [Check("aria2 RPC", "fail", exc.message, exc.hint or "check MODELSYNC_ARIA2_*")]
    try:
        binary = find_aria2c()
    except ModelsyncError as exc:
        return [Check("aria2c", "fail", exc.message, exc.hint)]
    checks = [Check("aria2c", "ok", f"{binary} ({aria2c_version(binary)})")]
    with tempfile.TemporaryDirectory(prefix="modelsync-doctor-") as session:
        try:
            with Aria2Daemon.spawn(
                max_concurrent=1, max_overall_speed=0, session_dir=Path(session)
            ) as daemon:
                checks.append(Check("aria2 RPC", "ok", f"answers on 127.0.0.1:{daemon.port}"))
        except ModelsyncError as exc:
            fix = exc.hint or "run `modelsync apply --verbose` to see aria2's own message"
            checks.append(Check("aria2 RPC", "fail", exc.message, fix))
    return checks


def check_root(choice: RootChoice) -> list[Check]:
    root = choice.path
    where = f"{root} (from {choice.origin})"
    if root.exists() and not root.is_dir():
        return [Check("root", "fail", f"{where} is not a folder", "point the root at a folder")]
    if not root.exists() and not choice.creatable:
        return [
            Check(
                "root",
                "fail",
                f"{where} does not exist; it is created only from settings.root",
                f"create it (mkdir -p {root}), correct the path, or pass --create-root to apply",
            )
        ]
    probe = existing_ancestor(root)
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            Check("root", "fail", f"{probe} is not writable", f"fix the permissions of {probe}")
        ]
    state = "writable" if probe == root else f"to be created in {probe} (writable)"
    free = free_bytes(root)
    space = f"{free / 2**30:.1f} GiB free under {probe}"
    return [
        Check("root", "ok", f"{where}: {state}"),
        Check("free space", "ok", space)
        if free >= LOW_SPACE
        else Check("free space", "warn", space, "free some space before downloading models"),
    ]


@dataclass(frozen=True)
class Hub:
    """A hub to ask: its endpoint, a cheap URL that needs a token, and the token if any."""

    label: str  # "Hugging Face"
    variable: str  # the endpoint's variable
    endpoint: str
    probe: str  # a cheap authenticated URL: 200 for a good token, 401 for a bad one
    token_name: str | None  # where the token came from (a variable, or the stored token)
    token: str | None
    tokens_page: str
    without_token: str  # what "no token" means for this hub
    custom: bool  # the endpoint comes from its variable (so a fix names the variable)


def hubs(env: Mapping[str, str], ctx: SourceContext) -> list[Hub]:
    hf = hf_source.endpoint(env)
    hf_variable = next((n for n in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if env.get(n)), None)
    hf_token = hf_source.token(ctx)
    civ = civitai_source.endpoint(env)
    return [
        Hub(
            "Hugging Face",
            "HF_ENDPOINT",
            hf,
            f"{hf}/api/whoami-v2",
            hf_variable or ("the stored Hugging Face token" if hf_token else None),
            hf_token,
            f"{hf}/settings/tokens",
            "public repos only; gated and private ones need HF_TOKEN",
            bool(env.get("HF_ENDPOINT", "").strip()),
        ),
        Hub(
            "Civitai",
            "CIVITAI_ENDPOINT",
            civ,
            f"{civ}/api/v1/me",
            civitai_source.token_variable(env),
            civitai_source.token(env),
            civitai_source.KEYS_PAGE if civ == civitai_source.CIVITAI else f"{civ}/user/account",
            "models whose creator requires a login will fail; set CIVITAI_TOKEN for them",
            bool(env.get("CIVITAI_ENDPOINT", "").strip()),
        ),
    ]


def check_hub(hub: Hub, ctx: SourceContext) -> list[Check]:
    """One request: does the endpoint answer (through the proxy), is the token accepted."""
    import requests

    proxy = proxy_for(hub.probe)
    try:
        with ctx.session.get(
            hub.probe,
            headers={"Accept": "application/json", **dict(bearer(hub.token))},
            timeout=TIMEOUT,
            allow_redirects=False,
        ) as response:
            status = response.status_code
            doc = _json(response) if status == 200 else None
    except requests.RequestException as exc:
        return _unreachable(hub, proxy, exc)
    host = host_of(hub.endpoint)
    if proxy and status == 407:
        return [
            Check(
                "proxy",
                "fail",
                f"proxy {redact_urls(proxy)} requires authentication (HTTP 407)",
                "put the proxy's user and password in its URL: http://user:password@host:port",
            )
        ]
    checks = [Check(f"{hub.label} endpoint", "ok", f"{hub.endpoint} answers (HTTP {status})")]
    if proxy:
        checks.append(Check("proxy", "ok", f"{redact_urls(proxy)} lets requests to {host} through"))
    return [*checks, _token_check(hub, status, doc)]


def _token_check(hub: Hub, status: int | None, doc: Any) -> Check:
    name = f"{hub.label} token"
    host = host_of(hub.endpoint)
    if hub.token is None:
        return Check(name, "ok", f"not set: {hub.without_token}")
    if status is None:
        return Check(
            name, "warn", f"{hub.token_name} is set but was not checked: {host} did not answer",
            "fix the endpoint or proxy above, then run doctor again",
        )  # fmt: skip
    if status in (401, 403):
        return Check(
            name,
            "fail",
            f"{hub.token_name} is not accepted by {host} (HTTP {status})",
            f"create a new token at {hub.tokens_page} and set it in {hub.token_name}",
        )
    if status != 200:
        return Check(
            name, "warn", f"{hub.token_name} could not be checked: {host} answered HTTP {status}",
            "try again later",
        )  # fmt: skip
    user = doc.get("name") or doc.get("username") if isinstance(doc, dict) else None
    who = f" (user {user})" if isinstance(user, str) and user else ""
    return Check(name, "ok", f"{hub.token_name} is accepted by {host}{who}")


def _unreachable(hub: Hub, proxy: str | None, exc: Exception) -> list[Check]:
    import requests

    kind = error_kind(exc)
    host = host_of(hub.endpoint)
    if proxy and isinstance(exc, requests.exceptions.ProxyError):
        check = Check(
            "proxy",
            "fail",
            f"proxy {redact_urls(proxy)} refused or failed the request to {host} ({kind})",
            "check HTTPS_PROXY / HTTP_PROXY / ALL_PROXY (is the proxy running at that address?), "
            f"or add {urlsplit(hub.endpoint).hostname} to NO_PROXY",
        )
    else:
        custom = hub.variable if hub.custom else ""
        fixes = {
            "name resolution failed": f"check the host name{f' in {custom}' if custom else ''} "
            "and this machine's DNS / network connection",
            "connection refused": f"nothing listens at {host}: check "
            f"{custom or 'the network connection'}",
            "timeout": "check the network connection, a firewall, or set HTTPS_PROXY",
        }
        check = Check(
            f"{hub.label} endpoint",
            "fail",
            f"cannot reach {host} ({kind})"
            + (f" through proxy {redact_urls(proxy)}" if proxy else ""),
            fixes.get(kind, "check the network connection and proxy settings"),
        )
    return [check, _token_check(hub, None, None)]


def proxy_for(url: str) -> str | None:
    """The proxy requests will use for `url` (from the environment, NO_PROXY honoured)."""
    from requests.utils import get_environ_proxies, select_proxy

    return select_proxy(url, get_environ_proxies(url))


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def check_environment(env: Mapping[str, str]) -> list[Check]:
    """Endpoint and proxy variables that are set, shown without credentials."""
    checks = []
    for name in ("HF_ENDPOINT", "CIVITAI_ENDPOINT", *PROXIES):
        value = env.get(name) or env.get(name.lower())
        if value:
            shown = value if name == "NO_PROXY" else redact_urls(value)
            checks.append(Check(name, "ok", shown))
    return checks


def run_doctor(root: RootChoice | None, env: Mapping[str, str]) -> list[Check]:
    ctx = SourceContext(Settings(), env)
    try:
        checks = check_aria2(env)
        if root is not None:
            checks += check_root(root)
        for hub in hubs(env, ctx):
            checks += check_hub(hub, ctx)
        checks += check_environment(env)
    finally:
        ctx.close()
    # Belt and braces: no token value may reach the screen, whatever a server echoed.
    return [
        replace(c, detail=redact(c.detail, ctx.secrets), fix=redact(c.fix, ctx.secrets))
        for c in checks
    ]
