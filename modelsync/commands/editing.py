"""Appending entries to a manifest without touching what is there (`add`, `import`).

The existing text is kept byte for byte; each new `[[models]]` table is added at the end,
its values rendered by tomlkit (quoting and escaping as TOML wants). The result must load
with `load_manifest` before it atomically replaces the file: a failed check writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

from modelsync.atomic import write_text_atomic
from modelsync.errors import ManifestError
from modelsync.manifest import load_manifest

# The order keys are written in: what the entry is, then where it goes, then its pins.
KEY_ORDER = (
    "name",
    "url",
    "hf",
    "file",
    "revision",
    "include",
    "exclude",
    "civitai",
    "dir",
    "filename",
    "size",
    "sha256",
    "xxh3_128",
)


def ordered(values: dict[str, Any]) -> dict[str, Any]:
    """`values` in KEY_ORDER, then any other key in the order given."""
    first = {k: values[k] for k in KEY_ORDER if k in values}
    return first | {k: v for k, v in values.items() if k not in first}


def read_manifest_text(path: Path) -> str:
    """The manifest's text as it is on disk: line endings untranslated (a CRLF file from
    Windows stays CRLF), so `appended` keeps it byte for byte."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def appended(text: str, values: dict[str, Any], comment: str = "") -> str:
    """`text` unchanged (plus a final newline if it lacked one), then the new table, in
    the line endings `text` uses."""
    eol = "\r\n" if "\r\n" in text else "\n"
    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append("[[models]]")
    lines += [f"{key} = {tomlkit.item(value).as_string()}" for key, value in values.items()]
    entry = eol.join(lines) + eol
    if not text:
        return entry
    return text + ("" if text.endswith("\n") else eol) + eol + entry


def write_checked(path: Path, text: str) -> None:
    """Replace `path` with `text` only if it loads as a manifest (reported as `path`)."""

    def check(candidate: Path) -> None:
        try:
            load_manifest(candidate)
        except ManifestError as exc:
            raise ManifestError(str(path), exc.problems) from None

    write_text_atomic(path, text, check)
