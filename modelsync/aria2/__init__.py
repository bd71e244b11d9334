"""The only package that knows aria2: find aria2c, run or attach to a daemon, talk JSON-RPC.

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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use (below): aria2p and requests cost 0.15 s
    from modelsync.aria2.attach import (
        ATTACH_SECRET_ENVS,
        ATTACH_URL_ENVS,
        AttachSettings,
        parse_rpc_url,
        resolve_attach_settings,
        split_attach_settings,
    )
    from modelsync.aria2.binary import ARIA2C_ENV, aria2c_version, find_aria2c, install_hint
    from modelsync.aria2.daemon import Aria2Daemon
    from modelsync.aria2.options import CA_BUNDLE_ENVS
    from modelsync.aria2.pool import Aria2Pool
    from modelsync.aria2.status import DownloadStatus
    from modelsync.errors import Aria2RpcError
    from modelsync.redact import redact_urls

_WHERE = {
    "ATTACH_SECRET_ENVS": "modelsync.aria2.attach",
    "ATTACH_URL_ENVS": "modelsync.aria2.attach",
    "AttachSettings": "modelsync.aria2.attach",
    "parse_rpc_url": "modelsync.aria2.attach",
    "resolve_attach_settings": "modelsync.aria2.attach",
    "split_attach_settings": "modelsync.aria2.attach",
    "ARIA2C_ENV": "modelsync.aria2.binary",
    "aria2c_version": "modelsync.aria2.binary",
    "find_aria2c": "modelsync.aria2.binary",
    "install_hint": "modelsync.aria2.binary",
    "Aria2Daemon": "modelsync.aria2.daemon",
    "CA_BUNDLE_ENVS": "modelsync.aria2.options",
    "Aria2Pool": "modelsync.aria2.pool",
    "DownloadStatus": "modelsync.aria2.status",
    "Aria2RpcError": "modelsync.errors",
    "redact_urls": "modelsync.redact",
}


def __getattr__(name: str) -> Any:
    """The package's names, each imported from its module on first use (PEP 562): a run
    that never talks to aria2 (a no-op, in-process fetches only) never loads aria2p."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ARIA2C_ENV",
    "ATTACH_SECRET_ENVS",
    "ATTACH_URL_ENVS",
    "CA_BUNDLE_ENVS",
    "Aria2Daemon",
    "Aria2Pool",
    "Aria2RpcError",
    "AttachSettings",
    "DownloadStatus",
    "aria2c_version",
    "find_aria2c",
    "install_hint",
    "parse_rpc_url",
    "redact_urls",
    "resolve_attach_settings",
    "split_attach_settings",
]
