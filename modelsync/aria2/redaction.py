"""Keeping secrets out of text: the RPC secret type and URL redaction."""

from __future__ import annotations

import re
from typing import Final


class _Secret:
    """A string that never shows itself in a repr, a str() or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'********'" if self._value else "''"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


_URL_RE: Final = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)"
    r"(?P<userinfo>[^/\s?#@]*@)?"
    r"(?P<hostpath>[^\s?#\"'<>]*)"
    r"(?P<rest>[?#][^\s\"'<>]*)?"
)


def redact_urls(text: str) -> str:
    """Strip userinfo, query string and fragment from every URL in ``text``.

    ``https://u:p@cdn.example/f.bin?sig=abc`` → ``https://cdn.example/f.bin?…``.
    """

    def _one(m: re.Match[str]) -> str:
        return m["scheme"] + m["hostpath"] + ("?…" if m["rest"] else "")

    return _URL_RE.sub(_one, text)


def _scrub(text: str, secret: _Secret | None) -> str:
    """Remove the RPC secret (and ``token:…`` arguments) and URL secrets from ``text``."""
    if secret:
        text = text.replace(secret.reveal(), "********")
    text = re.sub(r"token:[^\s\"',\]]+", "token:********", text)
    return redact_urls(text)
