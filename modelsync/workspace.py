"""One manifest applied to one root: selection, resolution and the plan."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from modelsync import repos
from modelsync.errors import ModelsyncError, SourceError, SourceUnreachable
from modelsync.inventory import find_unmanaged, observe
from modelsync.layout import Layout
from modelsync.lockfile import (
    Lock,
    LockedEntry,
    desired_from_lock,
    lock_table,
    read_lock,
    source_entry,
)
from modelsync.manifest import (
    Entry,
    Manifest,
    RootChoice,
    check_paths_inside,
    is_plain_file_name,
)
from modelsync.reconcile import ActionKind, Plan, Unmanaged, reconcile
from modelsync.redact import host_of
from modelsync.remote import Desired, Locator, RemoteFile, RepoListing
from modelsync.reuse import find_donors
from modelsync.sources import (
    SourceContext,
    list_repository,
    locate,
    needs_network,
    repository_url,
    resolve,
    source_of,
    token_over_http,
)
from modelsync.state import StateDB
from modelsync.store import store_of


@dataclass(frozen=True)
class Target:
    """An entry with what it resolved to; `error` when resolution failed.

    Under a current lock, `entry` is the copy the sources must see (revision pinned to
    the locked commit), `desired` comes from the lock and `remote` is None: nothing was
    asked of the source. `warning` says why the lock was not used for it.
    """

    entry: Entry
    desired: Desired | None
    remote: RemoteFile | None = None
    error: str | None = None
    warning: str | None = None
    owner: str | None = None  # a repository file: the name of its manifest entry

    @property
    def name(self) -> str:
        return self.entry.display_name

    @property
    def entry_name(self) -> str:
        """The manifest entry this target came from."""
        return self.owner or self.name


def pin_origin(manifest: Manifest | None, entry: Entry, otherwise: str) -> str:
    """Where the entry's hash pin (sha256, else xxh3_128) comes from, for error messages:
    the manifest's own key (with its line), else `otherwise` (the lock, or the source)."""
    key = "sha256" if entry.sha256 else "xxh3_128" if entry.xxh3_128 else None
    if key is None or manifest is None:
        return otherwise if key is None else ""
    line = manifest.key_line(entry.display_name, key)
    return f"the pin in {manifest.path.name}" + (f" line {line}" if line else "")


def desired_for(entry: Entry, remote: RemoteFile, manifest: Manifest | None = None) -> Desired:
    """The manifest's own pins win; the source's published ones fill the gaps."""
    if not entry.filename and not is_plain_file_name(remote.filename):
        raise SourceError(
            f"{entry.display_name}: the source names the file {remote.filename!r}, "
            "which is not a plain file name",
            "set filename in the manifest",
        )
    exact = remote.size if remote.size_is_exact else None
    relpath = entry.relpath(entry.filename or remote.filename)
    assert relpath is not None
    return Desired(
        name=entry.display_name,
        path=relpath,
        size=entry.size if entry.size is not None else exact,
        sha256=entry.sha256 or remote.sha256,
        xxh3_128=entry.xxh3_128 or remote.xxh3_128,
        **entry.controls(),
        estimated_size=None if remote.size_is_exact else remote.size,
        pin_origin=pin_origin(manifest, entry, _published(remote)),
        fetchable=bool(remote.urls),
    )


def _published(remote: RemoteFile) -> str:
    if not (remote.sha256 or remote.xxh3_128) or not remote.urls:
        return ""
    return f"the hash that {host_of(remote.urls[0])} publishes"


def _one_entry_per_path(targets: list[Target]) -> list[Target]:
    """Entries whose file name comes from the source (Civitai) may meet at one path only
    after resolution: the later ones fail rather than overwrite each other on every run."""
    owner: dict[str, str] = {}
    out = []
    for t in targets:
        path = t.desired.path if t.desired is not None else None
        if path is not None and path in owner:
            error = (
                f"{t.name}: resolves to {path}, the file of {owner[path]}; "
                "set filename (or dir) for one of them"
            )
            t = replace(t, desired=None, error=error)
        elif path is not None:
            owner[path] = t.name
        out.append(t)
    return out


_FETCHING = (ActionKind.DOWNLOAD, ActionKind.RESUME, ActionKind.REPAIR)


def _placed_by_us_prunable(
    unmanaged: tuple[Unmanaged, ...], trees: set[str], state: StateDB
) -> tuple[Unmanaged, ...]:
    """In a repository's folder, a file that modelsync placed (it has a learned pin) and
    that the repository no longer holds was removed upstream: `--prune` may delete it."""
    candidates = [u.path for u in unmanaged if not u.prunable and _in_tree(u.path, trees)]
    placed = state.learned_pins(candidates) if candidates else {}
    return tuple(replace(u, prunable=True) if u.path in placed else u for u in unmanaged)


def _in_tree(path: str, trees: set[str]) -> bool:
    return any(path.startswith(t + "/") for t in trees)


def check_root(root: RootChoice, create: bool) -> None:
    """A root that is not a folder, or that does not exist and may not be created: exit 2."""
    if root.path.exists():
        if not root.path.is_dir():
            raise ModelsyncError(
                f"the models folder {root.path} (from {root.origin}) is not a folder",
                "point --root, $MODELSYNC_ROOT or settings.root at a folder",
            )
    elif not (root.creatable or create):
        raise ModelsyncError(
            f"the models folder {root.path} (from {root.origin}) does not exist",
            f"check the path for a typo; create it (mkdir -p {root.path}) or pass --create-root",
        )


class Workspace:
    """`lock`: the lock to plan with; by default the manifest's lock file, if any."""

    def __init__(
        self,
        manifest: Manifest,
        root: RootChoice,
        env: Mapping[str, str],
        only: list[str] | None = None,
        *,
        lock: Lock | None = None,
        create_root: bool = False,
    ) -> None:
        check_root(root, create_root)
        self.manifest = manifest
        self.root = root.path
        self.root_origin = root.origin
        self.layout = Layout(root.path)
        self.env = env
        self.entries = manifest.select(only)
        if only and not self.entries:
            known = ", ".join(sorted({e.display_name for e in manifest.models}))
            raise ModelsyncError(
                f"--only {' '.join(only)} matches no entry name or tag",
                f"names in {manifest.path.name}: {known}",
            )
        check_paths_inside(manifest, root.path)
        self.sources = SourceContext(manifest.settings, env)
        self.lock = lock if lock is not None else read_lock(manifest.lock_path)
        self.store = store_of(manifest.settings.store, env, manifest.path.parent)

    def require_lock(self) -> None:
        """--locked: refuse to run unless the lock pins every selected entry as it stands.

        Locked entries always hold a hash, so a current lock leaves no entry unpinned.
        """
        path = self.manifest.lock_path
        hint = f"run `modelsync lock {self.manifest.path}` and commit {path.name}"
        if self.lock is None:
            raise ModelsyncError(f"--locked: {path} does not exist", hint)
        stale = [
            f"{e.display_name} ({'changed' if e.display_name in self.lock.models else 'new'})"
            for e in self.entries
            if self.lock.current(e) is None
        ]
        if stale:
            raise ModelsyncError(
                f"--locked: {path.name} does not match the manifest for {', '.join(stale)}",
                hint,
            )

    def targets(self) -> list[Target]:
        """Current lock entries are used as they are (no source asked); others resolve,
        those that ask a server (Hugging Face, Civitai) several at a time. A repository
        entry becomes one target per file."""
        out: dict[str, list[Target]] = {}
        pending: list[Entry] = []
        for entry in self.entries:
            locked = self.lock.current(entry) if self.lock is not None else None
            if locked is not None:
                out[entry.display_name] = self._from_lock(entry, locked)
            else:
                pending.append(entry)
        remote_ones = [e for e in pending if needs_network(e, self.env)]
        resolved: dict[Entry, list[Target]] = {}
        if len(remote_ones) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(remote_ones))) as pool:
                resolved = dict(zip(remote_ones, pool.map(self._resolve, remote_ones), strict=True))
        for entry in pending:
            out[entry.display_name] = resolved.get(entry) or self._resolve(entry)
        targets = [t for e in self.entries for t in out[e.display_name]]
        return _one_entry_per_path(self._warn_token_over_http(targets))

    def _warn_token_over_http(self, targets: list[Target]) -> list[Target]:
        """Said once per source, on its first target: a token sent to an http endpoint."""
        warned: set[str] = set()
        out = []
        for t in targets:
            kind = source_of(t.entry, self.env)
            warning = None
            if kind in ("hf", "civitai") and kind not in warned:
                warned.add(kind)
                warning = token_over_http(kind, self.env)
            if warning is not None:
                t = replace(t, warning=f"{t.warning}; {warning}" if t.warning else warning)
            out.append(t)
        return out

    def _from_lock(self, entry: Entry, locked: LockedEntry) -> list[Target]:
        in_lock = f"the pin in {self.manifest.lock_path.name} {lock_table(entry.display_name)}"
        if entry.is_repo:
            return self._expand(entry, repos.from_lock(locked), in_lock, None)
        origin = pin_origin(self.manifest, entry, in_lock)
        desired = desired_from_lock(entry, locked, origin)
        if entry.source == "none":  # its mirrors are all it has: are there any?
            urls = resolve(entry, self.sources).urls  # no request: templates only
            desired = replace(desired, fetchable=bool(urls))
        return [Target(source_entry(entry, locked), desired)]

    def _expand(
        self, entry: Entry, listing: RepoListing, origin: str, warning: str | None
    ) -> list[Target]:
        out = []
        escapes: dict[str, str | None] = {}  # one realpath per folder, not per file
        for item in repos.expand(entry, listing, origin):
            folder = item.entry.dir
            if item.desired is not None and folder not in escapes:
                escapes[folder] = self._escapes(item.entry)
            error = item.error or (escapes[folder] if item.desired else None)
            desired = None if error else item.desired
            out.append(Target(item.entry, desired, None, error, warning, entry.display_name))
            warning = None  # said once, on the first file
        return out

    def _escapes(self, entry: Entry) -> str | None:
        """A repository's subfolder that leads outside root through a symlink: every
        file there fails with this (the report names each file)."""
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(self.root, entry.dir))
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return None
        return (
            f"folder {entry.dir!r} resolves to {real}, outside root "
            f"{real_root} (through a symlink); not downloaded"
        )

    def _resolve(self, entry: Entry) -> list[Target]:
        if entry.is_repo:
            return self._list_repo(entry)
        return [self._resolve_file(entry)]

    def _list_repo(self, entry: Entry) -> list[Target]:
        warning = self._stale_warning(entry)
        try:
            listing = list_repository(entry, self.sources)
        except ModelsyncError as exc:
            return [Target(entry, None, error=str(exc), warning=warning)]
        host = host_of(repository_url(entry, self.env))
        return self._expand(entry, listing, f"the hash that {host} publishes", warning)

    def _resolve_file(self, entry: Entry) -> Target:
        warning = self._stale_warning(entry)
        try:
            remote = resolve(entry, self.sources)
            desired = desired_for(entry, remote, self.manifest)
            return Target(entry, desired, remote, warning=warning)
        except SourceUnreachable as exc:
            return self._offline(entry, exc, warning)
        except ModelsyncError as exc:
            return Target(entry, None, error=str(exc), warning=warning)

    def _offline(self, entry: Entry, exc: SourceUnreachable, warning: str | None) -> Target:
        """The source did not answer: an entry whose sha256 and size the manifest pins
        is planned from those pins (a file in place can still be verified, and is ok).
        Its download, if one is needed, fails in apply as it would have."""
        if entry.sha256 is None or entry.size is None:
            return Target(entry, None, error=str(exc), warning=warning)
        # Civitai names its files only through its API (a download link's last segment
        # is a version id): without `filename` the path is unknown.
        civitai = source_of(entry, self.env) == "civitai"
        name = entry.filename if civitai else entry.default_filename
        if not name:
            hint = (
                f"{exc.hint}; or set filename: an entry pinned by sha256 and size "
                f"is then planned without reaching {exc.host}"
            )
            return Target(entry, None, error=str(SourceError(exc.message, hint)), warning=warning)
        path = entry.relpath(name)
        assert path is not None
        desired = Desired(
            name=entry.display_name,
            path=path,
            size=entry.size,
            sha256=entry.sha256,
            xxh3_128=entry.xxh3_128,
            **entry.controls(),
            pin_origin=pin_origin(self.manifest, entry, ""),
        )
        offline = (
            f"{entry.display_name}: {exc.host} was not reached; planned from the sha256 "
            f"and size pinned in {self.manifest.path.name}"
        )
        return Target(entry, desired, warning=f"{warning}; {offline}" if warning else offline)

    def _stale_warning(self, entry: Entry) -> str | None:
        if self.lock is None:
            return None
        lock = self.manifest.lock_path.name
        why = "changed in" if entry.display_name in self.lock.models else "added to"
        return (
            f"{entry.display_name}: {why} the manifest since {lock} was written; "
            f"using the manifest for it (run `modelsync lock` to update {lock})"
        )

    def locator(self, targets: list[Target]) -> Locator:
        """Where aria2 can fetch each target now, by name: what the executor asks, so that
        it works on Actions and never goes back to an Entry."""
        entries = {t.name: t.entry for t in targets}
        return lambda name, fresh: locate(entries[name], self.sources, fresh=fresh)

    def plan(self, targets: list[Target], state: StateDB | None) -> Plan:
        desired = [t.desired for t in targets if t.desired is not None]
        observed = observe(self.layout, desired, state)
        known, unknown_dirs, trees = self._all_paths(targets)
        named_dirs = {e.dir for e in self.manifest.models if e.dir}
        unmanaged = find_unmanaged(
            self.layout, known, unknown_dirs, self._own_files(), named_dirs, trees
        )
        if trees and state is not None:
            unmanaged = _placed_by_us_prunable(unmanaged, trees, state)
        plan = reconcile(desired, observed, unmanaged)
        # Reuse before download: only files plan would fetch are looked for (a synced
        # root asks nothing more than its stats).
        fetch = [a.desired for a in plan.actions if a.kind in _FETCHING]
        donors = find_donors(fetch, self.root, state, self.store, self.env) if fetch else {}
        if not donors:
            return plan
        seen = {p: replace(o, donor=donors.get(p)) for p, o in observed.items()}
        return reconcile(desired, seen, unmanaged)

    def _own_files(self) -> list[str]:
        """The manifest and its lock, as paths under root when they live there."""
        out = []
        for path in (self.manifest.path, self.manifest.lock_path):
            rel = os.path.relpath(os.path.abspath(path), self.root)
            if not rel.startswith(".."):
                out.append(rel.replace(os.sep, "/"))
        return out

    def _all_paths(self, targets: list[Target]) -> tuple[set[str], set[str], set[str]]:
        """Every path the whole manifest wants (not just --only), so others aren't
        unmanaged; folders whose files are not known; repositories' folders (whole trees)."""
        resolved: dict[str, list[str]] = {}
        failed: set[str] = set()
        for t in targets:
            if t.desired is not None:
                resolved.setdefault(t.entry_name, []).append(t.desired.path)
            elif t.owner is None:
                failed.add(t.name)  # a repository whose listing failed, among others
        known: set[str] = set()
        unknown_dirs: set[str] = set()
        trees: set[str] = set()
        for entry in self.manifest.models:
            paths = resolved.get(entry.display_name) or self._locked_paths(entry)
            if paths is None or (entry.is_repo and entry.display_name in failed):
                unknown_dirs.add(entry.dir or ".")
                continue
            known.update(paths)
            if entry.is_repo and entry.dir:
                trees.add(entry.dir)
        return known, unknown_dirs, trees - unknown_dirs

    def _locked_paths(self, entry: Entry) -> list[str] | None:
        """Where an entry that was not resolved in this run points: from the manifest
        alone, else from its current lock entry; None when unknown."""
        if not entry.is_repo and (path := entry.relpath()) is not None:
            return [path]
        locked = self.lock.current(entry) if self.lock is not None else None
        if locked is None:
            return None
        if locked.files is not None:
            return [f"{entry.dir}/{p}" if entry.dir else p for p in locked.files]
        return [locked.path] if locked.path else None
