"""One error type for everything a user can fix; the CLI maps it to an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ModelsyncError(Exception):
    """A failure with a message for the user, a hint on what to do, and an exit code.

    Messages are plain text (no markup) and never contain a token or a signed URL.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ManifestError(ModelsyncError):
    """The manifest cannot be used; carries one line per problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: invalid manifest ({len(problems)} problem(s)):\n{body}")


class Aria2Unavailable(ModelsyncError):
    """aria2c is missing or its RPC does not answer; nothing was done."""


class SourceError(ModelsyncError):
    """A source (URL, Hugging Face, Civitai) could not be resolved for one entry."""

    exit_code = 1
