"""Repository entries: one manifest entry, one planned file per file of the repository.

`hf = "org/repo"` without `file` selects the repository's files at one commit (all of
them, or those `include`/`exclude` pick). Each becomes an ordinary Hugging Face file
entry, named `<entry>/<path in repo>`, pinned to the commit, landing at
`<dir>/<path in repo>` (like `hf download --local-dir`), and carrying the entry's tags,
priority, connections and optional flag. From there on plan, apply and verify treat it as
any other file; `--only <entry>` selects the whole set because selection happens on the
manifest's entries, before expansion.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelsync.lockfile import LockedEntry, LockedFile
from modelsync.manifest import Entry, is_plain_file_name
from modelsync.remote import Desired, RepoFile, RepoListing


@dataclass(frozen=True)
class Expanded:
    """One repository file: the entry the sources see, and what it wants on disk
    (`error` instead when the repository names a path modelsync will not write)."""

    entry: Entry
    desired: Desired | None
    error: str | None = None


def from_lock(locked: LockedEntry) -> RepoListing:
    assert locked.files is not None and locked.commit is not None
    files = tuple(
        RepoFile(path, f.size, f.sha256, f.xxh3_128, f.git_sha1)
        for path, f in sorted(locked.files.items())
    )
    return RepoListing(locked.commit, files)


def to_lock(listing: RepoListing) -> dict[str, LockedFile]:
    return {
        f.path: LockedFile(size=f.size, sha256=f.sha256, xxh3_128=f.xxh3_128, git_sha1=f.git_sha1)
        for f in listing.files
    }


def file_name(entry: Entry, path: str) -> str:
    return f"{entry.display_name}/{path}"


def expand(entry: Entry, listing: RepoListing, pin_origin: str) -> list[Expanded]:
    """The files of `entry` as `listing` gives them (from the lock or the Hub)."""
    out = []
    for f in listing.files:
        problem = _unsafe(f.path)
        name = file_name(entry, f.path)
        if problem:
            error = f"{name}: the repository names {f.path!r}, {problem}; not downloaded"
            out.append(Expanded(entry.model_copy(update={"name": name}), None, error))
            continue
        folder, _, base = f.path.rpartition("/")
        sub = entry.model_copy(
            update={
                "name": name,
                "file": f.path,
                "revision": listing.commit,
                "include": (),
                "exclude": (),
                "dir": "/".join(p for p in (entry.dir, folder) if p),
                "filename": base,
                "sha256": f.sha256,
                "xxh3_128": f.xxh3_128,
                "size": f.size,
            }
        )
        path = sub.relpath()
        assert path is not None
        desired = Desired(
            name=name,
            path=path,
            size=f.size,
            sha256=f.sha256,
            xxh3_128=f.xxh3_128,
            git_sha1=f.git_sha1,
            pin_origin=pin_origin,
            **entry.controls(),
        )
        out.append(Expanded(sub, desired))
    return out


def _unsafe(path: str) -> str | None:
    """Why a path from the Hub may not become a file under root (a hostile or broken
    server must not make modelsync write outside the repository's folder)."""
    parts = path.split("/")
    if path.startswith("/") or "\\" in path:
        return "which is not a relative POSIX path"
    if any(p in ("", ".", "..") for p in parts):
        return "a path with an empty, '.' or '..' part"
    # every part, not only the file's name: a folder named with a NUL byte or 256 bytes
    # (a hostile lock, a broken server) must fail this file, not the run
    if parts[0] == ".modelsync" or not all(is_plain_file_name(p) for p in parts):
        return "which modelsync will not write"
    return None
