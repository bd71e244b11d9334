"""Where modelsync keeps its own files under root (`<root>/.modelsync/`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

OWN_DIR = ".modelsync"
STATE_DB = "state.db"
PARTIAL_SUFFIX = ".aria2"  # aria2's control file beside a download in flight
# What is left of a 255-byte name in tmp/ for the target's own name: the digest prefix
# ("0123456789ab-") and the longest suffix beside it (".aria2") take the rest.
_TMP_NAME_ROOM = 255 - 13 - len(PARTIAL_SUFFIX)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def own(self) -> Path:
        return self.root / OWN_DIR

    @property
    def state_db(self) -> Path:
        return self.own / STATE_DB

    @property
    def tmp(self) -> Path:
        return self.own / "tmp"

    @property
    def daemon_pid(self) -> Path:
        return self.own / "aria2.pid"

    @property
    def lock(self) -> Path:
        return self.own / "lock"

    def target(self, relpath: str) -> Path:
        return self.root / relpath

    def partial(self, relpath: str) -> Path:
        return self.tmp / tmp_name(relpath)


def tmp_name(relpath: str) -> str:
    """A flat, stable name in tmp/ for the download of `relpath`.

    Keyed on the target path alone so that a resume finds its partial whatever the
    URL (signed URLs change); a sidecar records what the partial is meant to become.
    """
    digest = hashlib.sha1(relpath.encode(), usedforsecurity=False).hexdigest()[:12]
    name = PurePosixPath(relpath).name
    if len(name.encode()) > _TMP_NAME_ROOM:  # a 255-byte name + prefix + ".aria2" would not fit
        name = name.encode()[:_TMP_NAME_ROOM].decode(errors="ignore")
    return f"{digest}-{name}"
