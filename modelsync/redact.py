"""Keep tokens, signatures and RPC secrets out of every message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

_URL_RE: Final = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)"
    r"(?P<userinfo>[^/\s?#@]*@)?"
    r"(?P<hostpath>[^\s?#\"'<>]*)"
    # Trailing punctuation (";", ",", ".", ":", ")") belongs to the sentence, not the
    # query: "https://h/f?…; check the URL" redacts to itself again.
    r"(?:(?P<rest>[?#][^\s\"'<>]*?)(?=[;,.:)]*(?:[\s\"'<>]|$)))?"
)
_BEARER = re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE)


def host_of(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def redact_urls(text: str) -> str:
    """Strip userinfo, query string and fragment from every URL in ``text``.

    ``https://u:p@cdn.example/f.bin?sig=abc`` → ``https://cdn.example/f.bin?…``.
    """

    def _one(m: re.Match[str]) -> str:
        return m["scheme"] + m["hostpath"] + ("?…" if m["rest"] else "")

    return _URL_RE.sub(_one, text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    # The regular expressions only where they can match: most texts (paths, names,
    # words) have no URL and no bearer token, and a run redacts thousands of them.
    if "://" in text:
        text = redact_urls(text)
    if "bearer" in text.lower():
        text = _BEARER.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
