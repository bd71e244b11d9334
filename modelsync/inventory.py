"""What is on disk: one `stat` per wanted file, the stat cache, partials, unmanaged files."""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from modelsync.layout import PARTIAL_SUFFIX, Layout, tmp_name
from modelsync.partials import allocated_bytes, control_bytes
from modelsync.reconcile import CachedHashes, Learned, Observed, Unmanaged
from modelsync.remote import Desired
from modelsync.state import StateDB


@dataclass(frozen=True)
class Inventory:
    observed: dict[str, Observed]
    unmanaged: tuple[Unmanaged, ...]


def partial_sizes(layout: Layout) -> dict[str, int]:
    """Bytes that each download in tmp/ holds, as a resume will count them."""
    sizes: dict[str, int] = {}
    try:
        entries = list(os.scandir(layout.tmp))
    except (FileNotFoundError, NotADirectoryError):
        return sizes
    names = {e.name for e in entries}
    for entry in entries:
        if entry.name.endswith(PARTIAL_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        control = entry.name + PARTIAL_SUFFIX
        counted = control_bytes(layout.tmp / control) if control in names else None
        if counted is None:
            counted = allocated_bytes(entry.stat(follow_symlinks=False))
        sizes[entry.name] = counted
    return sizes


def observe(
    layout: Layout, desired: Iterable[Desired], state: StateDB | None
) -> dict[str, Observed]:
    wanted = list(desired)
    rows = state.get_many([d.path for d in wanted]) if state else {}
    # A file kept in git is judged by the hashes of bytes once seen to have its blob id;
    # any other unpinned file by what apply last placed at its path.
    unpinned = [d.path for d in wanted if not d.pinned and not d.git_sha1]
    pins = state.learned_pins(unpinned) if state and unpinned else {}
    blobs = [d.git_sha1 for d in wanted if d.git_sha1 and not d.pinned]
    blob_pins = state.blob_pins(blobs) if state and blobs else {}
    partials = partial_sizes(layout)
    observed: dict[str, Observed] = {}
    root = os.fspath(layout.root)
    for d in wanted:
        partial = partials.get(tmp_name(d.path)) if partials else None
        pin = blob_pins.get(d.git_sha1) if d.git_sha1 else pins.get(d.path)
        learned = Learned(pin.size, pin.sha256, pin.xxh3_128) if pin is not None else None
        try:
            st = os.stat(os.path.join(root, d.path))  # str, not Path: 10,000s of these
        except (FileNotFoundError, NotADirectoryError):
            observed[d.path] = Observed(partial_bytes=partial, learned=learned)
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
            learned=learned,
        )
    return observed


# What prune may delete: model weights by their extension, nothing else (notes, configs,
# workflows, images and scripts beside the models are the user's).
MODEL_EXTENSIONS = frozenset(
    {
        ".safetensors",
        ".sft",
        ".ckpt",
        ".pt",
        ".pt2",
        ".pth",
        ".bin",
        ".gguf",
        ".ggml",
        ".onnx",
        ".pkl",
        ".h5",
        ".msgpack",
        ".tflite",
        ".engine",
    }
)


def is_prunable(rel_folder: str, name: str, named_dirs: set[str], is_symlink: bool) -> bool:
    """Only a model file (by extension), not a symlink, in a folder that an entry names
    through `dir`: never in root itself, never anything hidden (checked by the caller)."""
    if not rel_folder or rel_folder not in named_dirs or is_symlink:
        return False
    return _is_model_file(name)


def _is_model_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MODEL_EXTENSIONS


def find_unmanaged(
    layout: Layout,
    known_paths: Iterable[str],
    unknown_dirs: Iterable[str] = (),
    protected: Iterable[str] = (),
    named_dirs: Iterable[str] = (),
    trees: Iterable[str] = (),
) -> tuple[Unmanaged, ...]:
    """Files directly inside the folders the manifest manages that it does not want.

    Only the managed folders themselves are listed (not their subfolders), so that
    --prune never reaches a folder the manifest does not name. `unknown_dirs` hold an
    entry whose file name is not known yet; nothing there is called unmanaged.
    `protected` paths (the manifest and its lock, when they live under root) and hidden
    files (editors' and our own atomic-write temporaries) are never unmanaged.
    `named_dirs` are the folders entries name through `dir`: the only ones where an
    unmanaged file may be prunable (see is_prunable).
    `trees` are repository entries' folders: each is managed whole, subfolders included;
    there too only model files are prunable here (the workspace adds the files that
    modelsync itself placed: a config removed upstream).
    """
    wanted = set(known_paths)
    known = wanted | set(protected)
    skip = set(unknown_dirs)
    named = set(named_dirs)
    owned = sorted(set(trees))
    # Folders of wanted files only: the manifest's own folder is not managed for holding it.
    managed = {p.rpartition("/")[0] or "." for p in wanted} - skip
    managed = {f for f in managed if not _inside_any(f, owned)}
    found: list[Unmanaged] = []
    for folder in sorted(managed):
        rel_folder = "" if folder == "." else folder
        for rel, entry, link in _files_in(layout, rel_folder, recursive=False):
            if rel not in known:
                prunable = is_prunable(rel_folder, entry.name, named, link)
                found.append(Unmanaged(rel, entry.stat(follow_symlinks=False).st_size, prunable))
    for tree in owned:
        for rel, entry, link in _files_in(layout, tree, recursive=True):
            if rel not in known:
                prunable = not link and _is_model_file(entry.name)
                found.append(Unmanaged(rel, entry.stat(follow_symlinks=False).st_size, prunable))
    return tuple(found)


def _inside_any(folder: str, trees: list[str]) -> bool:
    return any(folder == t or folder.startswith(t + "/") for t in trees)


def _files_in(
    layout: Layout, rel_folder: str, *, recursive: bool
) -> Iterator[tuple[str, os.DirEntry[str], bool]]:
    """(path under root, entry, is a symlink) of each file; hidden names are skipped
    (.modelsync/, editors' and our own atomic-write temporaries), and so are symlinked
    folders (never followed)."""
    try:
        entries = list(os.scandir(layout.root / rel_folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
        link = entry.is_symlink()
        if entry.is_file(follow_symlinks=False) or link:
            yield rel, entry, link
        elif recursive and entry.is_dir(follow_symlinks=False):
            yield from _files_in(layout, rel, recursive=True)
