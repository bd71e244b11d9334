"""`modelsync gc`: remove the shared store's blobs that no root holds any more.

A blob is kept when a registered root (store.py: roots register on every apply) holds a
file with its sha256 — by the root's stat cache, the file still as it was hashed — or when
something else still links to it (a hardlink count above one: a root that never
registered, or a file that changed since). Without `--yes` it only lists what it would
remove. Roots that no longer exist are forgotten (with `--yes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelsync.state import StateDB
from modelsync.store import Store


@dataclass(frozen=True)
class GcResult:
    store: Path
    unreferenced: tuple[tuple[str, int], ...]  # (sha256, size)
    kept: int
    removed: bool
    gone_roots: tuple[Path, ...]

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.unreferenced) if self.removed else 0


def run_gc(store: Store, *, remove: bool) -> GcResult:
    referenced: set[str] = set()
    gone: list[Path] = []
    for root in store.roots():
        if not root.is_dir():
            gone.append(root)
            continue
        with StateDB.open(root, create=False) as state:
            for row in state.get_many().values():
                try:
                    st = os.stat(root / row.path)
                except OSError:
                    continue
                if row.matches(st):
                    referenced.add(row.sha256)
    unreferenced: list[tuple[str, int]] = []
    kept = 0
    for sha256, blob in store.blobs():
        st = blob.stat()
        if sha256 in referenced or st.st_nlink > 1:
            kept += 1
        else:
            unreferenced.append((sha256, st.st_size))
    if remove:
        for sha256, _ in unreferenced:
            store.blob(sha256).unlink(missing_ok=True)
        for root in gone:
            store.forget(root)
    return GcResult(store.path, tuple(unreferenced), kept, remove, tuple(gone))
