"""`modelsync import`: manifest entries from what users already have.

Each reader turns one kind of SOURCE into `Findings`: entries to add (`Found`, their
manifest keys), references that could not become an entry (`Unresolved`, with what the
user must add), and warnings. Readers never touch the manifest: `commands/import_.py`
merges their findings, skips targets the manifest already has, and appends the rest.

- workflow.py: ComfyUI workflows (UI and API format) and the PNG/WebP images that
  ComfyUI saves with the workflow embedded;
- comfyui_manager.py: ComfyUI-Manager's model list (`model-list.json`);
- folder.py: a models folder that works (every file hashed; sources found by hash).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

Kind = Literal["workflow", "png", "comfyui-manager", "folder"]
KINDS: tuple[Kind, ...] = ("workflow", "png", "comfyui-manager", "folder")


@dataclass(frozen=True)
class Found:
    """One entry to add: its manifest keys, in the order they are written.

    `values` holds a source (`url`, `hf` [+ `file`, `revision`, `include`], `civitai`, or
    none for an entry pinned by hash alone), `dir`, usually `filename`, and whatever pins
    the source states (`sha256`, `size`). `comment` is written above the entry's table.
    """

    values: dict[str, Any]
    origin: str  # where it was found, for humans: "flux.json: node 12 (UNETLoader)"
    comment: str = ""

    @property
    def target(self) -> str:
        """Where it lands under root (a repository: its folder, ending in "/")."""
        folder = str(self.values.get("dir", "") or "")
        name = self.values.get("filename")
        if name is None:
            return f"{folder}/" if folder else "/"
        return f"{folder}/{name}" if folder else str(name)


@dataclass(frozen=True)
class Unresolved:
    """A model the source mentions that cannot become an entry, and why."""

    name: str  # the file name (or reference) as the source gives it
    origin: str
    why: str  # what is missing, and what the user must add
    dir: str | None = None  # the folder it belongs in, when known


@dataclass
class Findings:
    found: list[Found] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.found += other.found
        self.unresolved += other.unresolved
        self.warnings += other.warnings


class ImportInputError(Exception):
    """The SOURCE cannot be read as the kind it is (exit 2, nothing written)."""


def source_keys(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A download link as written in a workflow or catalog → the manifest keys of its
    source: a Civitai download link becomes `civitai = <version id>`; a Hugging Face
    page link (`/blob/`) becomes its `/resolve/` link, `?download=true` dropped; a GitHub
    page link (`/blob/`) becomes its `/raw/` link; anything else stays the URL."""
    from modelsync.sources import civitai, huggingface

    env = env or {}
    text = url.strip()
    parts = urlsplit(text)
    if civitai.is_civitai_url(text, env):
        try:
            ref = civitai.parse_civitai_url(text)
        except ValueError:
            return {"url": text}
        if not (ref.type or ref.format):
            return {"civitai": ref.version_id}
        return {"url": text}  # names a file other than the primary one: keep the link
    if huggingface.is_hub_url(text, env):
        try:
            ref_file = huggingface.parse_hub_url(text)
        except ValueError:
            return {"url": text}
        hub = f"{parts.scheme}://{parts.netloc}"
        return {"url": ref_file.url(hub)}
    if parts.netloc.lower() in ("github.com", "www.github.com"):
        segments = parts.path.split("/")
        if len(segments) > 4 and segments[3] == "blob":
            segments[3] = "raw"
            return {"url": urlunsplit((parts.scheme, parts.netloc, "/".join(segments), "", ""))}
    return {"url": text}


@dataclass(frozen=True)
class ImportOptions:
    """What every reader may use: `filters` (--filter, case-insensitive substrings; a
    reader applies them to what it can name), `offline` (no network lookups), `env`
    (endpoints, tokens, $HF_HUB_CACHE), and `progress(done, total)` for long work."""

    filters: tuple[str, ...] = ()
    offline: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None

    def wanted(self, *texts: object) -> bool:
        """True when no filter is set, or one of them is in one of `texts`."""
        if not self.filters:
            return True
        haystack = " ".join(str(t) for t in texts if t).casefold()
        return any(f.casefold() in haystack for f in self.filters)
