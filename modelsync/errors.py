"""One error type for everything a user can fix; the CLI maps it to an exit code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: located for scripts, told in one line for humans.

    `message` is the whole line a user reads (its location included), so that the
    human output and the JSON document say the same thing.
    """

    entry: str | None  # "models[3] (name)"; None for [settings] and top-level keys
    key: str | None  # a key of the entry ("tags"), else the dotted key ("settings.root")
    line: int | None  # 1-based line in the manifest, when known
    message: str

    def __str__(self) -> str:
        return self.message


class ModelsyncError(Exception):
    """A failure with a message for the user, a hint on what to do, and an exit code.

    Messages are plain text (no markup) and never contain a token or a signed URL.
    """

    exit_code = EXIT_USAGE
    problems: tuple[Problem, ...] = ()

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message

    @property
    def headline(self) -> str:
        """The message without the list of problems (JSON lists them apart)."""
        return self.message


class ManifestError(ModelsyncError):
    """The manifest cannot be used; carries one Problem per thing to fix."""

    def __init__(self, path: str, problems: Sequence[Problem | str]) -> None:
        self.path = path
        self.problems = tuple(
            p if isinstance(p, Problem) else Problem(None, None, None, p) for p in problems
        )
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.headline}:\n{body}")

    @property
    def headline(self) -> str:
        return f"{self.path}: invalid manifest ({len(self.problems)} problem(s))"


class Aria2Unavailable(ModelsyncError):
    """aria2c is missing or its RPC does not answer; nothing was done."""


class Aria2RpcError(ModelsyncError):
    """aria2 answered a call with an error (unknown GID, bad option, …).

    The daemon itself is fine; this concerns one call (so one entry: exit code 1).
    """

    exit_code = EXIT_FAILED

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"aria2 {method} failed: {message} (code {code})")
        self.method = method
        self.code = code


class SourceError(ModelsyncError):
    """A source (URL, Hugging Face, Civitai) could not be resolved for one entry."""

    exit_code = 1


class SourceUnreachable(SourceError):
    """The source's server did not answer at all (connection refused, DNS, timeout):
    `host` names it (never a URL, which may carry a token)."""

    def __init__(self, message: str, hint: str = "", *, host: str) -> None:
        super().__init__(message, hint)
        self.host = host
