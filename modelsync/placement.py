"""Putting a verified file in place: flushed, renamed atomically, its folder flushed.

A file reaches its final path only through `place`, after its size and every pinned
hash matched: a crash leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path


def place(tmp: Path, target: Path) -> None:
    """fsync `tmp`, then rename it over `target` (same filesystem) and fsync the folder.

    The rename keeps size, mtime, inode and device: a stat of `tmp` taken before hashing
    stays valid for the stat cache."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
