"""How the core reports progress; the do-nothing default keeps tests quiet."""

from __future__ import annotations

from typing import Protocol

from modelsync.results import EntryResult


class Reporter(Protocol):
    def begin(self, files: int, total_bytes: int) -> None: ...

    def file_progress(
        self, name: str, done: int, total: int | None, speed: int, connections: int
    ) -> None: ...

    def file_finished(self, result: EntryResult) -> None: ...

    def warn(self, message: str) -> None: ...

    def end(self) -> None: ...


class NullReporter:
    def begin(self, files: int, total_bytes: int) -> None:
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
