"""Command line: parse options, build objects, call the core, render, map exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from modelsync import ui
from modelsync.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ModelsyncError
from modelsync.manifest import load_manifest, resolve_root
from modelsync.workspace import Workspace

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Keep a folder of model files exactly as a TOML manifest declares.",
    pretty_exceptions_enable=False,
)

ManifestArg = Annotated[Path, typer.Argument(help="The TOML manifest, e.g. models.toml.")]
RootOpt = Annotated[
    str | None, typer.Option("--root", help="Models folder (overrides settings.root).")
]
OnlyOpt = Annotated[
    list[str] | None, typer.Option("--only", help="Limit to entries with this name or tag.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
CreateRootOpt = Annotated[
    bool,
    typer.Option(
        "--create-root", help="Create a missing --root / $MODELSYNC_ROOT folder (else exit 2)."
    ),
]


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


@app.command()
def plan(
    manifest: ManifestArg,
    root: RootOpt = None,
    only: OnlyOpt = None,
    json_out: JsonOpt = False,
    create_root: CreateRootOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when anything is pending.")
    ] = False,
) -> None:
    """Show what apply would do. Never downloads, never writes to the models folder."""
    from modelsync.commands import run_plan

    ws = open_workspace(manifest, root, only, create_root=create_root, announce=not json_out)
    report, the_plan = run_plan(ws)
    if json_out:
        ui.print_json(report)
    else:
        ui.print_plan(report)
    if report.failed or (check and not the_plan.in_sync):
        raise typer.Exit(1)


@app.command()
def verify(
    manifest: ManifestArg,
    root: RootOpt = None,
    only: OnlyOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Always hash sha256, even where xxh3_128 is pinned.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Hash every present file and report missing or corrupt ones."""
    from modelsync.commands import run_verify

    ws = open_workspace(manifest, root, only, announce=not json_out)
    report = run_verify(ws, strict=strict)
    if json_out:
        ui.print_json(report)
    else:
        ui.print_entries(report)
    raise typer.Exit(report.exit_code)


@app.command()
def apply(
    manifest: ManifestArg,
    root: RootOpt = None,
    only: OnlyOpt = None,
    create_root: CreateRootOpt = False,
    json_out: JsonOpt = False,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Files at once.")] = None,
    connections: Annotated[
        int | None, typer.Option("--connections", min=1, max=16, help="Connections per file.")
    ] = None,
    max_speed: Annotated[
        str | None, typer.Option("--max-speed", help='Overall limit, e.g. "50M"; "0" = none.')
    ] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete unmanaged files.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Prune without asking.")] = False,
    locked: Annotated[
        bool, typer.Option("--locked", help="Fail unless the lock file is current.")
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another apply.")
    ] = 300.0,
    aria2_url: Annotated[
        str | None, typer.Option("--aria2-url", help="Use a running aria2 RPC endpoint.")
    ] = None,
    aria2_secret: Annotated[
        str | None, typer.Option("--aria2-secret", help="RPC secret of --aria2-url.")
    ] = None,
    stall_timeout: Annotated[float, typer.Option("--stall-timeout", min=1, hidden=True)] = 60.0,
) -> None:
    """Make the models folder match the manifest: download, repair, verify."""
    from modelsync.apply import ApplyRequest, run_apply
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
        aria2_url=aria2_url,
        aria2_secret=aria2_secret,
        stall_timeout=stall_timeout,
    )
    interactive = ui.err_console.is_terminal and not no_progress and not json_out
    reporter = ui.BarReporter() if interactive else ui.LineReporter()
    report = run_apply(
        ws,
        request,
        reporter,
        on_lock_wait=lambda: ui.err_console.print(
            f"waiting for another apply on {ws.root} (up to {lock_timeout:.0f}s)"
        ),
    )
    if json_out:
        ui.print_json(report)
    ui.print_summary(report)
    raise typer.Exit(report.exit_code)


@app.command()
def lock(
    manifest: ManifestArg,
    root: RootOpt = None,
    create_root: CreateRootOpt = False,
    upgrade: Annotated[
        bool,
        typer.Option("--upgrade", help="Resolve every entry again (floating revisions move)."),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Pin every entry in <manifest stem>.lock (downloads only files that no hash pins)."""
    from modelsync.lockcmd import run_lock

    ws = open_workspace(manifest, root, None, create_root=create_root)
    interactive = ui.err_console.is_terminal and not no_progress
    result = run_lock(
        ws, upgrade=upgrade, reporter=ui.BarReporter() if interactive else ui.LineReporter()
    )
    ui.print_lock(result)
    raise typer.Exit(result.exit_code)


@app.command()
def add(
    manifest: ManifestArg,
    source: Annotated[
        str,
        typer.Argument(help="A URL, hf://org/repo/path[@revision] or civitai:<version id>."),
    ],
    folder: Annotated[str, typer.Option("--dir", help="Folder under root for the file.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Entry name (default: the file name).")
    ] = None,
) -> None:
    """Resolve SOURCE and append it to the manifest, with its size and sha256."""
    from modelsync.addcmd import run_add

    ui.print_added(run_add(manifest, source, folder, name, dict(os.environ)))


@app.command()
def doctor(
    manifest: Annotated[Path | None, typer.Argument(help="Check this manifest's root too.")] = None,
    root: RootOpt = None,
) -> None:
    """Check aria2c, the models folder, tokens (never printed), endpoints and proxies."""
    from modelsync.doctor import run_doctor

    env = dict(os.environ)
    where = open_workspace(manifest, root, None).root if manifest else None
    checks = run_doctor(where, env)
    ui.print_checks(checks)
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


def _ask_prune(paths: list[str]) -> bool:
    for path in paths:
        ui.err_console.print(f"  - {path}")
    return typer.confirm(f"Delete these {len(paths)} unmanaged file(s)?", default=False, err=True)


def main() -> None:
    try:
        # standalone_mode=False returns a typer.Exit's code instead of exiting.
        # (typer turns Ctrl-C into code 130 itself).
        code = app(standalone_mode=False)
        if code == EXIT_INTERRUPTED:
            _interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    except ModelsyncError as exc:
        ui.print_error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _interrupted()
    except OSError as exc:  # the disk said no where we did not expect it: no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        ui.print_error(ModelsyncError(f"{exc.strerror or exc}{where}", "check the path"))
        sys.exit(EXIT_FAILED)


def _interrupted() -> None:
    ui.err_console.print("interrupted; partial downloads are kept for the next run")
    sys.exit(EXIT_INTERRUPTED)
