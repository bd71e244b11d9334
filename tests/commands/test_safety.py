"""Data safety: what prune may delete, when a root is created, naming the root, honest totals."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.clirun import modelsync
from tests.conftest import serve
from tests.servers import FileServer


def bare_manifest(path: Path, entries: list[str]) -> Path:
    """A manifest as a new user writes it: no [settings], so root is the current folder."""
    path.write_text("".join(f"[[models]]\n{e}\n" for e in entries))
    return path


def test_prune_keeps_everything_beside_a_manifest_without_root_or_dir(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/a.safetensors", 1000, seed=1)
    manifest = bare_manifest(tmp_path / "models.toml", [f'url = "{f.url}"\nsha256 = "{f.sha256}"'])
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "old.safetensors").write_bytes(b"weights")
    run = modelsync("apply", manifest, "--prune", "--yes", "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert "pruned" not in doc
    assert {u["path"]: u["prunable"] for u in doc["unmanaged"]} == {
        "notes.txt": False,
        "old.safetensors": False,
    }
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    assert (tmp_path / "old.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "a.safetensors").read_bytes() == f.data


def test_prune_deletes_only_model_files_in_folders_named_by_dir(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/a.safetensors", 1000, seed=2)
    entry = f'url = "{f.url}"\nsha256 = "{f.sha256}"\ndir = "loras"'
    manifest = bare_manifest(tmp_path / "models.toml", [entry])
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "old.safetensors").write_bytes(b"old weights")
    (loras / "OLD2.CKPT").write_bytes(b"old ckpt")
    (loras / "README.md").write_text("which lora does what")
    (loras / "preview.png").write_bytes(b"png")
    (loras / ".hidden.safetensors").write_bytes(b"hidden")
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"mine")
    (loras / "linked.safetensors").symlink_to(elsewhere)

    plan = modelsync("plan", manifest, "--json", cwd=tmp_path)
    prunable = {u["path"]: u["prunable"] for u in json.loads(plan.stdout)["unmanaged"]}
    assert prunable == {
        "loras/OLD2.CKPT": True,
        "loras/README.md": False,
        "loras/linked.safetensors": False,
        "loras/old.safetensors": True,
        "loras/preview.png": False,
    }
    human = modelsync("plan", manifest, cwd=tmp_path).stderr
    assert "loras/old.safetensors" in human and "--prune deletes it" in human
    assert "2 deleted by --prune" in human

    run = modelsync("apply", manifest, "--prune", "--yes", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "pruned  loras/old.safetensors" in run.stderr
    assert sorted(p.name for p in loras.iterdir()) == [
        ".hidden.safetensors",
        "README.md",
        "a.safetensors",
        "linked.safetensors",
        "preview.png",
    ]
    assert elsewhere.read_bytes() == b"mine"


def test_a_missing_root_from_the_command_line_or_env_is_an_error(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/a.bin", 1000, seed=3)
    manifest = bare_manifest(tmp_path / "models.toml", [f'url = "{f.url}"\nsha256 = "{f.sha256}"'])
    typo = tmp_path / "modles"
    for command in ("plan", "apply", "verify"):
        run = modelsync(command, manifest, "--root", typo)
        assert run.code == 2, (command, run.stderr)
        assert f"{typo} (from --root) does not exist" in run.stderr
        assert "--create-root" in run.stderr
    run = modelsync("apply", manifest, env={"MODELSYNC_ROOT": str(typo)})
    assert run.code == 2 and f"{typo} (from $MODELSYNC_ROOT) does not exist" in run.stderr
    assert not typo.exists() and fileserver.requests == []

    run = modelsync("apply", manifest, "--root", typo, "--create-root")
    assert run.code == 0, run.stderr
    assert (typo / "a.bin").read_bytes() == f.data


def test_settings_root_is_created(tmp_path: Path, fileserver: FileServer) -> None:
    f = serve(fileserver, "/a.bin", 1000, seed=4)
    manifest = tmp_path / "models.toml"
    manifest.write_text(f'[settings]\nroot = "new/models"\n[[models]]\nurl = "{f.url}"\n')
    run = modelsync("apply", manifest)
    assert run.code == 0, run.stderr
    assert (tmp_path / "new/models/a.bin").read_bytes() == f.data


def test_every_human_output_starts_by_naming_the_root(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/a.bin", 1000, seed=5)
    manifest = tmp_path / "models.toml"
    manifest.write_text(
        f'[settings]\nroot = "models"\n[[models]]\nurl = "{f.url}"\nsha256 = "{f.sha256}"\n'
    )
    root = tmp_path / "models"
    expected = f"root: {root} (from settings.root in models.toml)"
    for command in ("plan", "apply", "verify", "lock"):
        run = modelsync(command, manifest)
        assert run.code == 0, run.stderr
        assert run.stderr.splitlines()[0] == expected, (command, run.stderr)
    other = tmp_path / "other"
    other.mkdir()
    run = modelsync("plan", manifest, "--root", other)
    assert run.stderr.splitlines()[0] == f"root: {other} (from --root)"
    run = modelsync("plan", manifest, env={"MODELSYNC_ROOT": str(other)})
    assert run.stderr.splitlines()[0] == f"root: {other} (from $MODELSYNC_ROOT)"
    bare = bare_manifest(tmp_path / "bare.toml", [f'url = "{f.url}"'])
    run = modelsync("plan", bare, cwd=other)
    assert run.stderr.splitlines()[0].startswith(f"root: {other} (the current folder")
    assert json.loads(modelsync("plan", manifest, "--json").stdout)["root"] == str(root)


def test_unknown_sizes_make_the_total_a_lower_bound(tmp_path: Path, fileserver: FileServer) -> None:
    known = serve(fileserver, "/known.bin", 3000, seed=6)
    unknown = serve(fileserver, "/unknown.bin", 5000, seed=7)
    manifest = bare_manifest(
        tmp_path / "models.toml",
        [
            f'url = "{known.url}"\nsha256 = "{known.sha256}"\nsize = 3000',
            f'url = "{unknown.url}"\nsha256 = "{unknown.sha256}"',
        ],
    )
    plan = modelsync("plan", manifest, cwd=tmp_path)
    assert "at least 2.9 KiB (1 entry of unknown size) to download" in plan.stderr
    totals = json.loads(modelsync("plan", manifest, "--json", cwd=tmp_path).stdout)["totals"]
    assert (totals["download_bytes"], totals["unknown_sizes"]) == (3000, 1)

    run = modelsync("apply", manifest, "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "at least 2.9 KiB (1 entry of unknown size)" in run.stderr
    # the summary gives what was really transferred, sizes learned on the way included
    assert json.loads(run.stdout)["totals"]["download_bytes"] == 8000
    assert "7.8 KiB downloaded" in run.stderr


def test_without_a_terminal_apply_reports_each_file_and_progress(
    tmp_path: Path, fileserver: FileServer
) -> None:
    f = serve(fileserver, "/slow.bin", 3 << 20, seed=8)
    fileserver.set_faults("/slow.bin", rate_limit=1 << 20)
    manifest = bare_manifest(
        tmp_path / "models.toml",
        [f'url = "{f.url}"\nsha256 = "{f.sha256}"\nsize = {3 << 20}\ndir = "x"'],
    )
    # The summary line comes every 10 s by default; a hidden knob makes it quick here.
    run = modelsync(
        "apply",
        manifest,
        "--connections",
        "1",
        cwd=tmp_path,
        env={"MODELSYNC_PROGRESS_INTERVAL": "0.5"},
    )
    assert run.code == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any(line.split() == ["start", "x/slow.bin", "(3.0", "MiB)"] for line in lines), lines
    progress = [line for line in lines if line.startswith("progress:")]
    assert progress, lines
    assert "of 3.0 MiB" in progress[0] and "0/1 files" in progress[0] and "/s" in progress[0]
    assert any(line.split()[:2] == ["downloaded", "x/slow.bin"] for line in lines), lines
    assert os.path.getsize(tmp_path / "x/slow.bin") == 3 << 20
