"""A fake Hugging Face Hub (and its CDN) speaking the protocol huggingface_hub 2.x uses.

Hub: `http://127.0.0.1:<port>`; CDN: `http://localhost:<port2>` (another host name, so the
Authorization header must never reach it). Usage::

    with FakeHub() as hub:
        commit = hub.add_repo("org/name", files={"unet/model.safetensors": data})
        hub.token = "hf_testtoken"        # the token that unlocks gated and private repos
        hub.lfs_threshold = 1024          # smaller files: served by the hub itself, no sha256
        hub.cdn.faults.rate_limit = 1 << 20   # the CDN is a FileServer: faults, log, ranges
        hub.expire_signed_urls()          # CDN URLs handed out so far now answer 403
        hub.renamed["old/name"] = "org/name"  # 307 to the new name (same origin)
        # GET {hub.url}/api/whoami-v2 -> the user of a valid token, else 401
        assert not any("authorization" in r.headers for r in hub.cdn.requests)

Standalone (the demo): `python -m tests.servers.fake_hf --repo org/name=DIR [--gated org/name]
[--token T] [--rate-limit 8M]` prints `READY <hub url> <cdn url>`.

Pointing huggingface_hub at it. `huggingface_hub.constants.ENDPOINT` is read from HF_ENDPOINT
once, at import, and the module-level helpers (`huggingface_hub.model_info`, `get_paths_info`,
...) are bound to an `HfApi()` built at import too; setting HF_ENDPOINT later changes neither.
So in-process, pass the endpoint explicitly everywhere::

    url = hf_hub_url("org/name", "unet/model.safetensors", revision="main", endpoint=hub.url)
    meta = get_hf_file_metadata(url, token=False)          # 302 -> meta.location on the CDN
    HfApi(endpoint=hub.url).get_paths_info("org/name", ["unet/model.safetensors"])
    hf_hub_download("org/name", "unet/model.safetensors", endpoint=hub.url, cache_dir=...)

Code under test should read `os.environ["HF_ENDPOINT"]` at call time and pass it as
`endpoint=` (then `monkeypatch.setenv("HF_ENDPOINT", hub.url)` works), or run in a subprocess
with HF_ENDPOINT in its environment. Also pass `token=False` (or a token) explicitly:
`token=None` reads HF_TOKEN / the token file of the machine.

Protocol notes (huggingface_hub 2.4, `file_download.get_hf_file_metadata`):
- metadata is one `HEAD /{repo}/resolve/{rev}/{path}` (`/datasets/...` for datasets) with
  redirects not followed, except to the same origin or a known Hub origin (relative redirects,
  renamed repos); a 302 to another origin ends the walk and the metadata is read off the 302:
  `X-Repo-Commit`, `X-Linked-Etag` (the LFS sha256, quoted), `X-Linked-Size`, `Location`.
  Without `X-Linked-*` (a small, non-LFS file) etag = `ETag` (a git sha1, not a sha256) and
  size = Content-Length.
- errors are typed by the `X-Error-Code` header (RepoNotFound, RevisionNotFound,
  EntryNotFound, GatedRepo); a 401 whose `X-Error-Message` is "Invalid credentials in
  Authorization header" (a bad token, even on a public repo) is a plain HfHubHTTPError.
- like the real Hub, a missing or private repo answers 401 to an anonymous request and 404
  to an authenticated one, both `X-Error-Code: RepoNotFound`; gated repos show their metadata
  (API) to everyone, but `resolve` needs a granted token (401/403, `GatedRepo`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ._core import LOOPBACK, BaseServer, Content, Faults, Handler, RequestRecord, serve_until_signal
from .fileserver import FileServer, parse_size

RepoType = Literal["model", "dataset"]
DATE = "2024-01-01T00:00:00.000Z"
_API_WORDS = {"revision", "paths-info", "refs", "tree"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes = field(repr=False)
    sha256: str

    @classmethod
    def of(cls, path: str, data: bytes) -> HubFile:
        return cls(path, data, hashlib.sha256(data).hexdigest())

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer file that git stores instead of the content."""
        spec = "https://git-lfs.github.com/spec/v1"
        return f"version {spec}\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass
class HubRepo:
    repo_id: str
    repo_type: RepoType
    gated: bool = False
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)

    def commit_of(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class FakeHub(BaseServer):
    """Fake huggingface.co: resolve (302 to a signed CDN URL), the repo API, typed errors."""

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(url_host=LOOPBACK, port=port)
        self.cdn = FileServer(url_host="localhost")
        self.cdn.require_signature = True
        self.token: str | None = None  # granted access to everything
        self.ungranted_tokens: set[str] = set()  # valid tokens without access to gated/private
        self.lfs_threshold = 0  # files of at least this size are LFS (0: all of them)
        self.signed_url_ttl = 3600.0
        self.repos: dict[tuple[RepoType, str], HubRepo] = {}
        self.renamed: dict[str, str] = {}  # old repo id -> new one (answered with 307)
        # Another server holding the CDN's files at the same paths (benchmarks: nginx,
        # capped like a real CDN): resolve then redirects there, unsigned.
        self.cdn_base: str | None = None

    def start(self) -> Self:
        self.cdn.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.cdn.stop()

    # -- registration --------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        revision: str = "main",
        commit: str | None = None,
        gated: bool = False,
        private: bool = False,
        repo_type: RepoType = "model",
    ) -> str:
        """Set branch `revision` of the repo to a commit holding `files`; returns the commit.

        Calling it again with another revision adds a branch; gated/private apply repo-wide.
        """
        hub_files = {p.strip("/"): HubFile.of(p.strip("/"), d) for p, d in files.items()}
        if commit is None:
            digest = hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode())
            for f in sorted(hub_files.values(), key=lambda f: f.path):
                digest.update(f"{f.path}:{f.sha256}".encode())
            commit = digest.hexdigest()
        repo = self.repos.setdefault((repo_type, repo_id), HubRepo(repo_id, repo_type))
        repo.gated, repo.private = gated, private
        repo.branches[revision] = commit
        repo.commits[commit] = hub_files
        for f in hub_files.values():
            self.cdn.add_bytes(self.cdn_path(f), f.data)
        return commit

    def resolve_url(
        self, repo_id: str, path: str, revision: str = "main", repo_type: RepoType = "model"
    ) -> str:
        prefix = "/datasets" if repo_type == "dataset" else ""
        return f"{self.url}{prefix}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def expire_signed_urls(self) -> None:
        """CDN URLs handed out so far answer 403 from now on (resolve again for a fresh one)."""
        self.cdn.expire_signed_urls()

    def is_lfs(self, f: HubFile) -> bool:
        return f.size >= self.lfs_threshold

    @staticmethod
    def cdn_path(f: HubFile) -> str:
        return f"/repos/{f.sha256[:2]}/{f.sha256[2:4]}/{f.sha256}"

    # -- routing -------------------------------------------------------------------------------
    def handle(self, h: Handler, rec: RequestRecord) -> None:
        if self.pre_faults(h, rec, self.faults_for(rec.path)):
            return
        auth = self._auth(rec)
        if auth == "invalid":
            msg = "Invalid credentials in Authorization header"
            self._error(h, rec, 401, None, msg)
            return
        raw = urlsplit(rec.target).path
        for old, new in self.renamed.items():
            if f"/{old}/" in raw:
                new_target = rec.target.replace(f"/{old}/", f"/{new}/", 1)
                self.reply(h, rec, 307, headers={"Location": new_target})
                return
        segs = [unquote(s) for s in raw.split("/")[1:]]
        if segs == ["api", "whoami-v2"] and rec.method == "GET":
            self._whoami(h, rec, auth)
            return
        if segs[:1] == ["api"] and len(segs) > 2 and segs[1] in ("models", "datasets"):
            self._api(h, rec, "model" if segs[1] == "models" else "dataset", segs[2:], auth)
            return
        repo_type: RepoType = "model"
        if segs[:1] == ["datasets"]:
            repo_type, segs = "dataset", segs[1:]
        if "resolve" in segs[1:] and rec.method in ("GET", "HEAD"):
            i = segs.index("resolve", 1)
            if len(segs) >= i + 3:
                self._resolve(
                    h, rec, repo_type, "/".join(segs[:i]), segs[i + 1], segs[i + 2 :], auth
                )
                return
        self._error(h, rec, 404, None, "Sorry, we can't find the page you are looking for.")

    def _whoami(self, h: Handler, rec: RequestRecord, auth: str) -> None:
        """`GET /api/whoami-v2`: the token's user; 401 without a token (a bad one never
        gets here: it is answered 401 before routing, as every other request)."""
        if auth == "none":
            self._error(h, rec, 401, None, "Invalid username or password.")
            return
        me = {"type": "user", "name": "tester", "fullname": "Test User", "orgs": []}
        role = "read" if auth == "granted" else "fineGrained"
        self._json(h, rec, me | {"auth": {"type": "access_token", "accessToken": {"role": role}}})

    def _auth(self, rec: RequestRecord) -> Literal["none", "granted", "ungranted", "invalid"]:
        value = rec.headers.get("authorization")
        if not value:
            return "none"
        token = value.removeprefix("Bearer ").strip()
        if self.token is not None and token == self.token:
            return "granted"
        return "ungranted" if token in self.ungranted_tokens else "invalid"

    def _error(
        self,
        h: Handler,
        rec: RequestRecord,
        status: int,
        code: str | None,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        out = {"X-Error-Message": message, **(headers or {})}
        if code:
            out["X-Error-Code"] = code
        body = json.dumps({"error": message}).encode()
        self.reply(h, rec, status, body, headers=out, content_type="application/json")

    def _find(
        self,
        h: Handler,
        rec: RequestRecord,
        repo_type: RepoType,
        repo_id: str,
        revision: str,
        auth: str,
        *,
        content: bool,
    ) -> tuple[HubRepo, str] | None:
        """The repo and commit, or None after answering the error the real Hub gives."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and auth != "granted"):
            self._error(
                h, rec, 401 if auth == "none" else 404, "RepoNotFound", "Repository not found"
            )
            return None
        if content and repo.gated and auth != "granted":
            kind = f"{repo_type} {repo_id}"
            if auth == "none":
                msg = (
                    f"Access to {kind} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                self._error(h, rec, 401, "GatedRepo", msg)
            else:
                msg = (
                    f"Access to {kind} is restricted and you are not in the authorized list. "
                    f"Visit {self.url}/{repo_id} to ask for access."
                )
                self._error(h, rec, 403, "GatedRepo", msg)
            return None
        commit = repo.commit_of(revision)
        if commit is None:
            self._error(h, rec, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    # -- resolve -------------------------------------------------------------------------------
    def _resolve(
        self,
        h: Handler,
        rec: RequestRecord,
        repo_type: RepoType,
        repo_id: str,
        revision: str,
        path_segs: list[str],
        auth: str,
    ) -> None:
        found = self._find(h, rec, repo_type, repo_id, revision, auth, content=True)
        if found is None:
            return
        repo, commit = found
        f = repo.commits[commit].get("/".join(path_segs))
        common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Vary": "Origin, Accept"}
        if f is None:
            self._error(h, rec, 404, "EntryNotFound", "Entry not found", common)
            return
        if not self.is_lfs(f):
            content = Content.of_bytes(f.data, etag=f'"{git_blob_sha1(f.data)}"')
            self.send_content(h, rec, content, Faults(), common)
            return
        if self.cdn_base is not None:
            location = self.cdn_base.rstrip("/") + self.cdn_path(f)
        else:
            location = self.cdn.signed_url(
                self.cdn_path(f), ttl=self.signed_url_ttl, filename=posixpath.basename(f.path)
            )
        headers = {
            **common,
            "Location": location,
            "ETag": f'"{git_blob_sha1(f.pointer)}"',
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": str(f.size),
        }
        self.reply(h, rec, 302, f"Found. Redirecting to {location}".encode(), headers=headers)

    # -- API -----------------------------------------------------------------------------------
    def _api(
        self, h: Handler, rec: RequestRecord, repo_type: RepoType, rest: list[str], auth: str
    ) -> None:
        if len(rest) >= 3 and rest[2] in _API_WORDS:
            repo_id, tail = "/".join(rest[:2]), rest[2:]
        elif len(rest) >= 2 and rest[1] in _API_WORDS:
            repo_id, tail = rest[0], rest[1:]
        else:
            repo_id, tail = "/".join(rest), []
        action = tail[0] if tail else "revision"
        revision = tail[1] if len(tail) > 1 else "main"
        found = self._find(h, rec, repo_type, repo_id, revision, auth, content=False)
        if found is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        query = parse_qs(rec.query)
        if action == "revision" and rec.method == "GET":
            blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
            self._json(h, rec, self._info(repo, commit, blobs))
        elif action == "paths-info" and rec.method == "POST":
            if rec.headers.get("content-type", "").startswith("application/json"):
                form = json.loads(rec.body or b"{}")
                paths, expand = form.get("paths", []), bool(form.get("expand"))
            else:
                fields = parse_qs(rec.body.decode())
                paths = fields.get("paths", [])
                expand = fields.get("expand", [""])[0].lower() in ("1", "true")
            entries = [self._entry(files, p.strip("/"), commit, expand) for p in paths]
            self._json(h, rec, [e for e in entries if e is not None])
        elif action == "refs" and rec.method == "GET":
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                for b, c in sorted(repo.branches.items())
            ]
            self._json(
                h, rec, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}
            )
        elif action == "tree" and rec.method == "GET":
            self._tree(h, rec, files, "/".join(tail[2:]), commit, query)
        else:
            self._error(h, rec, 404, None, "Sorry, we can't find the page you are looking for.")

    def _json(self, h: Handler, rec: RequestRecord, obj: Any) -> None:
        self.reply(h, rec, 200, json.dumps(obj).encode(), content_type="application/json")

    def _info(self, repo: HubRepo, commit: str, blobs: bool) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for f in sorted(repo.commits[commit].values(), key=lambda f: f.path):
            sib: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                lfs = self.is_lfs(f)
                sib["blobId"] = git_blob_sha1(f.pointer if lfs else f.data)
                sib["size"] = f.size
                if lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(sib)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit,
            "lastModified": DATE,
            "createdAt": DATE,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    def _entry(
        self, files: Mapping[str, HubFile], path: str, commit: str, expand: bool
    ) -> dict[str, Any] | None:
        """A paths-info / tree entry: a file, a directory, or None when absent."""
        entry: dict[str, Any]
        f = files.get(path)
        if f is not None:
            lfs = self.is_lfs(f)
            entry = {
                "type": "file",
                "oid": git_blob_sha1(f.pointer if lfs else f.data),
                "size": f.size,
                "path": path,
            }
            if lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
        elif any(p.startswith(path + "/") for p in files) or path == "":
            oid = hashlib.sha1(f"tree {commit} {path}".encode()).hexdigest()
            entry = {"type": "directory", "oid": oid, "size": 0, "path": path}
        else:
            return None
        if expand:
            entry["lastCommit"] = {"id": commit, "title": "Upload", "date": DATE}
        return entry

    def _tree(
        self,
        h: Handler,
        rec: RequestRecord,
        files: Mapping[str, HubFile],
        path: str,
        commit: str,
        query: Mapping[str, list[str]],
    ) -> None:
        path = path.strip("/")
        base = self._entry(files, path, commit, False)
        if base is None or base["type"] != "directory":
            self._error(h, rec, 404, "EntryNotFound", f"{path} does not exist on {commit}")
            return
        recursive = query.get("recursive", [""])[0].lower() in ("1", "true")
        expand = query.get("expand", [""])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        names: set[str] = set()
        for p in files:
            if p.startswith(prefix):
                parts = p[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                names.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        entries = [self._entry(files, n, commit, expand) for n in sorted(names)]
        self._json(h, rec, [e for e in entries if e is not None])


def main(argv: list[str] | None = None) -> int:
    """Standalone (the demo): prints `READY <hub url> <cdn url>`, serves until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Fake Hugging Face Hub serving local folders.")
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="[datasets/]ORG/NAME[@REV]=DIR",
        help="serve every file under DIR as that repo (repeatable)",
    )
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME")
    parser.add_argument("--token", help="the token that unlocks gated repos")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=parse_size, help="CDN bytes/s per connection")
    args = parser.parse_args(argv)

    hub = FakeHub(port=args.port)
    hub.token = args.token
    hub.cdn.faults.rate_limit = args.rate_limit
    for spec in args.repo:
        name, _, folder = spec.partition("=")
        name, _, revision = name.partition("@")
        repo_type: RepoType = "dataset" if name.startswith("datasets/") else "model"
        repo_id = name.removeprefix("datasets/")
        root = Path(folder)
        files = {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
        hub.add_repo(
            repo_id,
            files,
            revision=revision or "main",
            gated=repo_id in args.gated,
            repo_type=repo_type,
        )
    return serve_until_signal(hub, lambda: f"READY {hub.url} {hub.cdn.url}")


if __name__ == "__main__":
    sys.exit(main())
