"""Tests of the test servers themselves: ranges, faults, logs, and the fake hubs' protocols."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from modelsync.aria2 import find_aria2c
from tests.servers import SIGNATURE_MARK, FakeCivitai, FakeHub, FileServer

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_testtoken0123456789"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Response = tuple[int, dict[str, str], bytes]


def fetch(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Response:
    """One request, redirects not followed; header names lower-cased."""
    parts = urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        if own:
            conn.close()


def follow(url: str, headers: Mapping[str, str] | None = None) -> tuple[str, Response]:
    """GET following redirects; like browsers, drop Authorization when the host changes."""
    hdrs = dict(headers or {})
    for _ in range(10):
        status, got, body = fetch(url, headers=hdrs)
        if status not in (301, 302, 303, 307, 308):
            return url, (status, got, body)
        nxt = urljoin(url, got["location"])
        if urlsplit(nxt).netloc != urlsplit(url).netloc:
            hdrs.pop("Authorization", None)
        url = nxt
    raise AssertionError("too many redirects")


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "disk.bin").write_bytes(payload(5000, seed=1))
    with FileServer(tmp_path) as srv:
        srv.add_bytes("/mem.bin", payload(10_000))
        yield srv


# -- FileServer: content, ranges, log ----------------------------------------------------------


def test_get_head_and_request_log(files: FileServer) -> None:
    status, headers, body = fetch(files.url + "/dir/disk.bin", headers={"X-Test": "1"})
    assert (status, body) == (200, payload(5000, seed=1))
    assert headers["content-length"] == "5000"
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"] and headers["last-modified"]

    status, headers, body = fetch(files.url + "/mem.bin", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "10000")

    assert fetch(files.url + "/nope.bin")[0] == 404
    get, head, missing = files.requests
    assert (get.method, get.path, get.status, get.bytes_sent) == ("GET", "/dir/disk.bin", 200, 5000)
    assert get.headers["x-test"] == "1" and get.range is None and get.complete
    assert (head.method, head.status, head.bytes_sent, head.length) == ("HEAD", 200, 0, 0)
    assert missing.status == 404
    assert files.bytes_served("/dir/disk.bin") == 5000
    files.reset_log()
    assert files.requests == [] and files.bytes_served() == 0


@pytest.mark.parametrize(
    ("range_", "status", "start", "end"),
    [
        ("bytes=2-5", 206, 2, 5),
        ("bytes=9000-", 206, 9000, 9999),
        ("bytes=-100", 206, 9900, 9999),
        ("bytes=9990-20000", 206, 9990, 9999),
        ("bytes=0-1,5-6", 200, 0, 9999),  # multi-range: ignored
        ("bytes=5-2", 200, 0, 9999),  # invalid: ignored
    ],
)
def test_ranges(files: FileServer, range_: str, status: int, start: int, end: int) -> None:
    got_status, headers, body = fetch(files.url + "/mem.bin", headers={"Range": range_})
    assert got_status == status
    assert body == payload(10_000)[start : end + 1]
    assert headers["content-length"] == str(end - start + 1)
    if status == 206:
        assert headers["content-range"] == f"bytes {start}-{end}/10000"
    assert files.requests[-1].range == range_


@pytest.mark.parametrize("range_", ["bytes=10000-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_range(files: FileServer, range_: str) -> None:
    status, headers, body = fetch(files.url + "/mem.bin", headers={"Range": range_})
    assert (status, headers["content-range"], body) == (416, "bytes */10000", b"")


def test_keep_alive_reuses_one_connection(files: FileServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=30)
    try:
        for r in ("bytes=0-9", "bytes=10-19", "bytes=20-29"):
            assert fetch(files.url + "/mem.bin", headers={"Range": r}, conn=conn)[0] == 206
    finally:
        conn.close()
    assert len({r.conn for r in files.requests}) == 1


def test_paths_stay_inside_root(files: FileServer, tmp_path: Path) -> None:
    (tmp_path.parent / "secret.txt").write_text("no")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/dir", "/dir/"):
        assert fetch(files.url + path)[0] == 404


def test_parallel_ranged_download_reassembles(files: FileServer) -> None:
    data = payload(16 << 20, seed=7)
    url = files.add_bytes("/big.bin", data)
    seg = len(data) // 16
    ranges = [f"bytes={i * seg}-{(i + 1) * seg - 1}" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(lambda r: fetch(url, headers={"Range": r})[2], ranges))
    assert b"".join(parts) == data
    assert len({r.conn for r in files.requests}) == 16


# -- FileServer: faults ------------------------------------------------------------------------


def test_fail_first_counts_per_path(files: FileServer) -> None:
    files.set_faults(fail_first=2, fail_status=503)
    for _ in range(2):
        status, headers, _ = fetch(files.url + "/mem.bin")
        assert (status, headers["retry-after"]) == (503, "1")
    assert fetch(files.url + "/mem.bin")[0] == 200
    assert fetch(files.url + "/dir/disk.bin")[0] == 503  # its own count

    files.set_faults("/dir/disk.bin", fail_first=1, fail_status=500)
    status, headers, _ = fetch(files.url + "/dir/disk.bin")
    assert status == 500 and "retry-after" not in headers
    assert fetch(files.url + "/dir/disk.bin")[0] == 200


def test_drop_after_cuts_the_body_then_recovers(files: FileServer) -> None:
    files.faults.drop_after = 1000
    with pytest.raises(http.client.IncompleteRead) as exc:
        fetch(files.url + "/mem.bin")
    assert len(exc.value.partial) == 1000
    assert fetch(files.url + "/mem.bin")[2] == payload(10_000)  # drop_times=1: done
    first, second = files.requests
    assert (first.bytes_sent, first.complete, second.complete) == (1000, False, True)


def test_corrupt_at_flips_one_byte_wherever_served(files: FileServer) -> None:
    data = payload(10_000)
    files.faults.corrupt_at = 5000
    body = fetch(files.url + "/mem.bin")[2]
    assert [i for i in range(len(data)) if body[i] != data[i]] == [5000]
    assert fetch(files.url + "/mem.bin", headers={"Range": "bytes=0-4999"})[2] == data[:5000]
    part = fetch(files.url + "/mem.bin", headers={"Range": "bytes=4990-5010"})[2]
    assert part[10] == data[5000] ^ 0xFF and part[:10] == data[4990:5000]


def test_no_range_serves_everything(files: FileServer) -> None:
    files.faults.no_range = True
    status, headers, body = fetch(files.url + "/mem.bin", headers={"Range": "bytes=0-9"})
    assert (status, len(body)) == (200, 10_000)
    assert "accept-ranges" not in headers and "content-range" not in headers


def test_redirect_per_path(files: FileServer) -> None:
    files.set_faults("/old.bin", redirect=files.url + "/mem.bin")
    url, (status, _, body) = follow(files.url + "/old.bin")
    assert (url, status, body) == (files.url + "/mem.bin", 200, payload(10_000))
    assert [r.status for r in files.requests] == [302, 200]


def test_rate_limit_per_connection(files: FileServer) -> None:
    files.faults.rate_limit = 256 << 10
    files.add_bytes("/64k.bin", payload(64 << 10))
    t0 = time.monotonic()
    assert len(fetch(files.url + "/64k.bin")[2]) == 64 << 10
    assert time.monotonic() - t0 >= 0.2  # 64 KiB at 256 KiB/s, no initial burst


def test_first_byte_delay(files: FileServer) -> None:
    files.faults.first_byte_delay = 0.3
    t0 = time.monotonic()
    assert fetch(files.url + "/mem.bin", method="HEAD")[0] == 200
    assert time.monotonic() - t0 >= 0.3


def test_stall_until_released(files: FileServer) -> None:
    files.faults.stall_after = 1000
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(fetch(files.url + "/mem.bin")[2]))
    reader.start()
    assert files.wait_until(lambda: any(r.stalled for r in files.requests))
    assert files.bytes_served("/mem.bin") == 1000 and not files.requests[0].complete
    files.release_stalls()
    reader.join(10)
    assert result == [payload(10_000)]


def test_extra_length_announces_more_than_it_sends(files: FileServer) -> None:
    files.faults.extra_length = 100
    with pytest.raises(http.client.IncompleteRead) as exc:
        fetch(files.url + "/mem.bin")
    assert exc.value.partial == payload(10_000)  # all of it, then the connection closes
    status, headers, _ = fetch(files.url + "/mem.bin", method="HEAD")
    assert (status, headers["content-length"]) == (200, "10100")


def test_endless_body_never_ends(files: FileServer) -> None:
    files.faults.endless = True
    conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=30)
    try:
        conn.request("GET", "/mem.bin")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") is None
        body = resp.read(3 << 20)  # far past the content: filler keeps coming
        assert body[:10_000] == payload(10_000) and len(body) == 3 << 20
    finally:
        conn.close()


def test_gzip_sends_the_body_compressed_asked_or_not(files: FileServer) -> None:
    files.faults.gzip = True
    status, headers, body = fetch(files.url + "/mem.bin", headers={"Range": "bytes=0-9"})
    assert (status, headers["content-encoding"]) == (200, "gzip")  # and the Range ignored
    assert gzip.decompress(body) == payload(10_000)
    status, headers, _ = fetch(files.url + "/mem.bin", method="HEAD")
    assert headers["content-encoding"] == "gzip"


def test_change_after_serves_a_new_version(files: FileServer) -> None:
    new = payload(10_000, seed=9)
    files.change_after("/mem.bin", 15_000, new)
    _, first, body = fetch(files.url + "/mem.bin")
    assert body == payload(10_000)
    assert fetch(files.url + "/mem.bin", headers={"Range": "bytes=0-4999"})[2] == body[:5000]
    # 15 000 bytes served: from the next request on, another file, another ETag.
    _, second, body = fetch(files.url + "/mem.bin", headers={"Range": "bytes=5000-"})
    assert body == new[5000:]
    assert second["etag"] != first["etag"]
    assert second["last-modified"] != first["last-modified"]


def test_signed_urls(files: FileServer) -> None:
    files.require_signature = True
    status, _, body = fetch(files.url + "/mem.bin")
    assert status == 403 and b"AccessDenied" in body
    signed = files.signed_url("/mem.bin", filename="model.bin")
    assert SIGNATURE_MARK in signed
    status, headers, body = fetch(signed)
    assert (status, body) == (200, payload(10_000))
    assert headers["content-disposition"] == 'attachment; filename="model.bin"'
    # a signature is bound to its path
    other = files.signed_url("/dir/disk.bin")
    assert fetch(other.replace("/dir/disk.bin", "/mem.bin"))[0] == 403
    files.expire_signed_urls()
    status, _, body = fetch(signed)
    assert status == 403 and b"expired" in body
    assert fetch(files.signed_url("/mem.bin"))[0] == 200


def test_stop_ends_open_connections(tmp_path: Path) -> None:
    srv = FileServer(tmp_path).start()
    srv.add_bytes("/x", payload(1 << 20))
    srv.faults.stall_after = 10
    errors: list[BaseException] = []

    def read() -> None:
        try:
            fetch(srv.url + "/x")
        except (OSError, http.client.HTTPException) as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    assert srv.wait_until(lambda: any(r.stalled for r in srv.requests))
    srv.stop()
    reader.join(10)
    assert not reader.is_alive() and len(errors) == 1


def test_restart_on_the_same_port(tmp_path: Path) -> None:
    srv = FileServer(tmp_path)
    url = srv.add_bytes("/x", b"x")  # port and URLs are known before start()
    with srv:
        assert fetch(url)[2] == b"x"
    with pytest.raises(ConnectionRefusedError):
        fetch(url)
    with srv:  # an outage, then the same server is back
        assert fetch(url)[2] == b"x"


def test_aria2c_segmented_download_with_drops(files: FileServer, tmp_path: Path) -> None:
    aria2c = find_aria2c()  # the one modelsync runs (the wheel's when none is on PATH)
    data = payload(8 << 20, seed=3)
    url = files.add_bytes("/model.safetensors", data)
    files.set_faults(drop_after=300_000, drop_times=3)
    out = tmp_path / "out"
    subprocess.run(
        [
            *(aria2c, "-x16", "-s16", "-k1M", "--max-tries=5", "--file-allocation=none"),
            *("-q", "-d", str(out), "-o", "m.bin", url),
        ],
        check=True,
        timeout=60,
    )
    assert (out / "m.bin").read_bytes() == data
    assert len({r.conn for r in files.requests}) > 1
    dropped = [r for r in files.requests if not r.complete and r.bytes_sent == 300_000]
    assert len(dropped) == 3  # (aria2 may also hang up on an unranged GET it no longer needs)


@contextlib.contextmanager
def standalone(module: str, *args: str) -> Iterator[list[str]]:
    """Run `python -m tests.servers.<module>`; yields the URLs of its READY line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tests.servers.{module}", *args, "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        ready, *urls = proc.stdout.readline().split()
        assert ready == "READY" and urls[0].startswith("http://127.0.0.1:")
        yield urls
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_standalone_fileserver(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"hello")
    with standalone("fileserver", "--dir", str(tmp_path), "--rate-limit", "1M") as (url,):
        assert fetch(url + "/a.bin")[2] == b"hello"


def test_standalone_fake_hub_and_civitai(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "m.safetensors").write_bytes(b"weights")
    with standalone("fake_hf", "--repo", f"org/name={tmp_path}", "--token", TOKEN) as urls:
        hub_url, cdn_url = urls
        url = hf_hub_url("org/name", "unet/m.safetensors", endpoint=hub_url)
        meta = get_hf_file_metadata(url, token=TOKEN)
        assert meta.etag == sha256(b"weights") and meta.location.startswith(cdn_url)
    lora = tmp_path / "unet" / "m.safetensors"
    with standalone("fake_civitai", "--version", f"7={lora}") as (api_url, cdn_url):
        doc = json.loads(fetch(api_url + "/api/v1/model-versions/7")[2])
        assert doc["files"][0]["name"] == "m.safetensors"
        final, (_, _, body) = follow(doc["downloadUrl"])
        assert final.startswith(cdn_url) and body == b"weights"


# -- FakeHub through the real huggingface_hub ------------------------------------------------------

MODEL = payload(300_000, seed=11)
CONFIG = b'{"model_type": "unet"}'


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.token = TOKEN
        hub.add_repo("org/model", {"unet/model.safetensors": MODEL, "config.json": CONFIG})
        hub.add_repo("org/model", {"unet/model.safetensors": b"v2"}, revision="v2")
        hub.add_repo("org/gated", {"w.safetensors": MODEL}, gated=True)
        hub.add_repo("org/private", {"w.safetensors": MODEL}, private=True)
        hub.add_repo("org/data", {"train.parquet": b"rows" * 1000}, repo_type="dataset")
        yield hub


def test_hf_file_metadata_redirects_to_cdn(hub: FakeHub) -> None:
    url = hf_hub_url("org/model", "unet/model.safetensors", endpoint=hub.url)
    assert url == hub.resolve_url("org/model", "unet/model.safetensors")
    meta = get_hf_file_metadata(url, token=False)
    assert meta.commit_hash == hub.repos["model", "org/model"].branches["main"]
    assert (meta.etag, meta.size) == (sha256(MODEL), len(MODEL))
    assert hub.cdn.url.startswith("http://localhost:")
    assert meta.location.startswith(hub.cdn.url + "/")
    assert SIGNATURE_MARK in meta.location
    head = hub.requests[-1]
    assert (head.method, head.status) == ("HEAD", 302)
    assert fetch(meta.location)[2] == MODEL


def test_hf_small_non_lfs_file_is_served_by_the_hub(hub: FakeHub) -> None:
    hub.lfs_threshold = 1024
    url = hf_hub_url("org/model", "config.json", endpoint=hub.url)
    meta = get_hf_file_metadata(url, token=False)
    blob = hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    assert (meta.etag, meta.size, meta.location) == (blob, len(CONFIG), url)
    assert fetch(url, headers={"Range": "bytes=1-5"})[2] == CONFIG[1:6]


def test_hf_download_sends_token_to_hub_only(hub: FakeHub, tmp_path: Path) -> None:
    path = hf_hub_download(
        "org/gated", "w.safetensors", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN
    )
    assert Path(path).read_bytes() == MODEL
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    assert hub.cdn.requests and hub.cdn.bytes_served() == len(MODEL)
    assert not any("authorization" in r.headers for r in hub.cdn.requests)


def test_hf_dataset_and_revisions(hub: FakeHub) -> None:
    url = hf_hub_url("org/data", "train.parquet", repo_type="dataset", endpoint=hub.url)
    assert "/datasets/org/data/resolve/main/" in url
    assert get_hf_file_metadata(url, token=False).size == 4000
    v2 = hub.repos["model", "org/model"].branches["v2"]
    for rev in ("v2", v2):
        url = hf_hub_url("org/model", "unet/model.safetensors", revision=rev, endpoint=hub.url)
        meta = get_hf_file_metadata(url, token=False)
        assert (meta.commit_hash, meta.etag) == (v2, sha256(b"v2"))


def test_hf_renamed_repo_follows_relative_redirect(hub: FakeHub) -> None:
    hub.renamed["old-org/model"] = "org/model"
    url = hf_hub_url("old-org/model", "unet/model.safetensors", endpoint=hub.url)
    assert get_hf_file_metadata(url, token=False).etag == sha256(MODEL)
    assert [r.status for r in hub.requests] == [307, 302]


@pytest.mark.parametrize(
    ("repo", "filename", "revision", "token", "error", "status"),
    [
        ("org/gated", "w.safetensors", "main", False, GatedRepoError, 401),
        ("org/gated", "w.safetensors", "main", "hf_ungranted", GatedRepoError, 403),
        ("org/model", "config.json", "nope", False, RevisionNotFoundError, 404),
        ("org/model", "missing.bin", "main", False, EntryNotFoundError, 404),
        ("org/missing", "a.bin", "main", False, RepositoryNotFoundError, 401),
        ("org/missing", "a.bin", "main", TOKEN, RepositoryNotFoundError, 404),
        ("org/private", "w.safetensors", "main", False, RepositoryNotFoundError, 401),
        ("org/model", "config.json", "main", "hf_invalid", HfHubHTTPError, 401),
    ],
)
def test_hf_errors(
    hub: FakeHub,
    repo: str,
    filename: str,
    revision: str,
    token: str | bool,
    error: type[Exception],
    status: int,
) -> None:
    hub.ungranted_tokens.add("hf_ungranted")
    url = hf_hub_url(repo, filename, revision=revision, endpoint=hub.url)
    with pytest.raises(error) as exc:
        get_hf_file_metadata(url, token=token)
    assert hub.requests[-1].status == status
    if token == "hf_invalid":  # a bad token is not "repo not found"
        assert not isinstance(exc.value, RepositoryNotFoundError)


def test_hf_private_repo_with_token(hub: FakeHub) -> None:
    url = hf_hub_url("org/private", "w.safetensors", endpoint=hub.url)
    assert get_hf_file_metadata(url, token=TOKEN).size == len(MODEL)


def test_hf_api(hub: FakeHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    commit = hub.repos["model", "org/model"].branches["main"]
    infos = api.get_paths_info("org/model", ["unet/model.safetensors", "unet", "nope"])
    file, folder = infos
    assert (file.path, file.size) == ("unet/model.safetensors", len(MODEL))
    assert file.lfs is not None and file.lfs.sha256 == sha256(MODEL)
    assert folder.path == "unet"
    assert hub.requests[-1].method == "POST"

    info = api.model_info("org/model", revision="main", files_metadata=True)
    assert info.sha == commit
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert siblings["unet/model.safetensors"].lfs.sha256 == sha256(MODEL)  # type: ignore[union-attr]
    assert api.model_info("org/gated").gated == "manual"  # metadata of gated repos is public

    data = api.dataset_info("org/data", files_metadata=True)
    assert [s.rfilename for s in data.siblings or []] == ["train.parquet"]

    refs = api.list_repo_refs("org/model")
    assert {b.name for b in refs.branches} == {"main", "v2"}
    tree = api.list_repo_tree("org/model", recursive=True)
    assert sorted(e.path for e in tree) == ["config.json", "unet", "unet/model.safetensors"]
    with pytest.raises(RevisionNotFoundError):
        api.get_paths_info("org/model", ["config.json"], revision="nope")


def test_hf_signed_urls_expire(hub: FakeHub) -> None:
    url = hf_hub_url("org/model", "unet/model.safetensors", endpoint=hub.url)
    old = get_hf_file_metadata(url, token=False).location
    hub.expire_signed_urls()
    assert fetch(old)[0] == 403
    new = get_hf_file_metadata(url, token=False).location
    assert new != old and fetch(new)[2] == MODEL


def test_hf_cdn_faults(hub: FakeHub) -> None:
    hub.cdn.faults.drop_after = 1000
    url = hf_hub_url("org/model", "unet/model.safetensors", endpoint=hub.url)
    location = get_hf_file_metadata(url, token=False).location
    with pytest.raises(http.client.IncompleteRead):
        fetch(location)
    assert fetch(location, headers={"Range": "bytes=1000-"})[2] == MODEL[1000:]


# -- FakeCivitai -------------------------------------------------------------------------------

CIV_TOKEN = "civ_testtoken"
LORA = payload(200_000, seed=21)


@pytest.fixture
def civ() -> Iterator[FakeCivitai]:
    with FakeCivitai() as civ:
        civ.token = CIV_TOKEN
        civ.add_version(101, [("lora.safetensors", LORA), ("notes.zip", b"zip")])
        civ.add_version(202, [("private.safetensors", LORA, True)], requires_auth=True)
        yield civ


def test_civitai_model_version_json(civ: FakeCivitai) -> None:
    status, headers, body = fetch(civ.url + "/api/v1/model-versions/101")
    assert status == 200 and headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert (doc["id"], doc["downloadUrl"]) == (101, civ.url + "/api/download/models/101")
    lora, notes = doc["files"]
    assert (lora["name"], lora["primary"], notes["primary"]) == ("lora.safetensors", True, False)
    assert lora["hashes"]["SHA256"] == sha256(LORA).upper()
    assert lora["hashes"]["AutoV2"] == sha256(LORA).upper()[:10]
    assert lora["sizeKB"] == pytest.approx(len(LORA) / 1024)
    assert lora["downloadUrl"] == doc["downloadUrl"]
    assert follow(notes["downloadUrl"])[1][2] == b"zip"

    status, _, body = fetch(civ.url + "/api/v1/model-versions/999")
    assert status == 404 and "error" in json.loads(body)


def test_civitai_version_by_hash(civ: FakeCivitai) -> None:
    notes = sha256(b"zip")
    for digest in (sha256(LORA), sha256(LORA).upper(), notes):  # any file, either case
        status, _, body = fetch(f"{civ.url}/api/v1/model-versions/by-hash/{digest}")
        doc = json.loads(body)
        assert (status, doc["id"]) == (200, 101)
        assert digest.upper() in [f["hashes"]["SHA256"] for f in doc["files"]]
    status, _, body = fetch(f"{civ.url}/api/v1/model-versions/by-hash/{sha256(b'unknown')}")
    assert (status, json.loads(body)) == (404, {"error": "Model not found"})


def test_civitai_download_redirects_to_signed_cdn(civ: FakeCivitai) -> None:
    status, headers, _ = fetch(civ.url + "/api/download/models/101")
    assert status == 307 and headers["location"].startswith(civ.cdn.url)
    assert SIGNATURE_MARK in headers["location"]
    assert fetch(headers["location"])[2] == LORA
    civ.expire_signed_urls()
    assert fetch(headers["location"])[0] == 403


@pytest.mark.parametrize(
    ("mode", "status", "final_type"),
    [("login-redirect", 307, "text/html"), ("html", 200, "text/html"), ("401", 401, "json")],
)
def test_civitai_auth_failure_modes(
    civ: FakeCivitai, mode: str, status: int, final_type: str
) -> None:
    civ.auth_failure = mode  # type: ignore[assignment]
    url = civ.url + "/api/download/models/202"
    assert fetch(url)[0] == status
    fetch(url, headers={"Authorization": "Bearer wrong"})
    _, (_, headers, body) = follow(url)
    assert final_type in headers["content-type"]
    assert body != LORA
    assert not civ.cdn.requests


@pytest.mark.parametrize("how", ["header", "query"])
def test_civitai_token_never_reaches_cdn(civ: FakeCivitai, how: str) -> None:
    url = civ.url + "/api/download/models/202"
    headers = {"Authorization": f"Bearer {CIV_TOKEN}"} if how == "header" else {}
    if how == "query":
        url += f"?token={CIV_TOKEN}"
    final, (status, _, body) = follow(url, headers)
    assert (status, body) == (200, LORA) and final.startswith(civ.cdn.url)
    assert civ.requests[0].status == 307
    (cdn_request,) = civ.cdn.requests
    assert "authorization" not in cdn_request.headers and CIV_TOKEN not in cdn_request.target
