"""What several commands report alike about their targets: failures, unpinned entries."""

from __future__ import annotations

from modelsync.results import EntryResult, Status
from modelsync.workspace import Target

UNPINNED_HINT = "no hash pinned: run `modelsync lock` to pin it"


def unpinned_warnings(targets: list[Target]) -> list[str]:
    """Entries that cannot be fully checked, and entries the lock no longer covers."""
    return [t.warning for t in targets if t.warning] + [
        f"{t.name}: no sha256 or xxh3_128 pinned; the file is only checked against the "
        "hashes of modelsync's own download of it (add a hash, or run `modelsync lock`)"
        for t in targets
        if t.desired is not None and not t.desired.vouched
    ]


def failed_targets(targets: list[Target], action: str) -> list[EntryResult]:
    return [
        EntryResult(
            t.name, t.desired.path if t.desired else None, action, Status.FAILED, error=t.error
        )
        for t in targets
        if t.error is not None
    ]
