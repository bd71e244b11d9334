"""upstream.py: one HEAD against a real local server, and what the bytes really are."""

from __future__ import annotations

import gzip
from pathlib import Path

from modelsync.upstream import Upstream, gunzip_in_place, gzip_encoded, html_page, probe
from tests.servers import FileServer


def test_probe_reads_the_validators_and_follows_redirects(fileserver: FileServer) -> None:
    fileserver.add_bytes("/m.bin", b"x" * 1000)
    fileserver.set_faults("/old.bin", redirect="/m.bin")
    up = probe(fileserver.url_for("/old.bin"), (("X-Test", "1"),))
    assert up is not None and up.length == 1000 and up.etag and up.last_modified
    assert up.content_type == "application/octet-stream" and up.content_encoding == ""
    head = [r for r in fileserver.requests if r.path == "/m.bin"]
    assert [r.method for r in head] == ["HEAD"]
    assert head[0].headers["accept-encoding"] == "identity"
    assert head[0].headers["x-test"] == "1"


def test_a_probe_that_fails_tells_nothing(fileserver: FileServer) -> None:
    assert probe(fileserver.url_for("/missing.bin")) is None
    assert probe("http://127.0.0.1:9/m.bin") is None


def test_any_validator_that_changed_is_named() -> None:
    before = Upstream(etag='"a"', last_modified="Mon", length=10).validators()
    assert Upstream(etag='"a"', last_modified="Mon", length=10).changed_from(before) is None
    assert Upstream(etag='"b"', last_modified="Mon", length=10).changed_from(before) == (
        'ETag "a" → "b"'
    )
    assert Upstream(length=11).changed_from(before) == "Content-Length 10 → 11"
    assert Upstream().changed_from(before) is None  # nothing to compare: not a change


def test_html_pages_and_gzip_bodies_are_recognised(tmp_path: Path) -> None:
    page = tmp_path / "page"
    page.write_bytes(b"\n  <!DOCTYPE HTML><html><body>log in</body></html>")
    model = tmp_path / "model"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert html_page(page) and not html_page(model)

    encoded = tmp_path / "m.bin"
    encoded.write_bytes(gzip.compress(b"weights" * 1000))
    assert not gzip_encoded(encoded, None)  # the server did not say so: left alone
    assert gzip_encoded(encoded, Upstream(content_encoding="gzip"))
    assert gunzip_in_place(encoded) and encoded.read_bytes() == b"weights" * 1000
    assert (
        not gunzip_in_place(model) and model.read_bytes() == b"\x08\x00\x00\x00\x00\x00\x00\x00{}"
    )
