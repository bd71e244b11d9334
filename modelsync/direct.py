"""Small files fetched in-process, without aria2: the per-file fast path.

aria2 pays a fixed cost per download (an addUri, its queue, a new connection, a status
poll to notice the end): about 1 ms of its time and a poll interval of ours per file,
which is all of a 64 KiB file's time. When a run has many small files, each is fetched
here instead: one GET on a kept-alive connection (http.client, one per worker thread and
host; requests costs three times its CPU per request), straight into tmp/. Nothing else
changes: the bytes go through the same check (size and every pin) and the same placement
as an aria2 download.

This path is optimistic. Anything unusual (a proxy to go through, a status other than
200 or a redirect, a body that is encoded, longer or shorter than the pinned size, a
slow server, a connection error) is a :class:`Miss`: the partial is removed and the file
goes to aria2, whose retries, stall watchdog, resume and error words apply as for any
other file. Headers (a token) are sent to the URL's own origin only, never after a
redirect to another one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import ssl
import threading
import urllib.request
import weakref
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import xxhash

from modelsync import __version__
from modelsync.hashing import FileHashes

#: Files up to this size may be fetched here: one connection is all aria2 would open
#: for them too (its segments are 8 MiB), and a lost one costs little to fetch again.
DIRECT_MAX_SIZE = 1 << 20
#: ...when a run has at least this many of them: below it aria2's overhead is noise.
DIRECT_MIN_FILES = 16
#: Threads fetching at once (aria2c -j16 is the baseline of SPEC §7's benchmark).
DIRECT_WORKERS = 16
#: A server this slow to connect or to send the next bytes is left to aria2.
TIMEOUT = 10.0
MAX_REDIRECTS = 10
_CHUNK = 256 << 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: CA bundle variables honoured by requests/curl/OpenSSL (aria2 gets the same one).
_CA_BUNDLE_ENVS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")

_local = threading.local()
# Every socket a fetch opened, in any thread (a response may hold it after its
# connection let go): abort() shuts them down.
_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
_sockets_lock = threading.Lock()
_tls: ssl.SSLContext | None = None
_tls_lock = threading.Lock()


class Miss(Exception):
    """This file is not for the fast path after all: aria2 fetches it."""


def fetch(
    url: str, headers: dict[str, str], out: Path, size: int, cancelled: threading.Event
) -> FileHashes:
    """GET `url` into `out` (created anew), exactly `size` bytes, hashed as they arrive
    (no second read); raises Miss otherwise."""
    if cancelled.is_set():
        raise Miss("cancelled")
    _local.cancelled = cancelled  # a socket opened after abort() is shut at once
    origin = _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        sent = headers if _origin(url) == origin else {}
        response = _get(url, sent)
        try:
            if response.status in _REDIRECTS and response.getheader("Location"):
                response.read()  # the rest of the body: the connection stays usable
                url = urljoin(url, response.getheader("Location", ""))
                continue
            return _save(response, out, size, cancelled)
        except BaseException:
            _drop_connection(url)  # a body left unread: the connection is unusable
            raise
        finally:
            response.close()
    raise Miss("too many redirects")


def _save(
    response: http.client.HTTPResponse, out: Path, size: int, cancelled: threading.Event
) -> FileHashes:
    if response.status != 200:
        raise Miss(f"HTTP {response.status}")
    if response.getheader("Content-Encoding", "identity").lower() != "identity":
        raise Miss("an encoded body")
    length = response.getheader("Content-Length")
    if length is not None and length != str(size):
        raise Miss(f"Content-Length {length}, expected {size}")
    got = 0
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    try:
        with open(out, "wb") as f:
            while chunk := response.read(min(_CHUNK, size + 1 - got)):
                got += len(chunk)
                if got > size:
                    raise Miss(f"more than the {size} bytes expected")
                if cancelled.is_set():
                    raise Miss("cancelled")
                f.write(chunk)
                sha.update(chunk)
                xxh.update(chunk)
    except (OSError, http.client.HTTPException) as exc:  # cut short, or tmp/ unwritable
        raise Miss(type(exc).__name__) from None
    if got != size:
        raise Miss(f"{got} bytes, expected {size}")
    return FileHashes(got, sha.hexdigest(), xxh.hexdigest())


def _get(url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """The response to one GET, on this thread's kept-alive connection to the host
    (opened again once if the server closed it meanwhile)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Miss(f"a {parts.scheme} URL")
    if _proxied(parts.scheme, parts.hostname):
        raise Miss("a proxy is set for this host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    wanted = {
        "User-Agent": f"modelsync/{__version__}",
        "Accept-Encoding": "identity",
        **headers,
    }
    for attempt in (1, 2):
        conn = _connection(parts.scheme, parts.netloc)
        try:
            conn.request("GET", path, headers=wanted)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            _drop_connection(url)
            reused = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError))
            if attempt == 2 or not reused:
                raise Miss(type(exc).__name__) from None
    raise AssertionError("unreachable")


def _connections() -> dict[tuple[str, str], http.client.HTTPConnection]:
    conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    return conns


def _connection(scheme: str, netloc: str) -> http.client.HTTPConnection:
    conns = _connections()
    conn = conns.get((scheme, netloc))
    if conn is None:
        if scheme == "https":
            conn = _TlsConnection(netloc, timeout=TIMEOUT, context=_tls_context())
        else:
            conn = _Connection(netloc, timeout=TIMEOUT)
        conns[(scheme, netloc)] = conn
    return conn


def _track(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with _sockets_lock:
        _sockets.add(sock)
    # abort() runs after the run's cancel event is set: whichever of the two sees the
    # socket second shuts it, so none opened meanwhile waits out its timeout.
    cancelled: threading.Event | None = getattr(_local, "cancelled", None)
    if cancelled is not None and cancelled.is_set():
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _track(self.sock)


class _TlsConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _track(self.sock)


def _drop_connection(url: str) -> None:
    """The next request of this thread to that host opens a new connection."""
    parts = urlsplit(url)
    conn = _connections().pop((parts.scheme, parts.netloc), None)
    if conn is not None:
        conn.close()


def abort() -> None:
    """Unblock every fetch now (Ctrl-C, SIGTERM): a read waiting on a slow server would
    otherwise hold the exit for up to TIMEOUT. Those fetches end in Miss."""
    with _sockets_lock:
        sockets = list(_sockets)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _tls_context() -> ssl.SSLContext:
    global _tls
    with _tls_lock:
        if _tls is None:
            bundle = next((os.environ[v] for v in _CA_BUNDLE_ENVS if os.environ.get(v)), None)
            _tls = ssl.create_default_context(cafile=bundle)
        return _tls


def _proxied(scheme: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.rpartition("@")[2].lower()
