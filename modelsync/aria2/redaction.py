"""Keeping secrets out of text: the RPC secret type, and scrubbing aria2's messages."""

from __future__ import annotations

import re

from modelsync.redact import redact_urls


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


def _scrub(text: str, secret: _Secret | None) -> str:
    """Remove the RPC secret (and ``token:…`` arguments) and URL secrets from ``text``."""
    if secret:
        text = text.replace(secret.reveal(), "********")
    text = re.sub(r"token:[^\s\"',\]]+", "token:********", text)
    return redact_urls(text)
