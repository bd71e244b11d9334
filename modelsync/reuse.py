"""Reuse before download: the wanted bytes may already be on this machine.

For each file that plan would download (or repair), in this order:

1. elsewhere under this root: state.db knows a file there that hashed to the wanted
   sha256 (or xxh3_128) and still has the size, mtime and inode it had then;
2. the shared store (store.py): `<store>/sha256/ab/<sha256>` with the wanted size;
3. another root registered in the store, by its own state.db (as in 1);
4. the Hugging Face cache: huggingface_hub stores an LFS file as `blobs/<sha256>`.

Only files pinned by a hash can be matched. A donor is a candidate, not a proof: apply
hashes what it links (or copies) before it is put in place, and downloads when it does
not match (a hardlinked file edited in place, a damaged cache).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from modelsync.reconcile import Donor
from modelsync.remote import Desired
from modelsync.state import Row, StateDB
from modelsync.store import Store


def find_donors(
    wanted: Iterable[Desired],
    root: Path,
    state: StateDB | None,
    store: Store | None,
    env: Mapping[str, str],
) -> dict[str, Donor]:
    """path (relative to root) → a donor, for the wanted files that have one."""
    todo = [d for d in wanted if d.sha256 or d.xxh3_128]
    found: dict[str, Donor] = {}
    if not todo:
        return found
    if state is not None:
        _from_rows(todo, root, state.get_many(), "", found)
    if store is not None:
        for d in todo:
            if d.path not in found and d.sha256:
                blob = store.blob(d.sha256)
                if _size_ok(blob, d):
                    found[d.path] = Donor(str(blob), "the store", _size(blob))
        for other in store.roots():
            if other == root or all(d.path in found for d in todo):
                continue
            with StateDB.open(other, create=False) as db:
                _from_rows(todo, other, db.get_many(), f"{other}: ", found)
    _from_hub_cache(todo, _hub_cache(env), found)
    return found


def _from_rows(
    todo: list[Desired], root: Path, rows: dict[str, Row], label: str, found: dict[str, Donor]
) -> None:
    by_hash: dict[str, list[Row]] = {}
    for row in rows.values():
        by_hash.setdefault(row.sha256, []).append(row)
        by_hash.setdefault(row.xxh3_128, []).append(row)
    for d in todo:
        if d.path in found:
            continue
        for row in by_hash.get(d.sha256 or "", []) or by_hash.get(d.xxh3_128 or "", []):
            if label == "" and row.path == d.path:
                continue  # the target itself: judged by reconcile, not a donor
            if d.size is not None and row.size != d.size:
                continue
            path = root / row.path
            try:
                st = os.stat(path)
            except OSError:
                continue
            if row.matches(st):
                found[d.path] = Donor(str(path), f"{label}{row.path}", row.size)
                break


def _from_hub_cache(todo: list[Desired], cache: Path | None, found: dict[str, Donor]) -> None:
    missing = [d for d in todo if d.path not in found and d.sha256]
    if not missing or cache is None:
        return
    try:
        repos = [e.path for e in os.scandir(cache) if e.is_dir() and "--" in e.name]
    except OSError:
        return
    for d in missing:
        assert d.sha256 is not None
        for repo in repos:
            blob = Path(repo) / "blobs" / d.sha256
            if _size_ok(blob, d):
                name = Path(repo).name.split("--", 1)[1].replace("--", "/")
                found[d.path] = Donor(str(blob), f"the Hugging Face cache ({name})", _size(blob))
                break


def _hub_cache(env: Mapping[str, str]) -> Path | None:
    from modelsync.importers.folder import hub_cache_dir

    cache = hub_cache_dir(env)
    return cache if cache.is_dir() else None


def _size_ok(path: Path, d: Desired) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size > 0 and (d.size is None or st.st_size == d.size)


def _size(path: Path) -> int:
    return os.stat(path).st_size
