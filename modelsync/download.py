"""One download's life in `<root>/.modelsync/tmp/`: its state, the files it keeps beside
it (aria2's control file, our `.want` sidecar), and the options aria2 gets for it."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from modelsync.hashing import FileHashes, PrefixHasher
from modelsync.layout import PARTIAL_SUFFIX
from modelsync.placement import remove
from modelsync.reconcile import Action
from modelsync.remote import Desired, RemoteFile
from modelsync.upstream import Upstream

MIB = 1 << 20
# aria2 asks for each segment up to the end of the file and hangs up where the next one
# begins: what the server has pushed into the sockets by then (~0.5 MiB per cut on
# loopback) is sent for nothing. 4 MiB segments keep that waste near a tenth at worst.
MIN_SEGMENT = 4 * MIB
MAX_SEGMENT = 8 * MIB  # large files: fewer, longer requests (1 GiB makes ~120, not ~1000)
MAX_CONNECTIONS = 16  # aria2's cap per server


def segment_for(size: int | None) -> int:
    """The segment size aria2 splits a file into: a sixteenth of it, from 4 to 8 MiB, so
    that a mid-size file gets more connections (on a server that caps each connection,
    a 64 MiB file takes half the time with 16 segments of 4 MiB than with 8 of 8 MiB)."""
    if size is None:
        return MAX_SEGMENT
    sixteenth = math.ceil(size / MAX_CONNECTIONS / MIB) * MIB
    return max(MIN_SEGMENT, min(MAX_SEGMENT, sixteenth))


def connections_for(size: int | None, override: int = 0) -> int:
    """One connection per segment, up to aria2's 16 (16 MiB gets 4, 64 MiB and more 16)."""
    if override:
        return min(override, MAX_CONNECTIONS)
    if size is None:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, math.ceil(size / segment_for(size))))


@dataclass
class Job:
    """One entry being brought into place."""

    action: Action
    remote: RemoteFile | None
    tmp: Path
    gid: str | None = None
    attempts: int = 0
    corrupt_retries: int = 0
    rejected: FileHashes | None = None  # the first download that did not match its pins
    start_bytes: int = 0  # bytes already in tmp/ when we started (resume)
    done_bytes: int = 0
    earlier: int = 0  # bytes transferred by attempts that started over (a corrupt download)
    last_change: float = field(default_factory=time.monotonic)
    retry_at: float | None = None
    repairing: bool = False  # a verify that failed turns into a repair
    prefix: PrefixHasher | None = None  # hashes the finished prefix during the download
    cause: str | None = None  # aria2's words for the last failure (apply --verbose)
    # The version of the file upstream this download is of (ETag, Last-Modified,
    # Content-Length from one HEAD, also kept in the sidecar for a resume); None: unknown.
    validators: dict[str, str | int] | None = None
    first_probe: Future[Upstream | None] | None = None  # that HEAD, once bytes flow
    refused: str | None = None  # being removed from aria2; then it fails with this
    changed_restarts: int = 0  # started over because the file changed upstream
    short_bodies: int = 0  # started over after a body that ended before its length
    sidecar_written: bool = False  # by this run, for the partial now in tmp/
    direct_missed: bool = False  # the in-process fetch (direct.py) gave it back to aria2

    @property
    def desired(self) -> Desired:
        return self.action.desired

    @property
    def transferred(self) -> int:
        """Bytes really fetched for this entry, every attempt counted, partials not."""
        return self.earlier + max(self.done_bytes - self.start_bytes, 0)

    @property
    def control(self) -> Path:
        return self.tmp.with_name(self.tmp.name + PARTIAL_SUFFIX)

    @property
    def sidecar(self) -> Path:
        return self.tmp.with_name(self.tmp.name + ".want")


def tmp_complete(job: Job) -> bool:
    """A file in tmp/ without its control file is either finished or garbage."""
    if not job.tmp.exists() or job.control.exists():
        return False
    size = job.tmp.stat().st_size
    if job.desired.size is not None and size == job.desired.size:
        return True
    job.tmp.unlink()  # aria2 would take it for a sequential partial; start clean
    return False


def discard_stale_partial(job: Job) -> None:
    """A partial meant for other bytes (the manifest changed) is started over; a kept
    one brings back the validators of the version upstream it holds the start of.

    With nothing in tmp/ no sidecar is written yet: the executor writes it once bytes
    flow (most small files are done by then, and a crash before it costs a fresh start)."""
    if not (job.tmp.exists() or job.control.exists()):
        job.sidecar.unlink(missing_ok=True)
        job.sidecar_written = False
        job.validators = None  # nothing downloaded yet: the version is learned anew
        return
    want: dict[str, object] = {
        "size": job.desired.size,
        "sha256": job.desired.sha256,
        "xxh3_128": job.desired.xxh3_128,
    }
    try:
        kept = json.loads(job.sidecar.read_text())
        validators = kept.pop("upstream", None) if isinstance(kept, dict) else None
        stale = kept != want
    except (FileNotFoundError, ValueError):
        validators, stale = None, job.tmp.exists() or job.control.exists()
    if stale:
        remove(job.tmp, job.control)
    if stale or not (job.tmp.exists() or job.control.exists()):
        validators = None  # nothing downloaded yet: the version is learned anew
    job.validators = validators if isinstance(validators, dict) else None
    write_sidecar(job)


def write_sidecar(job: Job) -> None:
    """What the partial is meant to become, and (once known) which version upstream.
    Best effort: on a full disk the partial is started over next time, nothing worse."""
    want: dict[str, object] = {
        "size": job.desired.size,
        "sha256": job.desired.sha256,
        "xxh3_128": job.desired.xxh3_128,
    }
    if job.validators is not None:
        want["upstream"] = job.validators
    try:
        job.sidecar.write_text(json.dumps(want, sort_keys=True))
    except OSError:
        with contextlib.suppress(OSError):
            job.sidecar.unlink()  # half written: worse than none
        return
    job.sidecar_written = True


def forget_partial(job: Job) -> None:
    """Start the next download of this job from nothing."""
    remove(job.tmp, job.control)
    job.validators = job.first_probe = None
    job.earlier += max(job.done_bytes - job.start_bytes, 0)  # transferred all the same
    job.start_bytes = job.done_bytes = 0


def aria2_options(
    job: Job, remote: RemoteFile, connections: int, tuning: Mapping[str, str] | None = None
) -> dict[str, str | list[str]]:
    """aria2's per-download options: where to write, how many connections, in order;
    `tuning` ([settings.aria2]'s per-download options) last, so a user's min-split-size
    wins (tuning.py refuses every option whose value modelsync depends on)."""
    size = job.desired.size or remote.size
    n = connections_for(size, job.desired.connections or connections)
    options: dict[str, str | list[str]] = {
        "dir": str(job.tmp.parent),
        "out": job.tmp.name,
        "split": str(n),
        "max-connection-per-server": str(n),
        "min-split-size": f"{segment_for(size) // MIB}M",
        # Fill the file from the front, so that most of it is hashed (and flushed)
        # while the rest downloads: 88-99% at completion, against ~6% with aria2's
        # default of one region per connection (benchmarks/bench_download.py).
        "stream-piece-selector": "inorder",
        # A server that ignores Range makes aria2 start over instead of failing.
        "always-resume": "false",
        "max-resume-failure-tries": "0",
        # The partial's name is ours: an attached daemon (whose own defaults rename a
        # file that exists without a control file, to "name.1.bin") must resume or
        # overwrite it, as the managed daemon does.
        "continue": "true",
        "allow-overwrite": "true",
        "auto-file-renaming": "false",
    }
    if remote.headers:
        options["header"] = [f"{k}: {v}" for k, v in remote.headers]
    options.update(tuning or {})
    return options
