"""Command line: parse options, build objects, call the core, render, map exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from modelsync import ui
from modelsync.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ModelsyncError
from modelsync.manifest import load_manifest, resolve_root, root_override
from modelsync.workspace import Workspace

if TYPE_CHECKING:
    from modelsync.events import Events

# "\b" keeps click from re-wrapping the lines of the paragraph that follows it.
EXIT_CODES = """\b
Exit codes:
  0    done; the folder matches the manifest
  1    some entries failed, are missing or corrupt (plan --check: changes pending)
  2    nothing was done: invalid manifest or arguments, lock held, no space, no aria2
  130  interrupted (Ctrl-C); partial downloads are kept
  143  stopped by SIGTERM (129: SIGHUP), as by Ctrl-C"""


def _epilog(example: str, *, exit_codes: bool = False) -> str:
    text = f"\b\nExample:\n  {example}"
    return f"{text}\n\n{EXIT_CODES}" if exit_codes else text


app = typer.Typer(
    add_completion=True,  # --install-completion, --show-completion
    no_args_is_help=True,
    help="Keep a folder of model files exactly as a TOML manifest declares.",
    epilog=_epilog("modelsync apply models.toml", exit_codes=True),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    rich_markup_mode=None,  # plain help: the same text with or without a terminal
    pretty_exceptions_enable=False,
)

ManifestArg = Annotated[
    Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest, e.g. models.toml.")
]
RootOpt = Annotated[
    str | None,
    typer.Option("--root", metavar="DIR", help="Models folder (overrides settings.root)."),
]
OnlyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--only", metavar="NAME|TAG", help="Limit to entries with this name or tag (repeatable)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
LogFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        metavar="FILE",
        help="Append a JSON line per step (resolve, plan, download, verify, place, prune).",
    ),
]
CreateRootOpt = Annotated[
    bool,
    typer.Option(
        "--create-root", help="Create a missing --root / $MODELSYNC_ROOT folder (else exit 2)."
    ),
]


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit(0)


@app.callback()
def _top(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,  # before any usage check: `modelsync --version` needs no command
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Keep a folder of model files exactly as a TOML manifest declares."""


@contextlib.contextmanager
def run_events(
    ws: Workspace, log_file: Path | None, aria2_secret: str | None = None
) -> Iterator[Events]:
    """The run's event hub (--log-file); an error that ends the run is its last line."""
    from modelsync.events import open_events

    try:
        events = open_events(ws, log_file, aria2_secret)
    except OSError as exc:
        raise ModelsyncError(
            f"--log-file: cannot open {log_file}: {exc.strerror or exc}",
            "give a file in a folder you can write to",
            exit_code=EXIT_USAGE,
        ) from None
    try:
        yield events
    except ModelsyncError as exc:
        events.emit("error", message=exc.headline, exit_code=exc.exit_code)
        raise
    except KeyboardInterrupt:
        events.emit("interrupted")
        raise
    finally:
        events.close()


def open_workspace(
    manifest_path: Path,
    root: str | None,
    only: list[str] | None,
    *,
    create_root: bool = False,
    announce: bool = True,
) -> Workspace:
    """Load the manifest and pick the root; `announce` names the root on stderr first."""
    manifest = load_manifest(manifest_path)
    env = dict(os.environ)
    choice = resolve_root(manifest, root, env)
    ws = Workspace(manifest, choice, env, only, create_root=create_root)
    if announce:
        ui.print_root(ws.root, ws.root_origin)
    return ws


@app.command(epilog=_epilog("modelsync plan models.toml --check", exit_codes=True))
def plan(
    manifest: ManifestArg,
    root: RootOpt = None,
    only: OnlyOpt = None,
    json_out: JsonOpt = False,
    create_root: CreateRootOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when anything is pending.")
    ] = False,
    log_file: LogFileOpt = None,
) -> None:
    """Show what apply would do. Never downloads, never writes to the models folder."""
    from modelsync.commands.plan import run_plan

    ws = open_workspace(manifest, root, only, create_root=create_root, announce=not json_out)
    with run_events(ws, log_file) as events:
        report, the_plan = run_plan(ws, events)
    if json_out:
        ui.print_json(report)
    else:
        ui.print_plan(report)
    if report.failed or (check and not the_plan.in_sync):
        raise typer.Exit(1)


@app.command(epilog=_epilog("modelsync verify models.toml --only sdxl", exit_codes=True))
def verify(
    manifest: ManifestArg,
    root: RootOpt = None,
    only: OnlyOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Always hash sha256, even where xxh3_128 is pinned.")
    ] = False,
    json_out: JsonOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """Hash every present file and report missing or corrupt ones."""
    from modelsync.commands.verify import run_verify

    ws = open_workspace(manifest, root, only, announce=not json_out)
    with run_events(ws, log_file) as events:
        report = run_verify(ws, strict=strict, events=events)
    if json_out:
        ui.print_json(report)
    else:
        ui.print_entries(report)
    raise typer.Exit(report.exit_code)


@app.command(
    epilog=_epilog("modelsync apply models.toml --jobs 2 --max-speed 50M", exit_codes=True)
)
def apply(
    manifest: ManifestArg,
    root: RootOpt = None,
    only: OnlyOpt = None,
    create_root: CreateRootOpt = False,
    json_out: JsonOpt = False,
    jobs: Annotated[
        int | None, typer.Option("--jobs", min=1, metavar="N", help="Files at once.")
    ] = None,
    connections: Annotated[
        int | None,
        typer.Option(
            "--connections", min=1, max=16, metavar="N", help="Connections per file (1-16)."
        ),
    ] = None,
    max_speed: Annotated[
        str | None,
        typer.Option("--max-speed", metavar="RATE", help='Overall limit, e.g. "50M"; "0" = none.'),
    ] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete unmanaged files.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Prune without asking.")] = False,
    locked: Annotated[
        bool, typer.Option("--locked", help="Fail unless the lock file is current.")
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout", min=0, metavar="SECONDS", help="Seconds to wait for another apply."
        ),
    ] = 300.0,
    aria2_url: Annotated[
        list[str] | None,
        typer.Option(
            "--aria2-url",
            metavar="URL",
            help="Use a running aria2 RPC endpoint (several times, or comma-separated: "
            "downloads are spread across them).",
        ),
    ] = None,
    aria2_secret: Annotated[
        str | None,
        typer.Option("--aria2-secret", metavar="SECRET", help="RPC secret of --aria2-url."),
    ] = None,
    stall_timeout: Annotated[float, typer.Option("--stall-timeout", min=1, hidden=True)] = 60.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show aria2's own words for each failure.")
    ] = False,
    log_file: LogFileOpt = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            metavar="FILE",
            help="Keep Prometheus metrics here (node_exporter textfile), every 5 s.",
        ),
    ] = None,
) -> None:
    """Make the models folder match the manifest: download, repair, verify."""
    from modelsync.commands.apply import ApplyRequest, run_apply
    from modelsync.manifest import parse_rate

    if prune and not yes and not sys.stdin.isatty():
        raise ModelsyncError(
            "--prune without --yes needs a terminal to ask for confirmation",
            "pass --yes to delete unmanaged files without asking",
        )
    try:
        speed = parse_rate(max_speed) if max_speed is not None else None
    except ValueError as exc:
        raise ModelsyncError(f"--max-speed: {exc}") from None
    if metrics_file is not None and not metrics_file.absolute().parent.is_dir():
        raise ModelsyncError(
            f"--metrics-file: {metrics_file.absolute().parent} is not a folder",
            "give a file in an existing folder, e.g. node_exporter's textfile directory",
        )
    ws = open_workspace(manifest, root, only, create_root=create_root, announce=not json_out)
    if locked:
        ws.require_lock()
    request = ApplyRequest(
        jobs=jobs,
        connections=connections,
        max_speed=speed,
        lock_timeout=lock_timeout,
        prune=prune,
        confirm_prune=(lambda _paths: True) if yes else _ask_prune if prune else None,
        aria2_url=",".join(aria2_url) if aria2_url else None,
        aria2_secret=aria2_secret,
        stall_timeout=stall_timeout,
        metrics_file=metrics_file,
    )
    interactive = ui.err_console.is_terminal and not no_progress and not json_out
    reporter = ui.BarReporter() if interactive else ui.LineReporter()
    reporter.verbose = verbose
    with run_events(ws, log_file, aria2_secret) as events:
        report = run_apply(
            ws,
            request,
            reporter,
            on_lock_wait=lambda: ui.err_console.print(
                f"waiting for another apply on {ws.root} (up to {lock_timeout:.0f}s)"
            ),
            events=events,
        )
    if json_out:
        ui.print_json(report)
    ui.print_summary(report, verbose=verbose)
    raise typer.Exit(report.exit_code)


@app.command(epilog=_epilog("modelsync lock models.toml --upgrade"))
def lock(
    manifest: ManifestArg,
    root: RootOpt = None,
    create_root: CreateRootOpt = False,
    upgrade: Annotated[
        bool,
        typer.Option("--upgrade", help="Resolve every entry again (floating revisions move)."),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    log_file: LogFileOpt = None,
) -> None:
    """Pin every entry in <manifest stem>.lock (downloads only files that no hash pins)."""
    from modelsync.commands.lock import run_lock

    ws = open_workspace(manifest, root, None, create_root=create_root)
    interactive = ui.err_console.is_terminal and not no_progress
    with run_events(ws, log_file) as events:
        result = run_lock(
            ws,
            upgrade=upgrade,
            reporter=ui.BarReporter() if interactive else ui.LineReporter(),
            events=events,
        )
    ui.print_lock(result)
    raise typer.Exit(result.exit_code)


@app.command(
    epilog=_epilog(
        "modelsync add models.toml hf://stabilityai/sdxl-vae/sdxl_vae.safetensors --dir vae"
    )
)
def add(
    manifest: ManifestArg,
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A URL, hf://org/repo/path[@revision], hf://org/repo[@revision] (a whole "
            "repository) or civitai:<version id>.",
        ),
    ],
    folder: Annotated[
        str | None,
        typer.Option(
            "--dir",
            metavar="DIR",
            help="Folder under root for the file (a repository: default its name).",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NAME", help="Entry name (default: the file name)."),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", metavar="GLOB", help="A repository: only these files."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="GLOB", help="A repository: not these files."),
    ] = None,
) -> None:
    """Resolve SOURCE and append it to the manifest, with its size and sha256."""
    from modelsync.commands.add import needs_dir, run_add

    if folder is None and needs_dir(source, os.environ):
        raise typer.BadParameter(
            "missing: a file needs the folder under root it goes to "
            "(only a whole repository, hf://org/repo, defaults to its name)",
            param_hint="'--dir'",
        )
    result = run_add(
        manifest,
        source,
        folder,
        name,
        dict(os.environ),
        tuple(include or ()),
        tuple(exclude or ()),
    )
    ui.print_added(result)


class ImportKind(StrEnum):
    workflow = "workflow"
    png = "png"
    comfyui_manager = "comfyui-manager"
    folder = "folder"


@app.command(
    name="import",
    epilog=_epilog("modelsync import ComfyUI/user/default/workflows/flux.json -o models.toml"),
)
def import_(
    sources: Annotated[
        list[Path],
        typer.Argument(
            metavar="SOURCE",
            help="Workflow JSON, a PNG/WebP ComfyUI saved, a ComfyUI-Manager model list, "
            "or a models folder.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="MANIFEST", help="Manifest to append to.")
    ] = Path("models.toml"),
    kind: Annotated[
        ImportKind | None,
        typer.Option("--from", metavar="KIND", help="workflow|png|comfyui-manager|folder."),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", metavar="TEXT", help="Only references containing TEXT (repeatable)."
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="No network lookups (Civitai by hash).")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when a reference could not be imported.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Append manifest entries for the models that workflows, catalogs or a folder hold."""
    from modelsync.commands.import_ import run_import
    from modelsync.importers import ImportOptions

    options = ImportOptions(
        filters=tuple(filters or ()),
        offline=offline,
        env=dict(os.environ),
        progress=None if json_out else ui.hashing_progress(),
    )
    result = run_import(sources, output, kind.value if kind else None, options)
    if json_out:
        ui.print_import_json(result)
    else:
        ui.print_import(result)
    raise typer.Exit(1 if strict and result.unresolved else 0)


@app.command(epilog=_epilog("modelsync gc --yes"))
def gc(
    manifest: Annotated[
        Path | None,
        typer.Argument(metavar="MANIFEST", help="Use this manifest's settings.store."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option("--store", metavar="DIR", help="The store (else $MODELSYNC_STORE)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Remove them (else only list).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List (and with --yes remove) the store's files that no root holds any more."""
    from modelsync.commands.gc import run_gc
    from modelsync.store import store_of

    setting, base = store, Path.cwd()
    if setting is None and manifest is not None:
        loaded = load_manifest(manifest)
        setting, base = loaded.settings.store, manifest.parent
    env = {} if store else dict(os.environ)
    chosen = store_of(setting, env, base)
    if chosen is None or not chosen.path.is_dir():
        where = f"{chosen.path} does not exist" if chosen else "no store is set"
        raise ModelsyncError(
            f"modelsync gc: {where}",
            "pass --store DIR, set $MODELSYNC_STORE, or name a manifest with settings.store",
        )
    result = run_gc(chosen, remove=yes)
    if json_out:
        ui.print_gc_json(result)
    else:
        ui.print_gc(result)


@app.command(epilog=_epilog("modelsync init models.toml"))
def init(
    manifest: Annotated[
        Path,
        typer.Argument(metavar="MANIFEST", help="Where to write the starter manifest."),
    ] = Path("models.toml"),
    json_out: JsonOpt = False,
) -> None:
    """Write a commented starter manifest; never overwrites an existing file."""
    from modelsync.commands.init import next_steps, run_init

    path = run_init(manifest).path
    if json_out:
        ui.write_json({"schema": 1, "command": "init", "path": str(path), "created": True})
        return
    for line in next_steps(manifest, path):  # a few plain lines: paths hold no markup
        ui.err_console.out(line)


@app.command(epilog=_epilog("modelsync doctor models.toml"))
def doctor(
    manifest: Annotated[
        Path | None, typer.Argument(metavar="MANIFEST", help="Check this manifest's root too.")
    ] = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check aria2c, the models folder, tokens (never printed), endpoints and the proxy.

    Each check says ok, warn or fail, with a fix; exit 1 when any check fails.
    """
    from modelsync.commands.doctor import run_doctor

    env = dict(os.environ)
    # The root as apply would choose it, without creating it: a missing --root is a check
    # that fails (with the reason), not an error that hides the other checks.
    choice = (
        resolve_root(load_manifest(manifest), root, env)
        if manifest is not None
        else root_override(root, env)
    )
    checks = run_doctor(choice, env)
    if json_out:
        ui.print_checks_json(checks)
    else:
        ui.print_checks(checks)
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@app.command(epilog=_epilog("modelsync status --root /srv/models"))
def status(
    manifest: Annotated[
        Path | None,
        typer.Argument(metavar="MANIFEST", help="Look at this manifest's root."),
    ] = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the apply running on a root: files, bytes, rate, ETA, each active file.

    Reads the status file that apply keeps in <root>/.modelsync/; writes nothing.
    """
    from modelsync.commands.status import run_status

    env = dict(os.environ)
    choice = (
        resolve_root(load_manifest(manifest), root, env)
        if manifest is not None
        else root_override(root, env)
    )
    if choice is None:
        raise typer.BadParameter(
            "give the MANIFEST or --root DIR of the apply to look at", param_hint="'MANIFEST'"
        )
    result = run_status(choice)
    if json_out:
        ui.write_json(ui.status_json(result))
    else:
        ui.print_root(choice.path, choice.origin)
        ui.print_status(result)


mirror_app = typer.Typer(
    no_args_is_help=True,  # `modelsync mirror` alone: its help, exit 2 (a usage error)
    help="Serve this machine's verified files to other machines.",
    epilog=_epilog("modelsync mirror export models.toml /srv/mirror"),
    rich_markup_mode=None,
)
app.add_typer(mirror_app, name="mirror")


class LinkChoice(StrEnum):
    auto = "auto"
    hardlink = "hardlink"
    copy = "copy"


@mirror_app.command(
    "export", epilog=_epilog("modelsync mirror export models.toml /srv/mirror --root /models")
)
def mirror_export(
    manifest: ManifestArg,
    dest: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="The tree to fill: DIR/sha256/<sha256> and DIR/index.json (created if missing).",
        ),
    ],
    root: RootOpt = None,
    only: OnlyOpt = None,
    link: Annotated[
        LinkChoice,
        typer.Option(
            "--link",
            metavar="auto|hardlink|copy",
            help="auto: a hardlink on the same filesystem, else a copy.",
        ),
    ] = LinkChoice.auto,
    verify: Annotated[
        bool, typer.Option("--verify", help="Hash the blobs already in DIR too.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy every verified file of the manifest into a content-addressed tree that any
    static server, CDN or bucket serves as a {sha256} mirror; only new blobs are written."""
    from modelsync.commands.mirror import run_export

    ws = open_workspace(manifest, root, only, announce=not json_out)
    result = run_export(ws, dest, link=link.value, verify=verify)
    if json_out:
        ui.print_export_json(result)
    else:
        ui.print_export(result)
    raise typer.Exit(result.exit_code)


@app.command(epilog=_epilog("modelsync version"))
def version() -> None:
    """Print modelsync's version."""
    from modelsync.sources import modelsync_version

    typer.echo(f"modelsync {modelsync_version()}")


def _ask_prune(paths: list[str]) -> bool:
    for path in paths:
        ui.err_console.print(f"  - {path}")
    return typer.confirm(f"Delete these {len(paths)} unmanaged file(s)?", default=False, err=True)


def main(argv: list[str] | None = None) -> None:
    """The one place that turns errors into exit codes (and, under --json, a JSON document)."""
    args = sys.argv[1:] if argv is None else argv
    _take_shell_as_given(args)
    stopped_by: list[int] = []  # the signal that stopped us, if one did
    previous = _stop_on_signals(stopped_by)
    try:
        _main(args, stopped_by)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(args: list[str], stopped_by: list[int]) -> None:
    try:
        # standalone_mode=False returns a typer.Exit's code instead of exiting, and
        # raises usage errors for us to render (typer turns Ctrl-C into code 130 itself).
        code = app(args=args, prog_name="modelsync", standalone_mode=False)
    except ModelsyncError as exc:
        _fail(exc, args)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # click's: unknown option, missing argument, ...
        _usage_error(exc, args)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted(stopped_by, args)
    except OSError as exc:  # the disk said no where we did not expect it: no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        message = _redacted(f"{exc.strerror or exc}{where}")
        _fail(ModelsyncError(message, "check the path", exit_code=EXIT_FAILED), args)
    except Exception as exc:  # a bug: one line, secrets redacted, never a traceback
        if os.environ.get("MODELSYNC_DEBUG"):
            raise
        message = _redacted(f"internal error: {type(exc).__name__}: {exc}")
        hint = "please report it; MODELSYNC_DEBUG=1 shows the traceback (it may hold secrets)"
        _fail(ModelsyncError(message, hint, exit_code=EXIT_FAILED), args)
    if code == EXIT_INTERRUPTED:
        _interrupted(stopped_by, args)
    sys.exit(code if isinstance(code, int) else 0)


def _redacted(text: str) -> str:
    """`text` without any token or RPC secret from the environment, nor signed queries."""
    from modelsync.redact import redact, redact_urls
    from modelsync.sources import TOKEN_VARIABLES

    names = (*TOKEN_VARIABLES, "MODELSYNC_ARIA2_SECRET", "COMFYUI_MANAGER_ARIA2_SECRET")
    secrets = tuple(v for n in names if (v := os.environ.get(n, "").strip()))
    return redact_urls(redact(text, secrets))


def _stop_on_signals(stopped_by: list[int]) -> dict[int, Any]:
    """SIGTERM (docker stop, systemd, kill) and SIGHUP (the terminal went away) stop a
    run the way Ctrl-C does, through the same KeyboardInterrupt: every cleanup already
    on that path runs (partials kept, aria2c stopped, lock released). Returns the
    handlers it replaced."""

    def stop(signum: int, _frame: object) -> None:
        if stopped_by:  # already stopping: let the cleanup finish
            return
        stopped_by.append(signum)
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)  # no SIGHUP on Windows
        if signum is not None:
            with contextlib.suppress(ValueError):  # not the main thread: leave them be
                previous[signum] = signal.signal(signum, stop)
    return previous


def _take_shell_as_given(args: list[str]) -> None:
    """`--show-completion bash` must mean bash: typer's flag would detect the shell and
    ignore the word, unless its (test) switch makes the shell the option's value."""
    option, _, shell = args[0].partition("=") if args else ("", "", "")
    shell = shell or (args[1] if len(args) > 1 else "")
    if option in ("--show-completion", "--install-completion") and shell[:1] not in ("", "-"):
        os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"


def _fail(exc: ModelsyncError, args: list[str], usage: str = "") -> NoReturn:
    """The human error on stderr; with --json also the error document on stdout."""
    ui.print_error(exc, usage)
    if _wants_json(args):
        ui.print_error_json(exc, _command_of(args))
    sys.exit(exc.exit_code)


def _usage_error(exc: typer.TyperException, args: list[str]) -> NoReturn:
    if type(exc).__name__ == "NoArgsIsHelpError":  # not exported; typer tests the name too
        typer.echo(exc.format_message(), err=True)  # the whole help
        _fail(ModelsyncError("no command given", "pick one of the commands above"), args)
    # click's errors mostly know the command they were parsing; "requires an argument" not
    ctx = getattr(exc, "ctx", None)
    usage, path = (ctx.get_usage(), ctx.command_path) if ctx else _usage_of(args)
    message = _in_words(exc.format_message())
    _fail(ModelsyncError(message, f"see `{path} --help`", exit_code=EXIT_USAGE), args, usage)


def _usage_of(args: list[str]) -> tuple[str, str]:
    """The usage line and path of the command that `args` name, else of modelsync itself."""
    group = typer.main.get_command(app)
    ctx = group.make_context("modelsync", [], resilient_parsing=True)
    name = _command_of(args)
    command = group.get_command(ctx, name) if name and isinstance(group, TyperGroup) else None
    if command is not None:
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
    return ctx.get_usage(), ctx.command_path


# typer words bad option values as pydantic does; these say what to give instead.
_REWORDED = (
    (re.compile(r"Input should be greater than or equal to (\S+)"), r"must be \1 or more"),
    (re.compile(r"Input should be less than or equal to (\S+)"), r"must be \1 or less"),
    (re.compile(r"Input should be a valid integer.*"), "must be a whole number"),
    (re.compile(r"Input should be a valid number.*"), "must be a number"),
    (re.compile(r"Value error, "), ""),  # an enum's own words follow
)


def _in_words(message: str) -> str:
    for pattern, words in _REWORDED:
        message = pattern.sub(words, message)
    return message


def _wants_json(args: list[str]) -> bool:
    options = args[: args.index("--")] if "--" in args else args
    return "--json" in options


def _command_of(args: list[str]) -> str | None:
    """The subcommand named in `args`: the first word that is not an option."""
    names = {
        info.name or getattr(info.callback, "__name__", "") for info in app.registered_commands
    } | {info.name for info in app.registered_groups if info.name}  # `mirror`
    first = next((a for a in args if not a.startswith("-")), None)
    return first if first in names else None


# What an interrupted command leaves behind; the others leave nothing to speak of.
LEFT_BEHIND = {
    "apply": "partial downloads are kept for the next run",
    "lock": "partial downloads are kept for the next run",
    "import": "the manifest was not changed; hashes computed so far are cached",
    "mirror": "blobs already exported are complete; the next export goes on from them",
}


def _interrupted(stopped_by: list[int], args: list[str]) -> NoReturn:
    said = LEFT_BEHIND.get(_command_of(args) or "")
    tail = f"; {said}" if said else ""
    if not stopped_by:
        ui.err_console.print(f"interrupted{tail}")
        sys.exit(EXIT_INTERRUPTED)
    signum = stopped_by[0]
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        name = signal.Signals(signum).name
        ui.err_console.print(f"stopped by {name}{tail}")
    sys.exit(128 + signum)  # what a shell reports for a process a signal ended
