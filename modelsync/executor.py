"""Carry out a Plan: schedule the work, poll aria2, hash, and collect every outcome.

One download's own state and files live in download.py, putting a file in place in
placement.py; this module decides what happens next to each of them.

One failing entry never stops the others: every outcome becomes an EntryResult.
A file reaches its final path only after its size and every pinned hash matched.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelsync import direct
from modelsync.aria2.status import DownloadStatus
from modelsync.aria2.words import describe
from modelsync.download import (
    MIB,
    Job,
    aria2_options,
    discard_stale_partial,
    forget_partial,
    tmp_complete,
    write_sidecar,
)
from modelsync.errors import Aria2RpcError, Aria2Unavailable, ModelsyncError
from modelsync.events import Events
from modelsync.hashing import FileHashes, PrefixHasher, git_blob_sha1, hash_file
from modelsync.layout import PARTIAL_SUFFIX, Layout
from modelsync.linking import link_into
from modelsync.manifest import LinkMode
from modelsync.mirroring import NOT_FOUND, Mirrors, hosts_of
from modelsync.partials import partial_bytes
from modelsync.placement import PlacementError, mount_of, place, remove
from modelsync.progress import NullReporter, Reporter
from modelsync.reconcile import Action, ActionKind, Plan, hash_mismatches
from modelsync.redact import redact
from modelsync.remote import Desired, Locator
from modelsync.results import EntryResult, Status, free_bytes
from modelsync.state import StateDB
from modelsync.store import Store
from modelsync.tuning import NO_TUNING, Tuning
from modelsync.units import human_size
from modelsync.upstream import (
    Upstream,
    gunzip_in_place,
    gzip_encoded,
    html_page,
    probe,
    probe_in_background,
)

if TYPE_CHECKING:  # aria2p is imported only when aria2 is needed (see modelsync.aria2)
    from modelsync.aria2 import Aria2Daemon, Aria2Pool

HASH_STEP = 32 * MIB  # hash a download's finished prefix in steps of at least this
PROBE_WAIT = 15.0  # seconds a finished download waits at most for a HEAD's answer
#: How often one apply starts its own aria2c again after it died (killed, OOM): a third
#: death means something kills it on purpose or keeps running out of memory.
MAX_RESTARTS = 2
FIRST_POLL_GAP = 0.025  # seconds; see Executor.poll_gap
LOCATE_WORKERS = 8  # requests at once to learn where downloads are (see _locate_ahead)


class Cancelled(Exception):
    """Raised inside a hashing thread when the run is interrupted."""


@dataclass(frozen=True)
class ApplyOptions:
    connections: int = 0  # 0: by file size
    stall_timeout: float = 60.0
    max_attempts: int = 4  # per entry, for transient errors and stalls
    poll_interval: float = 0.2
    tuning: Tuning = NO_TUNING  # [settings.aria2]
    max_file_size: int = 0  # settings.max_file_size: bound of a download of unknown size
    link: LinkMode = "auto"  # settings.link: how a file already here is put in place
    store: Store | None = None  # settings.store: every placed file is linked into it
    mirror_first: bool = False  # settings.mirror_first: the mirrors alone, then the origin
    # Many small pinned files may be fetched in-process (direct.py): only with our own
    # aria2c, no [settings.aria2] options and no speed limit, which that path ignores.
    direct: bool = False


@dataclass(frozen=True)
class Placed:
    hashes: FileHashes
    stat: os.stat_result


@dataclass(frozen=True)
class Linked(Placed):
    """Bytes found on this machine (a donor), checked, and put in place."""

    how: str  # "reflink", "hardlink", "symlink" or "copy"


@dataclass(frozen=True)
class Fetched(Placed):
    """Fetched in-process (direct.py), checked, and put in place."""


@dataclass(frozen=True)
class Missed:
    """Not for the in-process fetch after all (why): aria2 downloads it."""

    why: str


@dataclass(frozen=True)
class NotReused:
    """A donor that could not be used (gone, or not the wanted bytes): download instead."""

    why: str


@dataclass(frozen=True)
class Hashed:
    """A file hashed where it stands; `stat` was taken before reading it."""

    hashes: FileHashes
    stat: os.stat_result
    git_sha1: str | None = None  # taken only for a file that a git blob id alone vouches for


@dataclass(frozen=True)
class Refused:
    """Bytes that no retry makes right (a web page instead of the file): removed."""

    message: str


@dataclass(frozen=True)
class Changed:
    """The file changed upstream while it downloaded: the bytes may mix two versions."""

    why: str


@dataclass(frozen=True)
class Rejected:
    problems: list[str]
    hashes: FileHashes  # of the rejected bytes: the same twice means the pin is wrong


Outcome = Placed | Rejected | Hashed | Refused | Changed | NotReused | Missed


class Executor:
    def __init__(
        self,
        layout: Layout,
        connect: Callable[[], Aria2Daemon | Aria2Pool],
        state: StateDB,
        resolver: Locator,
        options: ApplyOptions,
        reporter: Reporter | None = None,
        secrets: tuple[str, ...] = (),
        events: Events | None = None,
    ) -> None:
        self.layout = layout
        self._connect = connect
        self._daemon: Aria2Daemon | Aria2Pool | None = None
        self.state = state
        self.resolver = resolver
        self.options = options
        self.reporter = reporter or NullReporter()
        self.secrets = secrets
        self.events = events or Events(secrets)  # --log-file, metrics, status
        self.cancel = threading.Event()
        self.results: dict[str, EntryResult] = {}
        self.active: dict[str, Job] = {}  # gid → job
        self.waiting: list[Job] = []  # scheduled retries
        self.hashing: dict[Future[Outcome], Job] = {}
        # Each finished future of `hashing` lands here: the tick takes them all at once
        # (concurrent.futures.wait() would walk every pending future on every call).
        self.finished: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
        # Round trips to aria2 are batched (system.multicall): downloads to add and
        # results to forget wait for the end of the tick; aria2 is asked for statuses
        # once per poll_interval, not whenever a hash finishes.
        self.adding: list[tuple[Job, list[str], dict[str, str | list[str]]]] = []
        self.forgotten: list[str] = []
        self.next_poll = 0.0
        # Polls start 25 ms apart and double up to poll_interval while nothing ends: a
        # small file is seen done in milliseconds, a long download costs a few polls more.
        self.poll_gap = FIRST_POLL_GAP
        self.direct = False  # this run fetches small files in-process (run() decides)
        self.fetchers: ThreadPoolExecutor | None = None
        self.in_tmp: set[str] = set()  # names in tmp/ when the run began
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        self.lost: Aria2Unavailable | None = None  # aria2 went away mid-run, for good
        self.restarts = 0  # of our own aria2c, after it died
        self.mirrors = Mirrors(options.mirror_first)  # which URLs each download uses

    # ---- entry point -------------------------------------------------------

    @property
    def daemon(self) -> Aria2Daemon | Aria2Pool:
        """aria2 starts on first use: a run that only verifies in place needs none."""
        if self._daemon is None:
            self._daemon = self._connect()
        return self._daemon

    def close(self) -> None:
        if self._daemon is not None:
            self._daemon.close()
            self._daemon = None

    def run(self, plan: Plan) -> list[EntryResult]:
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        pending = sorted(
            (a for a in plan.actions if a.kind is not ActionKind.OK), key=_download_order
        )
        self.reporter.begin(len(pending), plan.download_bytes, plan.unknown_sizes)
        small = sum(1 for a in pending if _small(a))
        self.direct = self.options.direct and small >= direct.DIRECT_MIN_FILES
        if self.direct:
            self.in_tmp = set(os.listdir(self.layout.tmp))
        try:
            self._locate_ahead(pending)
            for action in pending:
                job = Job(action, None, self.layout.partial(action.desired.path))
                if action.kind is ActionKind.VERIFY:
                    self._submit(job, self._hash_in_place)
                elif action.kind is ActionKind.LINK:
                    self._submit(job, self._link_and_place)
                else:
                    self._start_download(job)
            self._flush_to_aria2()
            while self.active or self.hashing or self.waiting or self.adding:
                self._tick()
        except BaseException:
            self.cancel.set()
            if self.fetchers is not None:
                direct.abort()
            raise
        finally:
            if self.fetchers is not None:
                self.fetchers.shutdown(wait=True, cancel_futures=True)
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.close()
            self.reporter.end()
        for action in plan.actions:
            if action.kind is ActionKind.OK:
                d = action.desired
                self.results[d.name] = EntryResult(d.name, d.path, "ok", Status.OK, d.size)
        return [self.results[a.desired.name] for a in plan.actions]

    def _locate_ahead(self, pending: list[Action]) -> None:
        """Where each download is fetched from, asked for all at once: a Hugging Face or
        Civitai file costs a request (the CDN URL it redirects to), which one after the
        other, in the loop that starts the downloads, added up to a second per 40 files.
        A failure is left for that loop, which asks again and says it."""
        names = [
            a.desired.name
            for a in pending
            if a.kind in (ActionKind.DOWNLOAD, ActionKind.REPAIR, ActionKind.RESUME)
            and a.desired.fetchable
        ]
        if len(names) < 2:
            return

        def ask(name: str) -> None:
            with contextlib.suppress(Exception):
                self.resolver(name, False)

        with ThreadPoolExecutor(max_workers=LOCATE_WORKERS) as pool:
            list(pool.map(ask, names))

    # ---- scheduling ----------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        try:
            for job in [j for j in self.waiting if j.retry_at is not None and j.retry_at <= now]:
                self.waiting.remove(job)
                self._add_to_aria2(job, fresh=True)
            if self.active and now >= self.next_poll:
                ended = self._poll_aria2()
                ceiling = self.options.poll_interval
                self.poll_gap = FIRST_POLL_GAP if ended else min(self.poll_gap * 2, ceiling)
                self.next_poll = now + min(self.poll_gap, ceiling)
        except Aria2Unavailable as exc:
            self._daemon_lost(exc)
        self._flush_to_aria2()
        pause = max(self.next_poll - time.monotonic(), 0.0) if self.active else None
        if self.hashing:
            timeout = self.options.poll_interval if pause is None else pause
            with self.state.batch():
                for future in self._finished(timeout):
                    self._hash_done(self.hashing.pop(future), future)
        else:
            # Nothing to wake us but time: aria2 progress or a scheduled retry.
            self.cancel.wait(self.options.poll_interval if pause is None else pause)
        self._flush_to_aria2()

    def _flush_to_aria2(self) -> None:
        """Send the downloads to add and the results to forget, one round trip each."""
        try:
            if self.forgotten:
                gids, self.forgotten = self.forgotten, []
                self.daemon.remove_results(gids)
            if self.adding:
                self._add_batch()
        except Aria2Unavailable as exc:
            self._daemon_lost(exc)
        except ModelsyncError as exc:  # aria2 started late (after in-process fetches): gone
            self._daemon_lost(Aria2Unavailable(str(exc)))

    def needs_aria2(self, plan: Plan) -> bool:
        """Whether this plan downloads through aria2 (as far as can be told before: an
        in-process fetch that misses goes to aria2 too, which then starts)."""
        downloads = [a for a in plan.pending if a.kind not in (ActionKind.VERIFY, ActionKind.LINK)]
        small = sum(1 for a in downloads if _small(a))
        direct_run = self.options.direct and small >= direct.DIRECT_MIN_FILES
        return bool(downloads) and not (direct_run and small == len(downloads))

    def _finished(self, timeout: float) -> list[Future[Outcome]]:
        """The futures of `hashing` that finished: waits up to `timeout` for the first."""
        try:
            done = [self.finished.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self.finished.get_nowait())
        return done

    def _submit(
        self, job: Job, fn: Callable[[Job], Outcome], pool: ThreadPoolExecutor | None = None
    ) -> None:
        future = (pool or self.pool).submit(fn, job)
        self.hashing[future] = job
        future.add_done_callback(self.finished.put)

    def _start_download(self, job: Job) -> None:
        if self._direct_candidate(job) and self._start_direct(job):
            return
        target = self.layout.target(job.desired.path)
        if target.is_dir() and not target.is_symlink():  # no download could go there
            self._fail_before_start(
                job, f"{target} is a folder, not a file; move it away or change the filename"
            )
            return
        discard_stale_partial(job)
        if tmp_complete(job):
            # Downloaded before a crash, never placed: verify it instead of fetching again.
            self._submit(job, self._verify_and_place)
            return
        resuming = job.control.exists() and job.tmp.exists()
        job.earlier += max(job.done_bytes - job.start_bytes, 0)  # a start over: keep count
        job.start_bytes = job.done_bytes = partial_bytes(job.tmp, job.control) if resuming else 0
        d = job.desired
        # The size the plan counted (an estimate, or a learned pin's), so totals add up.
        size = d.size if d.size is not None else job.action.size_guess
        self.reporter.file_started(d.name, d.path, size, job.start_bytes)
        self._add_to_aria2(job, fresh=False)

    def _direct_candidate(self, job: Job) -> bool:
        """A small file with nothing of it in tmp/ (no partial to resume, no stale one
        to discard: no file system call to make) may be fetched in-process. The main
        thread shares the GIL with 16 fetchers: what it does per file must stay little."""
        if not (self.direct and not job.direct_missed and _small(job.action)):
            return False
        name = job.tmp.name
        return not {name, name + PARTIAL_SUFFIX, name + ".want"} & self.in_tmp

    def _start_direct(self, job: Job) -> bool:
        """Fetch a small file in-process; False: it has mirrors or no source, aria2's."""
        try:
            remote = self.resolver(job.desired.name, False)
        except ModelsyncError:
            return False  # said by the aria2 path, with its words
        if len(remote.urls) != 1 or remote.mirrors:
            return False
        job.remote = remote
        job.attempts += 1
        if self.fetchers is None:
            self.fetchers = ThreadPoolExecutor(max_workers=direct.DIRECT_WORKERS)
        self._submit(job, self._fetch_and_place, self.fetchers)
        d = job.desired
        self.reporter.file_started(d.name, d.path, d.size, 0)
        self.events.emit(
            "download_start",
            entry=d.name,
            path=d.path,
            url=remote.urls[0],
            size=d.size,
            resume_from=0,
            attempt=job.attempts,
        )
        return True

    def _daemon_lost(self, exc: Aria2Unavailable) -> None:
        """aria2 died under us. Our own aria2c is started again (MAX_RESTARTS times per
        run) and resumes what it was doing from the control files; a daemon we attached
        to is not ours to start, and after that what it was doing fails (its partials
        stay for a resume)."""
        daemon, self._daemon = self._daemon, None
        self.forgotten.clear()  # results of a daemon that is gone
        if daemon is None:  # it could not even start
            self._give_up(f"aria2 is not available ({exc.message})")
            return
        # A dead process is reaped at once; one that is alive but deaf gets none.
        why = daemon.exit_reason(wait=1.0) or f"it stopped answering: {exc.message}"
        daemon.close()  # reaps it; a deaf one is stopped (SIGTERM keeps control files)
        if not daemon.spawned:
            self._give_up(f"aria2 stopped during the download ({exc.message})")
        elif self.restarts >= MAX_RESTARTS:
            self._give_up(
                f"aria2c stopped {self.restarts + 1} times during this apply (last: {why})"
            )
        else:
            self._restart(why)

    def _restart(self, why: str) -> None:
        self.restarts += 1
        jobs = list(self.active.values())
        self.active.clear()
        try:
            self.daemon  # noqa: B018 - spawn it now, to say so before the downloads
        except ModelsyncError as exc:
            self._give_up(f"aria2c stopped ({why}) and could not start again: {exc}", jobs)
            return
        self.reporter.warn(
            f"aria2c stopped ({why}); restarted it ({self.restarts} of {MAX_RESTARTS}), "
            f"resuming {len(jobs)} download{'s' if len(jobs) != 1 else ''}"
        )
        self.events.emit("aria2_restart", reason=why, restart=self.restarts, downloads=len(jobs))
        for job in jobs:
            job.gid = None
            job.prefix = None  # bytes past the last saved control file are fetched again
            job.attempts -= 1  # aria2's death is not this download's failure
            self._start_download(job)  # from the control file aria2 saved last

    def _give_up(self, why: str, jobs: list[Job] | None = None) -> None:
        self.lost = Aria2Unavailable(why)
        adding = [job for job, _, _ in self.adding]
        self.adding.clear()
        for job in [*self.active.values(), *self.waiting, *adding, *(jobs or [])]:
            self._fail(job, f"{why}; partial downloads are kept: run apply again to resume")
        self.active.clear()
        self.waiting.clear()

    def _add_to_aria2(self, job: Job, *, fresh: bool) -> None:
        if self.lost is not None:
            self._fail(job, f"aria2 is not running any more ({self.lost.message})")
            return
        try:
            located = self.resolver(job.desired.name, fresh)
            remote = job.remote = self.mirrors.choose(
                job.desired.name, located, vouched=job.desired.vouched
            )
        except ModelsyncError as exc:
            self._fail_before_start(job, str(exc))
            return
        if not remote.urls:
            self._fail_before_start(job, _no_source(job.desired))
            return
        if job.validators is not None and job.control.exists():
            self._check_before_resume(job, probe(remote.urls[0], remote.headers))
        job.attempts += 1
        tuning = self.options.tuning.per_download
        options = aria2_options(job, remote, self.options.connections, tuning)
        self.adding.append((job, list(remote.urls), options))

    def _add_batch(self) -> None:
        """The downloads queued by _add_to_aria2, added in one round trip."""
        batch, self.adding = self.adding, []
        try:
            answers = self.daemon.add_many([(urls, options) for _, urls, options in batch])
        except Aria2Unavailable:
            for job, _, _ in batch:
                job.attempts -= 1  # aria2's death is not this download's failure
                job.retry_at = time.monotonic()  # to a restarted daemon, or failed with the rest
                self.waiting.append(job)
            raise
        now = time.monotonic()
        for (job, urls, _), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Aria2RpcError):  # this entry's options or URLs
                job.cause = str(answer)
                url = redact(urls[0], self.secrets)
                self._fail(job, f"cannot start the download of {url}: aria2 rejected it")
                continue
            job.gid = answer
            job.last_change = now
            self.active[answer] = job
            d = job.desired
            self.events.emit(
                "download_start",
                entry=d.name,
                path=d.path,
                url=urls[0],
                size=d.size,
                resume_from=job.start_bytes,
                attempt=job.attempts,
            )

    def _fail_before_start(self, job: Job, error: str) -> None:
        if not job.tmp.exists() and not job.control.exists():
            job.sidecar.unlink(missing_ok=True)  # nothing downloaded: leave tmp/ clean
        self._fail(job, error)

    def _check_before_resume(self, job: Job, upstream: Upstream | None) -> None:
        """A partial holds the start of one version of the file: resumed against another,
        the result would mix them. Compared by one HEAD; changed, it starts over."""
        assert job.validators is not None
        why = upstream.changed_from(job.validators) if upstream is not None else None
        if why is None:
            return
        d = job.desired
        self.reporter.warn(
            f"{d.name}: the file changed upstream since its partial download began ({why}); "
            "starting over"
        )
        self.events.emit("download_retry", entry=d.name, attempt=job.attempts, reason=why)
        forget_partial(job)

    def _probe_once(self, job: Job, st: DownloadStatus) -> None:
        """Once bytes flow (so that a HEAD never takes the place of the download's own
        first request), learn which version upstream this download is of."""
        if job.validators is not None or job.remote is None:
            return
        if job.first_probe is None:
            if st.status == "active" and st.completed_length > 0:
                remote = job.remote
                job.first_probe = probe_in_background(remote.urls[0], remote.headers)
        elif job.first_probe.done():
            upstream = job.first_probe.result()
            if upstream is not None:
                job.validators = upstream.validators()
                write_sidecar(job)  # for a resume by a later apply

    def _refuse(self, job: Job, st: DownloadStatus) -> bool:
        """Stop a download that outgrows its size (pinned, or settings.max_file_size):
        an endless body or a lying Content-Length. True while it is being removed."""
        if job.refused is None:
            limit, what = self._size_limit(job)
            seen = max(st.completed_length, st.total_length)
            if limit is None or seen <= limit:
                return False
            if st.total_length > limit:
                job.refused = f"the server announced {st.total_length} bytes, more than {what}"
            else:
                job.refused = f"the server kept sending past {what} (an endless body)"
            job.refused += "; the download was stopped and removed"
            self.daemon.remove(st.gid)
        if st.status in ("active", "waiting", "paused"):
            return True  # aria2 lets go of the file first
        self._forget_gid(job)
        forget_partial(job)
        self._fail(job, job.refused)
        return True

    def _size_limit(self, job: Job) -> tuple[int | None, str]:
        if job.desired.size is not None:
            return job.desired.size, f"the file's {job.desired.size} bytes"
        if limit := self.options.max_file_size:
            return limit, f"settings.max_file_size ({limit} bytes)"
        return None, ""

    def _out_of_space(self, full: list[tuple[Job, DownloadStatus]]) -> None:
        """aria2 could not write: every such partial goes (and the space it held), then
        each entry that fits in what is free now is retried, smallest first; the others
        fail saying how much more they need. Files already placed stay as they are."""
        for job, _ in full:
            forget_partial(job)
        free = free_bytes(self.layout.root)
        mount = mount_of(self.layout.root)
        for job, st in sorted(full, key=lambda js: js[0].desired.size or js[1].total_length):
            need = job.desired.size or st.total_length or None
            if need is not None and need < free and job.attempts < self.options.max_attempts:
                free -= need
                self._retry(job, f"no space left on {mount}; {human_size(free)} free again")
            elif need is not None:
                self._fail(
                    job,
                    f"no space left on {mount} (needs {human_size(need - free)} more); "
                    "free some space and run apply again",
                )
            else:
                self._fail(
                    job,
                    f"no space left on {mount} (needs more than the {human_size(free)} free; "
                    "its size is unknown); free some space and run apply again",
                )

    def _poll_aria2(self) -> bool:
        """One look at every active download; True when one of them ended."""
        now = time.monotonic()
        ended = False
        full: list[tuple[Job, DownloadStatus]] = []  # aria2 error 9: the disk is full
        for st in self.daemon.status(list(self.active)):
            job = self.active[st.gid]
            if self._refuse(job, st):
                continue
            if not job.sidecar_written and st.completed_length and st.status != "complete":
                write_sidecar(job)  # a partial in tmp/ now: what it is meant to become
            self._probe_once(job, st)
            if st.completed_length != job.done_bytes or st.status != "active":
                # Queued behind max-concurrent-downloads is not stalled.
                job.done_bytes = st.completed_length
                job.last_change = now
            self._hash_ahead(job, st)
            self.reporter.file_progress(
                job.desired.name,
                st.completed_length,
                st.total_length or job.desired.size,
                st.download_speed,
                st.connections,
            )
            ended = ended or st.status in ("complete", "error", "removed")
            if st.status == "complete":
                self.events.emit(
                    "download_finish",
                    entry=job.desired.name,
                    bytes=job.transferred,
                    size=st.completed_length,
                    attempt=job.attempts,
                )
                self._forget_gid(job)
                self._submit(job, self._verify_and_place)
            elif st.status in ("error", "removed"):
                self._forget_gid(job)
                if st.error_code == 9:
                    full.append((job, st))
                else:
                    self._transient_or_fail(job, st)
            elif st.status == "active" and now - job.last_change > self.options.stall_timeout:
                self.daemon.remove(st.gid)
                self._forget_gid(job)
                self._retry(job, f"no progress for {self.options.stall_timeout:.0f}s")
        if full:
            self._out_of_space(full)
        return ended

    def _hash_ahead(self, job: Job, st: DownloadStatus) -> None:
        """Overlap hashing with the download: hash the prefix aria2 has finished.

        Only with our own daemon, which writes pieces straight to disk (disk-cache=0);
        a foreign daemon, or ours given a disk-cache in [settings.aria2], may still hold
        "complete" pieces in its write cache.
        """
        if not (self.daemon.spawned and self.options.tuning.hash_ahead) or st.status != "active":
            return
        if job.prefix is None:
            job.prefix = PrefixHasher(job.tmp)
        ready = st.contiguous_bytes
        if job.prefix.busy or ready < job.prefix.offset + HASH_STEP:
            return
        job.prefix.busy = True
        future = self.pool.submit(job.prefix.advance, ready, self._check_cancel)
        future.add_done_callback(_ignore_errors)  # a failed advance means a full hash later

    def _forget_gid(self, job: Job) -> None:
        assert job.gid is not None
        self.active.pop(job.gid, None)
        self.forgotten.append(job.gid)  # removed from aria2's results at the end of the tick
        job.gid = None

    def _transient_or_fail(self, job: Job, st: DownloadStatus) -> None:
        if self.mirrors.missed(job.desired.name):  # mirror_first: the mirrors alone failed
            self._mirror_missed(job, st)
            return
        if _short_body(st):
            # The body ended before its Content-Length and the rest was refused (416): the
            # file may have shrunk upstream (one fresh start), or the server lies.
            forget_partial(job)
            why = (
                f"the server announced {st.total_length} bytes but the body ended early and "
                "it refuses the rest"
            )
            if job.short_bodies == 0 and job.attempts < self.options.max_attempts:
                job.short_bodies += 1
                self._retry(job, f"{why}; starting over")
            else:
                self._fail(
                    job, f"{why}: its Content-Length is wrong or the file is cut short there"
                )
            return
        urls = job.remote.urls if job.remote else ()
        failure = describe(st.error_code, st.error_message, urls, self.secrets)
        job.cause = failure.cause
        # A host that served part of this file and then went away may be restarting:
        # only one that never answered fails at once.
        if failure.permanent and not (failure.unreachable and job.transferred > 0):
            self._fail(job, failure.message)
        else:
            self._retry(job, failure.message)

    def _mirror_missed(self, job: Job, st: DownloadStatus) -> None:
        """The mirrors alone did not have the file (404) or did not answer: the origin
        now, at once. A mirror without a file is no news; any other failure is said."""
        urls = job.remote.urls if job.remote else ()
        failure = describe(st.error_code, st.error_message, urls, self.secrets)
        if st.error_code != NOT_FOUND:
            self.reporter.warn(
                f"{job.desired.name}: mirror {hosts_of(urls, self.secrets)}: {failure.message}; "
                "downloading from the origin"
            )
        self._from_origin(job, f"mirror miss: {failure.message}")

    def _from_origin(self, job: Job, why: str) -> None:
        """The same file again, from the origin alone: not one of the origin's attempts."""
        d = job.desired
        self.events.emit("download_retry", entry=d.name, attempt=job.attempts, reason=why)
        job.attempts -= 1
        if not d.pinned:  # nothing would catch the bytes of two different files mixed
            forget_partial(job)
        # The version a mirror's HEAD saw says nothing about the origin's.
        job.validators = job.first_probe = None
        job.prefix = None
        write_sidecar(job)
        self._start_download(job)

    def _retry(self, job: Job, why: str) -> None:
        if job.attempts >= self.options.max_attempts:
            self._fail(job, f"{why} (gave up after {job.attempts} attempts)")
            return
        job.prefix = None  # the retry may rewrite bytes already hashed: start over
        job.retry_at = time.monotonic() + min(2 ** (job.attempts - 1), 30)
        self.reporter.warn(f"{job.desired.name}: {why}; retrying")
        job.cause = None  # the next failure brings its own
        self.waiting.append(job)
        self.events.emit("download_retry", entry=job.desired.name, attempt=job.attempts, reason=why)

    # ---- hashing (in worker threads: no state.db, no reporter) -----------------

    def _hash_in_place(self, job: Job) -> Hashed:
        path = self.layout.target(job.desired.path)
        before = os.stat(path)  # a change while hashing then misses the cache next time
        hashes = hash_file(path, progress=self._check_cancel)
        return Hashed(hashes, before, _git_sha1_if_needed(job.desired, path))

    def _verify_and_place(self, job: Job) -> Outcome:
        d = job.desired
        if d.pinned and (placed := self._place_if_pinned_bytes(job)) is not None:
            return placed
        upstream = self._upstream_at_end(job)
        changed = None
        if upstream is not None and job.validators is not None:
            changed = upstream.changed_from(job.validators)
        if changed is not None and not d.pinned:  # the segments may mix two versions
            remove(job.tmp, job.control)
            return Changed(changed)
        if _gzip_unasked(job, upstream):
            job.prefix = None  # it hashed the encoded bytes
            if not gunzip_in_place(job.tmp):
                remove(job.tmp, job.control)
                return Refused(
                    "the server sent the file gzip-encoded (Content-Encoding: gzip, not asked "
                    "for) and it does not decode; check the URL or the server"
                )
        before = os.stat(job.tmp)
        problems = []
        if d.size is not None and before.st_size != d.size:
            problems.append(f"size {before.st_size}, expected {d.size}")
        hashes, incremental = self._hash_download(job, before.st_size)
        wrong = hash_mismatches(d, hashes.sha256, hashes.xxh3_128)
        if wrong and incremental:
            # Hashed while downloading: make sure no byte changed after it was read.
            hashes = hash_file(job.tmp, progress=self._check_cancel)
            wrong = hash_mismatches(d, hashes.sha256, hashes.xxh3_128)
        problems += wrong
        if not problems:
            problems += git_mismatch(d, _git_sha1_if_needed(d, job.tmp))
        if problems and changed is not None:  # a pin's hash is the last word
            remove(job.tmp, job.control)
            return Changed(changed)
        if _web_page(job, upstream, problems):
            remove(job.tmp, job.control)
            kind = upstream.content_type if upstream and upstream.content_type else "text/html"
            return Refused(
                f"the server sent an HTML page ({kind}), not the file; the link may lead to "
                "a web page or a login: check the URL and the token"
            )
        if problems:
            remove(job.tmp, job.control, job.sidecar)
            return Rejected(problems, hashes)
        place(job.tmp, self.layout.root, d.path)
        job.sidecar.unlink(missing_ok=True)
        self._into_store(d.path, hashes)
        return Placed(hashes, before)  # rename keeps size, mtime, inode and device

    def _fetch_and_place(self, job: Job) -> Outcome:
        """In a fetcher thread: the file in-process, then the same check and placement as
        an aria2 download; anything unusual hands it to aria2 (Missed)."""
        d, remote = job.desired, job.remote
        assert remote is not None and d.size is not None
        try:
            hashes = direct.fetch(
                remote.urls[0], dict(remote.headers), job.tmp, d.size, self.cancel
            )
        except direct.Miss as exc:
            remove(job.tmp)
            return Missed(str(exc))
        job.done_bytes = d.size
        placed = self._place_if_pinned_bytes(job, hashes)
        if placed is None:
            remove(job.tmp)
            job.done_bytes = 0
            job.earlier += d.size  # fetched all the same
            return Missed("the bytes do not match the pins")
        return Fetched(placed.hashes, placed.stat)

    def _place_if_pinned_bytes(self, job: Job, hashes: FileHashes | None = None) -> Placed | None:
        """The bytes its pins name are the file, whatever happened upstream meanwhile: no
        HEAD (one request per file, the cost of a small one) unless they are not.
        `hashes`: taken as the bytes were written (an in-process fetch), else read here."""
        d = job.desired
        before = os.stat(job.tmp)
        if d.size is not None and before.st_size != d.size:
            return None
        if hashes is None or hashes.size != before.st_size:
            hashes, _ = self._hash_download(job, before.st_size)
        if hash_mismatches(d, hashes.sha256, hashes.xxh3_128):
            return None  # the full check: changed upstream, gzip, a web page, or corrupt
        if git_mismatch(d, _git_sha1_if_needed(d, job.tmp)):
            return None
        place(job.tmp, self.layout.root, d.path)
        job.sidecar.unlink(missing_ok=True)
        self._into_store(d.path, hashes)
        return Placed(hashes, before)

    def _link_and_place(self, job: Job) -> Outcome:
        """Put a donor's bytes in place (settings.link), checked like a download."""
        d, donor = job.desired, job.action.donor
        assert donor is not None
        tmp = job.tmp.with_name(job.tmp.name + ".link")
        tmp.unlink(missing_ok=True)
        try:
            how = link_into(Path(donor.path), tmp, self.options.link)
            before = os.stat(tmp)  # a symlink: its donor, as inventory will see it
            hashes = hash_file(tmp, progress=self._check_cancel)
        except OSError as exc:
            remove(tmp)
            return NotReused(f"cannot reuse {donor.where}: {exc.strerror or exc}")
        wrong = hash_mismatches(d, hashes.sha256, hashes.xxh3_128)
        if d.size is not None and hashes.size != d.size:
            wrong.insert(0, f"size {hashes.size}, expected {d.size}")
        if wrong:
            remove(tmp)
            self._drop_store_blob(d, before)
            return NotReused(f"{donor.where} does not hold the bytes ({'; '.join(wrong)})")
        place(tmp, self.layout.root, d.path)
        if how != "symlink":
            self._into_store(d.path, hashes)
        return Linked(hashes, before, how)

    def _drop_store_blob(self, d: Desired, wrong: os.stat_result) -> None:
        """The store's blob for `d` is the file found wrong (one inode: a hardlink edited
        in place): remove it, so that the repair puts good bytes in the store too."""
        store = self.options.store
        if store is None or not d.sha256:
            return
        blob = store.blob(d.sha256)
        with contextlib.suppress(OSError):
            st = os.stat(blob)
            if (st.st_ino, st.st_dev) == (wrong.st_ino, wrong.st_dev):
                blob.unlink()

    def _into_store(self, relpath: str, hashes: FileHashes) -> None:
        """The shared store holds every file placed (a hardlink where it can): a failure
        there costs the store a blob, never the apply."""
        if self.options.store is not None:
            with contextlib.suppress(OSError):
                self.options.store.adopt(self.layout.target(relpath), hashes.sha256)

    def _upstream_at_end(self, job: Job) -> Upstream | None:
        """One HEAD once the download completed (None for a download finished by an
        earlier apply); first the version seen while it ran, if that HEAD is under way."""
        if job.remote is None:
            return None
        if job.validators is None and job.first_probe is not None:
            first = self._await_probe(job.first_probe)
            job.validators = first.validators() if first is not None else None
        return self._await_probe(probe_in_background(job.remote.urls[0], job.remote.headers))

    def _await_probe(self, future: Future[Upstream | None]) -> Upstream | None:
        """A HEAD's answer, or None after PROBE_WAIT; Cancelled as soon as the run is."""
        deadline = time.monotonic() + PROBE_WAIT
        while time.monotonic() < deadline:
            self._check_cancel(0)
            try:
                return future.result(timeout=self.options.poll_interval)
            except TimeoutError:
                continue
        return None

    def _hash_download(self, job: Job, size: int) -> tuple[FileHashes, bool]:
        """The file's hashes, and whether they were (partly) taken while it was written.

        Without a pin nothing would catch bytes rewritten after they were hashed, and
        these hashes become the record (and the lock's pin): hash the file whole then.
        """
        prefix, job.prefix = job.prefix, None  # a retry starts a fresh one
        if prefix is not None and job.desired.pinned:
            try:
                return prefix.finish(size, self._check_cancel), True
            except OSError:
                pass
        return hash_file(job.tmp, progress=self._check_cancel), False

    def _check_cancel(self, _n: int) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def _hash_done(self, job: Job, future: Future[Outcome]) -> None:
        d = job.desired
        try:
            outcome = future.result()
        except Cancelled:
            return
        except PlacementError as exc:  # the verified file waits in tmp/ for the next apply
            write_sidecar(job)  # which says what it is (a download that never saw a poll)
            self._fail(job, str(exc))
            return
        except OSError as exc:
            self._fail(job, f"{type(exc).__name__}: {exc.strerror or exc}")
            return
        if isinstance(outcome, Fetched):
            self.events.emit(
                "download_finish",
                entry=d.name,
                bytes=outcome.hashes.size,
                size=outcome.hashes.size,
                attempt=job.attempts,
            )
        if isinstance(outcome, Missed):
            job.direct_missed = True
            job.attempts -= 1  # not one of aria2's attempts
            self.events.emit(
                "download_retry", entry=d.name, attempt=job.attempts, reason=outcome.why
            )
            self._start_download(job)
        elif isinstance(outcome, Refused):
            if not self._mirror_wrong(job, outcome.message):
                self._fail(job, outcome.message)
        elif isinstance(outcome, Changed):
            self._changed_upstream(job, outcome.why)
        elif isinstance(outcome, Hashed):  # a verify in place, against a learned pin too
            wrong = hash_mismatches(
                job.action.expected, outcome.hashes.sha256, outcome.hashes.xxh3_128
            ) + git_mismatch(d, outcome.git_sha1)
            # What the file holds, right or wrong: until a repair lands, plan says
            # `repair` for a wrong one instead of hashing it again.
            self.state.record(d.path, outcome.stat, outcome.hashes)
            self._verified(job, outcome.hashes, wrong, in_place=True)
            if not wrong and outcome.git_sha1:  # the blob git names: from now on the
                self.state.learn_blob(outcome.git_sha1, outcome.hashes)  # cache judges it
            if not wrong:
                self._finish(job, Status.OK)
            else:
                self.reporter.warn(f"{d.name}: {'; '.join(wrong)}; downloading again")
                self._drop_store_blob(d, outcome.stat)  # edited through a hardlink
                job.repairing = True
                self._start_download(job)
        elif isinstance(outcome, NotReused):
            self.reporter.warn(f"{d.name}: {outcome.why}; downloading it")
            self._start_download(job)
        elif isinstance(outcome, Linked):
            self.events.emit("place", entry=d.name, path=d.path, bytes=0, how=outcome.how)
            self.state.record(d.path, outcome.stat, outcome.hashes)
            self.state.learn(d.path, outcome.hashes)
            self._finish(job, Status.LINKED)
        elif isinstance(outcome, Placed):
            self._verified(job, outcome.hashes, [])
            self.events.emit("place", entry=d.name, path=d.path, bytes=outcome.hashes.size)
            self.state.record(d.path, outcome.stat, outcome.hashes)
            # The bytes modelsync placed here last: whenever nothing pins the entry (now,
            # or once its pin is dropped again) the file is judged against them.
            self.state.learn(d.path, outcome.hashes)
            if d.git_sha1 and not d.pinned:  # checked against it before it was placed
                self.state.learn_blob(d.git_sha1, outcome.hashes)
            if not d.vouched:
                self.reporter.warn(_learned_message(job, outcome.hashes))
            if note := self.mirrors.settled(d.name, self.secrets):
                self.reporter.warn(note)
                self.events.emit("mirror_bad", entry=d.name, message=note)
            repaired = job.repairing or job.action.kind is ActionKind.REPAIR
            self._finish(job, Status.REPAIRED if repaired else Status.DOWNLOADED)
        else:
            self._verified(job, outcome.hashes, outcome.problems)
            expected = "; ".join(outcome.problems)
            if self._mirror_wrong(job, f"downloaded file is corrupt ({expected})"):
                pass  # the origin alone gets its own two tries
            elif job.corrupt_retries == 0:
                job.corrupt_retries += 1
                self.events.emit(
                    "download_retry", entry=d.name, attempt=job.attempts, reason="corrupt download"
                )
                job.rejected = outcome.hashes
                self.reporter.warn(
                    f"{d.name}: downloaded file is corrupt ({expected}); retrying from scratch"
                )
                job.sidecar.unlink(missing_ok=True)
                self._start_download(job)
            elif job.rejected == outcome.hashes:
                self._fail(job, _same_bytes_twice(d, outcome))
            else:
                self._fail(
                    job,
                    f"downloaded file is corrupt twice: {expected}; the server sends wrong bytes",
                )

    def _mirror_wrong(self, job: Job, what: str) -> bool:
        """Wrong bytes from a download that had mirrors in it: no piece hashes say whose,
        so the file is fetched again from the origin alone. False: no mirror was in it."""
        suspects = self.mirrors.wrong_bytes(job.desired.name, job.remote)
        if not suspects:
            return False
        self.reporter.warn(
            f"{job.desired.name}: {what}; retrying from the origin alone, without mirror "
            f"{hosts_of(suspects, self.secrets)}"
        )
        self._from_origin(job, f"wrong bytes with mirrors: {what}")
        return True

    def _changed_upstream(self, job: Job, why: str) -> None:
        """Started over once; a file that changes during every download fails."""
        d = job.desired
        if job.changed_restarts > 0:
            self._fail(
                job,
                f"the file changed upstream during the download again ({why}); "
                "run apply again once it stops changing",
            )
            return
        job.changed_restarts += 1
        self.reporter.warn(
            f"{d.name}: the file changed upstream during the download ({why}); starting over"
        )
        self.events.emit("download_retry", entry=d.name, attempt=job.attempts, reason=why)
        job.validators = job.first_probe = None
        self._start_download(job)

    def _verified(
        self, job: Job, hashes: FileHashes, problems: list[str], *, in_place: bool = False
    ) -> None:
        d = job.desired
        self.events.emit(
            "verify",
            entry=d.name,
            path=d.path,
            in_place=in_place,
            ok=not problems,
            bytes=hashes.size,
            sha256=hashes.sha256 or None,
            problems=problems or None,
        )

    # ---- outcomes -----------------------------------------------------------

    def _finish(self, job: Job, status: Status) -> None:
        d = job.desired
        downloaded = job.transferred if status is not Status.OK else 0
        result = EntryResult(d.name, d.path, job.action.kind.value, status, d.size, downloaded)
        self.results[d.name] = result
        self.reporter.file_finished(result)

    def _fail(self, job: Job, error: str) -> None:
        d = job.desired
        if not job.tmp.exists() and not job.control.exists():
            job.sidecar.unlink(missing_ok=True)  # nothing to resume: leave tmp/ clean
        result = EntryResult(
            d.name,
            d.path,
            job.action.kind.value,
            Status.FAILED,
            d.size,
            job.transferred,
            redact(error, self.secrets),
            cause=redact(job.cause, self.secrets) if job.cause else None,
        )
        self.events.emit(
            "download_fail",
            entry=d.name,
            action=result.action,
            attempt=job.attempts,
            bytes=result.bytes_downloaded,
            reason=result.error,
        )
        self.results[d.name] = result
        self.reporter.file_finished(result)


def _small(action: Action) -> bool:
    """A file the in-process fetch may take: downloaded whole, its size and a hash pinned."""
    d = action.desired
    return (
        action.kind in (ActionKind.DOWNLOAD, ActionKind.REPAIR)
        and d.pinned
        and d.size is not None
        and 0 < d.size <= direct.DIRECT_MAX_SIZE
    )


def _short_body(st: DownloadStatus) -> bool:
    """aria2 asked for the rest of a body that ended early and got no URI to take it
    from (HTTP 416 for a range the server's own Content-Length promised)."""
    message = st.error_message or ""
    return st.error_code == 22 and "No URI available" in message and st.total_length > 0


def _gzip_unasked(job: Job, upstream: Upstream | None) -> bool:
    """aria2 asks for no encoding and stores what it gets: a server that gzips anyway
    left the encoded bytes. A file that is gzip itself (its pinned size, or named .gz)
    is left alone."""
    d = job.desired
    if d.path.endswith((".gz", ".tgz")) or not gzip_encoded(job.tmp, upstream):
        return False
    return d.size is None or job.tmp.stat().st_size != d.size


def _web_page(job: Job, upstream: Upstream | None, problems: list[str]) -> bool:
    """An HTML page where a file was expected: the pin already failed, or (unpinned) the
    server called it text/html and it looks like one."""
    if not problems and job.desired.pinned:
        return False
    if not problems and (upstream is None or upstream.content_type != "text/html"):
        return False
    return not job.desired.path.endswith((".html", ".htm")) and html_page(job.tmp)


def _git_sha1_if_needed(d: Desired, path: Path) -> str | None:
    return git_blob_sha1(path) if d.git_sha1 and not d.pinned else None


def git_mismatch(d: Desired, actual: str | None) -> list[str]:
    if actual is None or d.git_sha1 is None or actual == d.git_sha1:
        return []
    return [f"git blob sha1 expected {d.git_sha1}, got {actual}"]


def _no_source(d: Desired) -> str:
    return (
        f"{d.name}: missing (no source): the entry has no url, hf or civitai and no mirror; "
        f"put the file at {d.path}, add a source, or set settings.mirrors to a "
        'content-addressed mirror, e.g. ["https://mirror.example/sha256/{sha256}"]'
    )


def _download_order(action: Action) -> tuple[int, int]:
    """Higher priority first; inside one priority the largest first, so that the run
    finishes soonest (small files fill the connections a large one leaves idle).
    aria2 starts downloads in the order they are added."""
    return -action.desired.priority, -(action.size_guess or 0)


def _same_bytes_twice(d: Desired, outcome: Rejected) -> str:
    """Two downloads, the same bytes, neither matching: the pin is the suspect, not the
    server, and a third download would only give the same bytes again."""
    origin = d.pin_origin or "the pin"
    return (
        f"the server sends the same bytes twice (sha256 {outcome.hashes.sha256}); {origin} "
        f"may be wrong or the file changed upstream; {'; '.join(outcome.problems)}"
    )


def _learned_message(job: Job, hashes: FileHashes) -> str:
    name, old = job.desired.name, job.action.learned
    if old is None:
        return (
            f"{name}: unpinned; placed with sha256 {hashes.sha256}, its learned pin from now "
            "on (pin it in the manifest or run `modelsync lock`)"
        )
    if (old.sha256, old.size) == (hashes.sha256, hashes.size):
        return f"{name}: unpinned; downloaded again, the bytes of its learned pin"
    return (
        f"{name}: unpinned; the new download becomes its learned pin: sha256 "
        f"{hashes.sha256} (was {old.sha256}; the file changed upstream)"
    )


def _ignore_errors(future: Future[None]) -> None:
    future.exception()  # retrieve it so that it is not reported as unhandled
