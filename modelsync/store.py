"""The shared store: one copy of each file per machine, whatever the roots that use it.

`settings.store` (or `$MODELSYNC_STORE`) names a folder holding files by content:

    <store>/sha256/ab/abcdef…      the blobs, by sha256 (never edited in place by modelsync)
    <store>/roots/<id>.json        {"root": "/abs/path"}: each root that used the store
    <store>/tmp/                   blobs being written (renamed into place when complete)

`apply` links every file it places into the store (a hardlink when both are on one
filesystem, else a copy), and the store is a donor for every root (reuse.py): a ComfyUI
root and a Forge root then hold one copy on disk. `modelsync gc` removes the blobs that
no registered root holds any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from modelsync.atomic import write_text_atomic


@dataclass(frozen=True)
class Store:
    path: Path

    def blob(self, sha256: str) -> Path:
        return self.path / "sha256" / sha256[:2] / sha256

    @property
    def roots_dir(self) -> Path:
        return self.path / "roots"

    def _registration(self, root: Path) -> Path:
        key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return self.roots_dir / f"{key}.json"

    def forget(self, root: Path) -> None:
        self._registration(root).unlink(missing_ok=True)

    def register(self, root: Path) -> None:
        """Remember that `root` uses the store (gc keeps what it holds)."""
        target = self._registration(root)
        text = json.dumps({"root": str(root)}) + "\n"
        with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
            if target.read_text(encoding="utf-8") == text:
                return
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, text)

    def roots(self) -> list[Path]:
        """The registered roots (those that no longer exist included: gc drops them)."""
        out = []
        try:
            entries = sorted(self.roots_dir.glob("*.json"))
        except OSError:
            return []
        for entry in entries:
            try:
                out.append(Path(json.loads(entry.read_text(encoding="utf-8"))["root"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def blobs(self) -> Iterator[tuple[str, Path]]:
        """(sha256, path) of every blob."""
        base = self.path / "sha256"
        if not base.is_dir():
            return
        for prefix in sorted(base.iterdir()):
            if prefix.is_dir():
                for blob in sorted(prefix.iterdir()):
                    if blob.is_file() and len(blob.name) == 64:
                        yield blob.name, blob

    def adopt(self, placed: Path, sha256: str) -> bool:
        """Make the store hold the bytes just placed at `placed` (verified, `sha256`):
        a hardlink when on one filesystem, else a copy. True when the blob was added."""
        blob = self.blob(sha256)
        if blob.exists():
            return False
        blob.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = self.path / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{sha256}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(placed, tmp)
            except OSError:  # another filesystem (or no hardlinks there): a copy
                shutil.copyfile(placed, tmp)
            os.replace(tmp, blob)
        finally:
            tmp.unlink(missing_ok=True)
        return True


def store_of(setting: str | None, env: Mapping[str, str], manifest_dir: Path) -> Store | None:
    """$MODELSYNC_STORE, else settings.store (relative to the manifest's folder)."""
    value = env.get("MODELSYNC_STORE", "").strip() or (setting or "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return Store(Path(os.path.abspath(manifest_dir / path)))
