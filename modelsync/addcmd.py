"""`modelsync add MANIFEST SOURCE --dir DIR [--name NAME]`: append one resolved entry.

SOURCE is a URL, `hf://org/repo/path/in/repo[@revision]` (also `hf://org/repo@revision/path`,
for a path that holds `@`, with `/` in the revision written `%2F`; datasets:
`hf://datasets/org/name/path`) or `civitai:<version id>`. The entry is resolved
through its source's metadata (nothing is downloaded) and appended as a `[[models]]` table
with the size and sha256 the source publishes. The manifest's existing text is kept byte
for byte: the new table is added at the end, its values rendered by tomlkit, and the result
must load with `load_manifest` before it atomically replaces the file.

A plain URL publishes no hash: the entry is added unpinned and `AddResult.unpinned` says
so; `modelsync lock` then downloads it once and pins its sha256 in the lock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import tomli
import tomlkit
from pydantic import ValidationError
from tomlkit.items import AoT

from modelsync.atomic import write_text_atomic
from modelsync.errors import ManifestError, ModelsyncError
from modelsync.manifest import Entry, Manifest, Settings, load_manifest
from modelsync.sources import SourceContext, resolve

SOURCE_FORMS = "a URL, hf://org/repo/path/in/repo[@revision] or civitai:<version id>"
_KEY_ORDER = (
    "name",
    "url",
    "hf",
    "file",
    "revision",
    "civitai",
    "dir",
    "filename",
    "size",
    "sha256",
    "xxh3_128",
)


@dataclass(frozen=True)
class AddResult:
    manifest: Path
    name: str
    path: str  # target relative to root
    values: dict[str, Any]  # the keys written, in order
    unpinned: bool  # no hash known: `modelsync lock` will pin it


def parse_source(source: str) -> dict[str, Any]:
    """SOURCE → the manifest keys of its source (url / hf+file[+revision] / civitai)."""
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
        return {"url": text}
    raise ModelsyncError(f"SOURCE {source!r} is not {SOURCE_FORMS}")


def _parse_hf(source: str) -> dict[str, Any]:
    parts = source.removeprefix("hf://").split("/")
    n = 3 if parts[0] == "datasets" else 2  # "datasets/org/name" is the repo id of a dataset
    if len(parts) <= n or not all(parts):
        raise ModelsyncError(
            f"SOURCE {source!r}: expected hf://org/repo/path/in/repo[@revision] "
            "(hf://datasets/org/name/path for a dataset)"
        )
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


def run_add(
    manifest_path: Path, source: str, dir: str, name: str | None, env: Mapping[str, str]
) -> AddResult:
    path = manifest_path.resolve() if manifest_path.is_symlink() else manifest_path
    text = _read(path)
    existing = _existing(path, text)
    values: dict[str, Any] = {"name": name} if name else {}
    values |= parse_source(source)
    values["dir"] = dir
    entry = _validate(values)
    settings = existing.settings if existing else _settings_of(text)
    remote = resolve(entry, SourceContext(settings, env))  # SourceError: exit 1, no write
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
        _refuse_duplicates(existing, entry, relpath)
    ordered = {k: values[k] for k in _KEY_ORDER if k in values}
    new_text = _appended(text, ordered)

    def check(candidate: Path) -> None:
        try:
            load_manifest(candidate)
        except ManifestError as exc:
            raise ManifestError(str(path), exc.problems) from None

    write_text_atomic(path, new_text, check)
    return AddResult(path, entry.display_name, relpath, ordered, not entry_pinned(entry))


def entry_pinned(entry: Entry) -> bool:
    return bool(entry.sha256 or entry.xxh3_128)


def _read(path: Path) -> str:
    if not path.parent.is_dir():
        raise ModelsyncError(f"{path}: folder {path.parent} does not exist")
    try:
        return path.read_text(encoding="utf-8")
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


def _refuse_duplicates(manifest: Manifest, entry: Entry, relpath: str) -> None:
    def source_key(e: Entry) -> tuple[object, ...]:
        return (e.url, e.hf, e.file, (e.revision or "main") if e.hf else None, e.civitai)

    for i, other in enumerate(manifest.models):
        label = f"{manifest.path.name}: models[{i}] ({other.display_name})"
        if source_key(other) == source_key(entry):
            raise ModelsyncError(f"{label} already has this source; nothing was added")
        if other.display_name == entry.display_name:
            raise ModelsyncError(
                f"{label} already uses the name {entry.display_name!r}; nothing was added",
                "pass --name to give the new entry another name",
            )
        other_path = other.relpath()
        if other_path is not None and os.path.normcase(other_path) == os.path.normcase(relpath):
            raise ModelsyncError(
                f"{label} already downloads to {relpath!r}; nothing was added",
                "pass another --dir",
            )


def _appended(text: str, values: dict[str, Any]) -> str:
    """`text` unchanged (plus a final newline if it lacked one), then the new table."""
    lines = ["[[models]]"]
    lines += [f"{key} = {tomlkit.item(value).as_string()}" for key, value in values.items()]
    entry = "\n".join(lines) + "\n"
    if not text:
        return entry
    return text + ("" if text.endswith("\n") else "\n") + "\n" + entry
