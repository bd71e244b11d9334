"""Carry out a Plan: schedule the work, poll aria2, hash, and collect every outcome.

One download's own state and files live in download.py, putting a file in place in
placement.py; this module decides what happens next to each of them.

One failing entry never stops the others: every outcome becomes an EntryResult.
A file reaches its final path only after its size and every pinned hash matched.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from modelsync.aria2 import Aria2Daemon, Aria2RpcError, DownloadStatus
from modelsync.aria2.words import describe
from modelsync.download import MIB, Job, aria2_options, discard_stale_partial, tmp_complete
from modelsync.errors import Aria2Unavailable, ModelsyncError
from modelsync.events import Events
from modelsync.hashing import FileHashes, PrefixHasher, git_blob_sha1, hash_file
from modelsync.layout import Layout
from modelsync.partials import partial_bytes
from modelsync.placement import place, remove
from modelsync.progress import NullReporter, Reporter
from modelsync.reconcile import Action, ActionKind, Plan, hash_mismatches
from modelsync.redact import redact
from modelsync.remote import Desired, Locator
from modelsync.results import EntryResult, Status
from modelsync.state import StateDB
from modelsync.tuning import NO_TUNING, Tuning

HASH_STEP = 32 * MIB  # hash a download's finished prefix in steps of at least this


class Cancelled(Exception):
    """Raised inside a hashing thread when the run is interrupted."""


@dataclass(frozen=True)
class ApplyOptions:
    connections: int = 0  # 0: by file size
    stall_timeout: float = 60.0
    max_attempts: int = 4  # per entry, for transient errors and stalls
    poll_interval: float = 0.2
    tuning: Tuning = NO_TUNING  # [settings.aria2]


@dataclass(frozen=True)
class Placed:
    hashes: FileHashes
    stat: os.stat_result


@dataclass(frozen=True)
class Hashed:
    """A file hashed where it stands; `stat` was taken before reading it."""

    hashes: FileHashes
    stat: os.stat_result
    git_sha1: str | None = None  # taken only for a file that a git blob id alone vouches for


@dataclass(frozen=True)
class Rejected:
    problems: list[str]
    hashes: FileHashes  # of the rejected bytes: the same twice means the pin is wrong


class Executor:
    def __init__(
        self,
        layout: Layout,
        connect: Callable[[], Aria2Daemon],
        state: StateDB,
        resolver: Locator,
        options: ApplyOptions,
        reporter: Reporter | None = None,
        secrets: tuple[str, ...] = (),
        events: Events | None = None,
    ) -> None:
        self.layout = layout
        self._connect = connect
        self._daemon: Aria2Daemon | None = None
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
        self.hashing: dict[Future[Placed | Rejected | Hashed], Job] = {}
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        self.lost: Aria2Unavailable | None = None  # aria2 went away mid-run

    # ---- entry point -------------------------------------------------------

    @property
    def daemon(self) -> Aria2Daemon:
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
        try:
            for action in pending:
                job = Job(action, None, self.layout.partial(action.desired.path))
                if action.kind is ActionKind.VERIFY:
                    self._submit(job, self._hash_in_place)
                else:
                    self._start_download(job)
            while self.active or self.hashing or self.waiting:
                self._tick()
        except BaseException:
            self.cancel.set()
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.close()
            self.reporter.end()
        for action in plan.actions:
            if action.kind is ActionKind.OK:
                d = action.desired
                self.results[d.name] = EntryResult(d.name, d.path, "ok", Status.OK, d.size)
        return [self.results[a.desired.name] for a in plan.actions]

    # ---- scheduling ----------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        try:
            for job in [j for j in self.waiting if j.retry_at is not None and j.retry_at <= now]:
                self.waiting.remove(job)
                self._add_to_aria2(job, fresh=True)
            if self.active:
                self._poll_aria2()
        except Aria2Unavailable as exc:
            self._daemon_lost(exc)
        if self.hashing:
            done, _ = wait(
                list(self.hashing), timeout=self.options.poll_interval, return_when=FIRST_COMPLETED
            )
            for future in done:
                self._hash_done(self.hashing.pop(future), future)
        else:
            # Nothing to wake us but time: aria2 progress or a scheduled retry.
            self.cancel.wait(self.options.poll_interval)

    def _submit(self, job: Job, fn: Callable[[Job], Placed | Rejected | Hashed]) -> None:
        self.hashing[self.pool.submit(fn, job)] = job

    def _start_download(self, job: Job) -> None:
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

    def _daemon_lost(self, exc: Aria2Unavailable) -> None:
        """aria2 died under us: what it was doing fails (its partials stay for a resume)."""
        self.lost = exc
        for job in [*self.active.values(), *self.waiting]:
            self._fail(
                job, f"aria2 stopped during the download ({exc.message}); run apply again to resume"
            )
        self.active.clear()
        self.waiting.clear()

    def _add_to_aria2(self, job: Job, *, fresh: bool) -> None:
        if self.lost is not None:
            self._fail(job, f"aria2 is not running any more ({self.lost.message})")
            return
        try:
            remote = job.remote = self.resolver(job.desired.name, fresh)
        except ModelsyncError as exc:
            self._fail_before_start(job, str(exc))
            return
        if not remote.urls:
            self._fail_before_start(job, _no_source(job.desired))
            return
        job.attempts += 1
        tuning = self.options.tuning.per_download
        options = aria2_options(job, remote, self.options.connections, tuning)
        try:
            job.gid = self.daemon.add(list(remote.urls), options)
        except Aria2RpcError as exc:  # this entry's options or URLs; the daemon is fine
            url = redact(remote.urls[0], self.secrets) if remote.urls else "?"
            job.cause = str(exc)
            self._fail(job, f"cannot start the download of {url}: aria2 rejected it")
            return
        except Aria2Unavailable as exc:
            self._fail(job, f"aria2 is not available ({exc.message})")
            self._daemon_lost(exc)
            return
        job.last_change = time.monotonic()
        self.active[job.gid] = job
        d = job.desired
        self.events.emit(
            "download_start",
            entry=d.name,
            path=d.path,
            url=remote.urls[0],
            size=d.size,
            resume_from=job.start_bytes,
            attempt=job.attempts,
        )

    def _fail_before_start(self, job: Job, error: str) -> None:
        if not job.tmp.exists() and not job.control.exists():
            job.sidecar.unlink(missing_ok=True)  # nothing downloaded: leave tmp/ clean
        self._fail(job, error)

    def _poll_aria2(self) -> None:
        now = time.monotonic()
        for st in self.daemon.status(list(self.active)):
            job = self.active[st.gid]
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
                self._transient_or_fail(job, st)
            elif st.status == "active" and now - job.last_change > self.options.stall_timeout:
                self.daemon.remove(st.gid)
                self._forget_gid(job)
                self._retry(job, f"no progress for {self.options.stall_timeout:.0f}s")

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
        self.daemon.remove_result(job.gid)
        job.gid = None

    def _transient_or_fail(self, job: Job, st: DownloadStatus) -> None:
        urls = job.remote.urls if job.remote else ()
        failure = describe(st.error_code, st.error_message, urls, self.secrets)
        job.cause = failure.cause
        # A host that served part of this file and then went away may be restarting:
        # only one that never answered fails at once.
        if failure.permanent and not (failure.unreachable and job.transferred > 0):
            self._fail(job, failure.message)
        else:
            self._retry(job, failure.message)

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

    def _verify_and_place(self, job: Job) -> Placed | Rejected:
        d = job.desired
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
        if problems:
            remove(job.tmp, job.control, job.sidecar)
            return Rejected(problems, hashes)
        place(job.tmp, self.layout.target(d.path))
        job.sidecar.unlink(missing_ok=True)
        return Placed(hashes, before)  # rename keeps size, mtime, inode and device

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

    def _hash_done(self, job: Job, future: Future[Placed | Rejected | Hashed]) -> None:
        d = job.desired
        try:
            outcome = future.result()
        except Cancelled:
            return
        except OSError as exc:
            self._fail(job, f"{type(exc).__name__}: {exc.strerror or exc}")
            return
        if isinstance(outcome, Hashed):  # a verify in place, against a learned pin too
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
                job.repairing = True
                self._start_download(job)
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
            repaired = job.repairing or job.action.kind is ActionKind.REPAIR
            self._finish(job, Status.REPAIRED if repaired else Status.DOWNLOADED)
        else:
            self._verified(job, outcome.hashes, outcome.problems)
            expected = "; ".join(outcome.problems)
            if job.corrupt_retries == 0:
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
