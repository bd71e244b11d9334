"""The private aria2c process: its command line, its output (kept in memory, scrubbed),
and stopping it fast without losing its control files."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from modelsync.aria2.options import _child_env
from modelsync.aria2.redaction import _scrub, _Secret

#: SIGTERM → SIGKILL escalation in terminate().
TERM_TIMEOUT: Final = 2.0
LOG_TAIL_LINES: Final = 200


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LogTail:
    """Drains aria2c's stdout+stderr into a bounded in-memory buffer (never to disk)."""

    def __init__(self, stream: IO[bytes], secret: _Secret) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._secret = secret
        self._thread = threading.Thread(
            target=self._drain, args=(stream,), name="aria2c-output", daemon=True
        )
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(Exception), stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._lines.append(_scrub(line, self._secret))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def lines(self) -> list[str]:
        return list(self._lines)

    def text(self, limit: int = 15) -> str:
        return "\n".join(self.lines()[-limit:])


@dataclass
class Aria2Process:
    """A running aria2c that listens for RPC on 127.0.0.1:`port`."""

    popen: subprocess.Popen[bytes]
    log: LogTail
    port: int

    @classmethod
    def start(
        cls, binary: str, conf_path: Path, port: int, session_dir: Path, secret: _Secret
    ) -> Aria2Process:
        """Start aria2c with its private config file; raises OSError when it cannot run."""
        # Only wiring goes on the command line; the secret and all tuning are in the file.
        # No --no-conf: it would make aria2 skip --conf-path too. An explicit --conf-path
        # replaces the default ~/.aria2/aria2.conf / $XDG_CONFIG_HOME/aria2/aria2.conf.
        argv = [
            binary,
            f"--conf-path={conf_path}",
            "--enable-rpc=true",
            "--rpc-listen-all=false",
            f"--rpc-listen-port={port}",
            "--disable-ipv6=true",
            f"--stop-with-process={os.getpid()}",
            "--daemon=false",
        ]
        popen_kw: dict[str, Any] = {}
        if sys.platform == "win32":
            popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            # our Ctrl-C must not reach aria2c: we decide when it stops
            popen_kw["start_new_session"] = True
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=session_dir,
            env=_child_env(),
            close_fds=True,
            **popen_kw,
        )
        assert popen.stdout is not None
        return cls(popen, LogTail(popen.stdout, secret), port)

    def exit_message(self) -> str | None:
        """What to say when aria2c has exited (with its last output); None while it runs."""
        code = self.popen.poll()
        if code is None:
            return None
        self.log.join(0.5)
        tail = self.log.text()
        return f"aria2c (pid {self.popen.pid}) exited with code {code}" + (
            f":\n{tail}" if tail else ""
        )

    def exit_reason(self, wait: float = 0.0) -> str | None:
        """How aria2c ended ("killed by signal 9", "exited with code 1"), waiting up to
        `wait` seconds for a dying one to be reaped; None while it runs."""
        try:
            code = self.popen.wait(wait) if wait > 0 else self.popen.poll()
        except subprocess.TimeoutExpired:
            return None
        if code is None:
            return None
        if code < 0:
            return f"killed by signal {-code}"
        return f"exited with code {code}"

    def terminate(self) -> None:
        """SIGTERM (aria2 writes its control files and exits), SIGKILL after TERM_TIMEOUT."""
        process = self.popen
        if process.poll() is None:
            with contextlib.suppress(OSError):
                if sys.platform == "win32":
                    process.terminate()  # TerminateProcess: no control-file save there
                else:
                    process.send_signal(signal.SIGTERM)
            # aria2 notices the signal only when its event loop wakes up, which an idle
            # daemon does once a second (epoll_wait is restarted on EINTR). A connection
            # to the RPC port wakes it now: SIGTERM → exit takes milliseconds, not ~1 s.
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            try:
                process.wait(TERM_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    process.kill()
                process.wait()
        self.log.join(1.0)
