"""Machinery shared by the test servers.

A threaded HTTP/1.1 (keep-alive) server bound to 127.0.0.1 on a free port, a log of every
request, runtime-switchable fault injection, and a ranged, throttled body streamer.
Server subclasses implement `handle(handler, record)`.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import gzip
import hashlib
import io
import itertools
import re
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20
LOOPBACK = "127.0.0.1"


@dataclass
class Faults:
    """How a server misbehaves. Mutate fields at runtime, or use `BaseServer.set_faults`.

    Counted faults (`fail_first`, `drop_*`, `stall_*`) count per URL path; `set_faults` and
    `reset_faults` reset the counters.
    """

    rate_limit: int | None = None  # body bytes/s, per TCP connection (token bucket)
    fail_first: int = 0  # the first N requests of each path get `fail_status`
    fail_status: int = 503  # 429 and 503 carry `Retry-After: 1`
    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_times: int = 1  # ...in the first `drop_times` responses (of each path) that get there
    stall_after: int | None = None  # stop sending after this many body bytes...
    stall_times: int = 1  # ...in that many responses, until `release_stalls()` or `stop()`
    corrupt_at: int | None = None  # flip the byte at this absolute offset wherever it is served
    no_range: bool = False  # ignore Range: always 200 + full body, no Accept-Ranges
    first_byte_delay: float = 0.0  # seconds before the status line
    redirect: str | None = None  # answer `redirect_status` with this Location
    redirect_status: int = 302
    # Hostile servers (tests/commands/test_hostile.py):
    extra_length: int = 0  # announce this many more body bytes than exist, send what exists, close
    endless: bool = False  # 200, no Content-Length, the body then filler until the client hangs up
    gzip: bool = False  # 200 with the body gzip-compressed (Content-Encoding: gzip), asked or not


@dataclass
class RequestRecord:
    """One request as a server saw it; `status`, `length`, `bytes_sent` fill in as it is served."""

    method: str
    target: str  # the raw request target, `/path?query`
    path: str  # percent-decoded path, without the query
    query: str
    headers: dict[str, str]  # header names lower-cased
    range: str | None  # the Range header
    body: bytes  # request body (POST forms)
    conn: int  # number of the TCP connection it came on (1, 2, ...)
    status: int = 0
    length: int | None = None  # Content-Length of the body sent (0 for HEAD)
    bytes_sent: int = 0  # body bytes written
    stalled: bool = False  # held by `stall_after` right now

    @property
    def complete(self) -> bool:
        return self.status != 0 and self.bytes_sent == (self.length or 0)


@dataclass(frozen=True)
class Content:
    """Bytes a server can serve with ranges: in memory or a file on disk."""

    size: int
    etag: str
    mtime: float
    data: bytes | None = None
    file: Path | None = None
    content_type: str = "application/octet-stream"

    @classmethod
    def of_bytes(cls, data: bytes, *, etag: str | None = None, **kw: Any) -> Content:
        etag = etag or f'"{hashlib.sha256(data).hexdigest()}"'
        return cls(size=len(data), etag=etag, mtime=1_700_000_000.0, data=data, **kw)

    @classmethod
    def of_file(cls, file: Path) -> Content:
        st = file.stat()
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        return cls(size=st.st_size, etag=etag, mtime=st.st_mtime, file=file)

    def open(self) -> IO[bytes]:
        if self.file is not None:
            return self.file.open("rb", buffering=0)
        return io.BytesIO(self.data or b"")


class RangeNotSatisfiable(Exception):
    pass


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) of a single-range header; None to serve the whole body."""
    m = _RANGE.fullmatch((header or "").strip())
    if m is None or not (m[1] or m[2]):
        return None  # absent, multi-range or malformed: ignored (RFC 9110 allows it)
    if not m[1]:
        suffix = int(m[2])
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(m[1])
    end = int(m[2]) if m[2] else size - 1
    if m[2] and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)


class _Bucket:
    """Token bucket of one connection; starts empty (no burst)."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = time.monotonic()

    def take(self, n: int, rate: int, stopping: threading.Event) -> None:
        capacity = max(float(n), rate / 20)
        while True:
            now = time.monotonic()
            self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            if self.tokens >= n:
                self.tokens -= n
                return
            if stopping.wait((n - self.tokens) / rate):
                raise ConnectionAbortedError("server stopping")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections and blocked writes give up after this
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.server.owner._next_conn()
        self.bucket = _Bucket()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        self.server.owner._dispatch(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, owner: BaseServer, port: int) -> None:
        self.owner = owner
        self._socks: set[Any] = set()
        self._socks_lock = threading.Lock()
        super().__init__((LOOPBACK, port), Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn() lookup
        self.server_name, self.server_port = LOOPBACK, self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._socks_lock:
            self._socks.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._socks_lock:
            self._socks.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._socks_lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class BaseServer:
    """Start/stop, request log and fault machinery; subclasses implement `handle`.

    Binds 127.0.0.1 on a free port (or `port`); `url` uses `url_host` as host name, so a server
    can pose as another host (`localhost`) on the same loopback address.
    """

    def __init__(self, *, url_host: str = LOOPBACK, port: int = 0) -> None:
        self.url_host = url_host
        self.faults = Faults()
        self.path_faults: dict[str, Faults] = {}
        self._changed = threading.Condition(threading.RLock())
        self._records: list[RequestRecord] = []
        self._counters: dict[tuple[str, str], int] = {}
        self._conns = itertools.count(1)
        self._stopping = threading.Event()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None
        # Bound (so `port` and URLs are known) from construction on; served from start().
        self._httpd: _HTTPServer | None = _HTTPServer(self, port)
        self._port = int(self._httpd.server_address[1])

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Serve; after `stop()`, serve again on the same port."""
        if self._thread is None:
            self._stopping.clear()
            self._release = threading.Event()
            httpd = self._httpd = self._httpd or _HTTPServer(self, self._port)
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{type(self).__name__}:{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection."""
        httpd, self._httpd = self._httpd, None
        thread, self._thread = self._thread, None
        if httpd is None:
            return
        self._stopping.set()
        self._release.set()
        if thread is not None:
            httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://{self.url_host}:{self.port}"

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._changed:
            return list(self._records)

    def reset_log(self) -> None:
        with self._changed:
            self._records.clear()

    def bytes_served(self, path: str | None = None) -> int:
        return sum(r.bytes_sent for r in self.requests if path is None or r.path == path)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate()` is true, re-checked on every request event and body chunk."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _next_conn(self) -> int:
        return next(self._conns)

    # -- faults --------------------------------------------------------------------------------
    def set_faults(self, path: str | None = None, **fields: Any) -> Faults:
        """Replace the faults of the server (or of one path) and reset their counters."""
        faults = Faults(**fields)
        with self._changed:
            if path is None:
                self.faults = faults
                self._counters.clear()
            else:
                self.path_faults[path] = faults
                self._counters = {k: v for k, v in self._counters.items() if k[1] != path}
        return faults

    def reset_faults(self) -> None:
        with self._changed:
            self.faults = Faults()
            self.path_faults.clear()
            self._counters.clear()

    def release_stalls(self) -> None:
        """Let every stalled response go on; later stalls wait for the next call."""
        with self._changed:
            released, self._release = self._release, threading.Event()
        released.set()

    def _stall(self, rec: RequestRecord) -> None:
        with self._changed:
            release = self._release
            rec.stalled = True
            self._changed.notify_all()
        release.wait()
        rec.stalled = False
        if self._stopping.is_set():
            raise ConnectionAbortedError("server stopping")

    def faults_for(self, path: str) -> Faults:
        return copy.copy(self.path_faults.get(path) or self.faults)

    def _take(self, kind: str, path: str, limit: int) -> bool:
        """Count one more `kind` fault on `path` if fewer than `limit` happened yet."""
        with self._changed:
            n = self._counters.get((kind, path), 0)
            if n >= limit:
                return False
            self._counters[(kind, path)] = n + 1
            return True

    # -- request handling ----------------------------------------------------------------------
    def handle(self, h: Handler, rec: RequestRecord) -> None:
        raise NotImplementedError

    def _dispatch(self, h: Handler) -> None:
        split = urlsplit(h.path)
        n = int(h.headers.get("Content-Length") or 0)
        rec = RequestRecord(
            method=h.command,
            target=h.path,
            path=unquote(split.path),
            query=split.query,
            headers={k.lower(): v for k, v in h.headers.items()},
            range=h.headers.get("Range"),
            body=h.rfile.read(n) if n else b"",
            conn=h.conn_id,
        )
        with self._changed:
            self._records.append(rec)
            self._changed.notify_all()
        try:
            self.handle(h, rec)
        except OSError:  # client went away, timeout, or the server is stopping
            h.close_connection = True
        finally:
            self._notify()

    def start_response(
        self, h: Handler, rec: RequestRecord, status: int, headers: Mapping[str, str], length: int
    ) -> None:
        # Log before writing: a client that got the bytes must find them logged.
        rec.status = status
        rec.length = 0 if rec.method == "HEAD" else length
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(length))
        h.end_headers()

    def reply(
        self,
        h: Handler,
        rec: RequestRecord,
        status: int,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.start_response(
            h, rec, status, {"Content-Type": content_type, **(headers or {})}, len(body)
        )
        if rec.method != "HEAD" and body:
            rec.bytes_sent = len(body)
            h.wfile.write(body)

    def pre_faults(self, h: Handler, rec: RequestRecord, f: Faults) -> bool:
        """Apply delay, redirect and injected failures; True when the request was answered."""
        if f.first_byte_delay and self._stopping.wait(f.first_byte_delay):
            raise ConnectionAbortedError("server stopping")
        if f.redirect:
            self.reply(h, rec, f.redirect_status, headers={"Location": f.redirect})
            return True
        if f.fail_first and self._take("fail", rec.path, f.fail_first):
            headers = {"Retry-After": "1"} if f.fail_status in (429, 503) else {}
            body = f"injected failure {f.fail_status}\n".encode()
            self.reply(h, rec, f.fail_status, body, headers=headers)
            return True
        return False

    def send_content(
        self,
        h: Handler,
        rec: RequestRecord,
        content: Content,
        f: Faults,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer GET/HEAD with `content`: single ranges, then body faults."""
        if f.endless or f.gzip:
            self._send_hostile(h, rec, content, f)
            return
        try:
            rng = None if f.no_range else parse_range(rec.range, content.size)
        except RangeNotSatisfiable:
            self.reply(h, rec, 416, headers={"Content-Range": f"bytes */{content.size}"})
            return
        start, end = rng or (0, content.size - 1)
        out = {
            "Content-Type": content.content_type,
            "ETag": content.etag,
            "Last-Modified": email.utils.formatdate(content.mtime, usegmt=True),
        }
        if not f.no_range:
            out["Accept-Ranges"] = "bytes"
        if rng:
            out["Content-Range"] = f"bytes {start}-{end}/{content.size}"
        out.update(headers or {})
        length = end - start + 1
        if f.extra_length:  # a lie: the body ends early and the connection closes
            if rng:
                total = content.size + f.extra_length
                out["Content-Range"] = f"bytes {start}-{end + f.extra_length}/{total}"
            self.start_response(h, rec, 206 if rng else 200, out, length + f.extra_length)
            h.close_connection = True
        else:
            self.start_response(h, rec, 206 if rng else 200, out, length)
        if rec.method != "HEAD" and length:
            self._stream(h, rec, content, start, length, f)

    def _send_hostile(self, h: Handler, rec: RequestRecord, content: Content, f: Faults) -> None:
        """`endless`: the content, then filler until the client hangs up (no length, no
        ranges, the connection closes the body). `gzip`: the whole content compressed."""
        with content.open() as src:
            data = src.read()
        out = {"Content-Type": content.content_type, "ETag": content.etag}
        if f.gzip:
            body = gzip.compress(data, mtime=0)
            out["Content-Encoding"] = "gzip"
            self.start_response(h, rec, 200, out, len(body))
            if rec.method != "HEAD":
                rec.bytes_sent = len(body)
                h.wfile.write(body)
            return
        rec.status, rec.length = 200, None
        h.close_connection = True
        h.send_response(200)
        for name, value in {**out, "Connection": "close"}.items():
            h.send_header(name, value)
        h.end_headers()
        if rec.method == "HEAD":
            return
        filler = bytes(range(256)) * (CHUNK // 256)
        chunks = itertools.chain([data], itertools.repeat(filler))
        rate = f.rate_limit or 0
        for chunk in chunks:
            if self._stopping.is_set():
                raise ConnectionAbortedError("server stopping")
            if rate:
                h.bucket.take(len(chunk), rate, self._stopping)
            h.wfile.write(chunk)
            rec.bytes_sent += len(chunk)
            self._notify()

    def _stream(
        self, h: Handler, rec: RequestRecord, content: Content, start: int, length: int, f: Faults
    ) -> None:
        rate = f.rate_limit or 0
        chunk = min(CHUNK, max(1024, rate // 16)) if rate else CHUNK
        marks = [m for m in (f.drop_after, f.stall_after) if m is not None]
        sent = 0
        with content.open() as src:
            src.seek(start)
            while sent < length:
                if sent == f.drop_after and self._take("drop", rec.path, f.drop_times):
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                if sent == f.stall_after and self._take("stall", rec.path, f.stall_times):
                    self._stall(rec)
                n = min([chunk, length - sent, *(m - sent for m in marks if m > sent)])
                data = src.read(n)
                if not data:
                    raise ConnectionAbortedError("content shorter than announced")
                at = f.corrupt_at
                if at is not None and start + sent <= at < start + sent + len(data):
                    buf = bytearray(data)
                    buf[at - start - sent] ^= 0xFF
                    data = bytes(buf)
                if rate:
                    h.bucket.take(len(data), rate, self._stopping)
                rec.bytes_sent = sent + len(data)
                self._notify()
                h.wfile.write(data)
                sent += len(data)


def serve_until_signal(server: BaseServer, ready: Callable[[], str]) -> int:
    """Standalone mode: start, print `ready()` on stdout, serve until SIGTERM/SIGINT."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: done.set())
    with server:
        print(ready(), flush=True)
        while not done.wait(3600):
            pass
    return 0
