"""How the core reports progress; the do-nothing default keeps tests quiet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from modelsync.results import EntryResult


class Reporter(Protocol):
    def begin(self, files: int, total_bytes: int, unknown_sizes: int) -> None: ...

    def file_started(self, name: str, path: str, size: int | None, already: int) -> None:
        """A download starts (or starts over); `already` bytes are kept from a partial."""

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None: ...

    def file_finished(self, result: EntryResult) -> None: ...

    def warn(self, message: str) -> None: ...

    def end(self) -> None: ...


class NullReporter:
    def begin(self, files: int, total_bytes: int, unknown_sizes: int) -> None:
        pass

    def file_started(self, name: str, path: str, size: int | None, already: int) -> None:
        pass

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None:
        pass

    def file_finished(self, result: EntryResult) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class Totals:
    """The run's bytes: planned, grown by sizes learned during downloads, and transferred.

    aria2 counts a resumed file from its first byte; what was already on disk (`already`)
    is neither to download nor transferred, so it is taken off both.
    """

    planned: int = 0
    files: int = 0
    finished: int = 0
    already: dict[str, int] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # started without a known size
    learned: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    speeds: dict[str, int] = field(default_factory=dict)

    def started(self, name: str, size: int | None, already: int) -> None:
        self.already[name] = already
        self.done[name] = 0
        if size is None:
            self.unknown.add(name)

    def progress(self, name: str, done: int, total: int | None, speed: int) -> None:
        kept = self.already.get(name, 0)
        self.done[name] = max(done - kept, 0)
        self.speeds[name] = speed
        if name in self.unknown and total:
            self.learned[name] = max(total - kept, 0)

    def file_done(self, name: str) -> None:
        self.finished += 1
        self.speeds.pop(name, None)

    @property
    def total(self) -> int:
        return self.planned + sum(self.learned.values())

    @property
    def transferred(self) -> int:
        return sum(self.done.values())

    @property
    def speed(self) -> int:
        return sum(self.speeds.values())
