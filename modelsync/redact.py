"""Keep tokens, signatures and RPC secrets out of every message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_URL = re.compile(r"https?://[^\s'\"<>]+")
_BEARER = re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE)


def host_of(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def safe_url(url: str) -> str:
    """A URL fit for messages: no userinfo, no query string (signatures, tokens)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    text = _URL.sub(lambda m: safe_url(m.group(0)), text)
    text = _BEARER.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
