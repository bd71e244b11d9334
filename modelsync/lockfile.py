"""The lock file: `<manifest stem>.lock` beside the manifest, what each entry resolved to.

It is generated (`modelsync lock`) and read by every command that plans. Written
deterministically so that it diffs well and a second `lock` rewrites the same bytes:
a header comment, `version = 1`, then one `[models."<name>"]` table per entry, sorted
by name, keys in a fixed order, absent values left out, no timestamps.

A locked entry is *current* when its `fingerprint` (a hash of the manifest fields that
decide which bytes the entry means) still matches the manifest entry and its path is
still the one the entry points at. Only current entries are used; editing an entry in
the manifest makes its lock entry stale until the next `modelsync lock`.

Every locked entry pins its bytes (sha256 and/or xxh3_128): an entry that could not be
pinned is left out of the lock rather than written unpinned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import tomli
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from modelsync.atomic import write_text_atomic
from modelsync.errors import ModelsyncError
from modelsync.manifest import Entry
from modelsync.remote import Desired

# Keys of the manifest entry that decide which bytes it means (not name, tags, mirrors).
FINGERPRINT_KEYS = (
    "url",
    "hf",
    "file",
    "revision",
    "civitai",
    "filename",
    "dir",
    "sha256",
    "xxh3_128",
    "size",
)
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_KEY_ORDER = (
    "fingerprint",
    "path",
    "url",
    "commit",
    "size",
    "estimated_size",
    "sha256",
    "xxh3_128",
)


# Checked by pydantic's regex engine (a lock of 10,000 entries validates ~5x faster than
# with Python validators): lowercase hex as written; a relative path without empty, "."
# or ".." segments; an http(s) URL without credentials, query string or fragment.
_SEGMENT = r"(?:[^/\\.][^/\\]*|\.[^/\\.][^/\\]*|\.\.[^/\\]+)"
LockPath = Annotated[str, StringConstraints(pattern=rf"^{_SEGMENT}(?:/{_SEGMENT})*$")]
PlainUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^/?#@\s]+(?:/[^?#\s]*)?$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Hex40 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]


class LockedFile(BaseModel):
    """One file of a locked repository entry (its path, relative to the repo, is the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    sha256: Hex64 | None = None
    xxh3_128: Hex32 | None = None
    git_sha1: Hex40 | None = None  # a file kept in git (not LFS): the blob id the Hub gives

    @model_validator(mode="after")
    def _pinned(self) -> LockedFile:
        if not (self.sha256 or self.xxh3_128 or self.git_sha1):
            raise ValueError("a locked file needs sha256, xxh3_128 or git_sha1")
        return self


class LockedEntry(BaseModel):
    """What one manifest entry resolved to when the lock was written.

    A repository entry has no `path` of its own: `files` maps each of its files' paths
    inside the repository to what the commit holds there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint: Hex64
    path: LockPath | None = None
    url: PlainUrl | None = None
    commit: str | None = Field(default=None, min_length=1)
    size: int | None = Field(default=None, ge=0)  # exact
    estimated_size: int | None = Field(default=None, ge=0)  # Civitai's sizeKB, space only
    sha256: Hex64 | None = None
    xxh3_128: Hex32 | None = None

    files: dict[LockPath, LockedFile] | None = None

    @model_validator(mode="after")
    def _pinned(self) -> LockedEntry:
        if self.files is not None:
            if not self.commit:
                raise ValueError("a locked repository needs its commit")
            return self
        if self.path is None:
            raise ValueError("a locked entry needs path (or files, for a repository)")
        if not (self.sha256 or self.xxh3_128):
            raise ValueError("a locked entry needs sha256 or xxh3_128")
        return self


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    models: dict[str, LockedEntry] = Field(default_factory=dict)

    def current(self, entry: Entry) -> LockedEntry | None:
        """The locked entry for `entry` if it still matches the manifest, else None."""
        locked = self.models.get(entry.display_name)
        if locked is None or locked.fingerprint != fingerprint(entry):
            return None
        if entry.is_repo:
            return locked if locked.files is not None else None
        return locked if expected_path(entry, locked) == locked.path else None


def fingerprint(entry: Entry) -> str:
    """sha256 of the entry's source-defining fields: any edit to them makes the lock stale.

    A JSON array (source kind, then FINGERPRINT_KEYS in order): canonical across Python
    versions and machines, and cheap (a manifest of 10,000 entries takes ~0.1 s).
    """
    values: list[object] = [entry.source, *(getattr(entry, k) for k in FINGERPRINT_KEYS)]
    if entry.include or entry.exclude:  # only then: older locks' fingerprints stay valid
        values += [list(entry.include), list(entry.exclude)]
    return hashlib.sha256(_CANONICAL.encode(values).encode()).hexdigest()


def expected_path(entry: Entry, locked: LockedEntry) -> str | None:
    """Where `entry` points, given the file name the lock resolved (the manifest's win)."""
    if locked.path is None:
        return None
    return entry.relpath(entry.filename or locked.path.rpartition("/")[2])


def plain_url(url: str, secrets: Iterable[str] = ()) -> str | None:
    """`url` fit for the lock: no credentials, query string (signatures) or fragment.

    None when a secret still shows in what is left (a token in the path).
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    path = quote(parts.path, safe="/%:@!$&'()*+,;=~-._")  # a raw space etc. → %20
    clean = urlunsplit((parts.scheme, netloc, path, "", ""))
    if any(s and s in clean for s in secrets):
        return None
    return clean


def lock_table(name: str) -> str:
    """The header of entry `name`'s table in the lock, as a user finds it there."""
    return f"[models.{_toml_str(name)}]"


def desired_from_lock(entry: Entry, locked: LockedEntry, pin_origin: str = "") -> Desired:
    """What a current lock entry wants on disk (the manifest's own pins win).

    `pin_origin` says where the hash pin came from (see workspace.pin_origin)."""
    assert locked.path is not None, "repository entries expand into files (repos.py)"
    return Desired(
        name=entry.display_name,
        path=locked.path,
        size=entry.size if entry.size is not None else locked.size,
        sha256=entry.sha256 or locked.sha256,
        xxh3_128=entry.xxh3_128 or locked.xxh3_128,
        **entry.controls(),
        estimated_size=locked.estimated_size,
        pin_origin=pin_origin,
    )


def source_entry(entry: Entry, locked: LockedEntry) -> Entry:
    """The entry as the sources should see it under a current lock: its revision pinned to
    the locked commit and its hashes to the locked ones (content-addressed mirrors need them).

    A copy without validation: `revision` is set for any entry that resolved to a commit,
    url entries served by Hugging Face included.
    """
    update: dict[str, object] = {
        "sha256": entry.sha256 or locked.sha256,
        "xxh3_128": entry.xxh3_128 or locked.xxh3_128,
    }
    if locked.commit:
        update["revision"] = locked.commit
    return entry.model_copy(update=update)


# ---- reading ------------------------------------------------------------------------------


def read_lock(path: Path) -> Lock | None:
    """The lock at `path`; None when there is none. A broken lock is an exit-2 error."""
    hint = (
        f"it is generated: run `modelsync lock` on its manifest to write it again "
        f"(after a merge conflict too), or delete {path.name}"
    )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelsyncError(f"{path}: cannot read the lock file: {exc}", hint) from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise ModelsyncError(f"{path}: invalid lock file: TOML syntax error: {exc}", hint) from None
    try:
        return Lock.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["type"], e["msg"]) for e in exc.errors())
        raise ModelsyncError(f"{path}: invalid lock file: {problems}", hint) from None


_PATTERN_PROBLEMS = {
    "fingerprint": "must be 64 lowercase hex characters",
    "sha256": "must be 64 lowercase hex characters",
    "xxh3_128": "must be 32 lowercase hex characters",
    "path": "must be a relative path inside root (no '..', '.' or empty parts)",
    "url": "must be an http(s) URL without credentials, query string or fragment",
}


def _problem(loc: tuple[int | str, ...], kind: str, msg: str) -> str:
    if len(loc) >= 2 and loc[0] == "models":  # [models."a.bin"] sha256: names hold dots
        where = " ".join([f'[models."{loc[1]}"]', *map(str, loc[2:])])
    else:
        where = ".".join(map(str, loc)) or "top level"
    if kind == "string_pattern_mismatch" and loc and str(loc[-1]) in _PATTERN_PROBLEMS:
        msg = _PATTERN_PROBLEMS[str(loc[-1])]
    return f"{where}: {msg.removeprefix('Value error, ')}"


# ---- writing ------------------------------------------------------------------------------


def dumps_lock(lock: Lock, manifest_name: str) -> str:
    lines = [
        "# This file is generated by `modelsync lock`. Do not edit it by hand.",
        f"# It pins every entry of {_comment(manifest_name)} to exact bytes;"
        " commit the two together.",
        f"version = {lock.version}",
    ]
    for name in sorted(lock.models):
        locked = lock.models[name]
        lines.append("")
        lines.append(lock_table(name))
        values = locked.model_dump()
        for key in _KEY_ORDER:
            value = values[key]
            if value is None:
                continue
            lines.append(f"{key} = {_toml_str(value) if isinstance(value, str) else value}")
        if locked.files is not None:
            # One line per file: a file added, changed or removed upstream is one diff line.
            lines.append("")
            lines.append(f"[models.{_toml_str(name)}.files]")
            for path in sorted(locked.files):
                lines.append(f"{_toml_str(path)} = {_inline(locked.files[path])}")
    return "\n".join(lines) + "\n"


def _inline(f: LockedFile) -> str:
    pairs = [f"size = {f.size}"]
    pairs += [
        f"{key} = {_toml_str(value)}"
        for key, value in (("sha256", f.sha256), ("xxh3_128", f.xxh3_128), ("git_sha1", f.git_sha1))
        if value
    ]
    return "{ " + ", ".join(pairs) + " }"


def write_lock(path: Path, lock: Lock, manifest_name: str) -> bool:
    """Write atomically when the content changed; returns whether it did."""
    text = dumps_lock(lock, manifest_name)
    with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
        if path.read_text(encoding="utf-8") == text:
            return False
    write_text_atomic(path, text)
    return True


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _toml_str(value: str) -> str:
    """A TOML basic string (control characters escaped, as the TOML spec requires)."""
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _comment(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)
