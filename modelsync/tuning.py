"""`[settings.aria2]`: the aria2 options a manifest may pass on, checked against an allowlist.

Pure (no aria2p, no I/O): manifest.py validates the table with it, apply hands the result
to aria2. An option aria2 takes per download (its "Input File" options) goes with every
download, so it applies to an attached daemon too; the few global-only ones go into the
config file of modelsync's own aria2c and nowhere else (a user's daemon keeps its globals).

Refused, each with the reason or the manifest key to use instead: options modelsync sets
itself (connections, concurrency, speed, the RPC secret, resume and hashing behaviour),
options that run commands, read or write files outside `.modelsync/tmp/`, open or drive
the RPC server, or send credentials to every host; and everything not on the list.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from modelsync.errors import Problem

Kind = Literal["seconds", "count", "rate", "size", "bool", "choice", "text", "proxy", "path"]

MIB: Final = 1 << 20
_UNITS: Final = {"": 1, "k": 1 << 10, "m": MIB, "g": 1 << 30}
_AMOUNT: Final = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class _Spec:
    kind: Kind
    per_download: bool  # aria2 takes it in addUri (an "Input File" option)
    example: str  # the value in TOML, for error messages
    low: int = 0
    high: int | None = None
    choices: tuple[str, ...] = ()


# Checked against aria2c(1) 1.37: names, ranges, and the Input File list (per download).
ALLOWED: Final[Mapping[str, _Spec]] = {
    # slow or dead servers: aria2 gives up on a connection, modelsync retries the file
    "lowest-speed-limit": _Spec("rate", True, '"100K"'),
    "timeout": _Spec("seconds", True, "60", 1, 600),
    "connect-timeout": _Spec("seconds", True, "30", 1, 600),
    "max-tries": _Spec("count", True, "5"),
    "retry-wait": _Spec("seconds", True, "3", 0, 600),
    "max-file-not-found": _Spec("count", True, "3"),
    # how each file is fetched and written
    "max-download-limit": _Spec("rate", True, '"20M"'),
    "min-split-size": _Spec("size", True, '"16M"', MIB, 1024 * MIB),
    "piece-length": _Spec("size", True, '"1M"', MIB, 1024 * MIB),
    "file-allocation": _Spec(
        "choice", True, '"falloc"', choices=("none", "prealloc", "trunc", "falloc")
    ),
    "uri-selector": _Spec("choice", True, '"inorder"', choices=("inorder", "feedback", "adaptive")),
    "async-dns": _Spec("bool", True, "false"),
    "enable-http-keep-alive": _Spec("bool", True, "true"),
    "enable-http-pipelining": _Spec("bool", True, "true"),
    "http-no-cache": _Spec("bool", True, "true"),
    "user-agent": _Spec("text", True, '"my-team-sync/1.0"'),
    # proxies (aria2 speaks to HTTP proxies only)
    "all-proxy": _Spec("proxy", True, '"http://proxy.lan:3128"'),
    "http-proxy": _Spec("proxy", True, '"http://proxy.lan:3128"'),
    "https-proxy": _Spec("proxy", True, '"http://proxy.lan:3128"'),
    "no-proxy": _Spec("text", True, '"localhost,.lan,10.0.0.0/8"'),
    "proxy-method": _Spec("choice", True, '"tunnel"', choices=("get", "tunnel")),
    # global only: modelsync's own aria2c (not an attached one)
    "disk-cache": _Spec("size", False, '"16M"'),
    "check-certificate": _Spec("bool", False, "false"),
    "ca-certificate": _Spec("path", False, '"/etc/ssl/certs/corp-ca.pem"'),
    "min-tls-version": _Spec(
        "choice", False, '"TLSv1.2"', choices=("TLSv1.1", "TLSv1.2", "TLSv1.3")
    ),
}

# Options modelsync sets itself, and what to write instead.
_CONNECTIONS: Final = (
    "connections in [settings] (0: one per 8 MiB, up to 16) or per entry, or apply --connections"
)
_RESUME: Final = "modelsync resumes partial downloads in .modelsync/tmp/ and depends on it"
_VERIFY: Final = "modelsync verifies every file itself against its sha256/xxh3_128 pins"
OWNED: Final[Mapping[str, str]] = {
    "split": f"use {_CONNECTIONS}",
    "max-connection-per-server": f"use {_CONNECTIONS}",
    "max-concurrent-downloads": "use max_concurrent in [settings], or apply --jobs",
    "max-overall-download-limit": "use max_speed in [settings], or apply --max-speed",
    "rpc-secret": (
        "modelsync gives its own aria2c a random secret; for a daemon you run, set "
        "$MODELSYNC_ARIA2_SECRET (or apply --aria2-secret) with --aria2-url"
    ),
    "stream-piece-selector": "modelsync fills files front to back to hash them while they download",
    "continue": _RESUME,
    "always-resume": _RESUME,
    "allow-overwrite": _RESUME,
    "auto-file-renaming": _RESUME,
    "max-resume-failure-tries": _RESUME,
    "remove-control-file": _RESUME,
    "auto-save-interval": _RESUME,
    "force-save": _RESUME,
    "checksum": _VERIFY,
    "check-integrity": _VERIFY,
    "hash-check-only": _VERIFY,
}

_FILES: Final = (
    "it reads or writes files outside .modelsync/tmp/ (modelsync decides where downloads land)"
)
_RUNS_ARIA2: Final = "modelsync starts, wires and stops its aria2c itself"
_CREDENTIALS: Final = (
    "aria2 would send it to every host, redirects included; modelsync sends each token "
    "only to its own host (HF_TOKEN, CIVITAI_TOKEN)"
)
_P2P: Final = "BitTorrent, DHT and Metalink are off: modelsync downloads the bytes behind the URL"
DANGEROUS: Final[Mapping[str, str]] = {
    "rpc-listen-all": "it would open aria2's RPC (which can write any file) to the network",
    "enable-rpc": _RUNS_ARIA2,
    "daemon": _RUNS_ARIA2,
    "stop-with-process": _RUNS_ARIA2,
    "stop": _RUNS_ARIA2,
    "conf-path": _RUNS_ARIA2,
    "no-conf": _RUNS_ARIA2,
    "disable-ipv6": _RUNS_ARIA2,
    "dir": _FILES,
    "out": _FILES,
    "index-out": _FILES,
    "input-file": _FILES,
    "deferred-input": _FILES,
    "save-session": _FILES,
    "save-session-interval": _FILES,
    "log": _FILES,
    "server-stat-of": _FILES,
    "server-stat-if": _FILES,
    "load-cookies": _FILES,
    "save-cookies": _FILES,
    "netrc-path": _FILES,
    "no-netrc": (
        "modelsync keeps ~/.netrc off: its passwords would go to whatever host a redirect leads to"
    ),
    "header": _CREDENTIALS,
    "http-user": _CREDENTIALS,
    "http-passwd": _CREDENTIALS,
    "follow-torrent": _P2P,
    "follow-metalink": _P2P,
    "enable-dht": _P2P,
    "enable-dht6": _P2P,
    "listen-port": _P2P,
}
_DANGEROUS_PREFIXES: Final = (
    ("rpc-", "it configures aria2's RPC server, which modelsync keeps private to itself"),
    ("on-download-", "it runs a command"),
    ("on-bt-", "it runs a command"),
    ("save-session", _FILES),
    ("dht-", _P2P),
    ("bt-", _P2P),
    ("seed-", _P2P),
    ("metalink-", _P2P),
)


@dataclass(frozen=True)
class Tuning:
    """The checked `[settings.aria2]`: option name → aria2's string form, in manifest order."""

    options: tuple[tuple[str, str], ...] = ()

    @property
    def per_download(self) -> dict[str, str]:
        """For every addUri (spawned or attached daemon)."""
        return {k: v for k, v in self.options if ALLOWED[k].per_download}

    @property
    def global_only(self) -> dict[str, str]:
        """For modelsync's own aria2c's config file only."""
        return {k: v for k, v in self.options if not ALLOWED[k].per_download}

    @property
    def hash_ahead(self) -> bool:
        """Whether a piece aria2 reports complete is already on disk. With a write cache
        (disk-cache > 0) it may still be in memory, so a file is hashed after it
        finishes rather than while it downloads."""
        return dict(self.options).get("disk-cache", "0") == "0"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Proxy passwords, to redact from anything modelsync prints."""
        out = []
        for key, value in self.options:
            if ALLOWED[key].kind == "proxy" and "@" in value:
                userinfo = value.split("://", 1)[-1].rpartition("@")[0]
                if ":" in userinfo and userinfo.partition(":")[2]:
                    out.append(userinfo.partition(":")[2])
        return tuple(out)


NO_TUNING: Final = Tuning()


class TuningError(ValueError):
    """Every problem of a `[settings.aria2]` table: (option name or None, message)."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        super().__init__("; ".join(message for _key, message in problems))
        self.problems = problems


def parse_tuning(raw: Any) -> Tuning:
    """Check a `[settings.aria2]` table; raise TuningError naming every bad option."""
    if isinstance(raw, Tuning):
        return raw
    if not isinstance(raw, dict):
        raise TuningError(
            [
                (
                    None,
                    "[settings.aria2]: aria2 must be a table of aria2 options, e.g. "
                    '[settings.aria2] with lines like timeout = 30 or lowest-speed-limit = "100K"',
                )
            ]
        )
    options: list[tuple[str, str]] = []
    problems: list[tuple[str | None, str]] = []
    for key, value in raw.items():
        try:
            options.append((key, _checked(key, value)))
        except ValueError as exc:
            problems.append((key, f"[settings.aria2]: key {key!r}: {exc}"))
    if problems:
        raise TuningError(problems)
    return Tuning(tuple(options))


def _checked(key: str, value: Any) -> str:
    if key in OWNED:
        raise ValueError(f"modelsync sets {key} itself; {OWNED[key]}")
    reason = DANGEROUS.get(key) or next(
        (why for prefix, why in _DANGEROUS_PREFIXES if key.startswith(prefix)), None
    )
    if reason is not None:
        raise ValueError(f"refused: {reason}")
    spec = ALLOWED.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, list(ALLOWED), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"not an aria2 option modelsync passes on{hint} (allowed: {', '.join(ALLOWED)})"
        )
    converted = _convert(spec, value)
    if converted is None:
        raise ValueError(
            f"{key} must be {_expected(spec)}, e.g. {key} = {spec.example}; got {value!r}"
        )
    return converted


def _convert(spec: _Spec, value: Any) -> str | None:
    """aria2's string form of `value`, or None when it is not what `spec` wants."""
    if spec.kind == "bool":
        return ("true" if value else "false") if isinstance(value, bool) else None
    if spec.kind in ("seconds", "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return str(value) if _in_range(spec, value) else None
    if spec.kind in ("rate", "size"):
        amount = _bytes(value)
        return str(amount) if amount is not None and _in_range(spec, amount) else None
    if not isinstance(value, str) or _CONTROL.search(value):
        return None  # a line break would end the config file's line
    if spec.kind == "choice":
        return value if value in spec.choices else None
    if spec.kind == "proxy":
        return value if _proxy_ok(value) else None
    if spec.kind == "path":
        path = os.path.expanduser(value)
        return path if os.path.isabs(path) else None
    return value  # text


def _in_range(spec: _Spec, number: int) -> bool:
    return number >= spec.low and (spec.high is None or number <= spec.high)


def _bytes(value: Any) -> int | None:
    """1048576, "1M", "512K", "1G" → bytes (binary units, like aria2's K and M)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    match = _AMOUNT.match(value)
    return int(match[1]) * _UNITS[match[2].lower()] if match else None


def _proxy_ok(value: str) -> bool:
    """ "" (no proxy) or [http://][USER:PASSWORD@]HOST[:PORT]: aria2 speaks HTTP to proxies."""
    if value == "":
        return True
    if " " in value:
        return False
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        return False
    host = (rest if sep else value).rpartition("@")[2].split("/", 1)[0]
    return bool(host) and not host.startswith(":")


def _expected(spec: _Spec) -> str:
    if spec.kind == "bool":
        return "true or false"
    if spec.kind == "seconds":
        return f"a whole number of seconds from {spec.low} to {spec.high}"
    if spec.kind == "count":
        return "a whole number, 0 or more"
    if spec.kind == "rate":
        return 'a rate in bytes per second: a whole number or a string like "500K" or "2M"'
    if spec.kind == "size":
        bounds = f" from {spec.low // MIB}M to {spec.high // MIB}M" if spec.high is not None else ""
        return f'a size{bounds}: a whole number of bytes or a string like "16M"'
    if spec.kind == "choice":
        return "one of " + ", ".join(f'"{c}"' for c in spec.choices)
    if spec.kind == "proxy":
        return 'a proxy "[http://][USER:PASSWORD@]HOST[:PORT]" in quotes ("" for none)'
    if spec.kind == "path":
        return "an absolute path in quotes"
    return "a string in quotes (one line)"


def option_line(text: str, key: str | None) -> int | None:
    """The manifest line that sets option `key` of [settings.aria2] (a `[settings.aria2]`
    table, `aria2.key = …` or `aria2 = {…}` in [settings]), else the table's line."""
    lines = text.splitlines()
    name = re.escape(key) if key else None
    table = re.compile(r"^\s*\[\s*settings\s*\.\s*[\"']?aria2[\"']?\s*\]")
    settings = re.compile(r"^\s*\[\s*settings\s*\]")
    assignment = re.compile(rf"^\s*[\"']?{name}[\"']?\s*=") if name else None
    dotted = re.compile(rf"^\s*[\"']?aria2[\"']?\s*\.\s*[\"']?{name}[\"']?\s*=") if name else None
    inline = re.compile(r"^\s*[\"']?aria2[\"']?\s*=")
    found: int | None = None
    section: str | None = None
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("["):
            section = "aria2" if table.match(line) else "settings" if settings.match(line) else None
            if section == "aria2" and found is None:
                found = n
            continue
        if section == "aria2" and assignment and assignment.match(line):
            return n
        if section == "settings":
            if dotted and dotted.match(line):
                return n
            if inline.match(line) and found is None:
                found = n
    return found


def tuning_problems(err: Mapping[str, Any], text: str) -> list[Problem]:
    """One Problem per bad option when pydantic's error `err` is a TuningError, else []."""
    error = (err.get("ctx") or {}).get("error")
    if not isinstance(error, TuningError):
        return []
    problems = []
    for key, message in error.problems:
        line = option_line(text, key)
        where = f"line {line}: " if line else ""
        dotted = f"settings.aria2.{key}" if key else "settings.aria2"
        problems.append(Problem(None, dotted, line, where + message))
    return problems
