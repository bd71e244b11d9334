"""Sources turn a manifest entry into a RemoteFile. They never download the file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modelsync.manifest import Entry, Settings
from modelsync.remote import RemoteFile


@dataclass
class SourceContext:
    """What sources may read: settings, environment (tokens, endpoints), a per-run cache."""

    settings: Settings
    env: Mapping[str, str]
    cache: dict[str, RemoteFile] = field(default_factory=dict)


def resolve(entry: Entry, ctx: SourceContext, *, fresh: bool = False) -> RemoteFile:
    """Resolve one entry; `fresh` bypasses the per-run cache (expired signed URLs)."""
    key = entry.display_name
    if not fresh and key in ctx.cache:
        return ctx.cache[key]
    from modelsync.sources import url as url_source

    remote = url_source.resolve(entry, ctx)
    ctx.cache[key] = remote
    return remote


def locate(entry: Entry, ctx: SourceContext, *, fresh: bool = False) -> RemoteFile:
    """Where aria2 can fetch `entry` right now: final URLs (redirects to other hosts
    already followed, signed) and only headers meant for those URLs' own hosts.

    Called when a download is added to aria2, and again with fresh=True on each retry.
    """
    return resolve(entry, ctx, fresh=fresh)


def needs_network(entry: Entry) -> bool:
    """True when resolving `entry` asks a server (HF/Civitai metadata)."""
    return entry.source != "url"
