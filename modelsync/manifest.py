"""The TOML manifest: pydantic models, loading, and errors that point at the fix."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import tomli
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from modelsync.errors import ManifestError, Problem

_HEX = re.compile(r"^[0-9a-fA-F]*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _hex_of(length: int, algo: str) -> Any:
    def check(value: str) -> str:
        if not _HEX.match(value):
            raise ValueError(f"{algo} must be hexadecimal (0-9, a-f); got {value!r}")
        if len(value) != length:
            raise ValueError(f"{algo} must be {length} hex characters, got {len(value)}")
        return value.lower()

    return AfterValidator(check)


Sha256 = Annotated[str, _hex_of(64, "sha256")]
Xxh3 = Annotated[str, _hex_of(32, "xxh3_128")]


def parse_rate(value: str | int) -> int:
    """ "0", "50M", "1.5G", 1048576 → bytes per second (binary units, like aria2)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):  # TOML gives any type
        raise ValueError(f'expected a rate like "0", "500K", "50M" or "1G"; got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a rate cannot be negative")
        return value
    match = _RATE.match(value)
    if not match:
        raise ValueError(f'expected a rate like "0", "500K", "50M" or "1G"; got {value!r}')
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


Rate = Annotated[int, BeforeValidator(parse_rate)]


def _relative_path(what: str) -> Any:
    def check(value: str) -> str:
        if "\\" in value:
            raise ValueError(f"{what} must use '/' as separator, not '\\': {value!r}")
        if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
            raise ValueError(f"{what} must be relative to root, not absolute: {value!r}")
        parts = [p for p in value.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"{what} must not contain '..': {value!r}")
        if parts and parts[0] == ".modelsync":
            raise ValueError(f"{what} must not be inside .modelsync/, modelsync's own folder")
        return "/".join(parts)

    return AfterValidator(check)


def is_plain_file_name(value: str) -> bool:
    """A name, not a path: what every target's last segment must be, wherever it came from."""
    return bool(value) and value not in {".", ".."} and "/" not in value and "\\" not in value


def _file_name(value: str) -> str:
    if not is_plain_file_name(value):
        raise ValueError(f"filename must be a plain file name without folders: {value!r}")
    return value


RelDir = Annotated[str, _relative_path("dir")]
FileName = Annotated[str, AfterValidator(_file_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Settings(_Strict):
    root: str | None = None
    # strict: TOML has real integers; lax mode would take "4" or true for a number
    max_concurrent: int = Field(default=4, ge=1, le=64, strict=True)
    connections: int = Field(default=0, ge=0, le=16, strict=True)
    max_speed: Rate = 0
    mirrors: tuple[str, ...] = ()


SourceKind = Literal["url", "hf", "civitai"]


class Entry(_Strict):
    name: str | None = None
    url: str | None = None
    hf: str | None = None
    file: str | None = None
    revision: str | None = None
    civitai: int | None = Field(default=None, ge=1, strict=True)
    dir: RelDir = ""
    filename: FileName | None = None
    sha256: Sha256 | None = None
    xxh3_128: Xxh3 | None = None
    size: int | None = Field(default=None, ge=0, strict=True)
    tags: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_source(self) -> Entry:
        given = [k for k in ("url", "hf", "civitai") if getattr(self, k) is not None]
        if not given:
            raise ValueError("no source: set exactly one of url, hf (with file) or civitai")
        if len(given) > 1:
            raise ValueError(f"two sources ({' and '.join(given)}): keep exactly one per entry")
        if self.url is not None and not _is_http(self.url):
            raise ValueError(f"url must start with http:// or https://: {self.url!r}")
        if self.hf is not None and not self.file:
            raise ValueError('hf entries need file = "path/in/repo"')
        if self.file is not None and self.url is not None:
            raise ValueError("file is for hf and civitai entries; a url entry uses filename")
        if self.revision is not None and self.hf is None:
            raise ValueError("revision is only for hf entries")
        for mirror in self.mirrors:
            if not _is_http(mirror):
                raise ValueError(f"mirrors must be http(s) URLs: {mirror!r}")
        derived = self.default_filename
        if (
            self.filename is None
            and self.source != "civitai"
            and not is_plain_file_name(derived or "")
        ):
            source = f"url {self.url!r}" if self.url is not None else f"file {self.file!r}"
            raise ValueError(f"cannot take a safe file name from {source}: set filename")
        return self

    @property
    def source(self) -> SourceKind:
        if self.url is not None:
            return "url"
        return "hf" if self.hf is not None else "civitai"

    # Cached: asked many times per entry per run, for thousands of entries.
    @cached_property
    def default_filename(self) -> str | None:
        """The file name known without asking the source (None for civitai without one)."""
        if self.filename:
            return self.filename
        if self.url is not None:
            return _url_basename(self.url)
        if self.hf is not None and self.file:
            return self.file.rpartition("/")[2]
        return None

    @cached_property
    def display_name(self) -> str:
        # Civitai names its file only through its API; a stable offline name keeps
        # --only, the lock and error messages working without the network.
        return self.name or self.default_filename or f"civitai-{self.civitai}"

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Entry:
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("default_filename", "display_name"):  # derived from fields that
            copy.__dict__.pop(cached, None)  # `update` may have changed
        return copy

    def relpath(self, filename: str | None = None) -> str | None:
        name = filename or self.default_filename
        if name is None:
            return None
        return f"{self.dir}/{name}" if self.dir else name


def _is_http(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def _url_basename(url: str) -> str:
    # String operations, not urlsplit/PurePosixPath: this runs for every entry, often.
    path = url.split("#", 1)[0].split("?", 1)[0]
    if "://" in path:
        path = path.split("://", 1)[1].partition("/")[2]
    return unquote(path.rstrip("/").rpartition("/")[2]) if path.strip("/") else ""


class Manifest(_Strict):
    version: Literal[1] = 1
    settings: Settings = Settings()
    models: tuple[Entry, ...] = ()

    path: Path = Path("models.toml")

    def select(self, only: list[str] | None) -> list[Entry]:
        """Entries whose name or one of whose tags is in `only` (all when empty)."""
        if not only:
            return list(self.models)
        wanted = set(only)
        return [e for e in self.models if e.display_name in wanted or wanted & set(e.tags)]

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")


def load_manifest(path: Path) -> Manifest:
    """Parse and validate; raise ManifestError listing every problem found."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(where, ["file not found; check the path"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(where, [f"cannot read: {exc}"]) from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        msg = getattr(exc, "msg", str(exc))
        problem = f"line {exc.lineno}, column {exc.colno}: TOML syntax error: {msg}"
        raise ManifestError(where, [Problem(None, None, exc.lineno, problem)]) from None
    if "path" in data:  # 'path' is ours, not a manifest key
        line = _top_level_line(text, "path")
        raise ManifestError(where, [Problem(None, "path", line, _unknown("", "path", Manifest))])
    try:
        manifest = Manifest.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise ManifestError(where, _describe(exc, data, text)) from None
    problems = _cross_entry_problems(manifest, text)
    if problems:
        raise ManifestError(where, problems)
    return manifest


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [k for k in model.model_fields if k != "path"]


def _unknown(prefix: str, key: str, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(key, _known_keys(model), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(_known_keys(model))
    return f"{prefix}unknown key {key!r}{hint} (known keys: {known})"


def entry_label(index: int, raw: Any) -> str:
    label = f"models[{index}]"
    if isinstance(raw, dict):
        name = raw.get("name") or raw.get("filename")
        if not name and isinstance(raw.get("url"), str):
            name = _url_basename(raw["url"])
        if not name and isinstance(raw.get("file"), str):
            name = PurePosixPath(raw["file"]).name
        if name:
            label += f" ({name})"
    return label


def _entry_lines(text: str) -> list[int]:
    """1-based line numbers of each [[models]] header, in order."""
    header = re.compile(r"^\s*\[\[\s*models\s*\]\]")
    return [n for n, line in enumerate(text.splitlines(), 1) if header.match(line)]


def _key_line(text: str, index: int, key: str) -> int | None:
    """Line of `key` inside the index-th [[models]] table, else of its header."""
    lines = text.splitlines()
    headers = _entry_lines(text)
    if index >= len(headers):
        return None
    header = headers[index]  # 1-based, so lines[header] is the line after it
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    for n in range(header, len(lines)):
        if lines[n].lstrip().startswith("["):
            break
        if pattern and pattern.match(lines[n]):
            return n + 1
    return header


def _describe(exc: ValidationError, data: dict[str, Any], text: str) -> list[str]:
    problems: list[str] = []
    models = data.get("models")
    for err in exc.errors():
        loc = err["loc"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if loc and loc[0] == "models" and len(loc) >= 2 and isinstance(loc[1], int):
            index = loc[1]
            raw = models[index] if isinstance(models, list) and index < len(models) else None
            key = str(loc[2]) if len(loc) > 2 else None
            line = _key_line(text, index, key or "")
            where = entry_label(index, raw)
            if line:
                where = f"line {line}: {where}"
            if err["type"] == "extra_forbidden" and key:
                problems.append(_unknown(f"{where}: ", key, Entry))
            elif key:
                problems.append(f"{where}: key {key!r}: {msg}")
            else:
                problems.append(f"{where}: {msg}")
        elif loc and loc[0] == "settings" and len(loc) > 1:
            key = str(loc[1])
            if err["type"] == "extra_forbidden":
                problems.append(_unknown("[settings]: ", key, Settings))
            else:
                problems.append(f"[settings]: key {key!r}: {msg}")
        elif loc and err["type"] == "extra_forbidden":
            problems.append(_unknown("top level: ", str(loc[0]), Manifest))
        elif loc:
            problems.append(f"key {'.'.join(map(str, loc))!r}: {msg}")
        else:
            problems.append(msg)
    return problems


def _cross_entry_problems(manifest: Manifest, text: str) -> list[str]:
    if not manifest.models:
        return ["no [[models]] entries: add at least one (see README for the format)"]
    problems: list[str] = []
    names: dict[str, int] = {}
    paths: dict[str, int] = {}
    for i, entry in enumerate(manifest.models):
        label = f"models[{i}] ({entry.display_name})"
        if entry.display_name in names:
            first = names[entry.display_name]
            problems.append(
                f"{label}: name {entry.display_name!r} is already used by models[{first}]; "
                "set a unique name"
            )
        names.setdefault(entry.display_name, i)
        rel = entry.relpath()
        if rel is None:
            continue
        key = os.path.normcase(rel)
        if key in paths:
            problems.append(
                f"{label}: path {rel!r} is also the target of models[{paths[key]}]; "
                "change dir or filename"
            )
        paths.setdefault(key, i)
    return problems


def check_paths_inside(manifest: Manifest, root: Path) -> None:
    """Reject folders that escape root through a symlink (reads the disk, writes nothing).

    Folders, not files: a file is only ever put in place with a rename, which replaces
    a symlink at the target rather than writing through it. One realpath per folder
    keeps this cheap for manifests of thousands of entries.
    """
    real_root = os.path.realpath(root)
    escaping: dict[str, str] = {}
    for folder in {entry.dir for entry in manifest.models if entry.dir}:
        real = os.path.realpath(os.path.join(root, folder))
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            escaping[folder] = real
    problems = [
        f"models[{i}] ({entry.display_name}): key 'dir': {entry.dir!r} resolves to "
        f"{escaping[entry.dir]}, outside root {real_root} (through a symlink); "
        "point dir elsewhere"
        for i, entry in enumerate(manifest.models)
        if entry.dir in escaping
    ]
    if problems:
        raise ManifestError(str(manifest.path), problems)


@dataclass(frozen=True)
class RootChoice:
    """The models folder, where the choice came from, and whether it may be created.

    Only the manifest's own `settings.root` (or `--create-root`) creates a missing root:
    a mistyped `--root` or `$MODELSYNC_ROOT` must not fill a new folder with gigabytes.
    """

    path: Path
    origin: str  # for humans: "--root", "settings.root in models.toml", ...
    creatable: bool


def resolve_root(manifest: Manifest, cli_root: str | None, env: Mapping[str, str]) -> RootChoice:
    """--root, then $MODELSYNC_ROOT, then settings.root (relative to the manifest), else cwd."""
    if cli_root:
        return RootChoice(_absolute(Path(cli_root).expanduser()), "--root", False)
    if env.get("MODELSYNC_ROOT"):
        path = _absolute(Path(env["MODELSYNC_ROOT"]).expanduser())
        return RootChoice(path, "$MODELSYNC_ROOT", False)
    if manifest.settings.root:
        root = Path(manifest.settings.root).expanduser()
        origin = f"settings.root in {manifest.path.name}"
        return RootChoice(_absolute(manifest.path.parent / root), origin, True)  # folds "../"
    origin = f"the current folder: {manifest.path.name} sets no settings.root"
    return RootChoice(Path.cwd(), origin, False)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))
