"""doctor: finds aria2c, checks its RPC, reports tokens without printing them."""

from __future__ import annotations

from pathlib import Path

from tests.clirun import modelsync
from tests.conftest import write_manifest

TOKEN = "hf_doctorSecretToken123"


def test_doctor_reports_without_leaking(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", [{"url": "http://127.0.0.1:9/a.bin"}])
    env = {"HF_TOKEN": TOKEN, "HTTPS_PROXY": "http://user:proxypass@127.0.0.1:3128"}
    run = modelsync("doctor", manifest, env=env)
    assert run.code == 0, run.stderr
    assert "aria2 RPC: answers on 127.0.0.1" in run.stderr
    assert "HF_TOKEN: set" in run.stderr
    assert f"root writable: {tmp_path / 'models'}" in run.stderr
    assert TOKEN not in run.stderr + run.stdout
    assert "proxypass" not in run.stderr


def test_doctor_fails_on_missing_aria2c(tmp_path: Path) -> None:
    run = modelsync("doctor", env={"MODELSYNC_ARIA2C": str(tmp_path / "no-aria2c")})
    assert run.code == 1
    assert "FAIL aria2c" in run.stderr and "MODELSYNC_ARIA2C" in run.stderr
