"""A models folder that works → one entry per file, pinned by what it holds.

Every file is hashed (sha256 and xxh3_128, in parallel) and becomes an entry with `dir`,
`filename`, `size` and `sha256`, plus the public source found for it:

1. the Hugging Face cache: the hub keeps an LFS file as `blobs/<sha256>`, linked from
   `snapshots/<commit>/<path>`, so a file whose sha256 names a blob gives its repository,
   path and commit (`hf`, `file`, `revision`);
2. Civitai's lookup by hash (`civitai = <version id>`; skipped with --offline);
3. else none: an entry pinned by hash alone (fetched only from mirrors), with a comment
   saying what to add.

Hashes are cached in the folder's own `.modelsync/state.db` (the stat cache `apply` uses
when the folder is its root), so importing a large folder again only stats its files.

Skipped: hidden files and folders (`.modelsync/` among them), empty files (ComfyUI's
`put_checkpoints_here` placeholders), aria2 downloads still in flight, and links leading
outside the folder (with a warning: what they reach is another folder's content).
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from modelsync.errors import SourceError
from modelsync.hashing import FileHashes, hash_files
from modelsync.importers import Findings, Found, ImportInputError, ImportOptions
from modelsync.layout import PARTIAL_SUFFIX
from modelsync.manifest import Entry, Settings, is_comfyui_install
from modelsync.state import StateDB

UNKNOWN = "source unknown: add url = … or a mirror (settings.mirrors)"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LocalFile:
    relpath: str  # POSIX, relative to the imported folder
    path: Path
    stat: os.stat_result  # taken before hashing (what the stat cache is keyed on)

    @property
    def dir(self) -> str:
        return self.relpath.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.relpath.rpartition("/")[2]


@dataclass(frozen=True)
class CachedHubFile:
    """A file of a Hugging Face repository, as the local hub cache holds it."""

    repo: str  # "org/name", "datasets/org/name"
    path: str  # in the repository
    commit: str
    refs: frozenset[str]  # branches or tags naming this commit ("main")
    modified: float


def read(path: Path, options: ImportOptions) -> Findings:
    findings = Findings()
    folder = _models_folder(path, findings)
    label = str(path)
    files = list(_walk(folder, options, findings))
    hashes = _hashed(folder, files, options, findings)
    hub = hub_cache_index(hub_cache_dir(options.env)) if hashes else {}
    civitai = _CivitaiLookup(options, sum(h.sha256 not in hub for h in hashes.values()))
    try:
        for f in files:
            h = hashes.get(f.relpath)
            if h is None:
                continue
            found = _entry(f, h, label, hub.get(h.sha256, []), civitai, findings)
            if found is not None:
                findings.found.append(found)
    finally:
        civitai.close()
    return findings


def _models_folder(path: Path, findings: Findings) -> Path:
    if not path.is_dir():
        raise ImportInputError(f"{path}: not a folder", "give the models folder to import")
    if is_comfyui_install(path):
        findings.warnings.append(f"{path} is a ComfyUI install: importing its models/ folder")
        path = path / "models"
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        raise ImportInputError(
            f"{path}: cannot read the folder: {exc.strerror or exc}", "check its permissions"
        ) from None
    return path


# -- walking -------------------------------------------------------------------------------


def _walk(folder: Path, options: ImportOptions, findings: Findings) -> Iterator[LocalFile]:
    """The files to import (those --filter wants), in a stable order; what is skipped for
    a reason the user may not expect is warned."""
    inside = folder.resolve()

    def unreadable(exc: OSError) -> None:
        findings.warnings.append(f"{exc.filename}: cannot read the folder: {exc.strerror or exc}")

    for top, dirs, names in os.walk(folder, onerror=unreadable):
        here = Path(top)
        rel = here.relative_to(folder).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if not (here / d).is_symlink():
                kept.append(d)
            elif options.wanted(prefix + d):  # os.walk does not follow it: say why
                findings.warnings.append(_link_warning(prefix + d, here / d, inside, "folder"))
        dirs[:] = kept
        present = set(names)
        for name in sorted(names):
            relpath = prefix + name
            if name.startswith(".") or name.endswith(PARTIAL_SUFFIX) or not options.wanted(relpath):
                continue
            if name + PARTIAL_SUFFIX in present:
                findings.warnings.append(
                    f"{relpath}: a download in flight ({name}{PARTIAL_SUFFIX} beside it): "
                    "not imported"
                )
                continue
            local = _local_file(here / name, relpath, inside, findings)
            if local is not None:
                yield local


def _local_file(path: Path, relpath: str, inside: Path, findings: Findings) -> LocalFile | None:
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(inside):
            findings.warnings.append(_link_warning(relpath, path, inside, "file"))
            return None
    try:
        st = path.stat()
    except OSError as exc:
        findings.warnings.append(f"{relpath}: cannot read: {exc.strerror or exc}")
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:  # placeholders, sockets, fifos
        return None
    return LocalFile(relpath, path, st)


def _link_warning(relpath: str, link: Path, inside: Path, kind: str) -> str:
    target = link.resolve()
    if not target.exists():
        return f"{relpath}: a broken link (to {target}): not imported"
    if target.is_relative_to(inside):
        return f"{relpath}: a link to a folder inside this one: not followed (imported there)"
    if kind == "file":
        return f"{relpath}: a link to a file outside the folder ({target}): not imported"
    return (
        f"{relpath}: a link to a folder outside this one ({target}): not imported; "
        "import that folder on its own if its files belong in the manifest"
    )


# -- hashing -------------------------------------------------------------------------------


def _hashed(
    folder: Path, files: list[LocalFile], options: ImportOptions, findings: Findings
) -> dict[str, FileHashes]:
    """Hashes by relpath: from the folder's stat cache when a file's stat matches its row,
    else hashed now (and recorded). A file that cannot be read is warned and left out."""
    db = _open_cache(folder, findings)
    try:
        rows = db.get_many(f.relpath for f in files) if db else {}
        out: dict[str, FileHashes] = {}
        todo: list[LocalFile] = []
        for f in files:
            row = rows.get(f.relpath)
            if row is not None and row.matches(f.stat):
                out[f.relpath] = row.hashes
            else:
                todo.append(f)
        fresh: dict[str, FileHashes] = {}
        try:
            _hash_now(todo, options, findings, fresh)
        finally:  # Ctrl-C too: what was hashed is cached for the next import
            if db is not None and not db.readonly and fresh:
                by_rel = {f.relpath: f for f in todo}
                db.record_many((rel, by_rel[rel].stat, h) for rel, h in fresh.items())
        return out | fresh
    finally:
        if db is not None:
            db.close()


def _open_cache(folder: Path, findings: Findings) -> StateDB | None:
    try:
        return StateDB.open(folder, create=True)
    except OSError as exc:  # a read-only folder: use what is cached, record nothing
        findings.warnings.append(
            f"{folder}: cannot write its hash cache ({exc.strerror or exc}): "
            "every import hashes its files again"
        )
    try:
        return StateDB.open(folder, create=False)
    except OSError:
        return None


def _hash_now(
    files: list[LocalFile], options: ImportOptions, findings: Findings, out: dict[str, FileHashes]
) -> None:
    """Hash `files` into `out` (by relpath) as each is done, so an interruption keeps
    what was finished; unreadable or changing files are warned about, not added."""
    if not files:
        return
    total = sum(f.stat.st_size for f in files)
    done = 0
    lock = threading.Lock()
    report = options.progress

    def advance(n: int) -> None:  # called from the hashing threads
        nonlocal done
        with lock:
            done += n
            if report is not None:
                report(done, total)

    if report is not None:
        report(0, total)
    by_path = {f.path: f for f in files}
    problems: dict[Path, str] = {}

    def keep(path: Path, result: FileHashes | OSError) -> None:
        f = by_path[path]
        if isinstance(result, OSError):
            problems[path] = f"{f.relpath}: cannot read: {result.strerror or result}"
        elif result.size != f.stat.st_size:
            problems[path] = (
                f"{f.relpath}: changed while it was hashed: not imported; import again once "
                "nothing writes to it"
            )
        else:
            out[f.relpath] = result

    hash_files(list(by_path), progress=advance, on_result=keep)
    findings.warnings.extend(problems[p] for p in by_path if p in problems)  # input order


# -- sources -------------------------------------------------------------------------------


def hub_cache_dir(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps its cache, by the variables it reads (same order)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name, "").strip():
            return Path(env[name].strip()).expanduser()
    if env.get("HF_HOME", "").strip():
        return Path(env["HF_HOME"].strip()).expanduser() / "hub"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface" / "hub"


def hub_cache_index(cache: Path) -> dict[str, list[CachedHubFile]]:
    """sha256 → the repository files whose LFS blob in the cache has that name.

    Files kept in git (not LFS) are stored under their git blob id, never a sha256, so
    they are not indexed. A missing or unreadable cache is an empty index."""
    if not cache.is_dir():
        return {}
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache)  # corrupted repos are left out (info.warnings)
    except (CacheNotFound, ValueError, OSError):
        return {}
    index: dict[str, list[CachedHubFile]] = {}
    for repo in info.repos:
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(repo.repo_type, "")
        for revision in repo.revisions:
            for f in revision.files:
                sha = f.blob_path.name
                if not _SHA256.fullmatch(sha):
                    continue
                index.setdefault(sha, []).append(
                    CachedHubFile(
                        repo=prefix + repo.repo_id,
                        path=f.file_path.relative_to(revision.snapshot_path).as_posix(),
                        commit=revision.commit_hash,
                        refs=frozenset(revision.refs),
                        modified=revision.last_modified,
                    )
                )
    return index


def _best(candidates: list[CachedHubFile], name: str) -> CachedHubFile:
    """Of the cached files with these bytes: the same file name first, then a commit that
    `main` (else any ref) names, then the newest; ties broken by name, for stable output."""
    return min(
        candidates,
        key=lambda c: (
            c.path.rpartition("/")[2] != name,
            "main" not in c.refs,
            not c.refs,
            -c.modified,
            c.repo,
            c.path,
        ),
    )


class _CivitaiLookup:
    """Civitai's lookup by hash for the files of one import. The first failure (no answer,
    or an error status) stops the lookups for the run, with one warning."""

    def __init__(self, options: ImportOptions, count: int) -> None:
        from modelsync.sources import SourceContext

        self.enabled = not options.offline
        self.asked = False  # whether the last file was looked up
        self.left = count
        self.ctx = SourceContext(settings=Settings(), env=options.env)

    def lookup(
        self, f: LocalFile, sha256: str, findings: Findings
    ) -> tuple[int, str | None] | None:
        """(version id, file name when not the version's primary file), or None."""
        self.left -= 1
        self.asked = False
        if not self.enabled:
            return None
        from modelsync.sources import civitai

        try:
            ref = civitai.version_by_hash(sha256, self.ctx)
        except SourceError as exc:
            self.enabled = False
            rest = f"; {self.left} more file(s) not looked up" if self.left else ""
            hint = f" ({exc.hint})" if exc.hint else ""
            findings.warnings.append(
                f"Civitai lookup by hash stopped at {f.relpath}: {exc.message}{rest}{hint}"
            )
            return None
        self.asked = True
        return None if ref is None else (ref.version_id, ref.file)

    def close(self) -> None:
        self.ctx.close()


def _entry(
    f: LocalFile,
    h: FileHashes,
    label: str,
    cached: list[CachedHubFile],
    civitai: _CivitaiLookup,
    findings: Findings,
) -> Found | None:
    pins = {"dir": f.dir, "filename": f.name, "size": h.size, "sha256": h.sha256}
    if cached:
        hub = _best(cached, f.name)
        source: dict[str, object] = {"hf": hub.repo, "file": hub.path, "revision": hub.commit}
        found = Found(
            source | pins,
            f"{label}: in the Hugging Face cache ({hub.repo} at {hub.commit[:12]})",
        )
    elif (known := civitai.lookup(f, h.sha256, findings)) is not None:
        version, file = known
        source = {"civitai": version} | ({"file": file} if file else {})
        found = Found(source | pins, f"{label}: Civitai knows its sha256 (model version {version})")
    else:
        why = (
            "no public source found (Hugging Face cache, Civitai)"
            if civitai.asked
            else "not in the Hugging Face cache; not looked up on Civitai"
        )
        found = Found(pins, f"{label}: {why}", comment=UNKNOWN)
    return found if _writable(found, f, findings) else None


def _writable(found: Found, f: LocalFile, findings: Findings) -> bool:
    """A path a manifest cannot hold (a backslash, bytes that are not UTF-8) is warned."""
    try:
        f.relpath.encode("utf-8")
        Entry.model_validate(found.values)
    except (UnicodeEncodeError, ValidationError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeEncodeError) else _first_error(exc)
        findings.warnings.append(f"{f.relpath!r}: cannot be a manifest entry ({reason})")
        return False
    return True


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    return str(errors[0]["msg"]) if errors else str(exc)
