"""aria2's failed downloads in words a user can act on.

aria2 reports an exit-status code (aria2c(1), EXIT STATUS) and a message written for its
own log ("CUID#20 - Name resolution for … failed"); neither names the URL. Here they become
"HTTP 404 Not Found from https://host/path", "cannot resolve host …", "connection refused by
host:port", and whether retrying the same URL could help. aria2's own text stays in
`Failure.cause`, for `apply --verbose`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit

from modelsync.redact import host_of, redact

_STATUS: Final = re.compile(r"status=(\d{3})")
_CUID: Final = re.compile(r"CUID#\d+\s*-\s*")
# HTTP statuses that a retry of the same URL will not change.
_PERMANENT_STATUS: Final = frozenset({400, 401, 403, 404, 405, 410, 451})
# Codes whose retry cannot help (3 not found, 9 disk full, 16/17/18 local file errors,
# 23 redirect loop, 24 authorization failed).
_PERMANENT_CODES: Final = frozenset({3, 9, 16, 17, 18, 23, 24})
_AUTH_HINT: Final = (
    "the server wants credentials it did not get or accept: check the token for this "
    "host (HF_TOKEN, CIVITAI_API_TOKEN) or whether the link needs one"
)


@dataclass(frozen=True)
class Failure:
    message: str  # for the user: what failed and where, no aria2 internals
    permanent: bool  # retrying the same URL cannot help
    cause: str  # aria2's own words (redacted), for --verbose

    @property
    def unreachable(self) -> bool:
        """The host did not answer at all (unknown, or refused the connection)."""
        return self.message.startswith(("cannot resolve host", "connection refused by"))


def describe(
    code: int | None, message: str | None, urls: tuple[str, ...], secrets: tuple[str, ...] = ()
) -> Failure:
    """`code` and `message` as aria2 reports them for a download of `urls` (primary first)."""
    # Each piece is redacted alone: redacting the whole text again would take the words
    # after a redacted URL's "?…" for more of its query string.
    raw = redact(message or "", secrets)
    cause = f"aria2 error {code}: {raw}" if code else raw or "aria2 gave no reason"
    url = redact(urls[0], secrets) if urls else "?"
    if len(urls) > 1:
        url += f" (and {len(urls) - 1} mirror(s))"
    host = redact(_host_port(urls[0]), secrets) if urls else "?"
    text, permanent = _words(code or 0, raw, url, host)
    permanent = permanent or code in _PERMANENT_CODES
    if permanent and _refused_access(code, raw) and urls and "?" in urls[0]:
        # A signed link (S3-style query string) may just have expired: the retry
        # resolves the entry again and gets a fresh one.
        permanent = False
    return Failure(text, permanent, cause)


def _refused_access(code: int | None, raw: str) -> bool:
    status = _STATUS.search(raw)
    return code == 24 or (status is not None and status[1] in ("401", "403"))


def _words(code: int, raw: str, url: str, host: str) -> tuple[str, bool]:
    low = raw.lower()
    status = _STATUS.search(raw)
    name = host.rsplit(":", 1)[0]
    if code == 3:  # aria2 reports a 404 as "resource not found", without the status
        return _http_status(404, url)
    if code == 24:  # and a 401 as "authorization failed"
        return _http_status(401, url)
    if status is not None:
        return _http_status(int(status[1]), url)
    if code == 19 or "name resolution" in low:
        # "Domain name not found" is final; "temporary failure" may pass.
        permanent = "not found" in low or "name or service not known" in low
        return f"cannot resolve host {name}; check the host name and your DNS", permanent
    if "connection refused" in low:
        return f"connection refused by {host}; is the server up and the port right?", True
    if "certificate" in low or "tls" in low or "ssl" in low:
        return (
            f"TLS error with {host} (the handshake failed, or its certificate is not trusted)",
            True,
        )
    if code == 2 or "timeout" in low or "timed out" in low:
        return f"timed out waiting for {host}", False
    if code == 9:
        return "not enough disk space for the download", True
    if code in (16, 17, 18):
        return f"cannot write the download to disk ({_clean(raw)})", True
    if code == 23:
        return f"too many redirects from {url}", True
    if code == 5:
        return f"the download from {host} was too slow", False
    if code == 6 or "network" in low or "connection" in low:
        return f"network problem talking to {host} ({_clean(raw)})", False
    return f"the download from {host} failed ({_clean(raw) or 'no reason given'})", False


def _http_status(status: int, url: str) -> tuple[str, bool]:
    """The status by number and name ("HTTP 404 Not Found from <url>"), and what to do."""
    try:
        text = f"HTTP {status} {HTTPStatus(status).phrase} from {url}"
    except ValueError:  # a status without a standard name
        text = f"HTTP {status} from {url}"
    if status in (401, 403):
        return f"{text}; {_AUTH_HINT}", True
    if status in (404, 410):
        return f"{text}; check the URL", True
    return text, status in _PERMANENT_STATUS


def _clean(raw: str) -> str:
    return _CUID.sub("", raw).strip().rstrip(".")


def _host_port(url: str) -> str:
    """host:port, the port made explicit (the default one of the scheme)."""
    host = host_of(url)
    try:
        port = urlsplit(url).port
    except ValueError:
        return host
    if port is not None:
        return host
    return f"{host}:{443 if url.lower().startswith('https:') else 80}"
