"""Where an existing aria2 daemon is: ``--aria2-url``/``--aria2-secret`` and the environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple, cast
from urllib.parse import urlsplit

from modelsync.errors import EXIT_USAGE, Aria2Unavailable, ModelsyncError
from modelsync.redact import redact_urls

MODELSYNC_URL_ENV: Final = "MODELSYNC_ARIA2_URL"
MODELSYNC_SECRET_ENV: Final = "MODELSYNC_ARIA2_SECRET"
COMFYUI_URL_ENV: Final = "COMFYUI_MANAGER_ARIA2_SERVER"
COMFYUI_URLS_ENV: Final = "COMFYUI_MANAGER_ARIA2_SERVERS"  # comma-separated, several daemons
COMFYUI_SECRET_ENV: Final = "COMFYUI_MANAGER_ARIA2_SECRET"
ATTACH_URL_ENVS: Final = (MODELSYNC_URL_ENV, COMFYUI_URLS_ENV, COMFYUI_URL_ENV)
ATTACH_SECRET_ENVS: Final = (MODELSYNC_SECRET_ENV, COMFYUI_SECRET_ENV)

DEFAULT_RPC_PORT: Final = 6800


class AttachSettings(NamedTuple):
    """Where the daemon to attach to is, and its secret (never shown in the repr).

    A tuple so that ``Aria2Daemon.attach(*settings)`` works.
    """

    url: str
    secret: str | None = None
    source: str = "cli"  # "cli", or the environment variable the URL came from

    def __repr__(self) -> str:
        secret = "'********'" if self.secret else "None"
        return f"AttachSettings(url={self.url!r}, secret={secret}, source={self.source!r})"

    def __str__(self) -> str:
        return repr(self)


def resolve_attach_settings(
    cli_url: str | None, cli_secret: str | None, env: Mapping[str, str]
) -> AttachSettings | None:
    """Decide whether to attach to an existing daemon; ``None`` means spawn our own.

    The URL comes from ``--aria2-url``, else ``$MODELSYNC_ARIA2_URL``, else
    ``$COMFYUI_MANAGER_ARIA2_SERVERS``, else ``$COMFYUI_MANAGER_ARIA2_SERVER``; it may be a
    comma-separated list of daemons (see :func:`split_attach_settings`). The secret comes
    from ``--aria2-secret``, else from the secret variable paired with the URL's source
    (``$COMFYUI_MANAGER_ARIA2_SECRET`` for ComfyUI-Manager's URLs), else
    ``$MODELSYNC_ARIA2_SECRET``. A secret is never taken from ComfyUI-Manager's variable for
    a URL that did not come from it, so it is not sent to another server. Empty values count
    as unset.
    """

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    cli_url = (cli_url or "").strip() or None
    cli_secret = cli_secret or None
    if cli_url is not None:
        url, source, paired = cli_url, "cli", None
    elif get(MODELSYNC_URL_ENV) is not None:
        url, source, paired = cast(str, get(MODELSYNC_URL_ENV)), MODELSYNC_URL_ENV, None
    elif get(COMFYUI_URLS_ENV) is not None:
        url, source = cast(str, get(COMFYUI_URLS_ENV)), COMFYUI_URLS_ENV
        paired = COMFYUI_SECRET_ENV
    elif get(COMFYUI_URL_ENV) is not None:
        url, source, paired = cast(str, get(COMFYUI_URL_ENV)), COMFYUI_URL_ENV, COMFYUI_SECRET_ENV
    else:
        if cli_secret is not None:
            raise Aria2Unavailable(
                "--aria2-secret was given without --aria2-url",
                f"pass --aria2-url (or set ${MODELSYNC_URL_ENV}) to attach to a running aria2c",
            )
        return None
    secret = cli_secret
    if secret is None and paired is not None:
        secret = get(paired)
    if secret is None:
        secret = get(MODELSYNC_SECRET_ENV)
    return AttachSettings(url=url, secret=secret, source=source)


def split_attach_settings(settings: AttachSettings) -> list[AttachSettings]:
    """One :class:`AttachSettings` per daemon of a comma-separated URL list (one secret for
    all). Each URL is checked here, so a bad one is a usage error naming it before any
    daemon is asked."""
    urls = [u.strip() for u in settings.url.split(",") if u.strip()]
    where = "--aria2-url" if settings.source == "cli" else f"${settings.source}"
    for url in urls:
        try:
            parse_rpc_url(url)
        except Aria2Unavailable as exc:
            raise ModelsyncError(
                f"{where}: {exc.message}", exc.hint, exit_code=EXIT_USAGE
            ) from None
    if not urls:
        raise ModelsyncError(f"{where} names no aria2 daemon", "pass http://HOST:PORT/jsonrpc")
    return [settings._replace(url=url) for url in dict.fromkeys(urls)]


def parse_rpc_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an aria2 RPC address.

    Accepts ``http://host:6800/jsonrpc``, ``http://host:6800``, ``host:6800`` and
    ``https://…``/``ws://…``/``wss://…`` (WebSocket schemes map to HTTP(S)). The port
    defaults to 6800.
    """
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise Aria2Unavailable(
            f"invalid aria2 RPC URL {redact_urls(url)!r}",
            "use the form http://HOST:PORT/jsonrpc",
        ) from None
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(
        parts.scheme.lower()
    )
    host = parts.hostname
    if scheme is None or not host:
        raise Aria2Unavailable(
            f"invalid aria2 RPC URL {redact_urls(url)!r}",
            "use the form http://HOST:PORT/jsonrpc",
        )
    if parts.username is not None or parts.password is not None:
        raise Aria2Unavailable(
            f"the aria2 RPC URL for {host} carries credentials",
            "pass the RPC secret with --aria2-secret or $MODELSYNC_ARIA2_SECRET instead",
        )
    if parts.path.rstrip("/") not in ("", "/jsonrpc"):
        raise Aria2Unavailable(
            f"unexpected path in the aria2 RPC URL for {host}: {parts.path!r}",
            "aria2's JSON-RPC endpoint is http://HOST:PORT/jsonrpc",
        )
    return scheme, host, port if port is not None else DEFAULT_RPC_PORT
