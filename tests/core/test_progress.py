"""The run's byte totals: sizes learned on the way, resumed bytes neither to fetch nor fetched."""

from __future__ import annotations

from modelsync.progress import Totals


def test_total_grows_as_unknown_sizes_are_learned() -> None:
    t = Totals(planned=3000, files=2)
    t.started("known", 3000, 0)
    t.started("unknown", None, 0)
    assert t.total == 3000
    t.progress("known", 1000, 3000, 500)
    t.progress("unknown", 200, 5000, 100)
    assert (t.total, t.transferred, t.speed) == (8000, 1200, 600)
    t.progress("unknown", 5000, 5000, 0)
    t.file_done("unknown")
    assert (t.total, t.transferred, t.finished, t.speed) == (8000, 6000, 1, 500)


def test_resumed_bytes_are_not_counted_as_transferred() -> None:
    # plan counted 10,000 - 4,000 still to fetch; aria2 reports the file from byte 0
    t = Totals(planned=6000, files=1)
    t.started("resumed", 10_000, 4000)
    t.progress("resumed", 4000, 10_000, 0)
    assert t.transferred == 0
    t.progress("resumed", 10_000, 10_000, 0)
    assert (t.transferred, t.total) == (6000, 6000)


def test_a_download_started_over_starts_its_count_over() -> None:
    t = Totals(planned=100, files=1)
    t.started("f", 100, 0)
    t.progress("f", 100, 100, 0)
    t.started("f", 100, 0)  # corrupt: from scratch
    assert t.transferred == 0
