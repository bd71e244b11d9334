"""Small HTTP helpers shared by the sources: origins (who may see a token) and headers."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urljoin, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


@lru_cache(maxsize=16384)  # asked of every url entry, twice, on every run
def origin(url: str) -> Origin:
    """(scheme, host, port) of a URL, the port made explicit: what a token is bound to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed host or port: never equal to a real origin
        return "", "", -1
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def redirect_target(url: str, location: str) -> str | None:
    """Where a redirect from `url` to `location` leads, when that is an http(s) URL with a
    host (and a valid port); None for anything else a server may send (a malformed host,
    another scheme, spaces or control characters), which must go neither to aria2 nor on."""
    try:
        target = urljoin(url, location)
    except ValueError:
        return None
    scheme, host, port = origin(target)
    if scheme not in _DEFAULT_PORTS or not host or port <= 0:
        return None
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return None
    return target


@lru_cache(maxsize=64)  # asked for every entry: the environment does not change in a run
def checked_endpoint(variable: str, value: str) -> str:
    """`value` of $`variable` (HF_ENDPOINT, CIVITAI_ENDPOINT) when it is an http(s) URL with a
    host and a valid port; else exit 2 naming the variable (its credentials left out)."""
    from modelsync.errors import ModelsyncError
    from modelsync.redact import redact_urls

    try:
        parts = urlsplit(value)
        valid = parts.scheme.lower() in _DEFAULT_PORTS and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        valid = False
    if not valid:
        raise ModelsyncError(
            f"${variable} is not an http(s) URL: {redact_urls(value)!r}",
            f"set ${variable} to a URL like https://host[:port], or unset it",
        )
    return value


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {token}"),) if token else ()


def error_kind(exc: Exception) -> str:
    """The user's words for why a request failed (requests nests urllib3's reason in text)."""
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    text = str(exc)
    if any(
        word in text
        for word in ("NameResolutionError", "Name or service not known", "name resolution",
                     "nodename nor servname", "getaddrinfo failed")
    ):  # fmt: skip
        return "name resolution failed"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return "connection refused"
    if "timed out" in text:
        return "timeout"
    if "Connection reset" in text or "RemoteDisconnected" in text:
        return "connection reset"
    return "connection failed"
