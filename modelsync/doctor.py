"""`doctor`: is this machine ready to sync? Never prints a token."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelsync.aria2 import Aria2Daemon, aria2c_version, find_aria2c, resolve_attach_settings
from modelsync.errors import ModelsyncError
from modelsync.redact import redact_urls
from modelsync.results import existing_ancestor, free_bytes

TOKENS = ("HF_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")
PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_aria2(env: Mapping[str, str]) -> list[Check]:
    attach = resolve_attach_settings(None, None, env)
    if attach is not None:
        try:
            with Aria2Daemon.attach(*attach) as daemon:
                return [Check("aria2 RPC", True, f"attached to {daemon.url}, {daemon.version()}")]
        except ModelsyncError as exc:
            return [Check("aria2 RPC", False, exc.message)]
    try:
        binary = find_aria2c()
    except ModelsyncError as exc:
        return [Check("aria2c", False, f"{exc.message} ({exc.hint})")]
    checks = [Check("aria2c", True, f"{binary} ({aria2c_version(binary)})")]
    with tempfile.TemporaryDirectory(prefix="modelsync-doctor-") as session:
        try:
            with Aria2Daemon.spawn(
                max_concurrent=1, max_overall_speed=0, session_dir=Path(session)
            ) as daemon:
                checks.append(Check("aria2 RPC", True, f"answers on 127.0.0.1:{daemon.port}"))
        except ModelsyncError as exc:
            checks.append(Check("aria2 RPC", False, exc.message))
    return checks


def check_root(root: Path) -> list[Check]:
    probe = existing_ancestor(root)
    writable = os.access(probe, os.W_OK | os.X_OK)
    where = str(root) if probe == root else f"{root} (to be created in {probe})"
    return [
        Check("root writable", writable, where),
        Check("free space", True, f"{free_bytes(root) / 2**30:.1f} GiB free under {probe}"),
    ]


def check_environment(env: Mapping[str, str]) -> list[Check]:
    checks = [
        Check(name, True, "set" if env.get(name) else "not set")
        for name in TOKENS
        if name != "CIVITAI_API_TOKEN" or env.get(name)
    ]
    for name in ("HF_ENDPOINT", "CIVITAI_ENDPOINT"):
        if env.get(name):
            checks.append(Check(name, True, redact_urls(env[name])))
    for name in PROXIES:
        value = env.get(name) or env.get(name.lower())
        if value:
            shown = value if name == "NO_PROXY" else redact_urls(value)
            checks.append(Check(name, True, shown))
    return checks


def run_doctor(root: Path | None, env: Mapping[str, str]) -> list[Check]:
    checks = check_aria2(env)
    if root is not None:
        checks += check_root(root)
    return checks + check_environment(env)
