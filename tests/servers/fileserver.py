"""A static file server with ranges, fault injection and optional signed URLs (a fake CDN).

In tests::

    with FileServer(tmp_path) as srv:              # serves tmp_path/<relpath> at /<relpath>
        url = srv.add_bytes("/a/model.bin", data)  # or in-memory content
        srv.faults.rate_limit = 1 << 20            # switch faults at any time
        srv.set_faults("/a/model.bin", fail_first=2, fail_status=503)
        srv.wait_until(lambda: srv.bytes_served() > 1 << 20)  # instead of sleeping
        ...
        assert srv.bytes_served("/a/model.bin") == len(data)

Faults apply to requests that start after they are set. With `require_signature`, it is a
CDN: only URLs from `signed_url()` are served, until `expire_signed_urls()`.

Standalone (the demo)::

    python -m tests.servers.fileserver --dir DIR [--port 0] [--rate-limit 8M]

prints `READY <url>` on stdout once listening, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

from ._core import LOOPBACK, BaseServer, Content, Handler, RequestRecord, serve_until_signal

SIGNATURE_MARK = "SECRETSIG"  # every signature starts with it: grep output/logs for leaks


class FileServer(BaseServer):
    """Serves files under `root` (optional) and registered content, GET and HEAD."""

    def __init__(
        self, root: Path | str | None = None, *, url_host: str = LOOPBACK, port: int = 0
    ) -> None:
        super().__init__(url_host=url_host, port=port)
        self.root = Path(root).resolve() if root is not None else None
        self.require_signature = False  # when True, only URLs from `signed_url()` are served
        self._content: dict[str, Content] = {}
        self._signatures: dict[str, tuple[str, float]] = {}  # signature -> (path, expiry)
        self._changes: dict[str, tuple[int, bytes]] = {}  # path -> (after bytes, new data)

    # -- content -------------------------------------------------------------------------------
    def add_bytes(
        self, path: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Serve `data` at `path` (percent-decoded, e.g. "/dir/a b.bin"); returns its URL."""
        path = _norm(path)
        self._content[path] = Content.of_bytes(data, content_type=content_type)
        return self.url_for(path)

    def add_file(self, path: str, file: Path | str) -> str:
        """Serve a file from anywhere on disk at `path`; returns its URL."""
        path = _norm(path)
        self._content[path] = Content.of_file(Path(file))
        return self.url_for(path)

    def change_after(self, path: str, served: int, data: bytes) -> None:
        """Upstream changes the file: requests of `path` that start once `served` body bytes
        of it went out get `data`, with a new ETag and Last-Modified (a response under way
        keeps sending the old bytes)."""
        self._changes[_norm(path)] = (served, data)

    def _apply_change(self, path: str) -> None:
        change = self._changes.get(path)
        if change is not None and self.bytes_served(path) >= change[0]:
            del self._changes[path]
            old = self._content.get(path)
            mtime = (old.mtime if old else 1_700_000_000.0) + 3600
            self._content[path] = replace(Content.of_bytes(change[1]), mtime=mtime)

    def remove(self, path: str) -> None:
        self._content.pop(_norm(path), None)

    def url_for(self, path: str) -> str:
        return self.url + quote(_norm(path))

    def lookup(self, path: str) -> Content | None:
        content = self._content.get(path)
        if content is not None or self.root is None:
            return content
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            return None
        return Content.of_file(file)

    # -- signed URLs (CDN mode) ------------------------------------------------------------------
    def signed_url(self, path: str, *, ttl: float = 3600.0, filename: str | None = None) -> str:
        """An S3-style pre-signed URL of `path`, valid `ttl` seconds or until expired."""
        path = _norm(path)
        sig = SIGNATURE_MARK + secrets.token_hex(16)
        self._signatures[sig] = (path, time.time() + ttl)
        query = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Expires": str(int(ttl)),
            "Expires": str(int(time.time() + ttl)),
        }
        if filename:
            query["response-content-disposition"] = f'attachment; filename="{filename}"'
        query["X-Amz-Signature"] = sig
        return f"{self.url_for(path)}?{urlencode(query, quote_via=quote)}"

    def expire_signed_urls(self) -> None:
        """Make every URL signed so far expired (403); URLs signed later are valid."""
        self._signatures = {sig: (path, 0.0) for sig, (path, _) in self._signatures.items()}

    def _signature_error(self, rec: RequestRecord) -> str | None:
        sig = parse_qs(rec.query).get("X-Amz-Signature", [""])[0]
        path, expiry = self._signatures.get(sig, ("", 0.0))
        if path != rec.path:
            return "Invalid signature" if sig else "Request is missing a signature"
        return "Request has expired" if time.time() >= expiry else None

    # -- serving -------------------------------------------------------------------------------
    def handle(self, h: Handler, rec: RequestRecord) -> None:
        if rec.method not in ("GET", "HEAD"):
            self.reply(h, rec, 405, b"method not allowed\n", headers={"Allow": "GET, HEAD"})
            return
        f = self.faults_for(rec.path)
        if self.pre_faults(h, rec, f):
            return
        if self.require_signature and (error := self._signature_error(rec)):
            body = f"<Error><Code>AccessDenied</Code><Message>{error}</Message></Error>"
            self.reply(h, rec, 403, body.encode(), content_type="application/xml")
            return
        self._apply_change(rec.path)
        content = self.lookup(rec.path)
        if content is None:
            self.reply(h, rec, 404, b"not found\n")
            return
        headers = {}
        if disposition := parse_qs(rec.query).get("response-content-disposition"):
            headers["Content-Disposition"] = disposition[0]
        self.send_content(h, rec, content, f, headers)


def _norm(path: str) -> str:
    return "/" + path.lstrip("/")


def parse_size(text: str) -> int:
    """'8M' -> 8388608; plain numbers are bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a folder over HTTP with ranges.")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument(
        "--host", default=LOOPBACK, help="host name in the URL (it always binds 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--rate-limit", type=parse_size, default=None, help="bytes/s per connection"
    )
    args = parser.parse_args(argv)

    srv = FileServer(args.dir, url_host=args.host, port=args.port)
    srv.faults.rate_limit = args.rate_limit
    return serve_until_signal(srv, lambda: f"READY {srv.url}")


if __name__ == "__main__":
    sys.exit(main())
