"""What is on disk: one `stat` per wanted file, the stat cache, partials, unmanaged files."""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable
from dataclasses import dataclass

from modelsync.layout import PARTIAL_SUFFIX, Layout, tmp_name
from modelsync.reconcile import CachedHashes, Observed, Unmanaged
from modelsync.remote import Desired
from modelsync.state import StateDB


@dataclass(frozen=True)
class Inventory:
    observed: dict[str, Observed]
    unmanaged: tuple[Unmanaged, ...]


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes a partial really holds: aria2 writes segments at their offsets, so a sparse
    file's length overstates them; its allocated blocks do not."""
    return min(st.st_size, st.st_blocks * 512)


def partial_sizes(layout: Layout) -> dict[str, int]:
    """Bytes held by each download in tmp/ (sparse files count their real blocks)."""
    sizes: dict[str, int] = {}
    try:
        entries = list(os.scandir(layout.tmp))
    except (FileNotFoundError, NotADirectoryError):
        return sizes
    for entry in entries:
        if entry.name.endswith(PARTIAL_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        sizes[entry.name] = allocated_bytes(entry.stat(follow_symlinks=False))
    return sizes


def observe(
    layout: Layout, desired: Iterable[Desired], state: StateDB | None
) -> dict[str, Observed]:
    wanted = list(desired)
    rows = state.get_many([d.path for d in wanted]) if state else {}
    partials = partial_sizes(layout)
    observed: dict[str, Observed] = {}
    root = os.fspath(layout.root)
    for d in wanted:
        partial = partials.get(tmp_name(d.path)) if partials else None
        try:
            st = os.stat(os.path.join(root, d.path))  # str, not Path: 10,000s of these
        except (FileNotFoundError, NotADirectoryError):
            observed[d.path] = Observed(partial_bytes=partial)
            continue
        cached = None
        row = rows.get(d.path)
        if row is not None and row.matches(st):
            cached = CachedHashes(row.sha256, row.xxh3_128)
        observed[d.path] = Observed(
            size=st.st_size,
            is_file=stat_mod.S_ISREG(st.st_mode),
            cached=cached,
            partial_bytes=partial,
        )
    return observed


def find_unmanaged(
    layout: Layout,
    known_paths: Iterable[str],
    unknown_dirs: Iterable[str] = (),
    protected: Iterable[str] = (),
) -> tuple[Unmanaged, ...]:
    """Files directly inside the folders the manifest manages that it does not want.

    Only the managed folders themselves are listed (not their subfolders), so that
    --prune never reaches a folder the manifest does not name. `unknown_dirs` hold an
    entry whose file name is not known yet; nothing there is called unmanaged.
    `protected` paths (the manifest and its lock, when they live under root) and hidden
    files (editors' and our own atomic-write temporaries) are never unmanaged.
    """
    known = set(known_paths) | set(protected)
    skip = set(unknown_dirs)
    managed = {p.rpartition("/")[0] or "." for p in known} - skip
    found: list[Unmanaged] = []
    for folder in sorted(managed):
        rel_folder = "" if folder == "." else folder
        try:
            entries = list(os.scandir(layout.root / rel_folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            if rel in known or entry.name.startswith("."):  # .modelsync/ included
                continue
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                found.append(Unmanaged(rel, entry.stat(follow_symlinks=False).st_size))
    return tuple(found)
