"""`modelsync add MANIFEST SOURCE --dir DIR [--name NAME]`: append one resolved entry.

SOURCE is a URL, `hf://org/repo/path/in/repo[@revision]` (also `hf://org/repo@revision/path`,
for a path that holds `@`, with `/` in the revision written `%2F`; datasets:
`hf://datasets/org/name/path`) or `civitai:<version id>`. The entry is resolved
through its source's metadata (nothing is downloaded) and appended as a `[[models]]` table
with the size and sha256 the source publishes. The manifest's existing text is kept byte
for byte: the new table is added at the end, its values rendered by tomlkit, and the result
must load with `load_manifest` before it atomically replaces the file.

A plain URL publishes no hash: the entry is added unpinned and `AddResult.unpinned` says
so; `modelsync lock` then downloads it once and pins its sha256 in the lock. Its size comes
from one HEAD request. Civitai links (model pages, download links) become
`civitai = <version id>`; a model page without a version gets the model's latest one.

Nothing is written when the new entry would share a source, a name or a path (compared
case-insensitively) with an entry already in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import tomli
import tomlkit
from pydantic import ValidationError
from tomlkit.items import AoT

from modelsync.commands.editing import appended, ordered, read_manifest_text, write_checked
from modelsync.errors import ModelsyncError
from modelsync.lockfile import read_lock
from modelsync.manifest import Entry, Manifest, Settings, load_manifest
from modelsync.redact import redact_urls
from modelsync.sources import SourceContext, civitai, list_repository, resolve, source_of
from modelsync.units import human_size

SOURCE_FORMS = (
    "a URL, hf://org/repo/path/in/repo[@revision], hf://org/repo[@revision] (a whole "
    "repository) or civitai:<version id>"
)


@dataclass(frozen=True)
class AddResult:
    manifest: Path
    name: str
    path: str  # target relative to root
    values: dict[str, Any]  # the keys written, in order
    unpinned: bool  # no hash known: `modelsync lock` will pin it
    notes: tuple[str, ...] = ()  # what add decided for the user (a version picked, ...)


def parse_source(source: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """SOURCE → the manifest keys of its source (url / hf+file[+revision] / civitai).

    A Civitai model page without `?modelVersionId=` gives `{"civitai_model": ID}`: its
    latest version is looked up by `run_add` (that needs the network).
    """
    text = source.strip()
    if text.startswith("hf://"):
        return _parse_hf(text)
    if text.startswith("civitai:"):
        number = text.removeprefix("civitai:").strip()
        if not number.isdigit() or int(number) < 1:
            raise ModelsyncError(
                f"SOURCE {source!r}: civitai: needs a model *version* id, e.g. civitai:128713",
                "the version id is the modelVersionId in the model page's URL",
            )
        return {"civitai": int(number)}
    parts = urlsplit(text)
    if parts.scheme in {"http", "https"} and parts.netloc:
        if civitai.is_civitai_url(text, env or {}):
            return _parse_civitai_link(text)
        return {"url": text}
    raise ModelsyncError(f"SOURCE {source!r} is not {SOURCE_FORMS}")


def _parse_civitai_link(url: str) -> dict[str, Any]:
    """A model page or download link → `civitai = <version id>` (what the manifest pins)."""
    try:
        ref = civitai.parse_civitai_url(url)
    except ValueError as exc:
        segments = [s for s in urlsplit(url).path.split("/") if s]
        if segments[:1] == ["models"] and len(segments) in (2, 3) and segments[1].isdigit():
            return {"civitai_model": int(segments[1])}  # a page without ?modelVersionId=
        raise ModelsyncError(
            f"SOURCE {redact_urls(url)}: {exc}",
            "copy the link of a model version (…/models/<id>?modelVersionId=<v>) "
            "or write civitai:<version id>",
        ) from None
    if ref.type or ref.format:  # a file other than the primary one: the link names it
        return {"url": url}
    return {"civitai": ref.version_id}


def _parse_hf(source: str) -> dict[str, Any]:
    parts = source.removeprefix("hf://").rstrip("/").split("/")
    n = 3 if parts[0] == "datasets" else 2  # "datasets/org/name" is the repo id of a dataset
    if len(parts) < n or not all(parts):
        raise ModelsyncError(
            f"SOURCE {source!r}: expected hf://org/repo/path/in/repo[@revision] or "
            "hf://org/repo[@revision] (hf://datasets/org/name[/path] for a dataset)"
        )
    if len(parts) == n:  # the whole repository
        whole, _, at = "/".join(parts).partition("@")
        if not whole or ("@" in source and not at):
            raise ModelsyncError(f"SOURCE {source!r}: expected hf://org/repo[@revision]")
        return {"hf": whole, "revision": unquote(at)} if at else {"hf": whole}
    repo, path, revision = "/".join(parts[:n]), "/".join(parts[n:]), None
    if "@" in repo:  # hf://org/repo@revision/path, as huggingface_hub's HfFileSystem spells it
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)  # refs%2Fpr%2F1
    elif "@" in path:  # hf://org/repo/path@revision (a path holding @: use the form above)
        path, revision = path.rsplit("@", 1)
    if not repo.strip("/") or not path or revision == "":
        raise ModelsyncError(f"SOURCE {source!r}: expected hf://org/repo/path[@revision]")
    values: dict[str, Any] = {"hf": repo, "file": path}
    if revision:
        values["revision"] = revision
    return values


def needs_dir(source: str, env: Mapping[str, str]) -> bool:
    """A file SOURCE needs --dir; a whole repository defaults to its name. (A SOURCE that
    does not parse is left to run_add, which says what is wrong with it.)"""
    try:
        values = parse_source(source, env)
    except ModelsyncError:
        return False
    return not ("hf" in values and "file" not in values)


def run_add(
    manifest_path: Path,
    source: str,
    dir: str | None,
    name: str | None,
    env: Mapping[str, str],
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> AddResult:
    path = manifest_path.resolve() if manifest_path.is_symlink() else manifest_path
    text = _read(path)
    existing = _existing(path, text)
    values: dict[str, Any] = {"name": name} if name else {}
    values |= parse_source(source, env)
    repository = "hf" in values and "file" not in values
    if (include or exclude) and not repository:
        raise ModelsyncError(
            "--include and --exclude are for a whole repository",
            "give SOURCE as hf://org/repo (without a path in it)",
        )
    if include:
        values["include"] = list(include)
    if exclude:
        values["exclude"] = list(exclude)
    if dir is None and not repository:
        raise ModelsyncError("--dir is needed for a file: the folder under root it goes to")
    # A repository's folder defaults to its name; written out, so the manifest says it.
    values["dir"] = dir if dir is not None else values["hf"].rpartition("/")[2]
    ctx = SourceContext(existing.settings if existing else _settings_of(text), env)
    try:
        entry, relpath, notes = _complete(values, existing, ctx)
    finally:
        ctx.close()
    written = ordered(values)
    write_checked(path, appended(text, written))
    unpinned = not entry.is_repo and not entry_pinned(entry)  # a repo's files: published
    return AddResult(path, entry.display_name, relpath, written, unpinned, notes)


def _complete(
    values: dict[str, Any], existing: Manifest | None, ctx: SourceContext
) -> tuple[Entry, str, tuple[str, ...]]:
    """Fill `values` in place with what the source publishes; refuse clashes first.

    Returns the entry, its path under root, and notes for the user.
    """
    notes: list[str] = []
    if "civitai_model" in values:
        model_id = values.pop("civitai_model")
        _validate(values | {"civitai": model_id})  # --dir and --name, before asking
        values["civitai"], note = _latest_version(model_id, ctx)
        notes.append(note)
    entry = _validate(values)
    if existing:
        _refuse_same_source_or_name(existing, entry, ctx.env)
    if entry.is_repo:
        return entry, entry.dir or ".", (_repository_note(entry, ctx),)
    remote = resolve(entry, ctx)  # SourceError: exit 1, no write
    if entry.url is not None and remote.filename != entry.default_filename:
        values["filename"] = remote.filename  # a download link that does not show it
    if remote.size is not None and remote.size_is_exact:
        values["size"] = remote.size  # Civitai's size is approximate: never a pin
    if remote.sha256:
        values["sha256"] = remote.sha256
    if remote.xxh3_128:
        values["xxh3_128"] = remote.xxh3_128
    entry = _validate(values)
    relpath = entry.relpath(entry.filename or remote.filename)
    assert relpath is not None
    if existing:
        _refuse_same_path(existing, entry, relpath, ctx)  # before the HEAD below
    if source_of(entry, ctx.env) == "url" and "size" not in values:
        size, unknown = _published_size(entry.url or "", ctx)
        if size is not None:
            values["size"] = size
        notes += [unknown] if unknown else []
    return entry, relpath, tuple(notes)


def _repository_note(entry: Entry, ctx: SourceContext) -> str:
    """What the repository entry selects now (listed once: a typo in a pattern shows)."""
    listing = list_repository(entry, ctx)  # SourceError: exit 1, no write
    size = sum(f.size for f in listing.files)
    if not listing.files:
        raise ModelsyncError(
            f"{entry.hf} at {entry.revision or 'main'}: include/exclude select no file; "
            "nothing was added",
            "check the patterns (fnmatch globs on the path in the repo, e.g. '*.gguf', 'unet/*')",
        )
    return (
        f"{len(listing.files)} file(s), {human_size(size)} at commit {listing.commit[:12]}; "
        f"`modelsync lock` pins the commit and every file"
    )


def _latest_version(model_id: int, ctx: SourceContext) -> tuple[int, str]:
    """The latest version of a Civitai model, and a note saying that add picked it."""
    version, name = civitai.latest_version(model_id, ctx)
    label = f" ({name})" if name else ""
    note = (
        f"the link names model {model_id} but no version: added its latest version, "
        f"{version}{label} (civitai = {version})"
    )
    return version, note


def _published_size(url: str, ctx: SourceContext) -> tuple[int | None, str | None]:
    """The size a plain URL's server announces to one HEAD (redirects followed; no token
    is ever sent: plain URLs get none). None, and a note, when it does not say."""
    import requests

    where = redact_urls(url)
    try:
        with ctx.session.head(url, allow_redirects=True, timeout=ctx.timeout) as response:
            status = response.status_code
            length = response.headers.get("Content-Length", "")
            encoded = response.headers.get("Content-Encoding", "identity").lower()
    except requests.RequestException as exc:
        return None, f"size unknown: HEAD {where} failed ({type(exc).__name__})"
    if status != 200:
        return None, f"size unknown: HEAD {where} answered {status}"
    if encoded not in ("", "identity") or not length.isdigit():
        return None, None  # compressed in transit, or not announced: no exact size
    return int(length), None


def entry_pinned(entry: Entry) -> bool:
    return bool(entry.sha256 or entry.xxh3_128)


def _read(path: Path) -> str:
    if not path.parent.is_dir():
        raise ModelsyncError(f"{path}: folder {path.parent} does not exist")
    try:
        return read_manifest_text(path)
    except FileNotFoundError:
        return ""  # `add` starts a new manifest
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelsyncError(f"{path}: cannot read: {exc}") from None


def _existing(path: Path, text: str) -> Manifest | None:
    """The manifest as it stands (validated), or None when it has no entries yet."""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError:
        return load_manifest(path)  # reports the syntax error with its line
    models = doc.get("models")
    if models is None or (isinstance(models, list) and not models):
        return None  # the final check validates the rest
    if not isinstance(models, AoT):
        raise ModelsyncError(
            f"{path}: models is written as an inline array; add the entry by hand",
            "or rewrite it as [[models]] tables, the form `modelsync add` appends to",
        )
    return load_manifest(path)


def _settings_of(text: str) -> Settings:
    """[settings] of a manifest without entries yet; invalid ones are left to the final check."""
    try:
        return Settings.model_validate(tomli.loads(text).get("settings", {}))
    except (tomli.TOMLDecodeError, ValidationError):
        return Settings()


def _validate(values: dict[str, Any]) -> Entry:
    try:
        return Entry.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(map(str, err["loc"]))
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{key}: {msg}" if key else msg)
        raise ModelsyncError(f"cannot add this entry: {'; '.join(problems)}") from None


def _label(manifest: Manifest, i: int, other: Entry) -> str:
    return f"{manifest.path.name}: models[{i}] ({other.display_name})"


def _refuse_same_source_or_name(manifest: Manifest, entry: Entry, env: Mapping[str, str]) -> None:
    def source_key(e: Entry) -> tuple[object, ...]:
        if e.url is not None and source_of(e, env) == "civitai":  # a link written by hand
            try:
                ref = civitai.parse_civitai_url(e.url)
            except ValueError:
                pass
            else:
                if not (ref.type or ref.format):
                    return (None, None, e.file, None, ref.version_id)
        return (e.url, e.hf, e.file, (e.revision or "main") if e.hf else None, e.civitai)

    for i, other in enumerate(manifest.models):
        label = _label(manifest, i, other)
        if source_key(other) == source_key(entry):
            raise ModelsyncError(f"{label} already has this source; nothing was added")
        if other.display_name == entry.display_name:
            raise ModelsyncError(
                f"{label} already uses the name {entry.display_name!r}; nothing was added",
                "pass --name to give the new entry another name",
            )


def _refuse_same_path(manifest: Manifest, entry: Entry, relpath: str, ctx: SourceContext) -> None:
    """No two entries may download to one path, on a case-insensitive file system too
    (the manifest is shared between machines)."""
    for i, other in enumerate(manifest.models):
        other_path = _path_of(manifest, other, entry, ctx)
        if other_path is None or other_path.casefold() != relpath.casefold():
            continue
        same = (
            "" if other_path == relpath else f" (the new entry's {relpath!r} differs in case only)"
        )
        raise ModelsyncError(
            f"{_label(manifest, i, other)} already downloads to {other_path!r}{same}; "
            "nothing was added",
            "pass another --dir",
        )


def _path_of(manifest: Manifest, other: Entry, new: Entry, ctx: SourceContext) -> str | None:
    """Where `other` downloads to. A Civitai entry (or link) without `filename` names its
    file only through the API: the lock knows it, else it is resolved (only when it shares
    a folder with the new entry, the one case where it can collide)."""
    if other.filename is not None or source_of(other, ctx.env) != "civitai":
        return other.relpath()
    if (other.dir or "").casefold() != (new.dir or "").casefold():
        return None
    try:
        lock = read_lock(manifest.lock_path)
    except ModelsyncError:
        lock = None  # a broken lock is for `lock` to report; resolve instead
    locked = lock.current(other) if lock else None
    if locked is not None:
        return locked.path
    try:
        return other.relpath(resolve(other, ctx).filename)
    except ModelsyncError:
        return None  # unreachable now: `plan` reports a clash once it resolves
