"""Reading ComfyUI workflows (importers/workflow.py): UI format with subgraphs and a
top-level models list, loader widgets without a URL, API format, and the PNG/WebP images
ComfyUI saves with the workflow inside (built here with a tiny writer: struct + zlib)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from modelsync.importers import Findings, ImportInputError, ImportOptions
from modelsync.importers.workflow import NO_URL, read, read_png
from modelsync.manifest import Entry

FIXTURES = Path(__file__).parent.parent / "fixtures" / "import" / "workflow"
UI = FIXTURES / "ui_subgraphs.json"
WIDGETS = FIXTURES / "ui_widgets_without_url.json"
API = FIXTURES / "api_prompt.json"
BAD = FIXTURES / "ui_bad_refs.json"
SDXL = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
T5 = "6e480b09fae049a72d2a8c5fbccb8d3e92febeb233bbe9dfe7256958a9167635"


def by_target(findings: Findings) -> dict[str, dict[str, Any]]:
    return {f.target: f.values for f in findings.found}


def origins(findings: Findings) -> dict[str, str]:
    return {f.target: f.origin for f in findings.found}


def unresolved(findings: Findings) -> dict[str, tuple[str | None, str]]:
    return {u.name: (u.dir, u.why) for u in findings.unresolved}


def workflow(*nodes: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"last_node_id": 9, "last_link_id": 0, "links": [], "nodes": list(nodes), **top}


def node(
    id: int, type: str, models: list[dict[str, Any]] | None = None, widgets: Any = None
) -> dict[str, Any]:
    properties: dict[str, Any] = {"Node name for S&R": type}
    if models is not None:
        properties["models"] = models
    return {"id": id, "type": type, "properties": properties, "widgets_values": widgets or []}


def write_json(tmp_path: Path, data: Any, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- UI format -----------------------------------------------------------------------


def test_models_in_top_level_nodes_subgraphs_nested_subgraphs_and_models_list() -> None:
    found = read(UI, ImportOptions())
    assert sorted(by_target(found)) == [
        "checkpoints/sd_xl_base_1.0.safetensors",
        "controlnet/SDXL/controlnet-canny-sdxl-1.0.safetensors",
        "diffusion_models/flux1-dev.safetensors",
        "loras/add-detail-xl.safetensors",
        "text_encoders/clip_l.safetensors",
        "text_encoders/t5xxl_fp16.safetensors",
        "upscale_models/4x-UltraSharp.pth",
        "vae/ae.safetensors",
    ]
    where = origins(found)
    assert where["checkpoints/sd_xl_base_1.0.safetensors"] == (
        "ui_subgraphs.json: node 4 (CheckpointLoaderSimple)"
    )
    assert where["diffusion_models/flux1-dev.safetensors"] == (
        "ui_subgraphs.json: subgraph Flux Text-to-image node 37 (UNETLoader)"
    )
    assert where["upscale_models/4x-UltraSharp.pth"] == (
        "ui_subgraphs.json: subgraph Upscale (nested) node 3 (UpscaleModelLoader)"
    )
    assert where["controlnet/SDXL/controlnet-canny-sdxl-1.0.safetensors"] == (
        "ui_subgraphs.json: models[1]"
    )
    # every loader widget names a file some models[] entry gives: nothing unresolved
    # (the subgraph instance's proxied widgets included), no warnings
    assert found.unresolved == [] and found.warnings == []


def test_every_found_is_a_valid_manifest_entry() -> None:
    for path in (UI, WIDGETS, API, BAD):
        for item in read(path, ImportOptions()).found:
            Entry.model_validate(item.values)


def test_hugging_face_page_link_becomes_resolve_link_without_download_query() -> None:
    values = by_target(read(UI, ImportOptions()))["diffusion_models/flux1-dev.safetensors"]
    assert values == {
        "url": "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
        "dir": "diffusion_models",
        "filename": "flux1-dev.safetensors",
    }


def test_civitai_download_link_becomes_version_id_and_keeps_the_filename() -> None:
    values = by_target(read(UI, ImportOptions()))["loras/add-detail-xl.safetensors"]
    assert values == {"civitai": 135867, "dir": "loras", "filename": "add-detail-xl.safetensors"}


def test_sha256_only_when_hash_type_is_sha256() -> None:
    found = by_target(read(UI, ImportOptions()))
    # "SHA256" with an upper-case hash, and "sha256": taken, lower-cased
    assert found["checkpoints/sd_xl_base_1.0.safetensors"]["sha256"] == SDXL
    assert found["text_encoders/t5xxl_fp16.safetensors"]["sha256"] == T5
    # hash_type MD5 (a 64-hex hash all the same), and no hash_type: not a sha256
    assert "sha256" not in found["loras/add-detail-xl.safetensors"]
    assert "sha256" not in found["text_encoders/clip_l.safetensors"]


def test_a_sha256_hash_type_with_a_malformed_hash_is_not_taken(tmp_path: Path) -> None:
    model = {"name": "a.safetensors", "url": "https://example.com/a.safetensors"}
    data = workflow(
        node(1, "VAELoader", [{**model, "directory": "vae", "hash": "abc", "hash_type": "SHA256"}])
    )
    values = by_target(read(write_json(tmp_path, data), ImportOptions()))["vae/a.safetensors"]
    assert "sha256" not in values


def test_same_target_twice_is_one_entry_preferring_the_one_with_a_hash(tmp_path: Path) -> None:
    model = {
        "name": "ae.safetensors",
        "url": "https://example.com/ae.safetensors",
        "directory": "vae",
    }
    data = workflow(
        node(1, "VAELoader", [model], ["ae.safetensors"]),
        node(2, "VAELoader", [model], ["ae.safetensors"]),
        models=[{**model, "hash": T5.upper(), "hash_type": "sha256"}, model],
    )
    found = read(write_json(tmp_path, data), ImportOptions())
    assert len(found.found) == 1
    assert found.found[0].values["sha256"] == T5
    assert found.found[0].origin == "wf.json: models[0]"
    assert found.warnings == []


def test_same_target_with_two_sources_keeps_one_and_warns(tmp_path: Path) -> None:
    one = {"name": "ae.safetensors", "url": "https://a.example/ae.safetensors", "directory": "vae"}
    two = {**one, "url": "https://b.example/ae.safetensors"}
    found = read(write_json(tmp_path, workflow(node(1, "VAELoader", [one, two]))), ImportOptions())
    assert [f.values["url"] for f in found.found] == ["https://a.example/ae.safetensors"]
    assert found.warnings == [
        "vae/ae.safetensors: wf.json: node 1 (VAELoader) gives another source than "
        "wf.json: node 1 (VAELoader); kept the first"
    ]


def test_unsafe_directory_non_http_url_and_non_plain_name_are_unresolved() -> None:
    found = read(BAD, ImportOptions())
    assert by_target(found) == {
        "vae/ok.safetensors": {
            "url": "https://example.com/ok.safetensors",
            "dir": "vae",
            "filename": "ok.safetensors",
        }
    }
    why = unresolved(found)
    assert set(why) == {
        "evil.safetensors",
        "abs.safetensors",
        "win.safetensors",
        "ftp.safetensors",
        "sub/dir.safetensors",
    }
    for name in ("evil.safetensors", "abs.safetensors", "win.safetensors"):
        folder, reason = why[name]
        assert folder is None and reason.startswith("unsafe directory"), name
    assert "'../../.ssh'" in why["evil.safetensors"][1]
    assert why["ftp.safetensors"] == (
        "vae",
        "url is not http(s): 'ftp://example.com/ftp.safetensors'; "
        "add a download URL with `modelsync add`",
    )
    assert why["sub/dir.safetensors"][1] == "name 'sub/dir.safetensors' is not a plain file name"
    # the loaders naming those files are the models[] entries' business, not "no URL"
    assert all(reason != NO_URL for _, reason in why.values())


def test_loader_widget_without_url_is_unresolved_with_its_folder() -> None:
    found = read(WIDGETS, ImportOptions())
    assert sorted(by_target(found)) == ["vae/ae.safetensors"]
    assert found.unresolved and all(u.why == NO_URL for u in found.unresolved)
    assert {u.name: u.dir for u in found.unresolved} == {
        "sd_xl_base_1.0.safetensors": "checkpoints",
        "detail_tweaker_xl.safetensors": "loras/SDXL",  # "SDXL\\…" as Windows' ComfyUI saves it
        "flux1-schnell.safetensors": "diffusion_models",
        "clip_l.safetensors": "text_encoders",
        "t5xxl_fp8_e4m3fn.safetensors": "text_encoders",
    }
    origin = {u.name: u.origin for u in found.unresolved}
    assert origin["flux1-schnell.safetensors"] == "ui_widgets_without_url.json: node 6 (UNETLoader)"


def test_widgets_by_name_and_legacy_group_nodes(tmp_path: Path) -> None:
    data = workflow(
        node(1, "SomeCustomLoader", widgets={"lora_name": "x.safetensors", "strength": 1.0}),
        extra={
            "groupNodes": {
                "Loaders": {"nodes": [node(0, "CheckpointLoaderSimple", widgets=["g.ckpt"])]}
            }
        },
    )
    found = read(write_json(tmp_path, data), ImportOptions())
    assert {u.name: (u.dir, u.origin) for u in found.unresolved} == {
        "x.safetensors": ("loras", "wf.json: node 1 (SomeCustomLoader)"),
        "g.ckpt": ("checkpoints", "wf.json: group node Loaders node 0 (CheckpointLoaderSimple)"),
    }


def test_api_format_loader_inputs_are_unresolved_with_their_folder() -> None:
    found = read(API, ImportOptions())
    assert found.found == []
    assert {u.name: u.dir for u in found.unresolved} == {
        "v1-5-pruned-emaonly.safetensors": "checkpoints",
        "epi_noiseoffset2.safetensors": "loras/SD15",
        "clip_vision_h.safetensors": "clip_vision",  # CLIPVisionLoader's clip_name
        "RealESRGAN_x4plus.pth": "upscale_models",  # UpscaleModelLoader's model_name
        "vae-ft-mse-840000-ema-pruned.safetensors": "vae",
    }
    assert all(u.why == NO_URL for u in found.unresolved)
    assert found.unresolved[0].origin == "api_prompt.json: node 4 (CheckpointLoaderSimple)"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (("flux",), ["diffusion_models/flux1-dev.safetensors"]),  # a name
        (
            ("TEXT_ENCODERS",),
            ["text_encoders/clip_l.safetensors", "text_encoders/t5xxl_fp16.safetensors"],
        ),
        (
            ("loraloader", "upscale"),
            ["loras/add-detail-xl.safetensors", "upscale_models/4x-UltraSharp.pth"],
        ),
    ],
)
def test_filters_keep_references_by_name_directory_or_node_type(
    filters: tuple[str, ...], expected: list[str]
) -> None:
    found = read(UI, ImportOptions(filters=filters))
    assert sorted(by_target(found)) == expected
    assert found.unresolved == []  # the filtered-out entries' loaders are not "no URL"


def test_filters_apply_to_unresolved_widgets_and_api_inputs() -> None:
    widgets = read(WIDGETS, ImportOptions(filters=("lora",)))
    assert [u.name for u in widgets.unresolved] == ["detail_tweaker_xl.safetensors"]
    assert widgets.found == []
    api = read(API, ImportOptions(filters=("CLIPVision",)))
    assert [u.name for u in api.unresolved] == ["clip_vision_h.safetensors"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"nodes": [', "wf.json: not valid JSON: line 1, column 12"),
        ('["not", "a", "workflow"]', "wf.json: not a ComfyUI workflow"),
        ('{"3": {"inputs": {}}}', "wf.json: not a ComfyUI workflow"),
    ],
)
def test_unreadable_json_is_an_input_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "wf.json"
    path.write_text(content)
    with pytest.raises(ImportInputError) as err:
        read(path, ImportOptions())
    assert message in str(err.value.args[0])


# --- images --------------------------------------------------------------------------


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    check = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", check)


def png(*chunks: bytes) -> bytes:
    """A 1x1 RGB PNG with `chunks` between its header and its pixels."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(chunks) + pixels + chunk(b"IEND", b"")


def text(key: str, value: str) -> bytes:
    """tEXt, as ComfyUI's SaveImage writes it (PIL's PngInfo.add_text, ASCII JSON)."""
    return chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


def itext(key: str, value: str, compressed: bool) -> bytes:
    raw = value.encode("utf-8")
    body = zlib.compress(raw) if compressed else raw
    head = key.encode() + b"\0" + bytes([int(compressed), 0]) + b"en\0" + b"Workflow\0"
    return chunk(b"iTXt", head + body)


def ztext(key: str, value: str) -> bytes:
    return chunk(b"zTXt", key.encode() + b"\0\0" + zlib.compress(value.encode("latin-1")))


def webp(values: list[tuple[int, str]], prefix: bytes = b"Exif\0\0") -> bytes:
    """A WebP whose EXIF chunk holds IFD0 ASCII tags, as ComfyUI's WebP savers write
    them (0x010F Make = "workflow:<json>", 0x0110 Model = "prompt:<json>")."""
    count = len(values)
    data_at = 8 + 2 + 12 * count + 4
    entries, blobs = b"", b""
    for tag, value in values:
        raw = value.encode() + b"\0"
        entries += struct.pack("<HHII", tag, 2, len(raw), data_at + len(blobs))
        blobs += raw
    tiff = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", count) + entries + b"\0" * 4
    exif = prefix + tiff + blobs
    image = b"VP8L" + struct.pack("<I", 5) + b"\x2f\0\0\0\0" + b"\0"  # odd size: padded
    body = b"WEBP" + image + b"EXIF" + struct.pack("<I", len(exif)) + exif
    body += b"\0" * (len(exif) & 1)
    return b"RIFF" + struct.pack("<I", len(body)) + body


UI_TEXT = UI.read_text()
API_TEXT = API.read_text()
UI_TARGETS = sorted(by_target(read(UI, ImportOptions())))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([text("prompt", API_TEXT), text("workflow", UI_TEXT)], id="tEXt"),
        pytest.param([itext("workflow", UI_TEXT, compressed=True)], id="iTXt-compressed"),
        pytest.param([itext("workflow", UI_TEXT, compressed=False)], id="iTXt"),
        pytest.param([ztext("workflow", UI_TEXT)], id="zTXt"),
    ],
)
def test_png_workflow_chunk_is_imported(tmp_path: Path, chunks: list[bytes]) -> None:
    path = write(tmp_path, "ComfyUI_00001_.png", png(*chunks))
    found = read(path, ImportOptions())
    assert sorted(by_target(found)) == UI_TARGETS
    assert found.found[0].origin.startswith("ComfyUI_00001_.png: node 4")
    assert read_png(path, ImportOptions()).found == found.found


def test_png_with_only_the_api_prompt_lists_its_loaders(tmp_path: Path) -> None:
    path = write(tmp_path, "api.png", png(text("prompt", API_TEXT)))
    found = read(path, ImportOptions())
    assert found.found == []
    assert "clip_vision_h.safetensors" in unresolved(found)


@pytest.mark.parametrize("prefix", [b"Exif\0\0", b""])
def test_webp_exif_workflow_is_imported(tmp_path: Path, prefix: bytes) -> None:
    image = webp([(0x0110, f"prompt:{API_TEXT}"), (0x010F, f"workflow:{UI_TEXT}")], prefix)
    found = read(write(tmp_path, "ComfyUI_00001_.webp", image), ImportOptions())
    assert sorted(by_target(found)) == UI_TARGETS


def test_webp_with_only_the_prompt(tmp_path: Path) -> None:
    found = read(write(tmp_path, "a.webp", webp([(0x0110, f"prompt:{API_TEXT}")])), ImportOptions())
    assert found.found == [] and "RealESRGAN_x4plus.pth" in unresolved(found)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("plain.png", png(text("parameters", "a1111 text"))),
        ("plain.webp", webp([(0x010E, "a description")])),
    ],
)
def test_image_without_workflow_is_an_input_error(tmp_path: Path, name: str, data: bytes) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(ImportInputError) as err:
        read(path, ImportOptions())
    assert err.value.args[0] == f"no ComfyUI workflow in {path}"


WORKFLOW_PNG = png(text("workflow", UI_TEXT))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (WORKFLOW_PNG[:200], "truncated PNG: chunk 'tEXt' at byte 33 says"),
        (WORKFLOW_PNG[:33], "truncated PNG (no IEND chunk)"),
        (
            png(chunk(b"tEXt", b"workflow\0{}", crc=1)),
            "damaged PNG: chunk 'tEXt' at byte 33 fails its CRC",
        ),
        (png(chunk(b"zTXt", b"workflow\0\0not zlib")), "damaged PNG: text 'workflow'"),
        (png(chunk(b"iTXt", b"workflow\0\1\0\0\0" + zlib.compress(b"{}")[:-3])), "is cut short"),
        (png(text("workflow", '{"nodes": [}')), "the 'workflow' text: not valid JSON"),
        (png(text("workflow", "[1, 2]")), "not a ComfyUI workflow"),
    ],
)
def test_damaged_png_is_an_input_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, "broken.png", data)
    with pytest.raises(ImportInputError) as err:
        read(path, ImportOptions())
    assert message in err.value.args[0]


def test_truncated_webp_is_an_input_error(tmp_path: Path) -> None:
    data = webp([(0x010F, f"workflow:{UI_TEXT}")])
    with pytest.raises(ImportInputError) as err:
        read(write(tmp_path, "cut.webp", data[:-100]), ImportOptions())
    assert "truncated WebP: chunk 'EXIF'" in err.value.args[0]
