"""Plain URL entries: resolved offline from the manifest alone (no request at all).

aria2 gets the URL as written and follows its redirects itself; no header is ever added,
so nothing secret can travel to another host.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from modelsync.manifest import Entry, Settings
from modelsync.remote import RemoteFile

if TYPE_CHECKING:
    from modelsync.sources import SourceContext

_PLACEHOLDER = re.compile(r"\{(sha256|xxh3_128|filename|name)\}")


def mirror_urls(
    templates: tuple[str, ...],
    sha256: str | None,
    xxh3_128: str | None,
    *,
    filename: str | None = None,
    name: str | None = None,
) -> list[str]:
    """Fill mirror templates: {sha256}, {xxh3_128} (content-addressed), {filename} (the
    file's name), {name} (the entry's). A template whose placeholder has no value for
    this file is left out; values are URL-quoted whole (a "/" in a name too), so a value
    never reaches another path or the query."""
    values = {"sha256": sha256, "xxh3_128": xxh3_128, "filename": filename, "name": name}
    urls = []
    for template in templates:
        wanted = _PLACEHOLDER.findall(template)
        if not all(values[key] for key in wanted):
            continue
        urls.append(_PLACEHOLDER.sub(lambda m: quote(values[m[1]] or "", safe=""), template))
    return urls


def entry_mirrors(
    entry: Entry, settings: Settings, *, filename: str | None, sha256: str | None = None
) -> list[str]:
    """The entry's own mirrors, then settings.mirrors' templates filled for it: the pins
    the entry has (else the sha256 its source publishes) and the file's name."""
    templates = mirror_urls(
        settings.mirrors,
        entry.sha256 or sha256,
        entry.xxh3_128,
        filename=entry.filename or filename,
        name=entry.display_name,
    )
    return list(dict.fromkeys([*entry.mirrors, *templates]))


def resolve(entry: Entry, ctx: SourceContext) -> RemoteFile:
    """A url entry, or one pinned by hash alone: then its mirrors are all it has (none
    at all is no error here: the file may be in place; a download says what is missing)."""
    assert entry.source in ("url", "none"), "hf and civitai entries go to their own sources"
    filename = entry.default_filename
    assert filename is not None  # validated by the manifest
    mirrors = entry_mirrors(entry, ctx.settings, filename=filename)
    urls = [entry.url] if entry.url is not None else []
    return RemoteFile(
        urls=tuple(dict.fromkeys([*urls, *mirrors])),
        mirrors=tuple(m for m in mirrors if m not in urls),
        filename=filename,
        size=entry.size,
        sha256=entry.sha256,
        xxh3_128=entry.xxh3_128,
    )
