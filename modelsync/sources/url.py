"""Plain URL entries: resolved offline from the manifest alone (no request at all).

aria2 gets the URL as written and follows its redirects itself; no header is ever added,
so nothing secret can travel to another host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelsync.manifest import Entry
from modelsync.remote import RemoteFile

if TYPE_CHECKING:
    from modelsync.sources import SourceContext


def mirror_urls(templates: tuple[str, ...], sha256: str | None, xxh3_128: str | None) -> list[str]:
    """Fill content-addressed mirror templates ({sha256}, {xxh3_128}) we have hashes for."""
    urls = []
    for template in templates:
        if "{sha256}" in template and not sha256:
            continue
        if "{xxh3_128}" in template and not xxh3_128:
            continue
        urls.append(
            template.replace("{sha256}", sha256 or "").replace("{xxh3_128}", xxh3_128 or "")
        )
    return urls


def resolve(entry: Entry, ctx: SourceContext) -> RemoteFile:
    """A url entry, or one pinned by hash alone: then its mirrors are all it has (none
    at all is no error here: the file may be in place; a download says what is missing)."""
    assert entry.source in ("url", "none"), "hf and civitai entries go to their own sources"
    filename = entry.default_filename
    assert filename is not None  # validated by the manifest
    urls = [entry.url] if entry.url is not None else []
    urls += entry.mirrors
    urls += mirror_urls(ctx.settings.mirrors, entry.sha256, entry.xxh3_128)
    return RemoteFile(
        urls=tuple(dict.fromkeys(urls)),
        filename=filename,
        size=entry.size,
        sha256=entry.sha256,
        xxh3_128=entry.xxh3_128,
    )
