"""`modelsync mirror export`: a manifest's verified files as a content-addressed tree.

    DIR/sha256/<sha256>    each file's bytes, named by their sha256
    DIR/index.json         {"schema": 1, "entries": [{name, path, size, sha256, xxh3_128}]}

Any static server, CDN or S3-compatible bucket serves DIR as it is, so that other
machines find a file at `settings.mirrors = ["https://mirror.lan/sha256/{sha256}"]`.

A file is exported only once it is known to match its pin: by the root's stat cache
(state.db, the file unchanged since it was hashed) or by hashing it now. Each blob is
written to `DIR/.modelsync-tmp/` (a hardlink of the file when both are on one
filesystem, else a copy hashed while it is written), checked against its sha256, then
renamed into place: a reader of DIR sees a whole, verified blob or none. A blob already
present with the right size is not written again (nor read, unless `verify`): exports
are incremental. The index keeps the entries of earlier exports whose blobs are still
there (a tree several manifests export to lists them all) and is rewritten only when it
changes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import xxhash

from modelsync.atomic import write_text_atomic
from modelsync.errors import EXIT_FAILED, EXIT_OK, ModelsyncError
from modelsync.hashing import DEFAULT_BUFFER_SIZE, FileHashes, hash_file, hash_files
from modelsync.placement import fsync_dir
from modelsync.reconcile import hash_mismatches
from modelsync.remote import Desired
from modelsync.state import StateDB
from modelsync.workspace import Target, Workspace

LinkChoice = Literal["auto", "hardlink", "copy"]
INDEX = "index.json"
BLOBS = "sha256"
TMP = ".modelsync-tmp"  # inside DIR: the final rename stays on one filesystem
BAD = ("missing", "corrupt", "failed")


@dataclass(frozen=True)
class ExportedFile:
    """One file of the manifest: `status` is "written", "present" (the blob was there),
    "missing", "corrupt", "failed", "unpinned" (nothing to check it against) or "skipped"
    (a Hub file kept in git, pinned by its git blob id alone). The last two are not
    exported, and not failures: no mirror is ever asked for a file without a hash pin."""

    name: str
    path: str | None
    status: str
    size: int | None = None
    sha256: str | None = None
    xxh3_128: str | None = None
    how: str | None = None  # a written blob: "hardlink" or "copy"
    error: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class ExportResult:
    root: Path
    dest: Path
    files: tuple[ExportedFile, ...]
    warnings: tuple[str, ...] = ()
    elapsed: float = 0.0
    index_changed: bool = False

    @property
    def index(self) -> Path:
        return self.dest / INDEX

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def written_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files if f.status == "written")

    @property
    def failed(self) -> bool:
        return any(f.status in BAD and not f.optional for f in self.files)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK


@dataclass
class _Verified:
    """A file in root that matches its pin; `hashed` is its stat when hashed in this run."""

    target: Target
    source: Path
    hashes: FileHashes
    hashed: os.stat_result | None = None
    names: list[Target] = field(default_factory=list)  # every target with these bytes


def prepare_dest(dest: Path) -> Path:
    """DIR, created if needed, and writable: else exit 2 before anything is read."""
    dest = Path(os.path.abspath(dest))
    hint = "give a folder you can write to (it is created when missing)"
    if dest.exists() and not dest.is_dir():
        raise ModelsyncError(f"mirror export: {dest} is not a folder", hint)
    try:
        (dest / BLOBS).mkdir(parents=True, exist_ok=True)
        (dest / TMP).mkdir(exist_ok=True)
    except OSError as exc:
        raise ModelsyncError(
            f"mirror export: cannot write to {dest}: {exc.strerror or exc}", hint
        ) from None
    if not os.access(dest / BLOBS, os.W_OK) or not os.access(dest / TMP, os.W_OK):
        raise ModelsyncError(f"mirror export: cannot write to {dest}: permission denied", hint)
    return dest


def run_export(
    ws: Workspace,
    dest: Path,
    *,
    link: LinkChoice = "auto",
    verify: bool = False,
) -> ExportResult:
    started = time.monotonic()
    dest = prepare_dest(dest)
    targets = ws.targets()
    results: dict[str, ExportedFile] = {}
    verified = _verified_files(ws, targets, results)
    try:
        for item in verified.values():
            outcome = _export_blob(item, dest, link, verify)
            for t in item.names:
                results[t.name] = _with_target(outcome, t)
        if any(r.status == "written" for r in results.values()):
            fsync_dir(dest / BLOBS)
    finally:
        with contextlib.suppress(OSError):  # left only when empty: another export may run
            (dest / TMP).rmdir()
    files = tuple(results[t.name] for t in targets if t.name in results)
    changed = _write_index(dest, files)
    return ExportResult(
        root=ws.root,
        dest=dest,
        files=files,
        warnings=tuple(t.warning for t in targets if t.warning),
        elapsed=time.monotonic() - started,
        index_changed=changed,
    )


def _with_target(outcome: ExportedFile, t: Target) -> ExportedFile:
    assert t.desired is not None
    return ExportedFile(
        t.name,
        t.desired.path,
        outcome.status,
        outcome.size,
        outcome.sha256,
        outcome.xxh3_128,
        outcome.how,
        outcome.error,
        t.entry.optional,
    )


def _not_pinned(name: str, d: Desired) -> ExportedFile:
    if d.git_sha1:
        why = (
            "kept in git on the Hub (pinned by its git blob id, no sha256): "
            "no mirror is asked for it; not exported"
        )
        return ExportedFile(name, d.path, "skipped", error=why)
    hint = "no hash pinned: run `modelsync lock` to pin it (not exported)"
    return ExportedFile(name, d.path, "unpinned", error=hint)


def _verified_files(
    ws: Workspace, targets: list[Target], results: dict[str, ExportedFile]
) -> dict[str, _Verified]:
    """The targets whose file in root matches its pin, by sha256 (one blob for several
    entries with the same bytes); every other target gets its result in `results`."""
    present: dict[str, tuple[Target, Desired, Path, os.stat_result]] = {}
    for t in targets:
        optional = t.entry.optional
        if t.desired is None:
            results[t.name] = ExportedFile(t.name, None, "failed", error=t.error, optional=optional)
            continue
        d = t.desired
        if not d.pinned:
            results[t.name] = _not_pinned(t.name, d)
            continue
        path = ws.layout.target(d.path)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            results[t.name] = ExportedFile(
                t.name,
                d.path,
                "missing",
                d.size,
                error="not in root (run `modelsync apply` first)",
                optional=optional,
            )
            continue
        if d.size is not None and st.st_size != d.size:
            error = f"size {st.st_size}, expected {d.size}"
            results[t.name] = ExportedFile(
                t.name, d.path, "corrupt", st.st_size, error=error, optional=optional
            )
            continue
        present[t.name] = (t, d, path, st)
    with StateDB.open(ws.root, create=False) as state:  # read only: root is not written
        cached = state.get_many([d.path for _, d, _, _ in present.values()])
    known: dict[str, FileHashes] = {}
    for name, (_, d, _, st) in present.items():
        row = cached.get(d.path)
        if row is not None and row.matches(st):
            known[name] = row.hashes
    hashed = hash_files([p for n, (_, _, p, _) in present.items() if n not in known])
    out: dict[str, _Verified] = {}
    for name, (t, d, path, st) in present.items():
        outcome = known.get(name) or hashed[path]
        if isinstance(outcome, OSError):
            error = f"cannot read: {outcome.strerror or outcome}"
            results[name] = ExportedFile(
                name, d.path, "failed", st.st_size, error=error, optional=t.entry.optional
            )
            continue
        wrong = hash_mismatches(d, outcome.sha256, outcome.xxh3_128)
        if wrong:
            results[name] = ExportedFile(
                name,
                d.path,
                "corrupt",
                st.st_size,
                error="; ".join(wrong),
                optional=t.entry.optional,
            )
            continue
        item = out.setdefault(
            outcome.sha256, _Verified(t, path, outcome, None if name in known else st)
        )
        item.names.append(t)
    return out


def _export_blob(item: _Verified, dest: Path, link: LinkChoice, verify: bool) -> ExportedFile:
    """Put `item`'s bytes at DIR/sha256/<sha256> unless a blob of that size is there."""
    sha = item.hashes.sha256
    blob = dest / BLOBS / sha
    done = ExportedFile(
        item.target.name, None, "present", item.hashes.size, sha, item.hashes.xxh3_128
    )
    try:
        st = os.lstat(blob)
    except FileNotFoundError:
        st = None
    if st is not None and _is_file(st) and st.st_size == item.hashes.size:
        if not verify:
            return done
        try:
            if hash_file(blob).sha256 == sha:
                return done
        except OSError:
            pass  # unreadable: written again below
    tmp = dest / TMP / f"{sha}.{os.getpid()}"
    try:
        how = _write(item, tmp, link)
        os.replace(tmp, blob)
    except _Changed as exc:
        return ExportedFile(item.target.name, None, "corrupt", item.hashes.size, error=str(exc))
    except OSError as exc:
        error = f"cannot write {blob}: {exc.strerror or exc}"
        return ExportedFile(item.target.name, None, "failed", item.hashes.size, error=error)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportedFile(
        item.target.name, None, "written", item.hashes.size, sha, item.hashes.xxh3_128, how
    )


class _Changed(Exception):
    """The bytes written are not the ones verified (the file changed meanwhile, or
    behind the stat cache's back)."""


def _write(item: _Verified, tmp: Path, link: LinkChoice) -> str:
    """The blob at `tmp`, checked against the verified sha256; returns how it was made."""
    tmp.unlink(missing_ok=True)  # a leftover of a killed export with our pid
    how = "copy"
    if link != "copy":
        try:
            os.link(item.source, tmp)
            how = "hardlink"
        except OSError as exc:
            if link == "hardlink" and exc.errno in _NO_LINK:
                why = "another filesystem" if exc.errno == errno.EXDEV else exc.strerror
                raise OSError(
                    exc.errno, f"cannot hardlink ({why}); --link auto or copy copies it"
                ) from None
            if link == "hardlink" or exc.errno not in _NO_LINK:
                raise
    if how == "hardlink":
        # The same inode as the file in root: hashed already in this run when its stat
        # has not moved since, else read once more (the stat cache alone vouched for it).
        st = os.stat(tmp)
        same = item.hashed is not None and _same_file(st, item.hashed)
        got = item.hashes if same else hash_file(tmp)
    else:
        got = _copy_hashing(item.source, tmp)
    if got.sha256 != item.hashes.sha256 or got.size != item.hashes.size:
        raise _Changed(
            f"the bytes read are not the verified ones (sha256 {got.sha256}, expected "
            f"{item.hashes.sha256}): the file changed during the export, or since it was "
            "hashed without its size or mtime changing; not exported (`modelsync verify` "
            "hashes it again)"
        )
    return how


# A hardlink is impossible here (another filesystem, or one without hardlinks): copy.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP}


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (
        b.st_ino,
        b.st_dev,
        b.st_size,
        b.st_mtime_ns,
    )


def _is_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _copy_hashing(src: Path, dst: Path) -> FileHashes:
    """Copy `src` to a new `dst` (0644: a static server reads it), hashing the bytes as
    they are written; fsynced, so that the rename publishes whole bytes."""
    sha = hashlib.sha256()
    xxh = xxhash.xxh3_128()
    view = memoryview(bytearray(DEFAULT_BUFFER_SIZE))
    total = 0
    with open(src, "rb", buffering=0) as f:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: the server's user must read it
            while n := f.readinto(view):
                chunk = view[:n]
                sha.update(chunk)
                xxh.update(chunk)
                _write_all(fd, chunk)
                total += n
            os.fsync(fd)
        finally:
            os.close(fd)
    return FileHashes(total, sha.hexdigest(), xxh.hexdigest())


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _index_entries(files: tuple[ExportedFile, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "path": f.path,
            "size": f.size,
            "sha256": f.sha256,
            **({"xxh3_128": f.xxh3_128} if f.xxh3_128 else {}),
        }
        for f in files
        if f.status in ("written", "present")
    ]


def _write_index(dest: Path, files: tuple[ExportedFile, ...]) -> bool:
    """index.json: this export's files and the earlier entries whose blobs remain,
    sorted; written atomically, and only when it changes. True when written."""
    path = dest / INDEX
    try:
        old_text = path.read_text(encoding="utf-8")
        old = json.loads(old_text).get("entries", [])
    except (OSError, ValueError, AttributeError):
        old_text, old = "", []
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in [*_kept(old, dest), *_index_entries(files)]:
        merged[(e["path"], e["name"], e["sha256"])] = e
    doc = {"schema": 1, "entries": [merged[k] for k in sorted(merged)]}
    text = json.dumps(doc, indent=2) + "\n"
    if text == old_text:
        return False
    write_text_atomic(path, text)
    return True


def _kept(old: object, dest: Path) -> list[dict[str, Any]]:
    """Entries of an earlier index that are well formed and whose blob is still there."""
    if not isinstance(old, list):
        return []
    return [e for e in old if _well_formed(e) and (dest / BLOBS / e["sha256"]).is_file()]


def _well_formed(e: object) -> bool:
    if not isinstance(e, dict):
        return False
    if not all(isinstance(e.get(k), str) for k in ("name", "path", "sha256")):
        return False
    sha = e["sha256"]
    return len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
