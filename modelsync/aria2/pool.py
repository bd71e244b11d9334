"""Several attached aria2 daemons that look like one to the executor.

``--aria2-url`` given several times (or ``$COMFYUI_MANAGER_ARIA2_SERVERS``) attaches to
each daemon. :meth:`Aria2Pool.add` gives a download to the least loaded daemon (fewest of
our active downloads, then fewest bytes outstanding) and returns a GID of the pool's own
(``"<index>:<gid>"`` of the first daemon it went to), which stays the same when the
download moves: a daemon that stops answering has its downloads added again to the
others, with the same options (``dir`` is the same absolute path for every daemon, as for
one attached daemon, so one that shares the filesystem resumes from the control file).
Only when no daemon answers does the pool raise :class:`Aria2Unavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from modelsync.aria2.daemon import Aria2Daemon
from modelsync.aria2.status import DownloadStatus, _missing_status
from modelsync.errors import Aria2RpcError, Aria2Unavailable


@dataclass
class _Download:
    """One download of the pool: which daemon runs it now, under which GID there."""

    uris: list[str]
    options: dict[str, str | list[str]]
    index: int
    gid: str
    outstanding: int = 0  # bytes not yet downloaded, as last seen
    stopped: bool = False


@dataclass
class _Member:
    daemon: Aria2Daemon
    alive: bool = True
    downloads: set[str] = field(default_factory=set)  # pool GIDs


class Aria2Pool:
    """Attached daemons behind the interface of one :class:`Aria2Daemon`."""

    def __init__(
        self,
        daemons: Sequence[Aria2Daemon],
        warn: Callable[[str], None] = lambda _message: None,
    ) -> None:
        if not daemons:
            raise ValueError("a pool needs at least one daemon")
        self._members = [_Member(d) for d in daemons]
        self._downloads: dict[str, _Download] = {}
        self._warn = warn  # says when a daemon is dropped and its downloads move
        self.lost: list[tuple[str, str]] = []  # (daemon URL, why) for each dropped daemon

    # ----------------------------------------------------------------- like a daemon

    @property
    def spawned(self) -> bool:
        return False  # attached daemons only: none is ours to start again

    @property
    def pid(self) -> int | None:
        return None

    @property
    def url(self) -> str:
        return ", ".join(m.daemon.url for m in self._members)

    @property
    def daemons(self) -> list[Aria2Daemon]:
        return [m.daemon for m in self._members]

    def exit_reason(self, wait: float = 0.0) -> str | None:
        return None

    def change_global_option(self, options: Mapping[str, str]) -> None:
        for member in self._alive():
            member.daemon.change_global_option(options)

    def add(self, uris: list[str], options: Mapping[str, str | list[str]]) -> str:
        """Queue the download on the least loaded daemon; returns the pool's GID."""
        opts = {k: (list(v) if isinstance(v, list) else str(v)) for k, v in options.items()}
        index, gid = self._place(uris, opts)
        pool_gid = f"{index}:{gid}"
        self._downloads[pool_gid] = _Download(list(uris), opts, index, gid)
        self._members[index].downloads.add(pool_gid)
        return pool_gid

    def add_many(
        self, downloads: Sequence[tuple[list[str], Mapping[str, str | list[str]]]]
    ) -> list[str | Aria2RpcError]:
        """One at a time: each goes to the daemon least loaded after the one before."""
        out: list[str | Aria2RpcError] = []
        for uris, options in downloads:
            try:
                out.append(self.add(uris, options))
            except Aria2RpcError as exc:
                out.append(exc)
        return out

    def status(self, gids: Iterable[str]) -> list[DownloadStatus]:
        """Status of each pool GID, in order; a dead daemon's downloads move first."""
        wanted = list(gids)
        while True:
            found: dict[str, DownloadStatus] = {}
            try:
                for member_index, member in enumerate(self._members):
                    mine = [g for g in wanted if g in member.downloads]
                    if not mine or not member.alive:
                        continue
                    real = [self._downloads[g].gid for g in mine]
                    for pool_gid, st in zip(mine, self._ask(member_index, real), strict=True):
                        found[pool_gid] = replace(st, gid=pool_gid)
                        self._note(pool_gid, st)
            except _Moved:
                continue  # ask again: the moved downloads answer from their new daemon
            return [found.get(g) or _missing_status(g) for g in wanted]

    def remove(self, gid: str, force: bool = True) -> bool:
        download = self._downloads.get(gid)
        if download is None:
            return False
        return self._members[download.index].daemon.remove(download.gid, force)

    def remove_result(self, gid: str) -> bool:
        download = self._downloads.pop(gid, None)
        if download is None:
            return False
        member = self._members[download.index]
        member.downloads.discard(gid)
        return member.daemon.remove_result(download.gid)

    def remove_results(self, gids: Sequence[str]) -> None:
        for gid in gids:
            try:
                self.remove_result(gid)
            except Aria2Unavailable:
                continue  # a dead daemon's results went with it

    def close(self) -> None:
        for member in self._members:
            member.daemon.close()

    # ----------------------------------------------------------------- placement

    def _alive(self) -> list[_Member]:
        return [m for m in self._members if m.alive]

    def _load(self, index: int) -> tuple[int, int]:
        mine = [self._downloads[g] for g in self._members[index].downloads]
        running = [d for d in mine if not d.stopped]
        return len(running), sum(d.outstanding for d in running)

    def _place(self, uris: list[str], opts: dict[str, str | list[str]]) -> tuple[int, str]:
        """Add to the least loaded daemon that answers; drop those that do not."""
        while True:
            alive = [i for i, m in enumerate(self._members) if m.alive]
            if not alive:
                raise self._all_lost()
            index = min(alive, key=self._load)
            try:
                return index, self._members[index].daemon.add(uris, opts)
            except Aria2Unavailable as exc:
                self._drop(index, exc)

    def _ask(self, index: int, real: list[str]) -> list[DownloadStatus]:
        try:
            return self._members[index].daemon.status(real)
        except Aria2Unavailable as exc:
            self._drop(index, exc)
            raise _Moved from None

    def _note(self, pool_gid: str, st: DownloadStatus) -> None:
        download = self._downloads[pool_gid]
        download.outstanding = max(st.total_length - st.completed_length, 0)
        download.stopped = st.stopped

    def _drop(self, index: int, exc: Aria2Unavailable) -> None:
        """The daemon at ``index`` stopped answering: move its unfinished downloads."""
        member = self._members[index]
        member.alive = False
        self.lost.append((member.daemon.url, exc.message))
        member.daemon.close()
        moving = sorted(member.downloads)
        member.downloads.clear()
        if any(m.alive for m in self._members):
            count = f"{len(moving)} download{'s' if len(moving) != 1 else ''}"
            self._warn(
                f"aria2 at {member.daemon.url} stopped answering ({exc.message}); "
                f"moving its {count} to the other daemons"
            )
        for pool_gid in moving:
            download = self._downloads[pool_gid]
            try:
                download.index, download.gid = self._place(download.uris, download.options)
            except Aria2RpcError:
                # the other daemon refused it: reported as gone, the executor retries it
                self._downloads.pop(pool_gid)
                continue
            download.stopped = False
            self._members[download.index].downloads.add(pool_gid)

    def _all_lost(self) -> Aria2Unavailable:
        why = "; ".join(f"{url}: {message}" for url, message in self.lost)
        return Aria2Unavailable(f"none of the aria2 daemons answers ({why})")


class _Moved(Exception):
    """A daemon was dropped while asking for statuses; ask again."""
