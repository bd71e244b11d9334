"""The aria2c of an apply that was killed (-9) outlives it for a moment.

With --stop-with-process it notices its parent's death, saves its control files and
exits. Until then those files are stale: a new daemon must not write the same partials,
and plan must not count them.
"""

from __future__ import annotations

import os
import signal
import time

from modelsync.layout import Layout


def wait_for_orphan_daemon(layout: Layout, timeout: float = 15.0, *, stop: bool = True) -> None:
    """Wait for a killed apply's aria2c to exit; `stop` (apply) ends a slow one with
    SIGTERM, which keeps control files, and clears the pid file. plan passes
    stop=False: it only waits, and writes nothing."""
    try:
        pid = int(layout.daemon_pid.read_text())
    except (OSError, ValueError):  # none, or .modelsync/ unusable: no daemon of ours
        return
    deadline = time.monotonic() + timeout
    while _is_our_aria2c(pid, layout):
        if time.monotonic() > deadline:
            if stop:
                os.kill(pid, signal.SIGTERM)
            break
        time.sleep(0.05)  # polling another process's exit: nothing to wait on
    if stop:
        layout.daemon_pid.unlink(missing_ok=True)


def _is_our_aria2c(pid: int, layout: Layout) -> bool:
    """Alive, and started for this root (a reused pid must never be waited on or killed)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"aria2c" in cmdline and os.fsencode(layout.own) in cmdline
