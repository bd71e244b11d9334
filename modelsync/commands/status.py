"""`status`: the apply running on a root, as its status file shows it (read only)."""

from __future__ import annotations

from modelsync.manifest import RootChoice
from modelsync.status import ApplyStatus, read_status


def run_status(root: RootChoice) -> ApplyStatus:
    """Never writes: a stale status file is reported, and left for the next apply."""
    return read_status(root.path)
