"""ComfyUI workflows (UI and API format) and the PNG/WebP images ComfyUI saves with one.

A UI-format workflow names its models twice: `properties.models[]` of a node (and a
top-level `models[]`) give `{name, url, directory, hash?, hash_type?}`, which becomes an
entry; a loader node's `widgets_values` give the file names it loads, which are only
listed as unresolved when no URL for that file is anywhere in the workflow. Subgraphs
(`definitions.subgraphs[*]`, nested ones too) and legacy group nodes
(`extra.groupNodes[*].nodes`) are read like the top level. An API-format workflow
(`{"3": {"class_type": ..., "inputs": {...}}}`) carries no URLs: its loader inputs are
listed as unresolved, with the folder they belong in.

Images: ComfyUI's SaveImage writes the UI workflow as a PNG text chunk `workflow` and the
API workflow as `prompt` (tEXt, or iTXt/zTXt from other writers); its WebP savers write
EXIF IFD0 ASCII values `workflow:<json>` (Make, 0x010F) and `prompt:<json>` (Model,
0x0110), read here like the frontend's getWebpMetadata does. Pure Python: struct + zlib.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from modelsync.importers import (
    Findings,
    Found,
    ImportInputError,
    ImportOptions,
    Unresolved,
    source_keys,
)
from modelsync.inventory import MODEL_EXTENSIONS
from modelsync.manifest import Entry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A text chunk inflates to at most this: a workflow is kilobytes, a zip bomb is not.
MAX_TEXT_BYTES = 64 << 20

# Loader node types → the ComfyUI models folder their file names are in (folder_paths
# names; "diffusion_models" is the current name of "unet", "text_encoders" of "clip").
NODE_FOLDERS: dict[str, str] = {
    "CheckpointLoaderSimple": "checkpoints",
    "CheckpointLoader": "checkpoints",
    "CheckpointLoader|pysssss": "checkpoints",
    "unCLIPCheckpointLoader": "checkpoints",
    "ImageOnlyCheckpointLoader": "checkpoints",
    "UNETLoader": "diffusion_models",
    "UnetLoaderGGUF": "diffusion_models",
    "UnetLoaderGGUFAdvanced": "diffusion_models",
    "CLIPLoader": "text_encoders",
    "DualCLIPLoader": "text_encoders",
    "TripleCLIPLoader": "text_encoders",
    "QuadrupleCLIPLoader": "text_encoders",
    "CLIPLoaderGGUF": "text_encoders",
    "DualCLIPLoaderGGUF": "text_encoders",
    "TripleCLIPLoaderGGUF": "text_encoders",
    "CLIPVisionLoader": "clip_vision",
    "VAELoader": "vae",
    "LoraLoader": "loras",
    "LoraLoaderModelOnly": "loras",
    "LoraLoader|pysssss": "loras",
    "ControlNetLoader": "controlnet",
    "DiffControlNetLoader": "controlnet",
    "UpscaleModelLoader": "upscale_models",
    "StyleModelLoader": "style_models",
    "GLIGENLoader": "gligen",
    "PhotoMakerLoader": "photomaker",
    "HypernetworkLoader": "hypernetworks",
    "AudioEncoderLoader": "audio_encoders",
    "ModelPatchLoader": "model_patches",
}

# Loader input names → folder, for nodes not in NODE_FOLDERS (API format and widgets
# given by name). "model_name" is left out: too many nodes use it for other things.
INPUT_FOLDERS: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "vae_name": "vae",
    "lora_name": "loras",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "photomaker_model_name": "photomaker",
}

NO_URL = (
    "no download URL in the workflow: add it with `modelsync add` or import the folder "
    "that holds it"
)
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def read(path: Path, options: ImportOptions) -> Findings:
    """A workflow JSON, or a PNG/WebP image carrying one (told apart by content)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ImportInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(PNG_SIGNATURE) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return read_png(path, options)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportInputError(f"{path}: cannot read as UTF-8 text: {exc}") from None
    return read_workflow(_parse_json(text, f"{path}"), path.name, options)


def read_png(path: Path, options: ImportOptions) -> Findings:
    """The workflow embedded in an image ComfyUI saved (PNG or WebP)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data.startswith(PNG_SIGNATURE):
        texts = png_texts(data, str(path))
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        texts = webp_texts(data, str(path))
    else:
        raise ImportInputError(f"{path}: not a PNG or WebP image")
    key = "workflow" if "workflow" in texts else "prompt" if "prompt" in texts else None
    if key is None:
        raise ImportInputError(
            f"no ComfyUI workflow in {path}",
            "ComfyUI embeds it when saving with metadata on; import the workflow JSON instead",
        )
    workflow = _parse_json(texts[key], f"{path}: the {key!r} text")
    return read_workflow(workflow, path.name, options)


# --- workflows -----------------------------------------------------------------------


def read_workflow(data: Any, label: str, options: ImportOptions) -> Findings:
    """Findings from a parsed workflow; `label` names the source in origins."""
    if isinstance(data, dict) and ("nodes" in data or "definitions" in data):
        return _Reader(label, options).ui(data)
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and "class_type" in v for v in data.values())
    ):
        return _api(data, label, options)
    raise ImportInputError(
        f'{label}: not a ComfyUI workflow (neither UI format with "nodes" nor API format '
        'with "class_type" per node)'
    )


@dataclass(frozen=True)
class _Where:
    """A node's place, for origins: `<file>: [subgraph <name> ]node <id> (<type>)`."""

    label: str
    graph: str  # "" at the top level, else "subgraph <name> "

    def node(self, node: dict[str, Any]) -> str:
        return f"{self.label}: {self.graph}node {node.get('id')} ({node.get('type')})"


class _Reader:
    def __init__(self, label: str, options: ImportOptions) -> None:
        self.label = label
        self.options = options
        self.findings = Findings()
        self.found: dict[str, Found] = {}  # target (casefolded) → entry
        self.widgets: list[tuple[str, str, str]] = []  # file name, folder, origin
        # Names that a models[] entry gives (with or without a usable URL, filtered out
        # or not): a loader naming one of them is that entry's business, not unresolved.
        self.named: set[str] = set()

    def ui(self, data: dict[str, Any]) -> Findings:
        self.graph(data, _Where(self.label, ""), top=True)
        extra = data.get("extra")
        groups = extra.get("groupNodes") if isinstance(extra, dict) else None
        if isinstance(groups, dict):  # legacy group nodes: their inner nodes
            for name, group in groups.items():
                if isinstance(group, dict):
                    self.nodes(group.get("nodes"), _Where(self.label, f"group node {name} "))
        self.findings.found = list(self.found.values())
        seen: set[tuple[str, str]] = set()
        for name, folder, origin in self.widgets:
            key = (name, folder)
            base = PurePosixPath(name.replace("\\", "/")).name.casefold()
            if base in self.named or key in seen:
                continue  # ComfyUI finds a loader's file by its name: a model entry covers it
            seen.add(key)
            self.findings.unresolved.append(_unresolved_widget(name, folder, origin))
        return self.findings

    def graph(self, graph: dict[str, Any], where: _Where, top: bool = False) -> None:
        self.nodes(graph.get("nodes"), where)
        models = graph.get("models")
        if isinstance(models, list):
            prefix = f"{self.label}: {where.graph}" if not top else f"{self.label}: "
            for i, model in enumerate(models):
                self.model(model, f"{prefix}models[{i}]", "")
        definitions = graph.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        for sub in subgraphs if isinstance(subgraphs, list) else []:
            if isinstance(sub, dict):
                name = sub.get("name") or sub.get("id")
                self.graph(sub, _Where(self.label, f"subgraph {name} "))

    def nodes(self, nodes: Any, where: _Where) -> None:
        for node in nodes if isinstance(nodes, list) else []:
            if not isinstance(node, dict):
                continue
            origin = where.node(node)
            node_type = str(node.get("type") or "")
            properties = node.get("properties")
            models = properties.get("models") if isinstance(properties, dict) else None
            for model in models if isinstance(models, list) else []:
                self.model(model, origin, node_type)
            for name, folder in _widget_files(node_type, node.get("widgets_values")):
                if self.options.wanted(name, folder, node_type):
                    self.widgets.append((name, folder, origin))

    def model(self, model: Any, origin: str, node_type: str) -> None:
        """One `{name, url, directory, hash?, hash_type?}` → a Found, or why not."""
        if not isinstance(model, dict):
            return
        name, url, folder = (model.get(k) for k in ("name", "url", "directory"))
        if isinstance(name, str):
            self.named.add(PurePosixPath(name.strip()).name.casefold())
        if not self.options.wanted(name, folder, node_type):
            return
        shown = str(name) if isinstance(name, str) and name else f"{origin} (no name)"
        why = _model_problem(name, url, folder)
        if why is not None:
            folder_ok = folder if isinstance(folder, str) and _safe_folder(folder) else None
            self.findings.unresolved.append(Unresolved(shown, origin, why, folder_ok))
            return
        assert isinstance(name, str) and isinstance(url, str) and isinstance(folder, str)
        values: dict[str, Any] = {**source_keys(url, self.options.env)}
        values["dir"] = folder.strip().strip("/")
        values["filename"] = name.strip()
        digest = _sha256_of(model)
        if digest is not None:
            values["sha256"] = digest
        try:
            Entry.model_validate(values)
        except ValidationError as exc:  # whatever else the manifest would refuse
            why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            self.findings.unresolved.append(Unresolved(shown, origin, why, values["dir"]))
            return
        self.add(Found(values=values, origin=origin))

    def add(self, found: Found) -> None:
        """One entry per target: the first, unless a later one states the hash."""
        key = found.target.casefold()
        kept = self.found.get(key)
        if kept is None:
            self.found[key] = found
            return
        if _source(kept) != _source(found):
            self.findings.warnings.append(
                f"{found.target}: {found.origin} gives another source than {kept.origin}; "
                f"kept {'the one with a sha256' if 'sha256' in found.values else 'the first'}"
            )
        if "sha256" in found.values and "sha256" not in kept.values:
            self.found[key] = found


def _source(found: Found) -> dict[str, Any]:
    return {k: found.values[k] for k in ("url", "hf", "file", "civitai") if k in found.values}


def _model_problem(name: Any, url: Any, folder: Any) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return "no url: add the download URL with `modelsync add`"
    if not url.strip().lower().startswith(("http://", "https://")):
        return f"url is not http(s): {url!r}; add a download URL with `modelsync add`"
    if not isinstance(folder, str) or not folder.strip().strip("/"):
        return "no directory: the workflow does not say which models folder it goes in"
    if not _safe_folder(folder):
        return (
            f"unsafe directory {folder!r}: it must be a relative path under the models folder "
            "(no '..', not absolute, '/' as separator)"
        )
    if not isinstance(name, str) or not _plain_name(name.strip()):
        return f"name {name!r} is not a plain file name"
    return None


def _safe_folder(folder: str) -> bool:
    text = folder.strip()
    if "\\" in text or text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return False
    return ".." not in text.split("/")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name


def _sha256_of(model: dict[str, Any]) -> str | None:
    """The hash when the workflow says it is a SHA256 (case-insensitive) of 64 hex."""
    digest, kind = model.get("hash"), model.get("hash_type")
    if not (isinstance(kind, str) and kind.strip().casefold() == "sha256"):
        return None
    if isinstance(digest, str) and _SHA256.match(digest.strip()):
        return digest.strip().lower()
    return None


def _looks_like_model_file(value: Any) -> bool:
    return isinstance(value, str) and PurePosixPath(value).suffix.lower() in MODEL_EXTENSIONS


def _widget_files(node_type: str, values: Any) -> Iterator[tuple[str, str]]:
    """The model files a loader node's widgets name, with their folder."""
    if isinstance(values, dict):  # widgets by name (some nodes save them so)
        for key, value in values.items():
            folder = NODE_FOLDERS.get(node_type) or INPUT_FOLDERS.get(str(key))
            if folder and _looks_like_model_file(value):
                yield value, folder
        return
    folder = NODE_FOLDERS.get(node_type)
    if folder is None or not isinstance(values, list):
        return
    for value in values:
        if _looks_like_model_file(value):
            yield value, folder


def _unresolved_widget(name: str, folder: str, origin: str) -> Unresolved:
    """A loader's file name; "SDXL/x.safetensors" (or Windows' "SDXL\\x…") lives in a
    subfolder of the loader's folder."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith(("/", "\\")):
        return Unresolved(name, origin, f"unsafe file name {name!r} in the workflow", folder)
    where = "/".join([folder, *parts[:-1]])
    return Unresolved(parts[-1], origin, NO_URL, where)


def _api(data: dict[str, Any], label: str, options: ImportOptions) -> Findings:
    """API format: loader inputs by name; there are no URLs, so all are unresolved."""
    findings = Findings()
    seen: set[tuple[str, str | None]] = set()
    for node_id, node in data.items():
        class_type = str(node.get("class_type") or "")
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        origin = f"{label}: node {node_id} ({class_type})"
        for key, value in inputs.items():
            folder = NODE_FOLDERS.get(class_type) if key in _LOADER_INPUTS else None
            folder = folder or INPUT_FOLDERS.get(key)
            if folder is None or not _looks_like_model_file(value):
                continue
            if not options.wanted(value, folder, class_type):
                continue
            item = _unresolved_widget(value, folder, origin)
            if (item.name, item.dir) not in seen:
                seen.add((item.name, item.dir))
                findings.unresolved.append(item)
    return findings


# Inputs of known loaders whose folder is the node's (CLIPVisionLoader's clip_name is a
# clip_vision file, UpscaleModelLoader's model_name an upscale model).
_LOADER_INPUTS = frozenset(INPUT_FOLDERS) | {"model_name"}


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportInputError(
            f"{where}: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ImportInputError(f"{where}: JSON nested too deeply") from None


# --- images --------------------------------------------------------------------------


def png_texts(data: bytes, where: str) -> dict[str, str]:
    """Every text chunk of a PNG (tEXt, zTXt, iTXt; ComfyUI's own `comf`), first wins.
    Chunk lengths and CRCs are checked: a damaged file is refused, not half-read."""
    texts: dict[str, str] = {}
    offset = len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise ImportInputError(f"{where}: truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 8 + length
        if end + 4 > len(data):
            raise ImportInputError(
                f"{where}: truncated PNG: chunk {kind.decode('latin-1')!r} at byte {offset} "
                f"says {length} bytes, the file ends before"
            )
        body = data[offset + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + body) != crc:
            raise ImportInputError(
                f"{where}: damaged PNG: chunk {kind.decode('latin-1')!r} at byte {offset} "
                "fails its CRC check"
            )
        if kind in (b"tEXt", b"comf", b"zTXt", b"iTXt"):
            key, value = _png_text(kind, body, where)
            texts.setdefault(key, value)
        if kind == b"IEND":
            return texts
        offset = end + 4


def _png_text(kind: bytes, body: bytes, where: str) -> tuple[str, str]:
    key, sep, rest = body.partition(b"\0")
    if not sep:
        raise ImportInputError(f"{where}: damaged PNG: {kind.decode()} chunk without a keyword")
    name = key.decode("latin-1")
    if kind == b"zTXt":
        if not rest:
            raise ImportInputError(f"{where}: damaged PNG: zTXt chunk {name!r} is empty")
        return name, _text(_inflate(rest[1:], where, name), latin1=True)
    if kind == b"iTXt":
        if len(rest) < 2:
            raise ImportInputError(f"{where}: damaged PNG: iTXt chunk {name!r} is cut short")
        compressed, rest = rest[0], rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        raw = _inflate(text, where, name) if compressed else text
        return name, _text(raw, latin1=False)
    return name, _text(rest, latin1=True)


def _text(raw: bytes, latin1: bool) -> str:
    # tEXt is Latin-1 by the PNG spec, but some writers put UTF-8 there (and the
    # frontend reads it as UTF-8): UTF-8 when it decodes, else Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1" if latin1 else "utf-8", errors="replace")


def _inflate(raw: bytes, where: str, name: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise ImportInputError(f"{where}: damaged PNG: text {name!r}: {exc}") from None
    if inflater.unconsumed_tail:
        raise ImportInputError(
            f"{where}: text {name!r} inflates to more than {MAX_TEXT_BYTES >> 20} MiB"
        )
    if not inflater.eof:
        raise ImportInputError(f"{where}: damaged PNG: text {name!r} is cut short")
    return out


def webp_texts(data: bytes, where: str) -> dict[str, str]:
    """`workflow`/`prompt` from a WebP's EXIF chunk (IFD0 ASCII values "key:json")."""
    texts: dict[str, str] = {}
    offset = 12
    while offset + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[offset : offset + 8])
        end = offset + 8 + length
        if end > len(data):
            raise ImportInputError(
                f"{where}: truncated WebP: chunk {kind.decode('latin-1')!r} at byte {offset} "
                f"says {length} bytes, the file ends before"
            )
        if kind == b"EXIF":
            for key, value in _exif_texts(data[offset + 8 : end]):
                texts.setdefault(key, value)
        offset = end + (length & 1)  # chunks are padded to an even size
    return texts


def _exif_texts(exif: bytes) -> Iterator[tuple[str, str]]:
    if exif.startswith(b"Exif\0\0"):
        exif = exif[6:]
    yield from _ifd0_texts(exif)
    # Other writers put "workflow:{…}" elsewhere (UserComment, ImageDescription…).
    for key in ("workflow", "prompt"):
        at = exif.find(key.encode() + b":")
        if at >= 0:
            text = exif[at + len(key) + 1 :].decode("utf-8", errors="replace")
            try:
                _, length = json.JSONDecoder().raw_decode(text)
            except json.JSONDecodeError:
                continue
            yield key, text[:length]


def _ifd0_texts(tiff: bytes) -> Iterator[tuple[str, str]]:
    """ASCII values "key:value" of a TIFF header's first IFD (what ComfyUI writes)."""
    if tiff[:2] not in (b"II", b"MM") or len(tiff) < 8:
        return
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            return
        _tag, kind, n, value_at = struct.unpack(order + "HHII", tiff[at : at + 12])
        if kind != 2 or n <= 4 or value_at + n > len(tiff):
            continue
        text = tiff[value_at : value_at + n].rstrip(b"\0").decode("utf-8", errors="replace")
        key, sep, value = text.partition(":")
        if sep:
            yield key, value
