"""`modelsync import SOURCE... [-o MANIFEST]`: entries from what users already have.

Each SOURCE is read by the reader of its kind (detected from the content unless `--from`
says): a ComfyUI workflow (JSON, UI or API format) or an image ComfyUI saved with one, a
ComfyUI-Manager model list, or a models folder. Their findings are merged:

- a reference one source could not resolve (a loader's file name without a URL) is
  resolved by another source's entry for the same file (the folder that holds it);
- an entry whose target (`dir`/`filename`; a repository: its folder) the manifest already
  has, or that an earlier SOURCE already gave, is skipped: importing twice changes nothing;
- an entry whose default name another entry already uses gets `name = "<dir>/<file>"`.

The rest is appended to MANIFEST (created when missing) keeping its text byte for byte,
and only if the result loads as a manifest. Nothing is downloaded; a folder's files are
hashed (cached in its state.db).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelsync.commands.editing import appended, ordered, read_manifest_text, write_checked
from modelsync.errors import ModelsyncError
from modelsync.importers import (
    Findings,
    Found,
    ImportInputError,
    ImportOptions,
    Kind,
    Unresolved,
)
from modelsync.manifest import Entry, Manifest, is_comfyui_install, load_manifest


@dataclass(frozen=True)
class Skipped:
    found: Found
    why: str


@dataclass(frozen=True)
class ImportResult:
    manifest: Path
    created: bool
    added: tuple[Found, ...]
    skipped: tuple[Skipped, ...]
    unresolved: tuple[Unresolved, ...]
    warnings: tuple[str, ...]


MAX_JSON_BYTES = 256 * 1024 * 1024  # far above any workflow or model list

NEW_MANIFEST = """\
# Written by `modelsync import`: review it, then `modelsync lock {name}` pins every
# file and `modelsync apply {name}` brings a models folder in line with it.
version = 1
"""
ROOT_HINT = """\

[settings]
# The folder the entries' `dir`s are relative to: a ComfyUI install's models/ folder
# (a ComfyUI install itself works too). Set it, or pass --root to each command.
# root = "ComfyUI/models"
"""


def detect_kind(path: Path) -> Kind:
    """What SOURCE is, from its content (not its name)."""
    if path.is_dir():
        return "folder"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise ImportInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(b"\x89PNG\r\n\x1a\n") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "png"
    data = None
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    # never a model file read whole into memory: workflows and model lists are small
    if first in (b"{", b"") and size <= MAX_JSON_BYTES:
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError, OSError):
            data = json.loads(path.read_text(encoding="utf-8-sig"))
    if isinstance(data, dict):
        models = data.get("models")
        if "nodes" in data or "definitions" in data:
            return "workflow"
        if isinstance(models, list) and (
            not models
            or any(isinstance(m, dict) and ("save_path" in m or "type" in m) for m in models)
        ):
            return "comfyui-manager"  # (a workflow has "nodes"; an empty list has nothing)
        if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            return "workflow"  # API format
    raise ImportInputError(
        f"{path}: not a ComfyUI workflow, a ComfyUI-Manager model list, an image ComfyUI "
        "saved, nor a folder",
        "pass --from workflow|png|comfyui-manager|folder if it is one of them",
    )


# The module that reads each kind (imported when needed: a run reads one or two kinds).
_READERS: dict[Kind, str] = {
    "workflow": "workflow",
    "png": "workflow",
    "comfyui-manager": "comfyui_manager",
    "folder": "folder",
}


def read_source(path: Path, kind: Kind, options: ImportOptions) -> Findings:
    module = importlib.import_module(f"modelsync.importers.{_READERS[kind]}")
    read: Callable[[Path, ImportOptions], Findings] = module.read
    return read(path, options)


def run_import(
    sources: list[Path], manifest_path: Path, kind: Kind | None, options: ImportOptions
) -> ImportResult:
    path = manifest_path.resolve() if manifest_path.is_symlink() else manifest_path
    existing = _existing(path)  # an invalid manifest: exit 2 before reading anything
    findings = Findings()
    for source in sources:
        if not source.exists():
            raise ModelsyncError(f"{source}: no such file or folder", "check the path")
        try:
            findings.extend(read_source(source, kind or detect_kind(source), options))
        except ImportInputError as exc:
            raise ModelsyncError(*exc.args) from None
    added, skipped = _new_entries(findings.found, existing)
    unresolved = _still_unresolved(findings.unresolved, findings.found)
    created = existing is None
    if added:
        text = read_manifest_text(path) if not created else _new_text(path, sources)
        taken = {e.display_name for e in existing.models} if existing else set()
        for found in added:
            values = _named(found, taken)
            text = appended(text, ordered(values), found.comment)
        write_checked(path, text)
    return ImportResult(
        manifest=path,
        created=created and bool(added),
        added=tuple(added),
        skipped=tuple(skipped),
        unresolved=tuple(unresolved),
        warnings=tuple(findings.warnings),
    )


def _existing(path: Path) -> Manifest | None:
    if not path.exists():
        if not path.parent.is_dir():
            raise ModelsyncError(f"{path}: folder {path.parent} does not exist")
        return None
    return load_manifest(path)


def _target_of(entry: Entry) -> str | None:
    if entry.is_repo:
        return f"{entry.dir}/" if entry.dir else "/"
    return entry.relpath()


def _new_entries(
    found: list[Found], existing: Manifest | None
) -> tuple[list[Found], list[Skipped]]:
    """The entries to add, and those skipped (a target already there, compared
    case-insensitively as on macOS and Windows; or a source already there)."""
    targets: dict[str, str] = {}
    sources: dict[tuple[object, ...], str] = {}
    if existing is not None:
        for i, entry in enumerate(existing.models):
            label = f"already in {existing.path.name}: models[{i}] ({entry.display_name})"
            target = _target_of(entry)
            if target is not None:
                targets.setdefault(target.casefold(), label)
            if entry.civitai is not None and entry.filename is None:
                sources.setdefault(("civitai", entry.civitai, entry.dir), label)
    added: list[Found] = []
    skipped: list[Skipped] = []
    for item in found:
        key = item.target.casefold()
        civitai_key = ("civitai", item.values.get("civitai"), item.values.get("dir", ""))
        why = targets.get(key) or (sources.get(civitai_key) if "civitai" in item.values else None)
        if why is not None:
            skipped.append(Skipped(item, why))
            continue
        targets[key] = f"also found in {item.origin}"
        added.append(item)
    return added, skipped


def _still_unresolved(unresolved: list[Unresolved], found: list[Found]) -> list[Unresolved]:
    """Drop a reference that another source resolved: the same file (ComfyUI matches a
    loader's file by its path under the model folder, often by its name alone)."""
    names = {str(f.values.get("filename", "")).casefold() for f in found}
    targets = {f.target.casefold() for f in found}
    out: list[Unresolved] = []
    seen: set[tuple[str, str | None]] = set()
    for u in unresolved:
        base = PurePosixPath(u.name).name.casefold()
        where = f"{u.dir}/{PurePosixPath(u.name).name}".casefold() if u.dir else None
        if (where is not None and where in targets) or base in names:
            continue
        if (u.name, u.dir) not in seen:
            seen.add((u.name, u.dir))
            out.append(u)
    return out


def _named(found: Found, taken: set[str]) -> dict[str, object]:
    """An entry whose default name (its file name) is taken gets `<dir>/<file>`."""
    values = dict(found.values)
    default = values.get("name") or values.get("filename")
    if default is None and "hf" in values and "file" not in values:
        default = str(values["hf"]).rpartition("/")[2]
    if default is None and "civitai" in values:
        default = f"civitai-{values['civitai']}"
    name = str(default)
    if name in taken:
        folder = str(values.get("dir", "") or "")
        name = f"{folder}/{name}" if folder else name
        n = 2
        while name in taken:
            name = f"{folder}/{default}-{n}" if folder else f"{default}-{n}"
            n += 1
        values = {"name": name, **values}
    taken.add(name)
    return values


def _new_text(path: Path, sources: list[Path]) -> str:
    """The head of a new manifest: a folder imported alone is its root."""
    text = NEW_MANIFEST.format(name=path.name)
    folders = [s for s in sources if s.is_dir()]
    if len(folders) == 1:
        folder = folders[0]
        if is_comfyui_install(folder):
            folder = folder / "models"
        rel = os.path.relpath(folder.resolve(), path.parent.resolve())
        root = PurePosixPath(*Path(rel).parts).as_posix()
        return text + f'\n[settings]\nroot = "{_toml_escape(root)}"\n'
    return text + ROOT_HINT


def _toml_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
