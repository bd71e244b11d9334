"""PURE diff of what the manifest wants against what is on disk: no I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from modelsync.remote import Desired


class ActionKind(StrEnum):
    OK = "ok"  # present and verified
    DOWNLOAD = "download"  # missing
    RESUME = "resume"  # missing, a partial download is waiting in tmp/
    REPAIR = "repair"  # present with the wrong size or hash
    VERIFY = "verify"  # present, never verified (or changed since)
    LINK = "link"  # missing or wrong, and the same bytes are already on this machine


@dataclass(frozen=True)
class CachedHashes:
    sha256: str
    xxh3_128: str


@dataclass(frozen=True)
class Learned:
    """A learned pin (state.db): what the file apply last placed at the path held."""

    size: int
    sha256: str
    xxh3_128: str


@dataclass(frozen=True)
class Donor:
    """A file on this machine that should hold the wanted bytes (checked when used)."""

    path: str  # absolute
    where: str  # for humans: "checkpoints/old.safetensors", "the store", ...
    size: int


@dataclass(frozen=True)
class Observed:
    """What inventory saw for one target path."""

    size: int | None = None  # None: nothing at the path
    is_file: bool = True
    cached: CachedHashes | None = None  # stat cache hit (size, mtime, inode, device equal)
    partial_bytes: int | None = None  # bytes already in tmp/ for this path
    learned: Learned | None = None  # the learned pin of an unpinned entry, if any
    donor: Donor | None = None  # the same bytes elsewhere on this machine


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    desired: Desired
    reason: str = ""
    local_size: int | None = None
    partial_bytes: int | None = None
    learned: Learned | None = None  # only for an entry nothing else pins
    donor: Donor | None = None  # LINK: where the bytes come from

    @property
    def expected(self) -> Desired:
        """What the file on disk is judged against: the desired pins, or else the learned
        pin. Never what a new download must match: upstream may have changed the file."""
        return judged(self.desired, self.learned)

    @property
    def size_guess(self) -> int | None:
        d = self.desired
        return d.size or d.estimated_size or (self.learned.size if self.learned else None)

    @property
    def download_bytes(self) -> int:
        """Bytes still to fetch, as well as is known before downloading."""
        if self.kind in (ActionKind.OK, ActionKind.VERIFY, ActionKind.LINK):
            return 0
        total = self.size_guess or 0
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
            and a.size_guess is None
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


def judged(desired: Desired, learned: Learned | None) -> Desired:
    """`desired`, or, when nothing pins it, `desired` with its learned pin's size and hashes."""
    if learned is None or desired.pinned:
        return desired
    return replace(desired, size=learned.size, sha256=learned.sha256, xxh3_128=learned.xxh3_128)


LEARNED_CHANGED = "changed since it was downloaded unpinned"
NO_SOURCE = "missing (no source)"


def decide(desired: Desired, seen: Observed) -> Action:
    learned = seen.learned if not desired.pinned else None
    expected = judged(desired, learned)
    # (a git file's learned hashes are those of its blob: nothing "changed" there)
    prefix = f"{LEARNED_CHANGED}: " if learned is not None and not desired.git_sha1 else ""

    def act(kind: ActionKind, reason: str = "") -> Action:
        if kind in (ActionKind.DOWNLOAD, ActionKind.RESUME, ActionKind.REPAIR) and seen.donor:
            why = f"{reason}; " if kind is ActionKind.REPAIR else ""
            return Action(
                ActionKind.LINK,
                desired,
                f"{why}from {seen.donor.where}",
                seen.size,
                seen.partial_bytes,
                learned,
                seen.donor,
            )
        return Action(kind, desired, reason, seen.size, seen.partial_bytes, learned)

    if seen.size is None:
        if seen.partial_bytes is not None:
            return act(ActionKind.RESUME, f"{seen.partial_bytes} bytes already downloaded")
        return act(ActionKind.DOWNLOAD, "missing" if desired.fetchable else NO_SOURCE)
    if not seen.is_file:
        return act(ActionKind.REPAIR, "not a regular file")
    if expected.size is not None and seen.size != expected.size:
        return act(ActionKind.REPAIR, f"{prefix}size {seen.size}, expected {expected.size}")
    if seen.cached is None:
        return act(ActionKind.VERIFY, "not verified yet")
    if desired.git_sha1 and learned is None and not desired.pinned:
        # The cache knows the file's sha256, not whether it is the blob git names.
        return act(ActionKind.VERIFY, "not checked against its git blob id yet")
    wrong = hash_mismatches(expected, seen.cached.sha256, seen.cached.xxh3_128)
    if wrong:
        return act(ActionKind.REPAIR, prefix + "; ".join(wrong))
    return act(ActionKind.OK)


def reconcile(
    desired: Iterable[Desired],
    observed: Mapping[str, Observed],
    unmanaged: Iterable[Unmanaged] = (),
) -> Plan:
    actions = tuple(decide(d, observed.get(d.path, Observed())) for d in desired)
    return Plan(actions, tuple(sorted(unmanaged, key=lambda u: u.path)))
