"""The TOML manifest: pydantic models, loading, and errors that point at the fix."""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
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
    PlainValidator,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from modelsync.errors import ManifestError, Problem
from modelsync.tuning import NO_TUNING, Tuning, parse_tuning, tuning_problems

_HEX = re.compile(r"^[0-9a-fA-F]*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?\s*$", re.IGNORECASE)
_MAX_RATE = 1 << 63  # aria2 keeps rates in 64-bit integers
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
        if value >= _MAX_RATE:
            raise ValueError(f"a rate must be less than 2^63 bytes per second; got {value}")
        return value
    match = _RATE.match(value)
    if not match:
        raise ValueError(f'expected a rate like "0", "500K", "50M" or "1G"; got {value!r}')
    number, unit = match.groups()
    rate = float(number) * _UNITS[unit.lower()]
    if not rate < _MAX_RATE:  # also inf, from hundreds of digits: never an OverflowError
        raise ValueError(f"a rate must be less than 2^63 bytes per second; got {value!r}")
    return int(rate)


Rate = Annotated[int, BeforeValidator(parse_rate)]


def parse_size(value: str | int) -> int:
    """ "0", "50G", 1048576 → bytes (binary units), read like a rate."""
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("a rate", "a size").replace(" per second", "")) from None


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
        for part in parts:
            if problem := name_problem(f"{what} part", part):
                raise ValueError(problem)
        return "/".join(parts)

    return AfterValidator(check)


#: The longest file or folder name that Linux, macOS and Windows file systems all take.
NAME_MAX_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Names Windows gives to devices, whatever the extension (aux.txt is AUX), and characters
# it refuses: a manifest is shared, so a name that fails on a teammate's Windows machine
# is refused everywhere.
_WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in (*"123456789", "¹", "²", "³")}
)
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')


def is_plain_file_name(value: str) -> bool:
    """A name, not a path, that a file system can hold: what every target's last segment
    must be, wherever it came from (the manifest, the Hub, Civitai's API)."""
    return (
        bool(value)
        and value not in {".", ".."}
        and "/" not in value
        and "\\" not in value
        and not _CONTROL.search(value)
        and len(value.encode("utf-8", "surrogatepass")) <= NAME_MAX_BYTES
    )


def name_problem(what: str, name: str) -> str | None:
    """Why `name` (one segment of a manifest's dir or file name) cannot be used on every
    system, in words naming `what`; None when it can."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > NAME_MAX_BYTES:
        return (
            f"{what} {name[:24]!r}… is {size} bytes long (UTF-8); file systems take "
            f"at most {NAME_MAX_BYTES}: shorten it"
        )
    if _CONTROL.search(name):
        return f"{what} must not contain control characters: {name!r}"
    if _WINDOWS_FORBIDDEN.search(name) or name.endswith((".", " ")):
        return (
            f'{what} {name!r} cannot be created on Windows (no < > : " | ? *, and no '
            "'.' or space at the end): rename it"
        )
    if name.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_DEVICES:
        return f"{what} {name!r} is a device name on Windows (CON, NUL, AUX, COM1…): rename it"
    return None


def _file_name(value: str) -> str:
    if "/" in value or "\\" in value or value in {"", ".", ".."}:
        raise ValueError(f"filename must be a plain file name without folders: {value!r}")
    if problem := name_problem("filename", value):
        raise ValueError(problem)
    return value


RelDir = Annotated[str, _relative_path("dir")]
FileName = Annotated[str, AfterValidator(_file_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _root_path(value: str) -> str:
    if _CONTROL.search(value):  # a NUL byte would reach the OS calls
        raise ValueError(f"root must not contain control characters: {value!r}")
    return value


class Settings(_Strict):
    root: Annotated[str, AfterValidator(_root_path)] | None = None
    # strict: TOML has real integers; lax mode would take "4" or true for a number
    max_concurrent: int = Field(default=4, ge=1, le=64, strict=True)
    connections: int = Field(default=0, ge=0, le=16, strict=True)
    max_speed: Rate = 0
    # a download of unknown size stops (and fails) past this many bytes; 0: no bound
    # (a pinned size always bounds its own download)
    max_file_size: Annotated[int, BeforeValidator(parse_size)] = 0
    mirrors: tuple[str, ...] = ()
    # the mirrors alone first; the origin only on a miss (404, unreachable, wrong bytes)
    mirror_first: bool = Field(default=False, strict=True)
    # [settings.aria2]: aria2 options by name, checked against tuning.py's allowlist
    # (its errors name each option: see tuning_problems in _describe)
    aria2: Annotated[Tuning, PlainValidator(parse_tuning)] = NO_TUNING
    # how a file already on this machine is put at a target (linking.py)
    link: LinkMode = "auto"
    store: str | None = None  # the shared store (store.py); $MODELSYNC_STORE wins


# "none": an entry pinned by hash alone, fetched only from mirrors (an adopted folder,
# a private model); "hf" covers files and whole repositories (see Entry.is_repo).
SourceKind = Literal["url", "hf", "civitai", "none"]
LinkMode = Literal["auto", "reflink", "hardlink", "symlink", "copy"]
DEFAULT_PRIORITY = 50


class Entry(_Strict):
    name: str | None = None
    url: str | None = None
    hf: str | None = None
    file: str | None = None
    revision: str | None = None
    include: tuple[str, ...] = ()  # repository entries: huggingface_hub's allow_patterns
    exclude: tuple[str, ...] = ()  # ... and ignore_patterns
    civitai: int | None = Field(default=None, ge=1, strict=True)
    dir: RelDir = ""
    filename: FileName | None = None
    sha256: Sha256 | None = None
    xxh3_128: Xxh3 | None = None
    size: int | None = Field(default=None, ge=0, strict=True)
    tags: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    priority: int = Field(default=DEFAULT_PRIORITY, ge=0, le=100, strict=True)
    connections: int | None = Field(default=None, ge=1, le=16, strict=True)
    optional: bool = Field(default=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _repo_dir(cls, data: Any) -> Any:
        # A repository lands in a folder named after it unless `dir` says otherwise
        # (like `hf download --local-dir <name>`); dir = "" puts it in root itself.
        if isinstance(data, dict) and "dir" not in data and "file" not in data:
            hf = data.get("hf")
            if isinstance(hf, str) and hf.strip().strip("/"):
                return {**data, "dir": hf.strip().strip("/").rpartition("/")[2]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Entry:
        given = [k for k in ("url", "hf", "civitai") if getattr(self, k) is not None]
        if not given:
            self._check_sourceless()
        if len(given) > 1:
            raise ValueError(f"two sources ({' and '.join(given)}): keep exactly one per entry")
        if self.url is not None and not _is_http(self.url):
            raise ValueError(f"url must start with http:// or https://: {self.url!r}")
        if (self.include or self.exclude) and not self.is_repo:
            raise ValueError(
                'include and exclude are for repository entries (hf = "org/repo" without file)'
            )
        if self.is_repo:
            self._check_repo()
        if self.file is not None and self.url is not None:
            raise ValueError("file is for hf and civitai entries; a url entry uses filename")
        if self.revision is not None and self.hf is None:
            raise ValueError("revision is only for hf entries")
        for mirror in self.mirrors:
            if not _is_http(mirror):
                raise ValueError(f"mirrors must be http(s) URLs: {mirror!r}")
        derived = self.default_filename
        plain = derived and derived not in {".", ".."}
        problem = name_problem("file name", derived) if plain and derived else None
        if self.filename is None and problem:
            raise ValueError(f"{problem}, or set filename (the default is the url's or file's)")
        if (
            self.filename is None
            and self.source not in ("civitai", "none")
            and not self.is_repo
            and not is_plain_file_name(derived or "")
        ):
            source = f"url {self.url!r}" if self.url is not None else f"file {self.file!r}"
            raise ValueError(f"cannot take a safe file name from {source}: set filename")
        return self

    def _check_sourceless(self) -> None:
        if not (self.sha256 or self.xxh3_128):
            raise ValueError(
                "no source: set exactly one of url, hf or civitai (or, for a file fetched "
                "only from mirrors, sha256 and filename)"
            )
        if self.file is not None or self.revision is not None:
            raise ValueError('file and revision are for hf entries: set hf = "org/repo"')
        if not self.filename:
            raise ValueError("an entry without url, hf or civitai needs filename (and sha256)")

    def _check_repo(self) -> None:
        for key in ("filename", "sha256", "xxh3_128", "size", "mirrors"):
            if getattr(self, key):
                raise ValueError(
                    f"{key} is for single files; a repository entry (hf without file) pins "
                    "each of its files in the lock (`modelsync lock`), or set file"
                )
        for pattern in (*self.include, *self.exclude):
            if not pattern.strip():
                raise ValueError("include/exclude patterns must not be empty")

    @property
    def source(self) -> SourceKind:
        if self.url is not None:
            return "url"
        if self.hf is not None:
            return "hf"
        return "civitai" if self.civitai is not None else "none"

    @property
    def is_repo(self) -> bool:
        """A whole Hugging Face repository (or the files `include` picks from it)."""
        return self.hf is not None and self.file is None

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
        if self.name or self.default_filename:
            return self.name or self.default_filename or ""
        if self.hf is not None:  # a repository: its name, like its default folder
            return self.hf.strip().strip("/").rpartition("/")[2]
        return f"civitai-{self.civitai}"

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Entry:
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("default_filename", "display_name"):  # derived from fields that
            copy.__dict__.pop(cached, None)  # `update` may have changed
        return copy

    def controls(self) -> dict[str, Any]:
        """What the entry says about its download, as Desired's keyword arguments."""
        return {
            "priority": self.priority,
            "connections": self.connections or 0,
            "optional": self.optional,
            "tags": self.tags,
        }

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
    # entry name → {key: TOML line} for the pin keys, filled once by load_manifest
    _pin_lines: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)

    def key_line(self, name: str, key: str) -> int | None:
        """The TOML line where entry `name` sets `key` (sha256 or xxh3_128), if known."""
        return self._pin_lines.get(name, {}).get(key)

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
    lines = _pin_key_lines(text)
    manifest._pin_lines = {
        e.display_name: lines[i] for i, e in enumerate(manifest.models) if i < len(lines)
    }
    return manifest


_PIN_KEY = re.compile(r"^\s*[\"']?(sha256|xxh3_128)[\"']?\s*=")


def _pin_key_lines(text: str) -> list[dict[str, int]]:
    """Per [[models]] table, in order, the lines of its pin keys: one pass over the text
    (a manifest of 10,000 entries must not be scanned once per entry)."""
    header = re.compile(r"^\s*\[\[\s*models\s*\]\]")
    out: list[dict[str, int]] = []
    inside = False
    for n, line in enumerate(text.splitlines(), 1):
        if header.match(line):
            out.append({})
            inside = True
        elif line.lstrip().startswith("["):
            inside = False
        elif inside and (m := _PIN_KEY.match(line)):
            out[-1].setdefault(m[1], n)
    return out


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


# Our words for pydantic's type and range errors ("Input should be a valid tuple" names
# Python types that a manifest's author never wrote): what the key holds, and an example.
# Keys are an entry's keys, "settings.<key>", top-level keys, and "[[models]]" (an entry).
_EXPECTED: dict[str, tuple[str, str]] = {
    "name": ("a string in quotes", 'name = "sdxl-base"'),
    "url": ("an http(s) URL in quotes", 'url = "https://example.com/model.safetensors"'),
    "hf": ("a repo id in quotes", 'hf = "stabilityai/sdxl-vae"'),
    "file": ("the file's path in the repo, in quotes", 'file = "sdxl_vae.safetensors"'),
    "revision": ("a branch, tag or commit in quotes", 'revision = "main"'),
    "civitai": ("a whole number (the model version id)", "civitai = 128713"),
    "dir": ("a folder under root, in quotes", 'dir = "checkpoints"'),
    "filename": ("a file name in quotes", 'filename = "model.safetensors"'),
    "sha256": ("64 hex characters in quotes", 'sha256 = "31e35c80fc48…"'),
    "xxh3_128": ("32 hex characters in quotes", 'xxh3_128 = "6b1a1cc8f2…"'),
    "size": ("a whole number of bytes", "size = 6938078334"),
    "tags": ("a list of strings", 'tags = ["sdxl"]'),
    "mirrors": ("a list of URLs", 'mirrors = ["https://mirror.example/model.safetensors"]'),
    "include": ("a list of glob patterns", 'include = ["*.safetensors", "tokenizer/*"]'),
    "exclude": ("a list of glob patterns", 'exclude = ["*.bin", "onnx/*"]'),
    "priority": ("a whole number from 0 to 100 (higher first; default 50)", "priority = 80"),
    "connections": ("a whole number from 1 to 16", "connections = 4"),
    "optional": ("true or false", "optional = true"),
    "settings.root": ("a folder in quotes", 'root = "models"'),
    "settings.max_concurrent": ("a whole number from 1 to 64", "max_concurrent = 4"),
    "settings.connections": (
        "a whole number from 0 to 16 (0: automatic, one per 8 MiB)",
        "connections = 8",
    ),
    "settings.max_speed": ("a rate", 'max_speed = "50M"'),
    "settings.max_file_size": ("a size (0: no bound)", 'max_file_size = "50G"'),
    "settings.mirrors": ("a list of URLs", 'mirrors = ["https://mirror.example/"]'),
    "settings.mirror_first": ("true or false", "mirror_first = true"),
    "settings.link": (
        'one of "auto", "reflink", "hardlink", "symlink", "copy"',
        'link = "hardlink"',
    ),
    "settings.store": ("a folder in quotes", 'store = "~/.cache/modelsync/store"'),
    "settings": ("a table", "[settings] (one pair of brackets) above its keys"),
    "models": ("an array of tables", "[[models]] (two pairs of brackets) above each entry"),
    "[[models]]": ("a table", "[[models]] above the entry's keys"),
    "version": ("1 (the only manifest format so far)", "version = 1"),
}
_TYPE_ERRORS = frozenset(
    {
        "bool_parsing",
        "bool_type",
        "dict_type",
        "float_parsing",
        "float_type",
        "int_from_float",
        "int_parsing",
        "int_type",
        "iterable_type",
        "list_type",
        "literal_error",
        "model_type",
        "set_type",
        "string_type",
        "tuple_type",
    }
)
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _in_words(err: ErrorDetails, key: str) -> str:
    """`key must be …, e.g. …` for type and range errors; pydantic's text otherwise."""
    msg = str(err["msg"]).removeprefix("Value error, ")  # our validators' own words
    expected = _EXPECTED.get(key)
    if expected is None or err["type"] not in _TYPE_ERRORS | _RANGE_ERRORS:
        return msg
    what, example = expected
    name = "entry" if key == "[[models]]" else key.rpartition(".")[2]
    words = f"{name} must be {what}, e.g. {example}"
    if err["type"] in _RANGE_ERRORS:
        words += f"; got {err['input']!r}"
    return words


def _describe(exc: ValidationError, data: dict[str, Any], text: str) -> list[Problem]:
    return [
        problem
        for err in exc.errors()
        for problem in tuning_problems(err, text) or [_problem(err, data.get("models"), text)]
    ]


def _problem(err: ErrorDetails, models: Any, text: str) -> Problem:
    loc = err["loc"]
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        return _entry_problem(err, loc[1], models, text)
    if len(loc) >= 2 and loc[0] == "settings":
        key = str(loc[1])
        line = _settings_line(text, key)
        if err["type"] == "extra_forbidden":
            message = _unknown("[settings]: ", key, Settings)
        else:
            message = f"[settings]: key {key!r}: {_in_words(err, f'settings.{key}')}"
        return Problem(None, f"settings.{key}", line, message)
    if not loc:
        return Problem(None, None, None, _in_words(err, ""))
    key = ".".join(map(str, loc))
    line = _top_level_line(text, str(loc[0]))
    if err["type"] == "extra_forbidden":
        return Problem(None, key, line, _unknown("top level: ", key, Manifest))
    return Problem(None, key, line, f"key {key!r}: {_in_words(err, key)}")


def _entry_problem(err: ErrorDetails, index: int, models: Any, text: str) -> Problem:
    loc = err["loc"]
    raw = models[index] if isinstance(models, list) and index < len(models) else None
    key = str(loc[2]) if len(loc) > 2 else None  # loc[3], if any, is a list item's index
    line = _key_line(text, index, key or "")
    entry = entry_label(index, raw)
    where = f"line {line}: {entry}" if line else entry
    if err["type"] == "extra_forbidden" and key:
        message = _unknown(f"{where}: ", key, Entry)
    elif key:
        message = f"{where}: key {key!r}: {_in_words(err, key)}"
    else:
        message = f"{where}: {_in_words(err, '[[models]]')}"
    return Problem(entry, key, line, message)


def _settings_line(text: str, key: str) -> int | None:
    """Line of `key` inside [settings] (or of a [settings.key] table), else of [settings]."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*settings\s*\]")
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    subtable = re.compile(rf"^\s*\[\s*settings\s*\.\s*[\"']?{re.escape(key)}[\"']?\s*\]")
    for n, line in enumerate(lines):
        if subtable.match(line):
            return n + 1
    for n, line in enumerate(lines):
        if header.match(line):
            for m in range(n + 1, len(lines)):
                if lines[m].lstrip().startswith("["):
                    break
                if pattern.match(lines[m]):
                    return m + 1
            return n + 1
    return None


def _top_level_line(text: str, key: str) -> int | None:
    """Line where a top-level key is set: `key = …` before any table, or `[key]`/`[[key]]`."""
    name = re.escape(key)
    table = re.compile(rf"^\s*\[\[?\s*{name}\s*\]\]?\s*(#.*)?$")
    assignment = re.compile(rf"^\s*[\"']?{name}[\"']?\s*=")
    in_table = False
    for n, line in enumerate(text.splitlines(), 1):
        if table.match(line) or (not in_table and assignment.match(line)):
            return n
        in_table = in_table or line.lstrip().startswith("[")
    return None


def _cross_entry_problems(manifest: Manifest, text: str) -> list[Problem]:
    # No [[models]] yet is valid (`modelsync init`'s starter, all examples commented):
    # plan says "nothing to do"; a misspelt [[model]] is still an unknown key.
    problems: list[Problem] = []
    names: dict[str, int] = {}
    paths: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(manifest.models):
        label = f"models[{i}] ({entry.display_name})"
        if entry.display_name in names:
            first = names[entry.display_name]
            message = (
                f"{label}: name {entry.display_name!r} is already used by models[{first}]; "
                "set a unique name"
            )
            problems.append(Problem(label, "name", _key_line(text, i, "name"), message))
        names.setdefault(entry.display_name, i)
        rel = entry.relpath()
        if rel is None:
            continue
        # One file on macOS and Windows (case-insensitive; macOS also folds Unicode
        # forms: é as one code point or as e + accent), and manifests are shared.
        key = unicodedata.normalize("NFC", rel).casefold()
        if key in paths:
            first, first_rel = paths[key]
            if first_rel == rel:
                message = f"{label}: path {rel!r} is also the target of models[{first}]"
            else:
                message = (
                    f"{label}: path {rel!r} differs from {first_rel!r} (models[{first}]) only "
                    "in letter case or Unicode form: one file on macOS and Windows"
                )
            message += "; change dir or filename"
            problems.append(Problem(label, "dir", _key_line(text, i, "dir"), message))
        paths.setdefault(key, (i, rel))
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
        Problem(
            f"models[{i}] ({entry.display_name})",
            "dir",
            None,
            f"models[{i}] ({entry.display_name}): key 'dir': {entry.dir!r} resolves to "
            f"{escaping[entry.dir]}, outside root {real_root} (through a symlink); "
            "point dir elsewhere",
        )
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
    """--root, then $MODELSYNC_ROOT, then settings.root (relative to the manifest), else cwd.

    A ComfyUI install given as root means its models/ folder (see comfyui_models)."""
    chosen = root_override(cli_root, env)
    if chosen is not None:
        return chosen
    if manifest.settings.root:
        root = Path(manifest.settings.root).expanduser()
        origin = f"settings.root in {manifest.path.name}"
        path = _absolute(manifest.path.parent / root)  # folds "../"
        return comfyui_models(RootChoice(path, origin, True))
    origin = f"the current folder: {manifest.path.name} sets no settings.root"
    return RootChoice(Path.cwd(), origin, False)


def root_override(cli_root: str | None, env: Mapping[str, str]) -> RootChoice | None:
    """The root `--root` or $MODELSYNC_ROOT names (never created), if either does."""
    if cli_root:
        return comfyui_models(RootChoice(_absolute(Path(cli_root).expanduser()), "--root", False))
    if env.get("MODELSYNC_ROOT"):
        path = _absolute(Path(env["MODELSYNC_ROOT"]).expanduser())
        return comfyui_models(RootChoice(path, "$MODELSYNC_ROOT", False))
    return None


def is_comfyui_install(path: Path) -> bool:
    """A ComfyUI checkout: its models/ folder beside main.py or the comfy/ package."""
    return (path / "models").is_dir() and (
        (path / "main.py").is_file() or (path / "comfy").is_dir()
    )


def comfyui_models(choice: RootChoice) -> RootChoice:
    """A root that is a ComfyUI install means its models/ folder, where the manifest's
    `dir`s (checkpoints, loras, ...) live; the origin says so."""
    if not is_comfyui_install(choice.path):
        return choice
    origin = f"{choice.origin}; {choice.path.name}/ is a ComfyUI install: using its models/ folder"
    return RootChoice(choice.path / "models", origin, choice.creatable)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))
