"""Table-driven tests of the pure diff: every action, no I/O."""

from __future__ import annotations

import pytest

from modelsync.reconcile import (
    ActionKind,
    CachedHashes,
    Learned,
    Observed,
    Unmanaged,
    decide,
    reconcile,
)
from modelsync.remote import Desired

SHA = "a" * 64
XXH = "b" * 32
OTHER_SHA = "c" * 64

PINNED = Desired("m", "checkpoints/m.safetensors", size=100, sha256=SHA)
NO_SIZE = Desired("m", "checkpoints/m.safetensors", sha256=SHA)
XXH_ONLY = Desired("m", "checkpoints/m.safetensors", size=100, xxh3_128=XXH)
UNPINNED = Desired("m", "checkpoints/m.safetensors")
UNPINNED_SIZED = Desired("m", "checkpoints/m.safetensors", size=100)

GOOD_CACHE = CachedHashes(SHA, XXH)
BAD_CACHE = CachedHashes(OTHER_SHA, "d" * 32)
LEARNED = Learned(100, SHA, XXH)  # what apply placed for an unpinned entry

CASES = [
    # (id, desired, observed, expected action, reason fragment)
    ("missing", PINNED, Observed(), ActionKind.DOWNLOAD, "missing"),
    ("missing-unpinned", UNPINNED, Observed(), ActionKind.DOWNLOAD, "missing"),
    ("partial-waiting", PINNED, Observed(partial_bytes=40), ActionKind.RESUME, "40 bytes"),
    ("empty-partial", PINNED, Observed(partial_bytes=0), ActionKind.RESUME, "0 bytes"),
    ("cached-ok", PINNED, Observed(size=100, cached=GOOD_CACHE), ActionKind.OK, ""),
    ("cached-ok-xxh3", XXH_ONLY, Observed(size=100, cached=GOOD_CACHE), ActionKind.OK, ""),
    ("cached-unpinned", UNPINNED, Observed(size=7, cached=GOOD_CACHE), ActionKind.OK, ""),
    ("size-wrong-no-hash-needed", PINNED, Observed(size=99), ActionKind.REPAIR, "size 99"),
    (
        "size-wrong-even-if-cached",
        PINNED,
        Observed(size=99, cached=GOOD_CACHE),
        ActionKind.REPAIR,
        "expected 100",
    ),
    ("size-wrong-unpinned", UNPINNED_SIZED, Observed(size=5), ActionKind.REPAIR, "size 5"),
    ("present-uncached", PINNED, Observed(size=100), ActionKind.VERIFY, "not verified"),
    ("present-uncached-no-size", NO_SIZE, Observed(size=3), ActionKind.VERIFY, "not verified"),
    ("present-unpinned-uncached", UNPINNED, Observed(size=3), ActionKind.VERIFY, ""),
    (
        "cached-hash-mismatch",
        PINNED,
        Observed(size=100, cached=BAD_CACHE),
        ActionKind.REPAIR,
        "sha256 expected",
    ),
    (
        "xxh3-mismatch",
        XXH_ONLY,
        Observed(size=100, cached=BAD_CACHE),
        ActionKind.REPAIR,
        "xxh3_128 expected",
    ),
    (
        "directory-in-the-way",
        PINNED,
        Observed(size=100, is_file=False),
        ActionKind.REPAIR,
        "not a regular",
    ),
    (
        "wrong-file-and-partial",
        PINNED,
        Observed(size=1, partial_bytes=50),
        ActionKind.REPAIR,
        "size 1",
    ),
    # An unpinned entry with a learned pin is judged against it, and only then.
    ("learned-ok", UNPINNED, Observed(100, cached=GOOD_CACHE, learned=LEARNED), ActionKind.OK, ""),
    (
        "learned-changed",
        UNPINNED,
        Observed(size=100, cached=BAD_CACHE, learned=LEARNED),
        ActionKind.REPAIR,
        "changed since it was downloaded unpinned: sha256 expected",
    ),
    (
        "learned-other-size",
        UNPINNED,
        Observed(size=99, learned=LEARNED),
        ActionKind.REPAIR,
        "changed since it was downloaded unpinned: size 99, expected 100",
    ),
    ("learned-uncached", UNPINNED, Observed(100, learned=LEARNED), ActionKind.VERIFY, ""),
    (
        "pins-win-over-learned",
        PINNED,
        Observed(size=100, cached=GOOD_CACHE, learned=Learned(100, OTHER_SHA, XXH)),
        ActionKind.OK,
        "",
    ),
]


@pytest.mark.parametrize(
    ("desired", "observed", "kind", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(desired: Desired, observed: Observed, kind: ActionKind, reason: str) -> None:
    action = decide(desired, observed)
    assert action.kind is kind
    assert reason in action.reason


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (Observed(), 100),
        (Observed(partial_bytes=40), 60),
        (Observed(size=99), 100),  # a repair downloads the whole file beside the old one
        (Observed(size=100), 0),
        (Observed(size=100, cached=GOOD_CACHE), 0),
    ],
)
def test_download_bytes(observed: Observed, expected: int) -> None:
    assert decide(PINNED, observed).download_bytes == expected


def test_estimated_size_counts_for_space_but_not_for_judging() -> None:
    civitai = Desired("c", "loras/c.safetensors", sha256=SHA, estimated_size=2048)
    assert decide(civitai, Observed()).download_bytes == 2048
    # A file whose size differs from the estimate is not judged by it.
    assert decide(civitai, Observed(size=2050)).kind is ActionKind.VERIFY


def test_plan_totals_and_unmanaged_sorted() -> None:
    a = Desired("a", "x/a", size=10, sha256=SHA)
    b = Desired("b", "x/b", size=20, sha256=SHA)
    c = Desired("c", "y/c", size=5, sha256=SHA)
    plan = reconcile(
        [a, b, c],
        {"x/a": Observed(size=10, cached=GOOD_CACHE), "x/b": Observed(partial_bytes=5)},
        [Unmanaged("y/z", 1), Unmanaged("x/old", 3)],
    )
    assert [x.kind for x in plan.actions] == [ActionKind.OK, ActionKind.RESUME, ActionKind.DOWNLOAD]
    assert plan.download_bytes == 15 + 5
    assert [u.path for u in plan.unmanaged] == ["x/old", "y/z"]
    assert not plan.in_sync
    assert [x.desired.name for x in plan.pending] == ["b", "c"]


def test_in_sync_when_everything_ok() -> None:
    plan = reconcile([PINNED], {PINNED.path: Observed(size=100, cached=GOOD_CACHE)})
    assert plan.in_sync and plan.download_bytes == 0


def test_a_learned_repair_counts_the_learned_size() -> None:
    seen = Observed(size=100, cached=BAD_CACHE, learned=LEARNED)
    plan = reconcile([UNPINNED], {UNPINNED.path: seen})
    assert (plan.download_bytes, plan.unknown_sizes) == (100, 0)
