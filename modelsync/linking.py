"""Putting the bytes of one file at another path without downloading them.

`settings.link` chooses how:

- "auto" (default): a reflink (copy-on-write clone: btrfs, XFS, APFS-like filesystems;
  the two files share blocks until one is written), else a hardlink (one inode, same
  filesystem only), else a copy;
- "reflink", "hardlink", "copy": that one, or an error;
- "symlink": a symbolic link to the donor (only when asked: the donor must then stay).

A hardlinked file edited in place changes every path that shares its inode: the stat
cache sees the change (mtime) and the next plan verifies and repairs it, replacing the
path with a new file rather than writing through the link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

from modelsync.manifest import LinkMode

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


class LinkError(OSError):
    """The mode asked for cannot be used between these two paths."""


def link_into(src: Path, dst: Path, mode: LinkMode) -> str:
    """Create `dst` (which must not exist) with the content of `src`; returns the way
    it was done: "reflink", "hardlink", "symlink" or "copy"."""
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return "symlink"
    if mode in ("auto", "reflink"):
        try:
            _reflink(src, dst)
            return "reflink"
        except OSError as exc:
            if mode == "reflink":
                raise LinkError(
                    exc.errno, f"cannot reflink {src} to {dst}: {exc.strerror}"
                ) from None
    if mode in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError as exc:
            if mode == "hardlink":
                raise LinkError(
                    exc.errno, f"cannot hardlink {src} to {dst}: {exc.strerror}"
                ) from None
    shutil.copyfile(src, dst)
    return "copy"


def _refused(how: str, src: Path, dst: Path, exc: OSError) -> LinkError:
    return LinkError(exc.errno, f"cannot {how} {src} to {dst}: {exc.strerror}")


def _reflink(src: Path, dst: Path) -> None:
    if not hasattr(fcntl, "ioctl"):
        raise OSError(errno.EOPNOTSUPP, "no reflinks here")
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, _FICLONE, s.fileno())
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(fd)
