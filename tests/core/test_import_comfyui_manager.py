"""ComfyUI-Manager's model list (importers/comfyui_manager.py): each model placed where
ComfyUI-Manager places it (`get_model_dir`/`get_model_path` in its glob/manager_server.py).

The fixture's first entries are copied from ltdrdata/ComfyUI-Manager's model-list.json
(commit 908a1009, long descriptions trimmed); the ones named "crafted: …" cover the edge
cases (a duplicate with another URL, a Hugging Face page link, unsafe save_paths…)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelsync.importers import Findings, Found, ImportInputError, ImportOptions
from modelsync.importers.comfyui_manager import read
from modelsync.manifest import Entry

FIXTURE = Path(__file__).parent.parent / "fixtures" / "import" / "comfyui-manager"
MODEL_LIST = FIXTURE / "model-list.json"


def valid(findings: Findings) -> dict[str, dict[str, Any]]:
    """Every entry found, by target; each must be a valid manifest entry."""
    for found in findings.found:
        Entry.model_validate(found.values)
    return {f.target: f.values for f in findings.found}


def one_model(tmp_path: Path, **model: Any) -> Path:
    """A list holding one model shaped like the real ones (RealESRGAN x2's fields)."""
    entry = {
        "name": "RealESRGAN x2",
        "type": "upscale",
        "base": "upscale",
        "save_path": "default",
        "description": "RealESRGAN x2 upscaler model",
        "reference": "https://huggingface.co/ai-forever/Real-ESRGAN",
        "filename": "RealESRGAN_x2.pth",
        "url": "https://huggingface.co/ai-forever/Real-ESRGAN/resolve/main/RealESRGAN_x2.pth",
        "size": "67.1MB",
        **model,
    }
    path = tmp_path / "model-list.json"
    path.write_text(json.dumps({"models": [entry]}))
    return path


def by_origin(findings: Findings, name: str) -> Found:
    matches = [f for f in findings.found if f.origin == f"model-list.json: {name}"]
    assert len(matches) == 1, [f.origin for f in findings.found]
    return matches[0]


def test_the_real_entries_become_entries_where_comfyui_manager_puts_them() -> None:
    findings = read(MODEL_LIST, ImportOptions())
    found = valid(findings)
    assert found["upscale_models/RealESRGAN_x2.pth"] == {
        "url": "https://huggingface.co/ai-forever/Real-ESRGAN/resolve/main/RealESRGAN_x2.pth",
        "dir": "upscale_models",
        "filename": "RealESRGAN_x2.pth",
    }
    # The filename is the list's, not the URL's last segment ("?dl=1" kept: it is the link).
    assert found["upscale_models/ldsr/last.ckpt"] == {
        "url": "https://heibox.uni-heidelberg.de/f/578df07c8fc04ffbadf3/?dl=1",
        "dir": "upscale_models/ldsr",
        "filename": "last.ckpt",
    }
    assert found["text_encoders/clip_l.safetensors"]["dir"] == "text_encoders"  # clip
    assert found["vae/cosmos_cv8x8x8_1.0.safetensors"]["dir"] == "vae"  # type "VAE"
    realesrgan = by_origin(findings, "RealESRGAN x2")
    assert realesrgan.comment == "RealESRGAN x2 (upscale)"
    assert by_origin(findings, "EasyNegative").comment == "EasyNegative (embedding, SD1.5)"


@pytest.mark.parametrize(
    ("type_", "folder"),
    [
        ("checkpoint", "checkpoints"),
        ("checkpoints", "checkpoints"),
        ("unclip", "checkpoints"),
        ("clip", "text_encoders"),
        ("text_encoders", "text_encoders"),
        ("vae", "vae"),
        ("VAE", "vae"),  # the real list writes it so: ComfyUI-Manager lower-cases the type
        ("lora", "loras"),
        ("t2i-adapter", "controlnet"),
        ("T2I-Adapter", "controlnet"),
        ("t2i-style", "controlnet"),
        ("T2I-Style", "controlnet"),
        ("controlnet", "controlnet"),
        ("clip_vision", "clip_vision"),
        ("gligen", "gligen"),
        ("upscale", "upscale_models"),
        ("embedding", "embeddings"),
        ("embeddings", "embeddings"),
        ("unet", "diffusion_models"),
        ("diffusion_model", "diffusion_models"),
        ("IP-Adapter", "etc"),  # any other type
        ("TAESD", "etc"),
        ("", "etc"),
    ],
)
def test_save_path_default_maps_by_type(tmp_path: Path, type_: str, folder: str) -> None:
    found = valid(read(one_model(tmp_path, type=type_), ImportOptions()))
    assert list(found) == [f"{folder}/RealESRGAN_x2.pth"]
    assert found[f"{folder}/RealESRGAN_x2.pth"]["dir"] == folder


@pytest.mark.parametrize(
    ("save_path", "folder"),
    [
        ("checkpoints/SDXL", "checkpoints/SDXL"),
        ("upscale_models", "upscale_models"),  # "default" only maps by type
        ("checkpoints/SDXL/", "checkpoints/SDXL"),
        ("./insightface//models/antelopev2", "insightface/models/antelopev2"),
    ],
)
def test_any_other_save_path_is_the_dir(tmp_path: Path, save_path: str, folder: str) -> None:
    found = valid(
        read(one_model(tmp_path, type="checkpoint", save_path=save_path), ImportOptions())
    )
    assert list(found) == [f"{folder}/RealESRGAN_x2.pth"]
    assert found[f"{folder}/RealESRGAN_x2.pth"]["dir"] == folder


def test_huggingface_filename_is_the_whole_repository() -> None:
    found = valid(read(MODEL_LIST, ImportOptions()))
    # The real form: url is the repo id; it lands in <save_path>/<repo name>.
    assert found["Janus-Pro/Janus-Pro-1B/"] == {
        "hf": "deepseek-ai/Janus-Pro-1B",
        "dir": "Janus-Pro/Janus-Pro-1B",
    }
    # The repository's page as url, with save_path "default" (an unknown type: etc).
    assert found["etc/MoGe_safetensors/"] == {
        "hf": "Kijai/MoGe_safetensors",
        "dir": "etc/MoGe_safetensors",
    }


@pytest.mark.parametrize(
    ("url", "values"),
    [
        ("https://huggingface.co/org/repo", {"hf": "org/repo", "dir": "LLM/repo"}),
        ("https://hf.co/org/repo/", {"hf": "org/repo", "dir": "LLM/repo"}),
        (
            "https://huggingface.co/org/repo/tree/v1.0",
            {"hf": "org/repo", "revision": "v1.0", "dir": "LLM/repo"},
        ),
        (
            "https://huggingface.co/datasets/org/data",
            {"hf": "datasets/org/data", "dir": "LLM/data"},
        ),
    ],
)
def test_huggingface_repository_urls(tmp_path: Path, url: str, values: dict[str, Any]) -> None:
    path = one_model(tmp_path, filename="<huggingface>", url=url, save_path="LLM")
    assert valid(read(path, ImportOptions())) == {f"{values['dir']}/": values}


@pytest.mark.parametrize(
    "url",
    [
        "https://huggingface.co/org/repo/resolve/main/model.safetensors",
        "https://example.org/org/repo",
        "not a repo",
    ],
)
def test_huggingface_filename_without_a_repository_is_unresolved(tmp_path: Path, url: str) -> None:
    path = one_model(tmp_path, filename="<huggingface>", url=url, save_path="LLM")
    findings = read(path, ImportOptions())
    assert findings.found == []
    [unresolved] = findings.unresolved
    assert unresolved.dir == "LLM"
    assert "needs url = a Hugging Face repository" in unresolved.why
    assert 'add hf = "org/name"' in unresolved.why


def test_civitai_download_url_becomes_civitai_with_the_filename() -> None:
    found = valid(read(MODEL_LIST, ImportOptions()))
    assert found["embeddings/SD1.5/easynegative.safetensors"] == {
        "civitai": 9208,
        "dir": "embeddings/SD1.5",
        "filename": "easynegative.safetensors",
    }


def test_civitai_download_url_on_the_configured_endpoint(tmp_path: Path) -> None:
    path = one_model(
        tmp_path, url="http://127.0.0.1:8123/api/download/models/60938", filename="hand.pt"
    )
    options = ImportOptions(env={"CIVITAI_ENDPOINT": "http://127.0.0.1:8123"})
    found = valid(read(path, options))
    assert found["upscale_models/hand.pt"] == {
        "civitai": 60938,
        "dir": "upscale_models",
        "filename": "hand.pt",
    }


def test_page_links_become_download_links() -> None:
    found = valid(read(MODEL_LIST, ImportOptions()))
    # GitHub /blob/ is the file's page: /raw/ is the file (the real MobileSAM entry).
    assert found["sams/mobile_sam.pt"]["url"] == (
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    )
    # Hugging Face /blob/ → /resolve/, ?download=true dropped.
    assert found["diffusion_models/FLUX1/flux1-dev-fp8.safetensors"]["url"] == (
        "https://huggingface.co/Kijai/flux-fp8/resolve/main/flux1-dev-fp8.safetensors"
    )


def test_duplicates_are_merged_and_another_url_is_warned() -> None:
    findings = read(MODEL_LIST, ImportOptions())
    targets = [f.target for f in findings.found]
    assert len(targets) == len(set(targets))
    # The real list has MoGe_ViT_L_fp16 twice (same URL): one entry, no warning.
    assert targets.count("MoGe/MoGe_ViT_L_fp16.safetensors") == 1
    assert not any("MoGe" in w for w in findings.warnings)
    # A second SDXL base from another URL: the first is kept, and the warning says so.
    sdxl = "checkpoints/SDXL/sd_xl_base_1.0.safetensors"
    assert valid(findings)[sdxl]["url"].startswith("https://huggingface.co/stabilityai/")
    [warning] = [w for w in findings.warnings if sdxl in w]
    assert warning.startswith("model-list.json: crafted: SDXL base from a mirror: ")
    assert "model-list.json: sd_xl_base_1.0.safetensors" in warning
    assert "someone/sdxl-mirror" in warning and "kept the first" in warning


def test_duplicates_compare_targets_case_insensitively(tmp_path: Path) -> None:
    models = [
        {"name": "a", "type": "lora", "save_path": "loras", "filename": "A.safetensors",
         "url": "https://example.org/a/A.safetensors"},
        {"name": "b", "type": "lora", "save_path": "Loras", "filename": "a.safetensors",
         "url": "https://example.org/b/a.safetensors"},
    ]  # fmt: skip
    path = tmp_path / "model-list.json"
    path.write_text(json.dumps({"models": models}))
    findings = read(path, ImportOptions())
    assert list(valid(findings)) == ["loras/A.safetensors"]
    assert len(findings.warnings) == 1 and "model-list.json: b: same target" in findings.warnings[0]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("crafted: escapes models", "save_path 'checkpoints/../../escape' contains '..'"),
        ("crafted: absolute", "save_path '/etc/modelsync' is absolute"),
        (
            "crafted: in a custom node",
            "save_path 'custom_nodes/ComfyUI-Impact-Pack/models' is inside a custom node's",
        ),
        ("crafted: windows path", "save_path 'checkpoints\\\\SDXL' contains '\\'"),
        ("crafted: path as filename", "filename 'sub/evil.safetensors' is a path"),
    ],
)
def test_unsafe_paths_are_skipped_with_a_warning_naming_the_entry(name: str, why: str) -> None:
    findings = read(MODEL_LIST, ImportOptions())
    [warning] = [w for w in findings.warnings if w.startswith(f"model-list.json: {name}: ")]
    assert warning.startswith(f"model-list.json: {name}: skipped: {why}")
    assert not any(f.origin == f"model-list.json: {name}" for f in findings.found)
    assert not any(u.origin == f"model-list.json: {name}" for u in findings.unresolved)


@pytest.mark.parametrize(
    "save_path",
    ["..", "../models", "C:/models/checkpoints", "custom_nodes", "custom_nodes/x", "a\\b"],
)
def test_no_entry_lands_outside_the_models_folder(tmp_path: Path, save_path: str) -> None:
    findings = read(one_model(tmp_path, save_path=save_path), ImportOptions())
    assert findings.found == []
    assert findings.warnings[0].startswith("model-list.json: RealESRGAN x2: skipped: save_path")


def test_human_sizes_are_never_written() -> None:
    found = valid(read(MODEL_LIST, ImportOptions()))
    assert found  # every model in the list has a size like "67.1MB" or "6.94GB"
    assert not [target for target, values in found.items() if "size" in values]


def test_a_model_without_a_usable_url_is_unresolved_with_why() -> None:
    findings = read(MODEL_LIST, ImportOptions())
    unresolved = {u.origin: u for u in findings.unresolved}
    assert set(unresolved) == {
        "model-list.json: crafted: no url",
        "model-list.json: crafted: ftp url",
    }
    no_url = unresolved["model-list.json: crafted: no url"]
    assert (no_url.name, no_url.dir) == ("nourl.safetensors", "loras/SDXL")
    assert no_url.why.startswith("no url: add its download link as url = …")
    ftp = unresolved["model-list.json: crafted: ftp url"]
    assert (ftp.name, ftp.dir) == ("ftp.safetensors", "vae")  # default, type VAE
    assert "'ftp://files.example.org/ftp.safetensors' is not an http(s) link" in ftp.why


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        # base "FLUX.1" and names: case-insensitive
        (("flux",), {"flux1-dev-Q4_0.gguf", "flux1-dev-fp8.safetensors"}),
        # type "upscale"
        (("UPSCALE",), {"RealESRGAN_x2.pth", "last.ckpt"}),
        # the filename; repeatable (either matches)
        (("easynegative", "mobile_sam"), {"easynegative.safetensors", "mobile_sam.pt"}),
        # base alone ("SD1.5": not in EasyNegative's name, type or filename)
        (("sd1.5",), {"easynegative.safetensors"}),
        # base "Janus-Pro" picks the repository entry
        (("janus",), {"Janus-Pro/Janus-Pro-1B/"}),
        # only name, type, base and filename count: not the url, nor the description
        (("heibox",), set()),
        (("upscaler model",), set()),
    ],
)
def test_filters_pick_by_name_type_base_or_filename(
    filters: tuple[str, ...], expected: set[str]
) -> None:
    findings = read(MODEL_LIST, ImportOptions(filters=filters))
    picked = {str(f.values.get("filename") or f.target) for f in findings.found}
    assert picked == expected
    valid(findings)


def test_filtered_out_models_are_not_reported() -> None:
    findings = read(MODEL_LIST, ImportOptions(filters=("mobile_sam",)))
    assert (findings.unresolved, findings.warnings) == ([], [])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a ComfyUI-Manager model list: invalid JSON at line 1, column 2"),
        ("[1, 2]", 'not a ComfyUI-Manager model list (no "models" list)'),
        ('{"models": {"a": 1}}', 'not a ComfyUI-Manager model list (no "models" list)'),
        ('{"custom_nodes": []}', 'not a ComfyUI-Manager model list (no "models" list)'),
        # a workflow's top-level models list: {name, url, directory}
        (
            '{"models": [{"name": "a.safetensors", "url": "https://x/a", "directory": "vae"}]}',
            'not a ComfyUI-Manager model list (its "models" have no save_path or type)',
        ),
    ],
)
def test_input_that_is_not_a_model_list_is_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "list.json"
    path.write_text(content)
    with pytest.raises(ImportInputError) as info:
        read(path, ImportOptions())
    assert info.value.args[0].startswith(f"{path}: {message}")
    assert "--from" in info.value.args[1]


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000], ids=["binary", "deep"]
)
def test_unreadable_json_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "list.json"
    path.write_bytes(content)
    with pytest.raises(ImportInputError, match="not a ComfyUI-Manager model list"):
        read(path, ImportOptions())


def test_a_model_that_is_not_an_object_is_warned_and_the_rest_imported(tmp_path: Path) -> None:
    path = one_model(tmp_path)
    data = json.loads(path.read_text())
    data["models"].insert(0, "RealESRGAN_x4.pth")
    path.write_text(json.dumps(data))
    findings = read(path, ImportOptions())
    assert findings.warnings == ["model-list.json: models[0] is not an object: skipped"]
    assert list(valid(findings)) == ["upscale_models/RealESRGAN_x2.pth"]


def test_an_empty_list_has_nothing_to_import(tmp_path: Path) -> None:
    path = tmp_path / "model-list.json"
    path.write_text('{"models": []}')
    assert read(path, ImportOptions()) == Findings()


def test_a_name_that_cannot_be_a_file_is_skipped_not_written(tmp_path: Path) -> None:
    # Valid for ComfyUI-Manager on Linux, but a shared manifest refuses Windows-only traps.
    findings = read(one_model(tmp_path, filename="model?.pth"), ImportOptions())
    assert findings.found == []
    [warning] = findings.warnings
    assert warning.startswith("model-list.json: RealESRGAN x2: skipped: cannot be a manifest entry")


def test_comment_and_origin_are_one_line_whatever_the_list_holds(tmp_path: Path) -> None:
    path = one_model(tmp_path, name="Real\nESRGAN\x00 x2\u2028", type="upscale", base="SD\r1.5")
    [found] = read(path, ImportOptions()).found
    assert found.comment == "Real ESRGAN x2 (upscale, SD 1.5)"
    assert found.origin == "model-list.json: Real ESRGAN x2"
