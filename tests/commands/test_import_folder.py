"""Adopting a models folder end to end: `modelsync import <folder>` (the fake Civitai, a fake
Hugging Face cache), then `modelsync apply` on a fresh root reproduces the folder byte for
byte: Civitai entries through the fake Civitai, hf entries through the fake Hub, the file
nobody knows through a `{sha256}` mirror on the local file server. Real CLI, real aria2c."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.clirun import modelsync
from tests.conftest import blob
from tests.core.test_import_folder import hf_cache
from tests.servers import FakeCivitai, FakeHub, FileServer

CIV = blob(300_000, seed=41)
HUB = blob(400_000, seed=42)
MINE = blob(200_000, seed=43)
CONFIG = b'{"note": "a small file beside the models"}\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every visible, non-empty file under root, by POSIX path: what import adopts."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
        and p.stat().st_size
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture
def adopted(
    tmp_path: Path, hub: FakeHub, civitai: FakeCivitai
) -> tuple[Path, Path, dict[str, str]]:
    """A working ComfyUI models folder, its sources on the fakes: (folder, HF cache, env)."""
    commit = hub.add_repo("org/flux", {"transformer/flux1-dev.safetensors": HUB})
    civitai.add_version(4242, [("civ.safetensors", CIV)])
    cache = tmp_path / "hf-cache"
    hf_cache(cache, "org/flux", {"transformer/flux1-dev.safetensors": HUB}, commit=commit)
    models = tmp_path / "models"
    for relpath, data in {
        "checkpoints/civ.safetensors": CIV,
        "diffusion_models/flux.safetensors": HUB,
        "loras/mine.safetensors": MINE,
        "loras/mine.json": CONFIG,
        "checkpoints/put_checkpoints_here": b"",
    }.items():
        (models / relpath).parent.mkdir(parents=True, exist_ok=True)
        (models / relpath).write_bytes(data)
    env = {
        "HF_ENDPOINT": hub.url,
        "CIVITAI_ENDPOINT": civitai.url,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": "",
        "CIVITAI_TOKEN": "",
    }
    return models, cache, env


def test_adopt_then_apply_reproduces_the_folder(
    tmp_path: Path,
    adopted: tuple[Path, Path, dict[str, str]],
    hub: FakeHub,
    civitai: FakeCivitai,
    fileserver: FileServer,
) -> None:
    models, _, env = adopted
    manifest = tmp_path / "models.toml"
    run = modelsync("import", models, "-o", manifest, env=env, cwd=tmp_path)
    assert run.code == 0, run.stderr
    text = manifest.read_text()
    assert "civitai = 4242" in text
    assert 'hf = "org/flux"' in text and 'file = "transformer/flux1-dev.safetensors"' in text
    assert text.count("# source unknown: add url = … or a mirror (settings.mirrors)") == 2
    assert f'sha256 = "{sha(MINE)}"' in text and "put_checkpoints_here" not in text

    again = modelsync("import", models, "-o", manifest, env=env, cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert manifest.read_text() == text  # importing twice changes nothing

    # The files nobody publishes: on a content-addressed mirror of the team's own.
    for data in (MINE, CONFIG):
        fileserver.add_bytes(f"/by-sha256/{sha(data)}", data)
    mirrors = f'mirrors = ["{fileserver.url}/by-sha256/{{sha256}}"]\n'
    manifest.write_text(text.replace("[settings]\n", "[settings]\n" + mirrors, 1))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run = modelsync("apply", manifest, "--root", fresh, "--no-progress", env=env, cwd=tmp_path)
    assert run.code == 0, run.stdout + run.stderr

    assert tree(fresh) == tree(models)
    assert {r.path.rpartition("/")[2] for r in fileserver.requests} == {sha(MINE), sha(CONFIG)}
    assert any(r.path.endswith("/civ.safetensors") for r in civitai.cdn.requests)
    # flux.safetensors is in this machine's Hugging Face cache: reused, not downloaded
    assert "linked  diffusion_models/flux.safetensors" in run.stderr
    assert hub.cdn.requests == []


def test_offline_import_asks_civitai_nothing(
    tmp_path: Path, adopted: tuple[Path, Path, dict[str, str]], civitai: FakeCivitai
) -> None:
    models, _, env = adopted
    run = modelsync("import", models, "--offline", "-o", "m.toml", env=env, cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert civitai.requests == []
    text = (tmp_path / "m.toml").read_text()
    assert "civitai =" not in text and 'hf = "org/flux"' in text
    assert text.count("# source unknown") == 3
