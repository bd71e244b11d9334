"""Putting a verified file in place: flushed, renamed atomically, its folder flushed.

A file reaches its final path only through `place`, after its size and every pinned
hash matched: a crash leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY


class PlacementError(Exception):
    """A verified download that cannot be put in place; it stays in tmp/, so the next
    apply places it without downloading again once the cause is fixed."""


def place(tmp: Path, root: Path, relpath: str) -> None:
    """fsync `tmp`, then rename it over `root/relpath` (same filesystem) and fsync the folder.

    The folders below root are walked one at a time (openat, O_NOFOLLOW), so a folder
    swapped for a link that leads out of root after the plan was made is refused, not
    written through. The rename keeps size, mtime, inode and device: a stat of `tmp`
    taken before hashing stays valid for the stat cache."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    *folders, name = PurePosixPath(relpath).parts
    folder = open_folder(root, folders)
    try:
        try:
            os.replace(tmp, name, dst_dir_fd=folder)
        except OSError as exc:
            raise PlacementError(_words(exc, relpath, root)) from None
        os.fsync(folder)
    finally:
        os.close(folder)


def open_folder(root: Path, names: list[str]) -> int:
    """A descriptor of root/names..., made where missing, never through a link that leads
    out of root (a link to a folder inside root is followed)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for i, name in enumerate(names):
            rel = "/".join(names[: i + 1])
            try:  # most folders exist: open first, make it only when missing
                nfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise PlacementError(_words(exc, rel, root)) from None
                nfd = _open_below(fd, name, rel, root)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise PlacementError(_words(exc, rel, root)) from None
                nfd = _inside_link(fd, name, rel, root, os.path.realpath(root))
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_below(fd: int, name: str, rel: str, root: Path) -> int:
    """The folder just made (or made by another thread meanwhile), never through a link."""
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise PlacementError(_words(exc, rel, root)) from None
        return _inside_link(fd, name, rel, root, os.path.realpath(root))


def _inside_link(fd: int, name: str, rel: str, root: Path, real_root: str) -> int:
    """Follow the link `name` only when it leads to a folder inside root."""
    try:
        link = os.readlink(name, dir_fd=fd)
    except OSError:  # not a link: a file where a folder should be
        raise PlacementError(
            f"cannot place the file: {root / rel} is a file, not a folder; move it away"
        ) from None
    real = os.path.realpath(root / rel)
    if os.path.commonpath([real, real_root]) != real_root:
        raise PlacementError(
            f"{root / rel} is a link to {link}, outside {root}: modelsync writes only "
            "inside root; replace the link with a folder, or point root at the other disk"
        )
    try:
        return os.open(real, _DIR_FLAGS)
    except OSError as exc:
        raise PlacementError(_words(exc, rel, root)) from None


def _words(exc: OSError, rel: str, root: Path) -> str:
    where = root / rel
    if exc.errno == errno.EISDIR or (exc.errno == errno.ENOTEMPTY and where.is_dir()):
        return f"{where} is a folder, not a file; move it away or change the entry's filename"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot write {where}: permission denied for its folder; "
            "check its owner, mode and attributes (chattr -i)"
        )
    if exc.errno == errno.EROFS:
        return f"cannot write {where}: the file system is read-only"
    if exc.errno == errno.EXDEV:
        return (
            f"cannot place {where}: its folder is another file system (a mount inside root); "
            "downloads arrive in root's .modelsync/tmp/ and are renamed into place"
        )
    if exc.errno == errno.ENOSPC:
        return f"cannot write {where}: no space left on the file system"
    return f"cannot place {where}: {exc.strerror or exc}"


def mount_of(path: Path) -> Path:
    """The mount point of the file system that holds `path` (what `df` names)."""
    path = Path(os.path.realpath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
