"""`apply`: lock the root, plan, check space, run the executor, prune."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

if TYPE_CHECKING:
    from modelsync.aria2 import Aria2Daemon, Aria2Pool, AttachSettings

from modelsync.commands.common import failed_targets, unpinned_warnings
from modelsync.errors import EXIT_USAGE, ModelsyncError
from modelsync.events import Events, Observed, run_secrets
from modelsync.metrics import MetricsFile
from modelsync.orphan import wait_for_orphan_daemon
from modelsync.progress import NullReporter, Reporter
from modelsync.reconcile import Plan
from modelsync.results import EntryResult, Report, Status, free_bytes
from modelsync.state import StateDB
from modelsync.status import StatusFile
from modelsync.units import human_size
from modelsync.workspace import Target, Workspace


@dataclass(frozen=True)
class ApplyRequest:
    jobs: int | None = None
    connections: int | None = None
    max_speed: int | None = None
    lock_timeout: float = 300.0
    prune: bool = False
    confirm_prune: Callable[[list[str]], bool] | None = None  # None: refuse to prune
    aria2_url: str | None = None
    aria2_secret: str | None = None
    stall_timeout: float = 60.0
    metrics_file: Path | None = None  # --metrics-file: Prometheus text, every 5 s and at the end


@contextlib.contextmanager
def root_lock(ws: Workspace, timeout: float, on_wait: Callable[[], None]) -> Iterator[None]:
    """One apply per root. flock dies with its process, so a dead holder never blocks."""
    try:
        ws.layout.own.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelsyncError(
            f"cannot use {ws.root} as the models folder: cannot create "
            f"{exc.filename or ws.layout.own}: {exc.strerror or exc}",
            "check --root / settings.root: it must be a folder you can write to, "
            f"where {ws.layout.own.name} can be modelsync's own folder",
        ) from None
    lock = filelock.FileLock(ws.layout.lock)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:  # (a TimeoutError, so an OSError: caught first)
        on_wait()
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise ModelsyncError(
                f"another modelsync apply is still working on {ws.root} after {timeout:.0f}s",
                "wait for it to finish, or raise --lock-timeout",
            ) from None
    except OSError as exc:  # a read-only root (remounted, a read-only bind mount)
        raise ModelsyncError(
            f"cannot use {ws.root} as the models folder: cannot write "
            f"{exc.filename or ws.layout.lock}: {exc.strerror or exc}",
            "check --root / settings.root: it must be a folder you can write to "
            "(a read-only mount cannot take downloads)",
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_space(ws: Workspace, plan: Plan) -> None:
    need = plan.download_bytes
    free = free_bytes(ws.root)
    if need > free:
        raise ModelsyncError(
            f"not enough disk space under {ws.root}: {human_size(need)} to download "
            f"({need} bytes), {human_size(free)} free ({free} bytes)",
            "free some space, pick another --root, or limit the run with --only",
            exit_code=EXIT_USAGE,
        )


def _secrets(ws: Workspace, request: ApplyRequest) -> tuple[str, ...]:
    """Values to redact: the sources' tokens (stored ones too) and aria2 RPC secrets."""
    return run_secrets(ws, request.aria2_secret)


def open_daemon(
    ws: Workspace,
    request: ApplyRequest,
    max_concurrent: int,
    max_speed: int,
    warn: Callable[[str], None] = lambda _message: None,
) -> Aria2Daemon | Aria2Pool:
    from modelsync.aria2 import Aria2Daemon, resolve_attach_settings, split_attach_settings

    attach = resolve_attach_settings(request.aria2_url, request.aria2_secret, ws.env)
    if attach is not None:
        daemon = _attach_all(split_attach_settings(attach), warn)
        unused = ", ".join(ws.manifest.settings.aria2.global_only)
        if unused:  # said, so that nobody believes their proxy CA or cache is in use
            warn(
                f"[settings.aria2] {unused}: not applied to the aria2 at {daemon.url}, "
                "which keeps its own global options (only modelsync's own aria2c gets them)"
            )
        daemon.change_global_option(
            {
                "max-concurrent-downloads": str(max_concurrent),
                "max-overall-download-limit": str(max_speed),
            }
        )
        return daemon
    wait_for_orphan_daemon(ws.layout)
    tuning = ws.manifest.settings.aria2.global_only  # an attached daemon keeps its own
    _check_ca_certificate(ws, tuning.get("ca-certificate"))
    try:
        daemon = Aria2Daemon.spawn(
            max_concurrent=max_concurrent,
            max_overall_speed=max_speed,
            session_dir=ws.layout.own,
            extra_options=tuning,
        )
    except OSError as exc:  # its private config file, in .modelsync/
        raise _cannot_write_own(ws, exc) from None
    try:
        ws.layout.daemon_pid.write_text(str(daemon.pid))
    except OSError as exc:
        daemon.close()
        raise _cannot_write_own(ws, exc) from None
    return daemon


def _attach_all(
    settings: list[AttachSettings], warn: Callable[[str], None]
) -> Aria2Daemon | Aria2Pool:
    """One daemon as before; several behind a pool that spreads the downloads."""
    from modelsync.aria2 import Aria2Daemon, Aria2Pool

    daemons: list[Aria2Daemon] = []
    try:
        for one in settings:
            daemons.append(Aria2Daemon.attach(*one))
    except BaseException:
        for daemon in daemons:
            daemon.close()
        raise
    return daemons[0] if len(daemons) == 1 else Aria2Pool(daemons, warn)


def _cannot_write_own(ws: Workspace, exc: OSError) -> ModelsyncError:
    """A disk so full (or so broken) that modelsync cannot write its own small files:
    nothing could be downloaded either (exit 2, nothing done)."""
    from modelsync.placement import mount_of

    if exc.errno == errno.ENOSPC:
        return ModelsyncError(
            f"no space left on {mount_of(ws.root)}: modelsync cannot even write its own "
            f"files in {ws.layout.own}",
            "free some space and run apply again",
            exit_code=EXIT_USAGE,
        )
    return ModelsyncError(
        f"cannot write in {ws.layout.own}: {exc.strerror or exc}",
        "check the folder's owner, mode and free space",
        exit_code=EXIT_USAGE,
    )


def _check_ca_certificate(ws: Workspace, path: str | None) -> None:
    # aria2c would only log a missing CA file and then fail every TLS download
    if path is not None and not os.path.isfile(path):
        raise ModelsyncError(
            f"{ws.manifest.path.name}: [settings.aria2]: key 'ca-certificate': "
            f"{path} is not a file",
            "point ca-certificate at a PEM file of CA certificates, or remove it",
        )


def run_apply(
    ws: Workspace,
    request: ApplyRequest,
    reporter: Reporter | None = None,
    on_lock_wait: Callable[[], None] = lambda: None,
    events: Events | None = None,
) -> Report:
    """`events` (--log-file) hears every step; the status file and --metrics-file show
    the run while it lasts, and are finished whatever way it ends."""
    events = events or Events(_secrets(ws, request))
    report: Report | None = None
    try:
        report = _run_apply(
            ws, request, Observed(reporter or NullReporter(), events), on_lock_wait, events
        )
        events.run_finished(report)
        return report
    finally:
        events.stop_watching(succeeded=report is not None and not report.failed)


def _run_apply(
    ws: Workspace,
    request: ApplyRequest,
    reporter: Reporter,
    on_lock_wait: Callable[[], None],
    events: Events,
) -> Report:
    started = time.monotonic()
    events.run_started("apply", ws.root, ws.manifest.path)
    # The status file lives inside the lock: the next apply's is never ours to remove.
    with (
        root_lock(ws, request.lock_timeout, on_lock_wait),
        events.showing(StatusFile(ws.layout, ws.manifest.path)),
    ):
        if request.metrics_file is not None:
            events.watch(MetricsFile(request.metrics_file))
        targets = ws.targets()
        events.resolved(targets, ws.env)
        if ws.store is not None:  # gc keeps what a registered root holds
            ws.store.register(ws.root)
        with StateDB.open(ws.root, create=True) as state:
            plan = ws.plan(targets, state)
            events.planned(plan)
            check_space(ws, plan)
            for warning in unpinned_warnings(targets):
                reporter.warn(warning)
            results = failed_targets(targets, "download")
            if plan.in_sync:
                results += _all_ok(plan)
            else:
                results += _execute(ws, request, plan, targets, state, reporter, events)
        order = {t.name: i for i, t in enumerate(targets)}
        results.sort(key=lambda r: order[r.name])
        pruned: tuple[str, ...] = ()
        optional = frozenset(t.name for t in targets if t.entry.optional)
        failed = any(r.status is Status.FAILED and r.name not in optional for r in results)
        if request.prune and not failed:
            pruned = _prune(ws, plan, request.confirm_prune)
            for path in pruned:
                events.emit("prune", path=path)
    downloaded = sum(r.bytes_downloaded for r in results)
    return Report(
        command="apply",
        root=ws.root,
        entries=tuple(results),
        unmanaged=tuple(u for u in plan.unmanaged if u.path not in pruned),
        download_bytes=downloaded,
        free_bytes=free_bytes(ws.root),
        warnings=tuple(unpinned_warnings(targets)),
        elapsed=time.monotonic() - started,
        pruned=pruned,
        optional=optional,
    )


def _execute(
    ws: Workspace,
    request: ApplyRequest,
    plan: Plan,
    targets: list[Target],
    state: StateDB,
    reporter: Reporter,
    events: Events,
) -> list[EntryResult]:
    # Imported here: aria2p and the executor cost a no-op apply a quarter second.
    from modelsync.executor import ApplyOptions, Executor

    settings = ws.manifest.settings
    jobs = request.jobs or settings.max_concurrent
    speed = request.max_speed if request.max_speed is not None else settings.max_speed
    connections = request.connections
    executor = Executor(
        ws.layout,
        lambda: open_daemon(ws, request, jobs, speed, reporter.warn),
        state,
        resolver=ws.locator(targets),
        options=ApplyOptions(
            connections=connections if connections is not None else settings.connections,
            stall_timeout=request.stall_timeout,
            tuning=settings.aria2,
            max_file_size=settings.max_file_size,
            link=settings.link,
            store=ws.store,
            mirror_first=settings.mirror_first,
            direct=_direct_allowed(ws, request, speed),
        ),
        reporter=reporter,
        secrets=_secrets(ws, request),
        events=events,
    )
    try:
        if executor.needs_aria2(plan):
            executor.daemon  # noqa: B018 - fail (exit 2) before any work if aria2 is unusable
        return executor.run(plan)
    finally:  # a signal between the spawn and run() must not leave aria2c behind either
        executor.close()
        ws.layout.daemon_pid.unlink(missing_ok=True)


def _direct_allowed(ws: Workspace, request: ApplyRequest, speed: int) -> bool:
    """Small files may be fetched in-process only where aria2 would add nothing: our own
    aria2c (not the user's daemon, whose setup they chose), no [settings.aria2] options
    (a proxy, a user agent, timeouts: aria2's alone), no speed limit, no mirror-first."""
    from modelsync.aria2 import resolve_attach_settings

    attach = resolve_attach_settings(request.aria2_url, request.aria2_secret, ws.env)
    settings = ws.manifest.settings
    return attach is None and not settings.aria2.options and not speed and not settings.mirror_first


def _all_ok(plan: Plan) -> list[EntryResult]:
    return [
        EntryResult(a.desired.name, a.desired.path, "ok", Status.OK, a.desired.size)
        for a in plan.actions
    ]


def _prune(
    ws: Workspace, plan: Plan, confirm: Callable[[list[str]], bool] | None
) -> tuple[str, ...]:
    """Delete the prunable unmanaged files (model files in folders entries name through
    `dir`) after asking; every other unmanaged file stays, and stays listed."""
    paths = [u.path for u in plan.unmanaged if u.prunable]
    if not paths or confirm is None or not confirm(paths):
        return ()  # declined: the files stay, and are reported as unmanaged
    for rel in paths:
        os.unlink(ws.layout.target(rel))
    return tuple(paths)
