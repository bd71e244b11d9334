"""ComfyUI-Manager's model list (`model-list.json`) → one entry per model.

The list is `{"models": [{name, type, base, save_path, description, reference, filename,
url, size}, …]}`. Each model is placed as ComfyUI-Manager places it (`get_model_dir` and
`get_model_path` in its glob/manager_server.py):

- `dir = save_path`, relative to the models folder; `save_path = "default"` maps by
  `type` (lower-cased) through its `model_dir_name_map`, any other type going to `etc`;
- `filename` as given (it often differs from the URL's last segment);
  `filename = "<huggingface>"` is the whole repository that `url` names (ComfyUI-Manager
  gives a repo id, "org/name"), downloaded into `<dir>/<repo name>`;
- the URL as source: Hugging Face and GitHub page links become download links, Civitai
  download links become `civitai = <version id>` (see `source_keys`).

Refused, with a warning naming the model: a `save_path` that leaves the models folder
(`..`, absolute, `\\`) or lies in a custom node's folder (`custom_nodes/…`, which
ComfyUI-Manager resolves to wherever that node is installed), and a `filename` that is a
path. `size` is never written: the list gives it rounded for humans ("4.71MB").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from modelsync.importers import (
    Findings,
    Found,
    ImportInputError,
    ImportOptions,
    Unresolved,
    source_keys,
)
from modelsync.manifest import Entry
from modelsync.redact import redact_urls

#: ComfyUI-Manager's `model_dir_name_map`: the folder (under models/) that a model with
#: `save_path = "default"` lands in, by its `type` lower-cased.
DEFAULT_DIRS: Mapping[str, str] = {
    "checkpoints": "checkpoints",
    "checkpoint": "checkpoints",
    "unclip": "checkpoints",
    "text_encoders": "text_encoders",
    "clip": "text_encoders",
    "vae": "vae",
    "lora": "loras",
    "t2i-adapter": "controlnet",
    "t2i-style": "controlnet",
    "controlnet": "controlnet",
    "clip_vision": "clip_vision",
    "gligen": "gligen",
    "upscale": "upscale_models",
    "embedding": "embeddings",
    "embeddings": "embeddings",
    "unet": "diffusion_models",
    "diffusion_model": "diffusion_models",
}
OTHER_DIR = "etc"  # a default model of any other type
HUGGINGFACE = "<huggingface>"  # filename of an entry that is a whole repository
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_NOT_A_LIST = "pass --from workflow|png|folder if it is one of those, or check the file"


class _Skipped(Exception):
    """The model is not imported, with a warning saying why."""


class _Missing(Exception):
    """The model cannot become an entry until the user adds what this says."""


def read(path: Path, options: ImportOptions) -> Findings:
    findings = Findings()
    by_target: dict[str, Found] = {}
    for i, item in enumerate(_models(path)):
        if not isinstance(item, dict):
            findings.warnings.append(f"{path.name}: models[{i}] is not an object: skipped")
            continue
        name = _one_line(_text(item.get("name")) or _text(item.get("filename"))) or f"models[{i}]"
        if not options.wanted(name, item.get("type"), item.get("base"), item.get("filename")):
            continue
        origin = f"{path.name}: {name}"
        try:
            found = _found(item, origin, options)
        except _Skipped as exc:
            findings.warnings.append(redact_urls(f"{origin}: skipped: {exc}"))
            continue
        except _Missing as exc:
            filename = _one_line(_text(item.get("filename"))) or name
            where = _known_folder(item)
            findings.unresolved.append(Unresolved(filename, origin, redact_urls(str(exc)), where))
            continue
        _merge(found, by_target, findings)
    return findings


def _models(path: Path) -> list[Any]:
    """The `models` list, or ImportInputError when the file is not a model list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ImportInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ImportInputError(
            f"{path}: not a ComfyUI-Manager model list (not UTF-8 text)", _NOT_A_LIST
        ) from None
    except json.JSONDecodeError as exc:
        raise ImportInputError(
            f"{path}: not a ComfyUI-Manager model list: invalid JSON at line {exc.lineno}, "
            f"column {exc.colno} ({exc.msg})",
            _NOT_A_LIST,
        ) from None
    except RecursionError:
        raise ImportInputError(
            f"{path}: not a ComfyUI-Manager model list (JSON nested too deeply)", _NOT_A_LIST
        ) from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ImportInputError(
            f'{path}: not a ComfyUI-Manager model list (no "models" list)', _NOT_A_LIST
        )
    # A workflow's top-level `models` list has {name, url, directory}: not ours.
    if models and not any(
        isinstance(m, dict) and ("save_path" in m or "type" in m) for m in models
    ):
        raise ImportInputError(
            f'{path}: not a ComfyUI-Manager model list (its "models" have no save_path or type)',
            _NOT_A_LIST,
        )
    return models


def _found(item: Mapping[str, Any], origin: str, options: ImportOptions) -> Found:
    folder = _folder(item)
    filename = _text(item.get("filename"))
    url = _text(item.get("url"))
    if not filename:
        raise _Missing(f"no filename: add filename = … (the file's name in {folder or 'models'}/)")
    if not url:
        raise _Missing("no url: add its download link as url = … (or hf = … / civitai = …)")
    if filename == HUGGINGFACE:
        repo, revision = _repo(url, options.env)
        name = repo.rpartition("/")[2]
        values: dict[str, Any] = {"hf": repo}
        if revision:
            values["revision"] = revision
        values["dir"] = f"{folder}/{name}" if folder else name
    else:
        if any(c in filename for c in "/\\:"):
            # ComfyUI-Manager refuses these too (a path, or a drive on Windows).
            raise _Skipped(f"filename {filename!r} is a path, not a file name")
        if not url[:8].lower().startswith(("http://", "https://")):
            raise _Missing(f"url {url!r} is not an http(s) link: add a download link as url = …")
        values = {**source_keys(url, options.env), "dir": folder, "filename": filename}
    try:
        Entry.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors()
        raise _Skipped(
            f"cannot be a manifest entry ({errors[0]['msg'] if errors else exc})"
        ) from None
    return Found(values, origin, comment=_comment(item))


def _folder(item: Mapping[str, Any]) -> str:
    """The model's folder under models/, as ComfyUI-Manager's `get_model_dir` finds it."""
    save_path = _text(item.get("save_path"))
    if not save_path:
        raise _Missing("no save_path: add dir = … (its folder under models/)")
    if save_path == "default":
        kind = item.get("type")
        return DEFAULT_DIRS.get(kind.lower() if isinstance(kind, str) else "", OTHER_DIR)
    if "\\" in save_path:
        raise _Skipped(f"save_path {save_path!r} contains '\\': folders are separated by '/'")
    if save_path.startswith("/") or _DRIVE.match(save_path):
        raise _Skipped(f"save_path {save_path!r} is absolute: it must be under models/")
    if ".." in save_path:  # as ComfyUI-Manager checks it (it falls back to etc/)
        raise _Skipped(f"save_path {save_path!r} contains '..': it must stay under models/")
    parts = [p for p in save_path.split("/") if p not in ("", ".")]
    if parts and parts[0].casefold() == "custom_nodes":
        # ComfyUI-Manager puts these inside the installed node's own folder, outside
        # models/: they belong with that node, not in a manifest of the models folder.
        raise _Skipped(
            f"save_path {save_path!r} is inside a custom node's folder, not under models/"
        )
    return "/".join(parts)


def _known_folder(item: Mapping[str, Any]) -> str | None:
    try:
        return _folder(item)
    except (_Skipped, _Missing):
        return None


def _repo(url: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """A `<huggingface>` model's repository ("org/name", ComfyUI-Manager's form, or its
    page on the Hub, optionally `/tree/<revision>`) and revision."""
    from modelsync.sources import huggingface

    why = (
        f"filename {HUGGINGFACE} needs url = a Hugging Face repository (org/name or "
        f'https://huggingface.co/org/name), not {url!r}: add hf = "org/name"'
    )
    if _REPO_ID.fullmatch(url):
        return url, None
    if not url[:8].lower().startswith(("http://", "https://")) or not huggingface.is_hub_url(
        url, env
    ):
        raise _Missing(why)
    segments = [unquote(s) for s in urlsplit(url).path.split("/") if s]
    prefix = segments[:1] if segments[:1] in (["datasets"], ["spaces"]) else []
    rest = segments[len(prefix) :]
    shape = len(rest) == 2 or (len(rest) == 4 and rest[2] == "tree")
    if shape and _REPO_ID.fullmatch("/".join(rest[:2])):
        return "/".join(prefix + rest[:2]), (rest[3] if len(rest) == 4 else None)
    raise _Missing(why)


def _merge(found: Found, by_target: dict[str, Found], findings: Findings) -> None:
    """One entry per target (compared as on macOS and Windows): the list has duplicates."""
    key = found.target.casefold()
    first = by_target.get(key)
    if first is None:
        by_target[key] = found
        findings.found.append(found)
        return
    if _source(first) != _source(found):
        findings.warnings.append(
            redact_urls(
                f"{found.origin}: same target {found.target} as {first.origin} but another "
                f"source ({_source(found)} instead of {_source(first)}): kept the first"
            )
        )


def _source(found: Found) -> str:
    return ", ".join(
        f"{k} = {v}" for k, v in found.values.items() if k in ("url", "hf", "civitai", "revision")
    )


def _comment(item: Mapping[str, Any]) -> str:
    """The list's name for the model, with its type and base: what a reader recognises."""
    name = _text(item.get("name"))
    about = ", ".join(
        dict.fromkeys(t for t in (_text(item.get("type")), _text(item.get("base"))) if t)
    )
    text = _one_line(f"{name} ({about})" if name and about else name or about)
    return text if len(text) <= 160 else text[:159] + "…"


def _one_line(text: str) -> str:
    """Printable on one line (a comment, a terminal), whatever the list holds."""
    return " ".join(_CONTROL.sub(" ", text).split())


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
