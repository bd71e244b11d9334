"""One download as aria2 reports it (``aria2.tellStatus``), parsed into a dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from modelsync.redact import redact_urls

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
