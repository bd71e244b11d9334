"""PURE diff of what the manifest wants against what is on disk: no I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from modelsync.remote import Desired


class ActionKind(StrEnum):
    OK = "ok"  # present and verified
    DOWNLOAD = "download"  # missing
    RESUME = "resume"  # missing, a partial download is waiting in tmp/
    REPAIR = "repair"  # present with the wrong size or hash
    VERIFY = "verify"  # present, never verified (or changed since)


@dataclass(frozen=True)
class CachedHashes:
    sha256: str
    xxh3_128: str


@dataclass(frozen=True)
class Observed:
    """What inventory saw for one target path."""

    size: int | None = None  # None: nothing at the path
    is_file: bool = True
    cached: CachedHashes | None = None  # stat cache hit (size, mtime, inode, device equal)
    partial_bytes: int | None = None  # bytes already in tmp/ for this path


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    desired: Desired
    reason: str = ""
    local_size: int | None = None
    partial_bytes: int | None = None

    @property
    def download_bytes(self) -> int:
        """Bytes still to fetch, as well as is known before downloading."""
        if self.kind in (ActionKind.OK, ActionKind.VERIFY):
            return 0
        total = self.desired.size or self.desired.estimated_size or 0
        if self.kind is ActionKind.RESUME and self.partial_bytes:
            return max(total - self.partial_bytes, 0)
        return total


@dataclass(frozen=True)
class Unmanaged:
    path: str
    size: int
    prunable: bool = False  # what `apply --prune` would delete (see inventory.is_prunable)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    unmanaged: tuple[Unmanaged, ...] = ()

    @property
    def download_bytes(self) -> int:
        return sum(a.download_bytes for a in self.actions)

    @property
    def unknown_sizes(self) -> int:
        """Downloads whose size nobody knows yet: download_bytes is a lower bound then."""
        return sum(
            1
            for a in self.actions
            if a.kind in (ActionKind.DOWNLOAD, ActionKind.RESUME, ActionKind.REPAIR)
            and a.desired.size is None
            and a.desired.estimated_size is None
        )

    @property
    def pending(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is not ActionKind.OK)

    @property
    def in_sync(self) -> bool:
        return not self.pending


def hash_mismatches(desired: Desired, sha256: str, xxh3_128: str) -> list[str]:
    """Lines naming each pinned hash that differs from the actual one."""
    out = []
    if desired.sha256 and desired.sha256 != sha256:
        out.append(f"sha256 expected {desired.sha256}, got {sha256}")
    if desired.xxh3_128 and desired.xxh3_128 != xxh3_128:
        out.append(f"xxh3_128 expected {desired.xxh3_128}, got {xxh3_128}")
    return out


def decide(desired: Desired, seen: Observed) -> Action:
    def act(kind: ActionKind, reason: str = "") -> Action:
        return Action(kind, desired, reason, seen.size, seen.partial_bytes)

    if seen.size is None:
        if seen.partial_bytes is not None:
            return act(ActionKind.RESUME, f"{seen.partial_bytes} bytes already downloaded")
        return act(ActionKind.DOWNLOAD, "missing")
    if not seen.is_file:
        return act(ActionKind.REPAIR, "not a regular file")
    if desired.size is not None and seen.size != desired.size:
        return act(ActionKind.REPAIR, f"size {seen.size}, expected {desired.size}")
    if seen.cached is None:
        return act(ActionKind.VERIFY, "not verified yet")
    wrong = hash_mismatches(desired, seen.cached.sha256, seen.cached.xxh3_128)
    if wrong:
        return act(ActionKind.REPAIR, "; ".join(wrong))
    return act(ActionKind.OK)


def reconcile(
    desired: Iterable[Desired],
    observed: Mapping[str, Observed],
    unmanaged: Iterable[Unmanaged] = (),
) -> Plan:
    actions = tuple(decide(d, observed.get(d.path, Observed())) for d in desired)
    return Plan(actions, tuple(sorted(unmanaged, key=lambda u: u.path)))
