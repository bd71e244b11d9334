"""`plan`: a read-only diff of the manifest against root (never downloads, never writes)."""

from __future__ import annotations

import time

from modelsync.commands.common import UNPINNED_HINT, failed_targets, unpinned_warnings
from modelsync.events import Events
from modelsync.orphan import wait_for_orphan_daemon
from modelsync.reconcile import ActionKind, Plan
from modelsync.results import EntryResult, Report, Status, free_bytes
from modelsync.state import StateDB
from modelsync.workspace import Target, Workspace


def plan_report(ws: Workspace, targets: list[Target], plan: Plan, started: float) -> Report:
    entries = failed_targets(targets, "download")
    for action in plan.actions:
        d = action.desired
        status = Status.OK if action.kind is ActionKind.OK else Status.PENDING
        detail = action.reason
        if status is Status.OK and not d.vouched:  # in place, but nothing vouches for it
            status, detail = Status.UNPINNED, UNPINNED_HINT
        donor = action.donor.size if action.donor else None
        size = d.size if d.size is not None else (action.local_size or d.estimated_size or donor)
        entries.append(EntryResult(d.name, d.path, action.kind.value, status, size, detail=detail))
    order = {t.name: i for i, t in enumerate(targets)}
    entries.sort(key=lambda e: order[e.name])
    return Report(
        command="plan",
        root=ws.root,
        entries=tuple(entries),
        unmanaged=plan.unmanaged,
        download_bytes=plan.download_bytes,
        free_bytes=free_bytes(ws.root),
        unknown_sizes=plan.unknown_sizes,
        warnings=tuple(unpinned_warnings(targets)),
        elapsed=time.monotonic() - started,
    )


def run_plan(ws: Workspace, events: Events | None = None) -> tuple[Report, Plan]:
    """Never writes under root: the stat cache is only read when it exists."""
    events = events or Events()
    started = time.monotonic()
    events.run_started("plan", ws.root, ws.manifest.path)
    targets = ws.targets()
    events.resolved(targets, ws.env)
    wait_for_orphan_daemon(ws.layout, stop=False)  # its control files are not saved yet
    with StateDB.open(ws.root, create=False) as state:
        plan = ws.plan(targets, state)
    events.planned(plan)
    report = plan_report(ws, targets, plan, started)
    events.run_finished(report)
    return report, plan
