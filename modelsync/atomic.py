"""Replace a small text file atomically (the manifest, the lock), keeping its mode."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_text_atomic(path: Path, text: str, check: Callable[[Path], None] | None = None) -> None:
    """Write `text` beside `path`, run `check` on that copy, then rename it over `path`.

    A reader sees the old file or the new one, never half of one; a failing `check`
    (it raises) leaves `path` untouched. A new file gets the usual 0666 & ~umask.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if check is not None:
            check(Path(tmp))
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
