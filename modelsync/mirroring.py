"""Which URLs one download uses: the origin with its mirrors, the mirrors alone first
(settings.mirror_first), or the origin alone once a mirror missed or served wrong bytes.

aria2 fetches segments of one download from all its URLs at once and drops a URL that
fails (404, connection refused) while the others go on; but plain HTTP gives it no piece
hashes, so only the file's hash finds wrong bytes, and not which URL sent them. Then the
entry is fetched again from the origin alone: right bytes from it convict the mirror(s).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from modelsync.redact import host_of, redact
from modelsync.remote import RemoteFile

Mode = Literal["all", "mirrors", "origin"]
NOT_FOUND = 3  # aria2's error code for a 404: a mirror without the file, not news


def origin_urls(remote: RemoteFile) -> tuple[str, ...]:
    return tuple(u for u in remote.urls if u not in remote.mirrors)


@dataclass
class Mirrors:
    """Per entry of one run: which URLs its next download uses, and the mirrors that were
    in a download whose bytes were wrong (named once the origin's bytes are right)."""

    mirror_first: bool = False
    modes: dict[str, Mode] = field(default_factory=dict)
    suspects: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def choose(self, name: str, remote: RemoteFile, *, vouched: bool = True) -> RemoteFile:
        """`remote` narrowed to the URLs this attempt uses. The mirrors alone never get the
        headers: those hold the origin's token when it has one. A file that nothing pins
        comes from its origin alone: no hash would tell a mirror's bytes from the origin's."""
        origin = origin_urls(remote)
        if not origin or not remote.mirrors:  # nothing to choose between
            return remote
        if not vouched:
            return replace(remote, urls=origin)
        mode = self.modes.setdefault(name, "mirrors" if self.mirror_first else "all")
        if mode == "mirrors":
            return replace(remote, urls=remote.mirrors, headers=())
        if mode == "origin":
            return replace(remote, urls=origin)
        return remote

    def missed(self, name: str) -> bool:
        """A download from the mirrors alone failed: the origin alone from now on. False
        when the download had the origin in it (then its failure is the origin's)."""
        if self.modes.get(name) != "mirrors":
            return False
        self.modes[name] = "origin"
        return True

    def wrong_bytes(self, name: str, used: RemoteFile | None) -> tuple[str, ...]:
        """The download `used` brought wrong bytes: if mirrors were in it, the origin alone
        from now on; returns those mirrors (empty: nothing to fall back from)."""
        if used is None or self.modes.get(name) in (None, "origin"):
            return ()
        in_use = tuple(u for u in used.urls if u in used.mirrors)
        if in_use:
            self.modes[name] = "origin"
            self.suspects[name] = in_use
        return in_use

    def settled(self, name: str, secrets: tuple[str, ...] = ()) -> str | None:
        """Once the origin alone brought the right bytes: the mirror(s) to blame, in words."""
        suspects = self.suspects.pop(name, ())
        if not suspects:
            return None
        hosts = hosts_of(suspects, secrets)
        who = f"mirror {hosts}" if ", " not in hosts else f"one of the mirrors {hosts}"
        return f"{who} served wrong bytes for {name}; downloaded from the origin instead"


def hosts_of(urls: tuple[str, ...], secrets: tuple[str, ...] = ()) -> str:
    """The distinct hosts of `urls` (with ports), for messages: no path, query or
    credentials."""
    return ", ".join(dict.fromkeys(redact(host_of(u), secrets) for u in urls))
