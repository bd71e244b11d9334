"""The aria2c daemon: spawn a private one or attach to a running one, and drive it over
JSON-RPC. The private process itself (command line, output, stop) is process.py's."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, cast

import aria2p
import requests

from modelsync.aria2.attach import (
    COMFYUI_SECRET_ENV,
    COMFYUI_URL_ENV,
    MODELSYNC_SECRET_ENV,
    parse_rpc_url,
)
from modelsync.aria2.binary import find_aria2c, install_hint
from modelsync.aria2.options import (
    _CONF_PREFIX,
    _conf_value,
    _remove_stale_conf_files,
    _spawn_options,
    _write_private_file,
)
from modelsync.aria2.process import Aria2Process, free_port
from modelsync.aria2.redaction import _scrub, _Secret
from modelsync.aria2.rpc import _UNAUTHORIZED_CODE, _Client
from modelsync.aria2.status import (
    _STATUS_KEYS,
    DownloadStatus,
    _int,
    _is_not_found,
    _missing_status,
    _parse_status,
)
from modelsync.errors import Aria2RpcError, Aria2Unavailable, ModelsyncError

#: Timeout of one RPC call. Loopback answers in milliseconds; aria2 can stall while it
#: does blocking disk work, so this is generous.
RPC_TIMEOUT: Final = 30.0
#: How long a freshly spawned aria2c may take before its RPC answers.
STARTUP_TIMEOUT: Final = 15.0
#: How long attach() waits for the first answer.
ATTACH_TIMEOUT: Final = 10.0
SPAWN_ATTEMPTS: Final = 5


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Aria2Daemon:
    """A connection to an aria2c JSON-RPC daemon, spawned by us or attached to.

    Use as a context manager. All RPC failures raise :class:`Aria2Unavailable` (the
    daemon went away or does not accept us) or :class:`Aria2RpcError` (one call failed).
    """

    def __init__(
        self,
        *,
        scheme: str,
        host: str,
        port: int,
        secret: _Secret,
        process: Aria2Process | None = None,
        timeout: float = RPC_TIMEOUT,
    ) -> None:
        self._scheme = scheme
        self._host = host
        self._port = port
        self._secret = secret
        self._process = process
        self._client = _Client(scheme, host, port, secret, timeout)
        self._api = aria2p.API(self._client)
        self._ours: set[str] = set()
        self._ours_lock = threading.Lock()
        self._closed = False

    # ----------------------------------------------------------------- construction

    @classmethod
    def spawn(
        cls,
        *,
        max_concurrent: int,
        max_overall_speed: int,
        session_dir: Path,
        aria2c: str | None = None,
        extra_options: Mapping[str, str] | None = None,
    ) -> Aria2Daemon:
        """Start a private aria2c on 127.0.0.1 and wait until its RPC answers.

        ``max_overall_speed`` is in bytes per second, 0 for no limit. ``session_dir``
        receives the short-lived config file and is aria2c's working directory.
        ``extra_options`` (global aria2 options, e.g. ``{"disk-cache": "16777216"}``) go
        into that file too, over modelsync's defaults; never the RPC wiring or secret.
        """
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_overall_speed < 0:
            raise ValueError("max_overall_speed must be >= 0")
        binary = aria2c or find_aria2c()
        session_dir = Path(session_dir)
        session_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_conf_files(session_dir)

        secret = _Secret(secrets.token_hex(16))
        options = _spawn_options(max_concurrent, max_overall_speed, extra_options)
        # no local holds the secret in clear (tracebacks with locals stay clean)
        conf_body = "".join(f"{k}={_conf_value(v)}\n" for k, v in options.items())

        last_error: Aria2Unavailable | None = None
        for _attempt in range(SPAWN_ATTEMPTS):
            daemon, last_error, retry = cls._try_spawn(binary, session_dir, conf_body, secret)
            if daemon is not None:
                return daemon
            if not retry:
                break
        assert last_error is not None
        raise last_error

    @classmethod
    def _try_spawn(
        cls, binary: str, session_dir: Path, conf_body: str, secret: _Secret
    ) -> tuple[Aria2Daemon | None, Aria2Unavailable | None, bool]:
        """One attempt: (daemon, None, _) or (None, error, retry_with_another_port)."""
        port = free_port()
        conf_path = session_dir / f"{_CONF_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.conf"
        _write_private_file(conf_path, f"rpc-secret={secret.reveal()}\n{conf_body}")
        try:
            try:
                process = Aria2Process.start(binary, conf_path, port, session_dir, secret)
            except OSError as exc:
                error = Aria2Unavailable(f"cannot start {binary}: {exc}", install_hint())
                return None, error, False
            daemon = cls(scheme="http", host="127.0.0.1", port=port, secret=secret, process=process)
            try:
                daemon._wait_ready(STARTUP_TIMEOUT)
            except Aria2Unavailable as exc:
                daemon._closed = True
                daemon._client.close()
                process.terminate()
                tail = process.log.text().lower()
                retry = "address in use" in tail or "failed to bind" in tail
                return None, exc, retry
            except BaseException:  # Ctrl-C while waiting: do not leave aria2c behind
                daemon._closed = True
                daemon._client.close()
                process.terminate()
                raise
            return daemon, None, False
        finally:
            with contextlib.suppress(FileNotFoundError):
                conf_path.unlink()

    def _wait_ready(self, timeout: float) -> None:
        """Poll getVersion until it answers, aria2c exits, or ``timeout`` passes."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout
        delay = 0.005
        probe = _Client(self._scheme, self._host, self._port, self._secret, timeout=0.5)
        try:
            while True:
                code = process.popen.poll()
                if code is not None:
                    process.log.join(1.0)
                    raise Aria2Unavailable(
                        f"aria2c exited during startup (exit code {code}):\n"
                        + (process.log.text() or "(no output)"),
                        "run `modelsync doctor`; check the aria2c binary and the folder",
                    )
                try:
                    probe.get_version()
                except (requests.ConnectionError, requests.Timeout):
                    pass
                except aria2p.ClientException as exc:
                    raise Aria2Unavailable(
                        f"aria2c on port {self._port} refused our RPC call: "
                        f"{_scrub(str(exc), self._secret)}",
                        "another program may have taken the port; try again",
                    ) from None
                except requests.RequestException as exc:
                    raise Aria2Unavailable(
                        f"aria2c on port {self._port} does not speak JSON-RPC: "
                        f"{_scrub(str(exc), self._secret)}",
                        "another program may have taken the port; try again",
                    ) from None
                else:
                    return
                if time.monotonic() > deadline:
                    raise Aria2Unavailable(
                        f"aria2c did not answer on 127.0.0.1:{self._port} within {timeout:.0f} s",
                        "run `modelsync doctor`",
                    )
                time.sleep(delay)  # polling a condition with a deadline
                delay = min(delay * 2, 0.1)
        finally:
            probe.close()

    @classmethod
    def attach(cls, url: str, secret: str | None, source: str = "cli") -> Aria2Daemon:
        """Use the aria2c daemon at ``url``; it must answer ``aria2.getVersion``.

        ``source`` (``"cli"`` or the environment variable the URL came from, as in
        :class:`AttachSettings`) only shapes the error messages.
        """
        scheme, host, port = parse_rpc_url(url)
        daemon = cls(scheme=scheme, host=host, port=port, secret=_Secret(secret or ""))
        where = _hostport(host, port)
        if source == "cli":
            origin, url_knob, secret_knob = "", "--aria2-url", "--aria2-secret"
        else:
            origin = f" (from ${source})"
            url_knob = f"${source}"
            secret_knob = "$" + (
                COMFYUI_SECRET_ENV if source == COMFYUI_URL_ENV else MODELSYNC_SECRET_ENV
            )
        probe = _Client(scheme, host, port, daemon._secret, timeout=ATTACH_TIMEOUT)
        try:
            probe.get_version()
        except aria2p.ClientException as exc:
            daemon._client.close()
            if exc.code == _UNAUTHORIZED_CODE:
                raise Aria2Unavailable(
                    f"aria2 at {where}{origin} rejected the RPC secret"
                    + ("" if secret else " (none was given)"),
                    f"set {secret_knob} (or --aria2-secret) to the daemon's --rpc-secret",
                ) from None
            raise Aria2Unavailable(
                f"aria2 at {where}{origin} answered with an error: "
                f"{_scrub(str(exc), daemon._secret)}",
                f"check {url_knob}",
            ) from None
        except (requests.ConnectionError, requests.Timeout):
            daemon._client.close()
            raise Aria2Unavailable(
                f"no aria2 RPC answers at {where}{origin}",
                f"start that aria2c (with --enable-rpc), or fix or unset {url_knob} "
                "to let modelsync run its own aria2c",
            ) from None
        except (requests.RequestException, ValueError, KeyError, TypeError):
            daemon._client.close()
            raise Aria2Unavailable(
                f"{where}{origin} does not look like an aria2 JSON-RPC endpoint",
                f"{url_knob} should be http://HOST:PORT/jsonrpc of an aria2c started with "
                "--enable-rpc",
            ) from None
        finally:
            probe.close()
        return daemon

    # ----------------------------------------------------------------- properties

    @property
    def api(self) -> aria2p.API:
        """aria2p's high-level API on this daemon (proxy-free transport)."""
        return self._api

    @property
    def client(self) -> aria2p.Client:
        return self._client

    @property
    def spawned(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        return self._process.popen.pid if self._process is not None else None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The RPC endpoint (no secret in it)."""
        url_host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self._scheme}://{url_host}:{self._port}/jsonrpc"

    def exit_reason(self, wait: float = 0.0) -> str | None:
        """How our aria2c ended (e.g. "killed by signal 9"); None while it runs, or for a
        daemon we attached to (its process is not ours to watch)."""
        return self._process.exit_reason(wait) if self._process is not None else None

    def log_tail(self) -> list[str]:
        """Last lines aria2c printed (spawned daemons only), URLs redacted."""
        return self._process.log.lines() if self._process is not None else []

    def __repr__(self) -> str:
        mode = f"spawned pid={self.pid}" if self.spawned else "attached"
        state = " closed" if self._closed else ""
        return f"<Aria2Daemon {mode} {_hostport(self._host, self._port)}{state}>"

    # ----------------------------------------------------------------- RPC plumbing

    @contextlib.contextmanager
    def _rpc(self, method: str) -> Iterator[None]:
        """Map transport failures to Aria2Unavailable and aria2 errors to Aria2RpcError."""
        if self._closed:
            raise Aria2Unavailable(f"aria2 RPC {method} after close()", "this is a bug")
        where = _hostport(self._host, self._port)
        try:
            yield
        except aria2p.ClientException as exc:
            message = _scrub(str(exc), self._secret)
            if exc.code == _UNAUTHORIZED_CODE and "unauthorized" in message.lower():
                raise Aria2Unavailable(
                    f"aria2 at {where} rejected the RPC secret",
                    "check --aria2-secret / $MODELSYNC_ARIA2_SECRET",
                ) from None
            raise Aria2RpcError(method, exc.code, message) from None
        except requests.RequestException as exc:
            raise self._gone(where, exc) from None

    def _gone(self, where: str, exc: BaseException) -> Aria2Unavailable:
        detail = _scrub(f"{type(exc).__name__}: {exc}", self._secret)
        exited = self._process.exit_message() if self._process is not None else None
        if exited is not None:
            return Aria2Unavailable(exited, "partial downloads are kept; run apply again to resume")
        return Aria2Unavailable(
            f"aria2 RPC at {where} stopped answering ({detail})",
            "partial downloads are kept; run apply again to resume",
        )

    def _multicall(self, method: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """system.multicall; each item is ``[result]`` or a fault ``{"code", "message"}``."""
        if not calls:
            return []
        with self._rpc(method):
            result = self._client.multicall2(cast(Any, list(calls)))
        if not isinstance(result, list) or len(result) != len(calls):
            raise Aria2Unavailable(
                f"aria2 at {_hostport(self._host, self._port)} sent a malformed answer",
                "check --aria2-url",
            )
        return result

    # ----------------------------------------------------------------- typed wrappers

    def version(self) -> str:
        with self._rpc("getVersion"):
            # aria2p annotates getVersion as str; aria2 returns {"version", "enabledFeatures"}
            answer = cast(Mapping[str, Any], self._client.get_version())
            return str(answer["version"])

    def get_global_option(self) -> dict[str, str]:
        with self._rpc("getGlobalOption"):
            return {str(k): str(v) for k, v in self._client.get_global_option().items()}

    def change_global_option(self, options: Mapping[str, str]) -> None:
        """E.g. ``{"max-overall-download-limit": "50M", "max-concurrent-downloads": "2"}``."""
        with self._rpc("changeGlobalOption"):
            self._client.change_global_option({str(k): str(v) for k, v in options.items()})

    def add(self, uris: list[str], options: Mapping[str, str | list[str]]) -> str:
        """Queue one download of the same bytes from ``uris``; returns its GID.

        ``options`` are aria2 per-download options (``dir``, ``out``, ``split``,
        ``max-connection-per-server``, ``header`` (a list for several), …).
        """
        (answer,) = self.add_many([(uris, options)])
        if isinstance(answer, Aria2RpcError):
            raise answer
        return answer

    def add_many(
        self, downloads: Sequence[tuple[list[str], Mapping[str, str | list[str]]]]
    ) -> list[str | Aria2RpcError]:
        """Queue several downloads in one round trip (system.multicall), in order; for
        each its GID, or the error aria2 gave for that one alone (its options or URIs)."""
        calls: list[tuple[str, list[Any]]] = []
        for uris, options in downloads:
            if not uris:
                raise ValueError("add() needs at least one URI")
            opts = {
                str(k): (list(v) if isinstance(v, list) else str(v)) for k, v in options.items()
            }
            calls.append((self._client.ADD_URI, [list(uris), opts]))
        out: list[str | Aria2RpcError] = []
        for item in self._multicall("addUri", calls):
            if isinstance(item, list) and item and isinstance(item[0], str):
                out.append(item[0])
            else:
                fault = item if isinstance(item, Mapping) else {}
                message = _scrub(str(fault.get("message", "unexpected answer")), self._secret)
                out.append(Aria2RpcError("addUri", _int(fault.get("code", 0)), message))
        with self._ours_lock:
            self._ours.update(gid for gid in out if isinstance(gid, str))
        return out

    def status(self, gids: Iterable[str]) -> list[DownloadStatus]:
        """Status of each GID, in order, in one round trip (system.multicall)."""
        wanted = list(gids)
        calls = [(self._client.TELL_STATUS, [gid, list(_STATUS_KEYS)]) for gid in wanted]
        out: list[DownloadStatus] = []
        for gid, item in zip(wanted, self._multicall("tellStatus", calls), strict=True):
            if isinstance(item, list) and item and isinstance(item[0], Mapping):
                out.append(_parse_status(gid, item[0]))
            elif isinstance(item, Mapping) and _is_not_found(str(item.get("message", ""))):
                out.append(_missing_status(gid))
            elif isinstance(item, Mapping):
                message = _scrub(str(item.get("message", "")), self._secret)
                raise Aria2RpcError("tellStatus", _int(item.get("code", 0)), message)
            else:
                raise Aria2RpcError("tellStatus", 0, f"unexpected answer for GID {gid}")
        return out

    def remove(self, gid: str, force: bool = True) -> bool:
        """Stop a download (its files and control file stay on disk for resume).

        Returns False when aria2 has no active/waiting/paused download with that GID
        (already finished or unknown). ``force`` skips aria2's polite connection teardown.
        Removal is asynchronous for an active download (poll :meth:`status` until it is
        ``removed``); a waiting or paused one is dropped at once and leaves no result.
        """
        method = self._client.FORCE_REMOVE if force else self._client.REMOVE
        return self._gid_call("remove", method, gid)

    def remove_result(self, gid: str) -> bool:
        """Forget a stopped download's result; False when there is none."""
        ok = self._gid_call("removeDownloadResult", self._client.REMOVE_DOWNLOAD_RESULT, gid)
        with self._ours_lock:
            self._ours.discard(gid)
        return ok

    def remove_results(self, gids: Sequence[str]) -> None:
        """Forget several stopped downloads' results in one round trip; one that has
        none (already forgotten, or still running) is left as it is."""
        calls = [(self._client.REMOVE_DOWNLOAD_RESULT, [gid]) for gid in gids]
        self._multicall("removeDownloadResult", calls)
        with self._ours_lock:
            self._ours.difference_update(gids)

    def pause(self, gid: str, force: bool = True) -> bool:
        """Pause a download (kept in aria2's queue); False when it cannot be paused."""
        method = self._client.FORCE_PAUSE if force else self._client.PAUSE
        return self._gid_call("pause", method, gid)

    def unpause(self, gid: str) -> bool:
        return self._gid_call("unpause", self._client.UNPAUSE, gid)

    def _gid_call(self, name: str, method: str, gid: str) -> bool:
        try:
            with self._rpc(name):
                self._client.call(method, [gid])
        except Aria2RpcError as exc:
            text = str(exc).lower()
            if _is_not_found(text) or "could not" in text or "cannot" in text:
                return False
            raise
        return True

    # ----------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop using the daemon. Idempotent, never raises for a daemon that is gone.

        Spawned: SIGTERM (aria2 stops at once and writes its control files), SIGKILL if it
        is still there after two seconds. An RPC shutdown is avoided: it takes seconds.

        Attached: the daemon is not ours and keeps running, but the downloads we added
        that have not finished are force-removed and the results of all our downloads
        are removed. Pausing them instead would leave them in the foreign daemon's queue,
        where anyone (ComfyUI-Manager's UI, a later unpause) could resume writing into our
        ``tmp/`` while no modelsync verifies or moves the file, or while the next apply
        downloads the same file; removing keeps the partial file and its control file, so
        the next apply resumes it.
        """
        if self._closed:
            return
        try:
            if self._process is None:
                with contextlib.suppress(ModelsyncError):
                    self._release_ours()
        finally:
            self._closed = True
            self._client.close()
            if self._process is not None:
                self._process.terminate()

    def _release_ours(self) -> None:
        with self._ours_lock:
            ours = sorted(self._ours)
        if not ours:
            return
        statuses = self.status(ours)
        active = [s.gid for s in statuses if not s.stopped]
        self._multicall("forceRemove", [(self._client.FORCE_REMOVE, [g]) for g in active])
        # forceRemove is asynchronous: wait (briefly) until they are stopped
        deadline = time.monotonic() + 1.0
        pending = active
        while pending and time.monotonic() < deadline:
            pending = [s.gid for s in self.status(pending) if not s.stopped]
            if pending:
                time.sleep(0.02)  # polling a condition with a deadline
        done = [g for g in ours if g not in pending]
        self._multicall(
            "removeDownloadResult",
            [(self._client.REMOVE_DOWNLOAD_RESULT, [g]) for g in done],
        )
        with self._ours_lock:
            self._ours.difference_update(done)

    def __enter__(self) -> Aria2Daemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
