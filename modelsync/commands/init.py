"""`modelsync init [MANIFEST]`: write a commented starter manifest, never over a file.

The starter is valid as written: `version`, `[settings]` with every setting at its
default, and no active entry (a manifest without `[[models]]` plans "nothing to do").
Every example is commented out line by line with `# `, and its own remarks use `## `, so
that an editor's "toggle comment" on one example block yields valid TOML (a test
uncomments each block that way and loads it, which keeps the template from drifting
away from what `load_manifest` accepts).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelsync.errors import ModelsyncError

# {name} and {lock} are the manifest's and its lock's file names. Keep each example
# block one paragraph (no blank line inside) starting with `# [[models]]` or
# `# [settings.aria2]`: the tests find the blocks that way.
TEMPLATE = """\
# {name}: the model files this project needs, kept in place by `modelsync`.
# Commit it (and {lock}, once written) next to your workflows. Next steps:
# uncomment an example below or run `modelsync add {name} SOURCE --dir DIR`, then
#   modelsync plan {name}     what apply would do
#   modelsync lock {name}     pin every file in {lock}
#   modelsync apply {name}    download, verify and put the files in place
# Every key is explained in modelsync's README ("Every key") and docs/SPEC.md.

version = 1                 # the manifest format; 1 is the only one so far

[settings]
# The models folder, relative to this file's folder; created if missing.
# `--root DIR` or $MODELSYNC_ROOT override it (those are never created).
root = "models"
max_concurrent = 4          # files downloading at once (1-64)
connections = 0             # connections per file (0-16); 0 = by size, one per 8 MiB
max_speed = "0"             # overall download limit: "0" (none), "500K", "50M", "1G"
max_file_size = "0"         # stop a download of unknown size past this: "0" (none), "100G"
# Content-addressed mirrors tried beside each source; {{sha256}} is the file's pin
# ({{xxh3_128}}, {{filename}} and {{name}} work too), e.g. ["http://cache.lan/sha256/{{sha256}}"]
mirrors = []
mirror_first = false        # true: ask the mirrors alone first, the source only on a miss
# A file already on this machine (elsewhere under root, in the store, in the Hugging Face
# cache) is reused, not downloaded: "auto" (reflink, else hardlink, else copy),
# "reflink", "hardlink", "copy", or "symlink"
link = "auto"
## One copy per machine for every root: downloads are also kept in this content-addressed
## store (relative to this file; $MODELSYNC_STORE wins); `modelsync gc` cleans it.
# store = "~/.cache/modelsync/store"

## aria2 tuning, passed to the aria2c that modelsync runs. modelsync sets split,
## connections and the RPC secret itself: use `connections` (here or per entry).
# [settings.aria2]
# lowest-speed-limit = "1M"             # drop a connection slower than this; aria2 retries
# timeout = 60                          # seconds without an answer before a retry
# connect-timeout = 30                  # seconds to connect
# max-tries = 5                         # tries per download (0 = no limit)
# retry-wait = 5                        # seconds between tries
# check-certificate = true              # false only for a mirror you trust
## all-proxy = "http://proxy.example:3128"  # aria2 speaks HTTP to proxies
## user-agent = "my-team-sync/1.0"

# Entries: one [[models]] table per file (or per Hugging Face repository).
# Each needs exactly one source: url, hf or civitai (or only a sha256, see 5.).
# Keys every entry may have: name (unique; default: the file name), dir (folder
# under root; default: root itself), tags (for `--only TAG`), priority (0-100,
# default 50: higher downloads first), connections (1-16, this file only) and
# optional = true (its failure is reported but does not make apply fail).

## 1. A plain http(s) URL.
# [[models]]
# name = "sdxl-base"                       # for --only, the lock and messages
# url = "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"
# dir = "checkpoints"
# filename = "sd_xl_base_1.0.safetensors"  # default: the URL's last path segment
# sha256 = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"  # the pin
# size = 6938078334                        # bytes; optional
# tags = ["sdxl", "base"]                  # for `--only sdxl`
# mirrors = ["https://mirror.example.org/sd_xl_base_1.0.safetensors"]  # same bytes
# priority = 80                            # before the default 50
# connections = 16                         # this file only; default: settings.connections

## 2. One file of a Hugging Face repository (HF_TOKEN for gated or private ones).
# [[models]]
# hf = "madebyollin/sdxl-vae-fp16-fix"     # repo id; "datasets/org/name" for a dataset
# file = "sdxl.vae.safetensors"            # path inside the repo
# revision = "main"                        # branch, tag or commit; the lock pins a commit
# dir = "vae"

## 3. A whole Hugging Face repository (hf without file): its files land under dir/,
##    keeping their paths in the repo; `modelsync lock` pins the commit and every file.
# [[models]]
# hf = "stabilityai/stable-diffusion-xl-base-1.0"
# include = ["*.json", "*.txt", "*.fp16.safetensors"]  # globs, as huggingface_hub's allow_patterns
# exclude = ["*.onnx*", "*.msgpack"]                   # ... and ignore_patterns
# revision = "main"
# dir = "diffusers/sdxl-base"              # default: the repo's name
# priority = 20                            # after the single files

## 4. A Civitai model version (CIVITAI_TOKEN for those that need a login).
# [[models]]
# civitai = 128713                         # the modelVersionId from the model page's URL
# dir = "loras"
# optional = true                          # a failure here does not fail apply

## 5. A file with no source, pinned by hash: satisfied by the file already in place,
##    otherwise fetched only from its mirrors or settings.mirrors' {{sha256}} templates.
# [[models]]
# filename = "team-style.safetensors"
# dir = "loras"
# sha256 = "6b0ee2d6bd3d6a1b8c7c4c0e4f1d2f5c8a9e3b7d1c0f4e6a2b8d9c3e5f7a1b2c"
# xxh3_128 = "9f1c2e4b7a0d3c6e8b5a1f4d2c7e9b03"  # optional second pin, fast to check
# size = 151110122
"""


@dataclass(frozen=True)
class InitResult:
    path: Path  # absolute


def starter_text(manifest: Path) -> str:
    """The starter manifest for a file at `manifest` (its name appears in the comments)."""
    return TEMPLATE.format(name=manifest.name, lock=manifest.with_suffix(".lock").name)


def run_init(manifest: Path) -> InitResult:
    """Create `manifest` with the starter text; refuse (exit 2, nothing written) when it
    exists or its folder does not."""
    path = Path(os.path.abspath(manifest))
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelsyncError(
            f"cannot write {manifest}: the folder {folder} {what}",
            f"create it first (mkdir -p {folder}) or pick another path",
        )
    if os.path.lexists(path):
        raise _exists(manifest)
    try:
        create_exclusive(path, starter_text(path))
    except FileExistsError:  # it appeared since the check above: still not ours to replace
        raise _exists(manifest) from None
    except OSError as exc:
        raise ModelsyncError(
            f"cannot write {manifest}: {exc.strerror or exc}", "check the folder's permissions"
        ) from None
    return InitResult(path)


def next_steps(manifest: Path, written: Path) -> list[str]:
    """What init tells a person: the file written, then the commands to run next."""
    m = shlex.quote(str(manifest))
    return [
        f"wrote {written}: a starter manifest (settings at their defaults, examples commented)",
        "next steps:",
        f"  1. edit {m}: uncomment an example, or `modelsync add {m} SOURCE --dir DIR`",
        f"  2. modelsync plan {m}     # what apply would do",
        f"  3. modelsync lock {m}     # pin every file; commit the .lock beside it",
        f"  4. modelsync apply {m}    # download, verify, move into place",
    ]


def _exists(manifest: Path) -> ModelsyncError:
    return ModelsyncError(
        f"{manifest} already exists; init never overwrites a file",
        "edit it (or add entries with `modelsync add`), or give init another path",
    )


def create_exclusive(path: Path, text: str) -> None:
    """Write the whole file beside `path`, then hard-link it into place: the link fails
    if anything exists at `path` by then, and a reader never sees half a manifest.
    Where hard links are not supported, an O_EXCL create still never clobbers a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a manifest from the team
        try:
            os.link(tmp, path)
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                raise
            # no hard links on this file system (FAT, some network shares)
            with open(path, "x", encoding="utf-8", newline="") as out:
                out.write(text)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
