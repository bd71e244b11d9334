"""`apply --metrics-file`: the run's numbers in Prometheus' text format, for node_exporter's
textfile collector: rewritten atomically every 5 s during the apply and once at its end.

The collector may read the file at any moment, so it is replaced by a rename (a reader
sees the old file or the new one, never half of one). The last success's time survives
a failed run: it is read back from the file being replaced.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from modelsync.atomic import write_text_atomic
from modelsync.events import REASONS, Live

INTERVAL = 5.0
# Always listed, 0 or not, so that a dashboard's series do not come and go.
STATUSES = ("ok", "downloaded", "repaired", "failed", "pending")
_LAST_SUCCESS = re.compile(r"^modelsync_last_success_timestamp_seconds (\S+)$", re.MULTILINE)


def last_success(path: Path) -> float | None:
    """The previous run's value in an existing metrics file, if any."""
    try:
        m = _LAST_SUCCESS.search(path.read_text(encoding="utf-8", errors="replace"))
        return float(m[1]) if m else None
    except (OSError, ValueError):
        return None


class MetricsFile:
    interval = INTERVAL

    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous_success = last_success(path)

    def write(self, live: Live, final: bool) -> None:
        now = time.time()
        success = now if final and live.succeeded else self.previous_success
        write_text_atomic(self.path, render(live, now, success))


def render(live: Live, now: float, last_success: float | None) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, text: str, samples: dict[str, float]) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples.items())

    statuses = dict.fromkeys(STATUSES, 0) | dict(live.statuses)
    statuses["pending"] = 0 if live.finished else max(live.files - live.done_files, 0)
    metric(
        "modelsync_files",
        "gauge",
        "Entries of the apply by status (pending: not finished yet).",
        {f'{{status="{_label(s)}"}}': n for s, n in statuses.items()},
    )
    metric(
        "modelsync_bytes_downloaded_total",
        "counter",
        "Bytes downloaded by this apply.",
        {"": live.bytes_downloaded},
    )
    metric(
        "modelsync_bytes_verified_total",
        "counter",
        "Bytes hashed and found to match their pins by this apply.",
        {"": live.verified},
    )
    metric(
        "modelsync_bytes_total",
        "gauge",
        "Bytes this apply plans to download (grows as unknown sizes are learned).",
        {"": live.totals.total},
    )
    metric(
        "modelsync_download_rate_bytes",
        "gauge",
        "Current download rate in bytes per second.",
        {"": 0 if live.finished else live.rate},
    )
    metric(
        "modelsync_retries_total", "counter", "Downloads retried by this apply.", {"": live.retries}
    )
    failures = dict.fromkeys((r for r, _ in REASONS), 0) | {"other": 0} | dict(live.failures)
    metric(
        "modelsync_failures_total",
        "counter",
        "Entries that failed in this apply, by reason.",
        {f'{{reason="{_label(r)}"}}': n for r, n in failures.items()},
    )
    metric(
        "modelsync_apply_running",
        "gauge",
        "1 while the apply runs, 0 once it ended.",
        {"": 0 if live.finished else 1},
    )
    metric(
        "modelsync_apply_duration_seconds",
        "gauge",
        "Seconds the apply has run (or ran).",
        {"": round(now - live.started, 3)},
    )
    if last_success is not None:
        metric(
            "modelsync_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the end of the last apply that left every entry in place.",
            {"": round(last_success, 3)},
        )
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
