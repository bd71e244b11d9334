"""The import direction the layout promises: cli -> ui -> commands -> core, never back.

Core modules (everything but `cli`, `ui`, `__main__` and the `commands` package) must not
import a command, the CLI or the renderer, nor rich/typer/click; commands must not import
the CLI or the renderer. Every import counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modelsync"
FRONT = {"modelsync.cli", "modelsync.ui", "modelsync.__main__"}
PRESENTATION = ("modelsync.cli", "modelsync.ui", "rich", "typer", "click")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def banned(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module in FRONT:
            continue
        is_command = banned(module, ("modelsync.commands",))
        forbidden = PRESENTATION if is_command else (*PRESENTATION, "modelsync.commands")
        out += [f"{module} imports {name}" for name in imports(path) if banned(name, forbidden)]
    return out


def test_core_and_commands_never_import_upwards() -> None:
    assert violations() == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The rule itself works: an upward import in a core module is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from modelsync.commands.plan import run_plan\n")
    assert banned("modelsync.commands.plan", ("modelsync.commands",))
    assert "modelsync.commands.plan" in imports(bad)
    assert not banned("modelsync.commandsx", ("modelsync.commands",))
