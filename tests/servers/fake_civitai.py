"""A fake Civitai: the v1 model-versions API and the download redirect to a signed CDN URL.

API on `http://127.0.0.1:<port>`, CDN (a signed-URL FileServer) on `http://localhost:<port2>`::

    with FakeCivitai() as civ:
        civ.add_version(128713, files=[("lora.safetensors", data, True)], requires_auth=True)
        civ.token = "civ_testtoken"    # accepted as `Authorization: Bearer` or `?token=`
        # GET {civ.url}/api/v1/model-versions/128713 -> JSON; downloadUrl -> 307 to the CDN
        # GET {civ.url}/api/v1/models/<model id> -> the model, versions newest (last added) first
        # GET {civ.url}/api/v1/model-versions/by-hash/<sha256> -> the version holding that file
        # GET {civ.url}/api/v1/me -> the caller with a valid token, else 401

Without a valid token, a version that `requires_auth` answers per `auth_failure`:
"login-redirect" (the real site: 307 to /login, an HTML page with status 200), "html"
(the HTML login page right away, status 200) or "401" (JSON error).
No BLAKE3 in `hashes` (not in the stdlib; the real API omits hashes it lacks too).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Self
from urllib.parse import parse_qs, quote, urlencode

from ._core import LOOPBACK, BaseServer, Handler, RequestRecord, serve_until_signal
from .fileserver import FileServer, parse_size

DATE = "2024-01-01T00:00:00.000Z"
_FORMATS = {
    ".safetensors": "SafeTensor",
    ".ckpt": "PickleTensor",
    ".pt": "PickleTensor",
    ".pth": "PickleTensor",
    ".bin": "PickleTensor",
    ".gguf": "GGUF",
}
_VERSION = re.compile(r"/api/v1/model-versions/(\d+)")
_BY_HASH = re.compile(r"/api/v1/model-versions/by-hash/([^/]+)")
_DOWNLOAD = re.compile(r"/api/download/models/(\d+)")
_MODEL = re.compile(r"/api/v1/models/(\d+)")
LOGIN_PAGE = (
    b'<!DOCTYPE html><html lang="en"><head><title>Sign In | Civitai</title></head>'
    b'<body><div id="__next"><h1>Sign in to Civitai</h1><p>You need to be logged in to '
    b"download this resource.</p></div></body></html>\n"
)
_file_ids = itertools.count(100_000)


@dataclass
class CivitaiFile:
    name: str
    data: bytes = field(repr=False)
    primary: bool = False
    type: str = "Model"
    format: str = ""  # default: from the extension
    id: int = field(default_factory=lambda: next(_file_ids))

    def __post_init__(self) -> None:
        self.format = self.format or _FORMATS.get(PurePosixPath(self.name).suffix.lower(), "Other")

    def hashes(self) -> dict[str, str]:
        sha = hashlib.sha256(self.data).hexdigest().upper()
        return {
            "AutoV1": hashlib.sha256(self.data[0x100000:0x110000]).hexdigest()[:8].upper(),
            "AutoV2": sha[:10],
            "SHA256": sha,
            "CRC32": f"{zlib.crc32(self.data):08X}",
        }


@dataclass
class CivitaiVersion:
    id: int
    model_id: int
    name: str
    files: list[CivitaiFile]
    requires_auth: bool = False
    model_name: str = "Test model"
    model_type: str = "Checkpoint"
    base_model: str = "SDXL 1.0"


FileSpec = CivitaiFile | tuple[str, bytes] | tuple[str, bytes, bool]


class FakeCivitai(BaseServer):
    """Fake civitai.com; `cdn` is the FileServer that the downloads redirect to."""

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(url_host=LOOPBACK, port=port)
        self.cdn = FileServer(url_host="localhost")
        self.cdn.require_signature = True
        self.token: str | None = None
        self.auth_failure: Literal["login-redirect", "html", "401"] = "login-redirect"
        self.redirect_status = 307
        self.signed_url_ttl = 3600.0
        self.versions: dict[int, CivitaiVersion] = {}

    def start(self) -> Self:
        self.cdn.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.cdn.stop()

    def add_version(
        self,
        version_id: int,
        files: Iterable[FileSpec],
        *,
        requires_auth: bool = False,
        model_id: int | None = None,
        name: str = "v1.0",
        model_type: str = "Checkpoint",
    ) -> CivitaiVersion:
        """Register a model version; files are CivitaiFile or (name, data[, primary]).

        The first file is primary unless one says so.
        """
        specs = [f if isinstance(f, CivitaiFile) else CivitaiFile(*f) for f in files]
        if specs and not any(f.primary for f in specs):
            specs[0].primary = True
        version = CivitaiVersion(
            id=version_id,
            model_id=model_id if model_id is not None else version_id + 1_000_000,
            name=name,
            files=specs,
            requires_auth=requires_auth,
            model_type=model_type,
        )
        self.versions[version_id] = version
        for f in specs:
            self.cdn.add_bytes(self._cdn_path(version, f), f.data)
        return version

    def download_url(self, version_id: int, f: CivitaiFile | None = None) -> str:
        url = f"{self.url}/api/download/models/{version_id}"
        if f is None or f.primary:
            return url
        return f"{url}?{urlencode({'type': f.type, 'format': f.format}, quote_via=quote)}"

    def expire_signed_urls(self) -> None:
        self.cdn.expire_signed_urls()

    @staticmethod
    def _cdn_path(version: CivitaiVersion, f: CivitaiFile) -> str:
        return f"/model/{version.id}/{f.id}/{f.name}"

    # -- serving -------------------------------------------------------------------------------
    def handle(self, h: Handler, rec: RequestRecord) -> None:
        if self.pre_faults(h, rec, self.faults_for(rec.path)):
            return
        if rec.method not in ("GET", "HEAD"):
            self._json(h, rec, 405, {"error": "Method not allowed"})
        elif m := _VERSION.fullmatch(rec.path):
            version = self.versions.get(int(m[1]))
            if version is None:
                self._json(h, rec, 404, {"error": f"No model version with id {m[1]}"})
            else:
                self._json(h, rec, 200, self.version_json(version))
        elif m := _BY_HASH.fullmatch(rec.path):
            self._by_hash(h, rec, m[1].upper())
        elif m := _MODEL.fullmatch(rec.path):
            self._model(h, rec, int(m[1]))
        elif rec.path == "/api/v1/me":
            self._me(h, rec)
        elif m := _DOWNLOAD.fullmatch(rec.path):
            self._download(h, rec, int(m[1]))
        elif rec.path == "/login":
            self.reply(h, rec, 200, LOGIN_PAGE, content_type="text/html; charset=utf-8")
        else:
            self._json(h, rec, 404, {"error": "Not found"})

    def _json(self, h: Handler, rec: RequestRecord, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.reply(h, rec, status, body, content_type="application/json; charset=utf-8")

    def _by_hash(self, h: Handler, rec: RequestRecord, sha256: str) -> None:
        """`GET /api/v1/model-versions/by-hash/{sha256}`: the version holding a file with that
        SHA256 (any case), as `model-versions/{id}` answers; 404 as the real API otherwise."""
        for version in self.versions.values():
            if any(f.hashes()["SHA256"] == sha256 for f in version.files):
                self._json(h, rec, 200, self.version_json(version))
                return
        self._json(h, rec, 404, {"error": "Model not found"})

    def _model(self, h: Handler, rec: RequestRecord, model_id: int) -> None:
        """`GET /api/v1/models/{id}`: the model with its versions, newest (last added) first."""
        versions = [v for v in self.versions.values() if v.model_id == model_id][::-1]
        if not versions:
            self._json(h, rec, 404, {"error": f"No model with id {model_id}"})
            return
        first = versions[0]
        self._json(
            h,
            rec,
            200,
            {
                "id": model_id,
                "name": first.model_name,
                "type": first.model_type,
                "nsfw": False,
                "creator": {"username": "tester"},
                "modelVersions": [
                    {key: value for key, value in self.version_json(v).items() if key != "model"}
                    for v in versions
                ],
            },
        )

    def _me(self, h: Handler, rec: RequestRecord) -> None:
        """`GET /api/v1/me`: the caller; 401 for a missing or wrong token (as the real API)."""
        if not self._authorized(rec):
            self._json(h, rec, 401, {"error": "Unauthorized"})
            return
        me = {"id": 12345, "username": "tester", "tier": "free", "status": "active"}
        self._json(h, rec, 200, me | {"isMember": False, "subscriptions": []})

    def _authorized(self, rec: RequestRecord) -> bool:
        bearer = rec.headers.get("authorization", "").removeprefix("Bearer ").strip()
        token = parse_qs(rec.query).get("token", [bearer])[0]
        return self.token is not None and token == self.token

    def _download(self, h: Handler, rec: RequestRecord, version_id: int) -> None:
        version = self.versions.get(version_id)
        if version is None:
            self._json(h, rec, 404, {"error": f"No model version with id {version_id}"})
            return
        query = parse_qs(rec.query)
        kind, fmt = query.get("type", [None])[0], query.get("format", [None])[0]
        matches = [
            f
            for f in version.files
            if (f.type == kind if kind else f.primary) and (fmt is None or f.format == fmt)
        ]
        if not matches:
            self._json(h, rec, 404, {"error": "File not found"})
            return
        if version.requires_auth and not self._authorized(rec):
            if self.auth_failure == "401":
                msg = "You must be logged in to download this model"
                self._json(h, rec, 401, {"error": "Unauthorized", "message": msg})
            elif self.auth_failure == "html":
                self.reply(h, rec, 200, LOGIN_PAGE, content_type="text/html; charset=utf-8")
            else:
                back = quote(f"/model-versions/{version_id}", safe="")
                location = f"{self.url}/login?returnUrl={back}&reason=download-auth"
                self.reply(h, rec, self.redirect_status, headers={"Location": location})
            return
        f = matches[0]
        location = self.cdn.signed_url(
            self._cdn_path(version, f), ttl=self.signed_url_ttl, filename=f.name
        )
        self.reply(h, rec, self.redirect_status, headers={"Location": location})

    def version_json(self, v: CivitaiVersion) -> dict[str, Any]:
        files = [
            {
                "id": f.id,
                "sizeKB": len(f.data) / 1024,
                "name": f.name,
                "type": f.type,
                "pickleScanResult": "Success",
                "pickleScanMessage": "No Pickle imports",
                "virusScanResult": "Success",
                "virusScanMessage": None,
                "scannedAt": DATE,
                "metadata": {"format": f.format, "size": "pruned", "fp": "fp16"},
                "hashes": f.hashes(),
                "primary": f.primary,
                "downloadUrl": self.download_url(v.id, f),
            }
            for f in v.files
        ]
        return {
            "id": v.id,
            "modelId": v.model_id,
            "name": v.name,
            "createdAt": DATE,
            "updatedAt": DATE,
            "status": "Published",
            "publishedAt": DATE,
            "trainedWords": [],
            "baseModel": v.base_model,
            "baseModelType": "Standard",
            "description": None,
            "air": f"urn:air:sdxl:{v.model_type.lower()}:civitai:{v.model_id}@{v.id}",
            "stats": {"downloadCount": 0, "ratingCount": 0, "rating": 0, "thumbsUpCount": 0},
            "model": {"name": v.model_name, "type": v.model_type, "nsfw": False, "poi": False},
            "files": files,
            "images": [],
            "downloadUrl": self.download_url(v.id),
        }


def main(argv: list[str] | None = None) -> int:
    """Standalone (the demo): prints `READY <api url> <cdn url>`, serves until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Fake Civitai serving local files.")
    parser.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="ID=FILE[,FILE...]",
        help="a model version; its first file is the primary one (repeatable)",
    )
    parser.add_argument("--auth", action="append", default=[], type=int, metavar="ID")
    parser.add_argument("--token", help="the API token that unlocks --auth versions")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=parse_size, help="CDN bytes/s per connection")
    args = parser.parse_args(argv)

    civ = FakeCivitai(port=args.port)
    civ.token = args.token
    civ.cdn.faults.rate_limit = args.rate_limit
    for spec in args.version:
        vid, _, names = spec.partition("=")
        files = [(Path(n).name, Path(n).read_bytes()) for n in names.split(",")]
        civ.add_version(int(vid), files, requires_auth=int(vid) in args.auth)
    return serve_until_signal(civ, lambda: f"READY {civ.url} {civ.cdn.url}")


if __name__ == "__main__":
    sys.exit(main())
