"""What a source resolves an entry to, and what reconcile wants on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RemoteFile:
    """Where and what to download for one entry. Resolution never downloads the file.

    `urls` are ordered (primary first, then mirrors). `headers` are sent by aria2 with
    every request, so they must never hold a token for a host other than the URLs' own.
    `mirrors` are the entry's mirror URLs (its own and settings.mirrors' templates),
    whether `urls` holds them or not (a download that needs a token leaves them out):
    the executor may fetch from them alone (mirror_first, never with `headers`) or
    drop them after they served wrong bytes.
    """

    urls: tuple[str, ...]
    filename: str
    size: int | None = None
    sha256: str | None = None
    xxh3_128: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    commit: str | None = None  # Hugging Face commit the file was resolved at
    size_is_exact: bool = True  # Civitai's sizeKB is approximate: space estimates only
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository: its path inside the repo and what pins it. LFS files
    publish their sha256; files kept in git only their blob id (git_sha1: a sha1 of
    "blob <size>\\0" + the content)."""

    path: str
    size: int
    sha256: str | None = None
    xxh3_128: str | None = None  # known once verified locally (from the lock)
    git_sha1: str | None = None


@dataclass(frozen=True)
class RepoListing:
    """What a repository entry selects at one commit, sorted by path."""

    commit: str
    files: tuple[RepoFile, ...]


@dataclass(frozen=True)
class Desired:
    """One file the manifest wants, after resolution: the input of reconcile."""

    name: str
    path: str  # POSIX path relative to root
    size: int | None = None  # exact size when known; used to judge files
    sha256: str | None = None
    xxh3_128: str | None = None
    tags: tuple[str, ...] = field(default=())
    estimated_size: int | None = None  # for space estimates when `size` is unknown
    # Where the hash pin (sha256, else xxh3_128) came from, for humans: "the pin in
    # models.toml line 12", "the pin in models.lock", "the hash that huggingface.co publishes".
    pin_origin: str = ""
    priority: int = 50  # higher downloads first (the manifest's `priority`)
    connections: int = 0  # the entry's own `connections`; 0: the run's choice
    optional: bool = False  # a failure is reported but does not fail the run
    git_sha1: str | None = None  # a Hub file kept in git (not LFS): its blob id, checked
    # on download; not a pin (state.db knows no sha1): the learned pin judges it later
    fetchable: bool = True  # False: no url, hf, civitai nor mirror to download it from

    @property
    def pinned(self) -> bool:
        """A hash of the content pins it: the stat cache and state.db can judge it."""
        return bool(self.sha256 or self.xxh3_128)

    @property
    def vouched(self) -> bool:
        """Something published pins its bytes: a content hash, or a git blob id."""
        return self.pinned or self.git_sha1 is not None


# (entry name, fresh) → where aria2 can fetch it right now. Called at every add: the first
# time fresh=False (a cached answer will do), on retries fresh=True (signed URLs expire).
Locator = Callable[[str, bool], RemoteFile]
