"""A ComfyUI workflow end to end: `modelsync import wf.json` writes its models as entries
(URLs on the local file server, a sha256 where the workflow states one), then
`modelsync apply` puts each file, verified, in its ComfyUI folder. Importing again (the
JSON, or the PNG ComfyUI saved with the same workflow) changes nothing. Real CLI, real
aria2c."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.clirun import modelsync
from tests.conftest import Served, serve
from tests.core.test_import_workflow import png, text
from tests.servers import FileServer

SUB_ID = "5b0c3f4e-8a1d-4c2b-9e7f-1a2b3c4d5e6f"


def model(served: Served, directory: str, name: str, hashed: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "url": served.url, "directory": directory}
    if hashed:
        item |= {"hash": served.sha256.upper(), "hash_type": "SHA256"}
    return item


def loader(id: int, type: str, models: list[dict[str, Any]], widgets: list[Any]) -> dict[str, Any]:
    return {
        "id": id,
        "type": type,
        "pos": [0, 0],
        "size": [315, 98],
        "flags": {},
        "order": id,
        "mode": 0,
        "properties": {"Node name for S&R": type, "models": models},
        "widgets_values": widgets,
    }


def flux_workflow(ckpt: Served, unet: Served, clip: Served, vae: Served) -> dict[str, Any]:
    """A checkpoint at the top level, a UNet and text encoder in a subgraph, the VAE in
    the top-level models list (with its hash), a LoRA whose loader has no URL."""
    return {
        "last_node_id": 9,
        "last_link_id": 0,
        "links": [],
        "groups": [],
        "version": 0.4,
        "nodes": [
            loader(
                1,
                "CheckpointLoaderSimple",
                [model(ckpt, "checkpoints", "base.safetensors", True)],
                ["base.safetensors"],
            ),
            loader(2, "LoraLoader", [], ["SDXL/style.safetensors", 1.0, 1.0]),
            loader(3, SUB_ID, [], ["flux.safetensors"]),
            loader(4, "VAELoader", [], ["ae.safetensors"]),
        ],
        "definitions": {
            "subgraphs": [
                {
                    "id": SUB_ID,
                    "name": "Flux",
                    "nodes": [
                        loader(
                            5,
                            "UNETLoader",
                            [model(unet, "diffusion_models", "flux.safetensors")],
                            ["flux.safetensors", "default"],
                        ),
                        loader(
                            6,
                            "CLIPLoader",
                            [model(clip, "text_encoders", "t5.safetensors", True)],
                            ["t5.safetensors", "flux"],
                        ),
                    ],
                }
            ]
        },
        "models": [model(vae, "vae", "ae.safetensors", True)],
    }


def test_import_then_apply_puts_each_file_verified_in_its_comfyui_folder(
    tmp_path: Path, fileserver: FileServer
) -> None:
    ckpt = serve(fileserver, "/sdxl/base.safetensors", 300_000, seed=1)
    unet = serve(fileserver, "/flux/flux1-dev.safetensors", 400_000, seed=2)
    clip = serve(fileserver, "/te/t5xxl.safetensors", 200_000, seed=3)
    vae = serve(fileserver, "/flux/ae.safetensors", 100_000, seed=4)
    workflow = flux_workflow(ckpt, unet, clip, vae)
    (tmp_path / "wf.json").write_text(json.dumps(workflow, indent=2))

    run = modelsync("import", "wf.json", "-o", "models.toml", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    # the human report is on stderr
    assert "Import: 4 added, 0 skipped, 1 unresolved" in run.stderr
    assert "loras/SDXL/style.safetensors" in run.stderr  # the LoRA: where it goes, and why
    assert "no download URL in the workflow" in run.stderr
    manifest = tmp_path / "models.toml"
    text_before = manifest.read_text()
    assert f'sha256 = "{ckpt.sha256}"' in text_before
    assert f'sha256 = "{vae.sha256}"' in text_before

    again = modelsync("import", "wf.json", "-o", "models.toml", cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert manifest.read_text() == text_before  # byte for byte

    # The same workflow inside the PNG ComfyUI saved: nothing new either.
    image = png(text("prompt", "{}"), text("workflow", json.dumps(workflow)))
    (tmp_path / "ComfyUI_00001_.png").write_bytes(image)
    from_png = modelsync("import", "ComfyUI_00001_.png", "-o", "models.toml", cwd=tmp_path)
    assert from_png.code == 0, from_png.stderr
    assert "Import: 0 added, 4 skipped, 1 unresolved" in from_png.stderr
    assert manifest.read_text() == text_before

    root = tmp_path / "ComfyUI" / "models"
    root.mkdir(parents=True)
    applied = modelsync("apply", "models.toml", "--root", root, "--no-progress", cwd=tmp_path)
    assert applied.code == 0, applied.stdout + applied.stderr
    for relpath, served in {
        "checkpoints/base.safetensors": ckpt,
        "diffusion_models/flux.safetensors": unet,
        "text_encoders/t5.safetensors": clip,
        "vae/ae.safetensors": vae,
    }.items():
        assert hashlib.sha256((root / relpath).read_bytes()).hexdigest() == served.sha256
    verified = modelsync("verify", "models.toml", "--root", root, cwd=tmp_path)
    assert verified.code == 0, verified.stdout + verified.stderr


def test_a_wrong_hash_in_the_workflow_is_caught_by_apply(
    tmp_path: Path, fileserver: FileServer
) -> None:
    vae = serve(fileserver, "/vae/ae.safetensors", 50_000, seed=5)
    item = model(vae, "vae", "ae.safetensors") | {"hash": "0" * 64, "hash_type": "SHA256"}
    (tmp_path / "wf.json").write_text(json.dumps({"nodes": [], "models": [item]}))
    assert modelsync("import", "wf.json", "-o", "models.toml", cwd=tmp_path).code == 0
    root = tmp_path / "models"
    root.mkdir()
    run = modelsync("apply", "models.toml", "--root", root, "--no-progress", cwd=tmp_path)
    assert run.code != 0
    assert not (root / "vae" / "ae.safetensors").exists()


def test_a_damaged_png_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    image = bytearray(png(text("workflow", '{"nodes": []}')))
    image[50] ^= 0xFF  # inside the tEXt chunk: its CRC no longer matches
    (tmp_path / "broken.png").write_bytes(bytes(image))
    run = modelsync("import", "broken.png", "-o", "models.toml", cwd=tmp_path)
    assert run.code == 2
    assert "broken.png: damaged PNG: chunk 'tEXt' at byte 33 fails its CRC check" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "models.toml").exists()


def test_an_image_without_a_workflow_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(png(text("Software", "GIMP")))
    run = modelsync("import", "photo.png", "--json", cwd=tmp_path)
    assert run.code == 2
    assert json.loads(run.stdout)["error"]["message"] == "no ComfyUI workflow in photo.png"
    assert not (tmp_path / "models.toml").exists()
