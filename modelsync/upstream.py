"""What a server says about a file right now, and what the bytes it sent really are.

aria2 keeps a response's headers to itself, so one HEAD of the download's own URL (its
headers, redirects followed; requests drops Authorization when the host changes) tells
what aria2 cannot: the validators (ETag, Last-Modified, Content-Length) that show the
file changed upstream between two segments or between a partial and its resume, and a
Content-Type or Content-Encoding the file should not have. A HEAD that fails tells
nothing: the hash stays the last word.
"""

from __future__ import annotations

import gzip
import shutil
import threading
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT = 10.0  # seconds for the HEAD; a server that slow tells us nothing
_VALIDATORS = ("etag", "last_modified", "length")
_HTML_STARTS = (b"<!doctype html", b"<html")


@dataclass(frozen=True)
class Upstream:
    etag: str | None = None
    last_modified: str | None = None
    length: int | None = None
    content_type: str = ""
    content_encoding: str = ""

    def validators(self) -> dict[str, str | int]:
        """What identifies this version of the file (kept in the download's sidecar)."""
        values = {k: getattr(self, k) for k in _VALIDATORS}
        return {k: v for k, v in values.items() if v is not None}

    def changed_from(self, before: dict[str, str | int]) -> str | None:
        """How the file differs from the version `before` described, or None when every
        validator both know is the same. Any one counts: a new upload may keep its length
        or its date, and (since Apache 2.4) servers derive ETags from the file alone."""
        now = self.validators()
        names = {"etag": "ETag", "last_modified": "Last-Modified", "length": "Content-Length"}
        for key in _VALIDATORS:
            if key in before and key in now and before[key] != now[key]:
                return f"{names[key]} {before[key]} → {now[key]}"
        return None


def probe(url: str, headers: tuple[tuple[str, str], ...] = ()) -> Upstream | None:
    """One HEAD of `url`; None when it fails or is not a 2xx (then nothing is known)."""
    import requests

    # identity: a server that compresses when asked must describe the bytes aria2 got
    sent = {**dict(headers), "Accept-Encoding": "identity"}
    try:
        with requests.head(url, headers=sent, allow_redirects=True, timeout=PROBE_TIMEOUT) as r:
            if not 200 <= r.status_code < 300:
                return None
            h = r.headers
            length = h.get("Content-Length", "")
            return Upstream(
                etag=h.get("ETag") or None,
                last_modified=h.get("Last-Modified") or None,
                length=int(length) if length.isdigit() else None,
                content_type=h.get("Content-Type", "").split(";")[0].strip().lower(),
                content_encoding=h.get("Content-Encoding", "").strip().lower(),
            )
    except (requests.RequestException, ValueError):
        return None


def probe_in_background(
    url: str, headers: tuple[tuple[str, str], ...] = ()
) -> Future[Upstream | None]:
    """`probe` in a daemon thread: a server slow to answer a HEAD never holds up the
    end of a run (an interrupted apply exits at once; the thread dies with it)."""
    future: Future[Upstream | None] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            future.set_result(probe(url, headers))  # probe catches what it expects

    threading.Thread(target=run, name="modelsync-probe", daemon=True).start()
    return future


def html_page(path: Path) -> bool:
    """A model file never starts like a web page; a login wall or an error page does."""
    with path.open("rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith(_HTML_STARTS)


def gzip_encoded(path: Path, upstream: Upstream | None) -> bool:
    """The server said the body is gzip-encoded (asked or not), and it looks it."""
    if upstream is None or upstream.content_encoding not in ("gzip", "x-gzip"):
        return False
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def gunzip_in_place(path: Path) -> bool:
    """Decode a gzip-encoded download into the file it stands for; False if it is not
    valid gzip (the encoded bytes stay as they were)."""
    decoded = path.with_name(path.name + ".unz")  # fits tmp_name's room
    try:
        with gzip.open(path, "rb") as src, decoded.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError, zlib.error):
        decoded.unlink(missing_ok=True)
        return False
    decoded.replace(path)
    return True
