"""The JSON-RPC client (aria2p's, proxy-free); Aria2RpcError (errors.py) is its error."""

from __future__ import annotations

import threading
from typing import Any, Final, cast

import aria2p
import requests

from modelsync.aria2.redaction import _Secret

_UNAUTHORIZED_CODE: Final = 1


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
