"""Hostile input, fuzzed (hypothesis): whatever a manifest or a lock holds, loading it gives
a valid result or a clean exit-2 error (ModelsyncError), never another exception (a
traceback); the same for the import readers (Findings or ImportInputError) and for what the
Hub's and Civitai's servers answer (a file or a SourceError, aria2 only given http(s) URLs).
Also the file-name rules (docs/SPEC.md §1, "File names").

Examples are bounded (and the example database off) so the module runs in seconds; a
failure prints the shrunk input that broke the loader.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tomlkit
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelsync.errors import EXIT_USAGE, ModelsyncError
from modelsync.layout import tmp_name
from modelsync.lockfile import fingerprint, read_lock
from modelsync.manifest import Manifest, check_paths_inside, load_manifest
from tests.clirun import modelsync
from tests.servers import FileServer, RequestRecord
from tests.servers._core import BaseServer, Handler

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written under the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ENTRY_KEYS = [
    "name", "url", "hf", "file", "revision", "include", "exclude", "civitai", "dir",
    "filename", "sha256", "xxh3_128", "size", "tags", "mirrors", "priority",
    "connections", "optional",
]  # fmt: skip
SETTINGS_KEYS = ["root", "max_concurrent", "connections", "max_speed", "mirrors", "aria2"]
LOCK_KEYS = [
    "fingerprint", "path", "url", "commit", "size", "estimated_size", "sha256",
    "xxh3_128", "files",
]  # fmt: skip
# Hub and Civitai entries ask a closed local port: no request leaves the machine.
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9", "CIVITAI_ENDPOINT": "http://127.0.0.1:9"}
SHA = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"

# Strings that reach the interesting branches: paths, URLs, hashes, names, and junk.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "../x",
            "/abs",
            "C:\\x",
            "a/../b",
            ".modelsync",
            "CON",
            "nul.txt",
            "a\\b",
            "é",
            "e\u0301",
            "x" * 300,
            "http://",
            "https://h/",
            "http://127.0.0.1:9/a.bin",
            "https://huggingface.co/org/r/resolve/main/a.bin",
            "https://civitai.com/models/1",
            "https://u:p@h/a.bin?sig=1#f",
            "hf://org/r",
            SHA,
            SHA.upper(),
            SHA[:32],
            "org/repo",
            "datasets/org/r",
            "  ",
            "\x00",
            "a\nb",
            "0",
            "50M",
            "1.5G",
            "-1",
            "\u202e",
            "9" * 400 + "M",
        ]
    ),
)
scalars = st.one_of(
    nasty_text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(),  # TOML allows 64-bit integers; the parser reads any length
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
# Rates as written ("50M", "1.5G"), some with hundreds of digits.
rates = st.builds(
    lambda digits, n, unit: digits[0] * n + unit,
    st.sampled_from("0123456789"),
    st.sampled_from([1, 2, 3, 18, 19, 20, 300, 308, 309, 400]),  # around 2^63 and float's max
    st.sampled_from(["", "K", "M", "G", "T", "MiB/s", ".5G"]),
)
keys = st.one_of(st.sampled_from(ENTRY_KEYS + SETTINGS_KEYS + LOCK_KEYS), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _table(known: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A table whose keys are mostly ones the loader knows, with values of any type."""
    return st.dictionaries(st.sampled_from(known) | st.text(max_size=10), values, max_size=8)


manifest_docs = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), scalars),
        "settings": st.one_of(
            _table(SETTINGS_KEYS),
            scalars,
            st.fixed_dictionaries({"max_speed": st.one_of(st.integers(), rates)}),
        ),
        "models": st.one_of(st.lists(_table(ENTRY_KEYS), max_size=5), values),
        "path": values,
    },
).flatmap(lambda doc: st.dictionaries(keys, values, max_size=2).map(lambda extra: extra | doc))

# Entries that mostly validate (the documents above cover invalid values), so the fuzzing
# reaches the cross-entry checks (names, paths, case and Unicode forms) and what plan asks
# of a loaded manifest.
segment = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "._- ", min_size=1, max_size=12),
    st.text(min_size=1, max_size=8),
    st.sampled_from(
        [
            "CON",
            "nul",
            "Aux.txt",
            "com1.bin",
            "é.bin",
            "e\u0301.bin",
            "A.BIN",
            "a.bin",
            "a\x00b",
            "n" * 256,
            "\u00e9" * 128,
            "trailing.",
            "a:b",
        ]
    ),
)
rel_dir = st.lists(segment, max_size=3).map("/".join)
plausible_entry = st.fixed_dictionaries(
    {
        "source": st.sampled_from(
            [
                {"url": "http://127.0.0.1:9/a.bin"},
                {"url": "http://127.0.0.1:9/"},
                {"hf": "org/repo", "file": "sub/a.bin"},
                {"hf": "org/repo"},
                {"civitai": 7},
                {"sha256": SHA},
            ]
        ),
    },
    optional={
        "name": segment,
        "dir": rel_dir,
        "filename": segment,
        "size": st.integers(min_value=0, max_value=2**40),
        "tags": st.lists(segment, max_size=2),
        "priority": st.integers(min_value=0, max_value=100),
        "mirrors": st.lists(st.just("http://127.0.0.1:9/m"), max_size=2),
        "optional": st.booleans(),
        "xxh3_128": st.just(SHA[:32]),
    },
).map(lambda d: {**d.pop("source"), **d})
plausible_docs = st.lists(plausible_entry, max_size=6).map(lambda models: {"models": models})

lock_docs = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), scalars),
        "models": st.one_of(
            st.dictionaries(st.text(max_size=12), st.one_of(_table(LOCK_KEYS), values), max_size=4),
            values,
        ),
    },
)

raw_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=string.printable, max_size=300),
    # fragments of real TOML, shuffled together
    st.lists(
        st.sampled_from(
            [
                "[[models]]\n", "[settings]\n", "[settings.aria2]\n", '[models."a"]\n',
                f'sha256 = "{SHA}"\n', 'url = "http://127.0.0.1:9/a.bin"\n', 'dir = "x"\n',
                'hf = "org/r"\n', "civitai = 1\n", "size = 1\n", 'path = "a"\n',
                "version = 1\n", 'files = { "a" = { size = 1 } }\n', "[models]\n",
                "models = []\n", '"a.b" = 1\n', "= 1\n", "[[\n", '"\n', "\x00",
            ]
        ),
        max_size=12,
    ).map("".join),
)  # fmt: skip


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def _dump(doc: dict[str, Any]) -> str | None:
    """The document as TOML text, or None when tomlkit cannot write it (e.g. a NaN key)."""
    try:
        return tomlkit.dumps(doc)
    except Exception:  # tomlkit's own limits: not what is tested here
        return None


def _load_manifest_cleanly(path: Path) -> Manifest | None:
    """load_manifest, and what plan asks of a loaded manifest next; None for a clean error."""
    try:
        manifest = load_manifest(path)
    except ModelsyncError as exc:
        assert exc.exit_code == EXIT_USAGE
        assert str(exc).strip()
        return None
    for entry in manifest.models:  # what the workspace asks of every entry
        fingerprint(entry)
        assert entry.display_name
        rel = entry.relpath()
        if rel is not None:  # a path the disk takes: absent, never "name too long" or NUL
            with contextlib.suppress(FileNotFoundError):
                os.stat(os.path.join(path.parent, rel))
            tmp_name(rel).encode()
    try:
        check_paths_inside(manifest, path.parent)
    except ModelsyncError as exc:
        assert exc.exit_code == EXIT_USAGE
    return manifest


def _read_lock_cleanly(path: Path) -> None:
    try:
        read_lock(path)
    except ModelsyncError as exc:
        assert exc.exit_code == EXIT_USAGE
        assert str(exc).strip()


# [settings] alone, its values of every kind: rates and counts of any size.
settings_docs = st.fixed_dictionaries(
    {"settings": st.dictionaries(st.sampled_from(SETTINGS_KEYS), st.integers() | rates | scalars)}
)


@FUZZ
@given(doc=st.one_of(manifest_docs, plausible_docs, settings_docs))
def test_any_toml_document_loads_as_a_manifest_or_fails_cleanly(doc: dict[str, Any]) -> None:
    text = _dump(doc)
    if text is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        _load_manifest_cleanly(_write(Path(folder), "models.toml", text))


@FUZZ
@given(content=st.one_of(raw_text, st.binary(max_size=300)))
def test_any_text_or_bytes_load_as_a_manifest_or_fail_cleanly(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _load_manifest_cleanly(_write(Path(folder), "models.toml", content))


@FUZZ
@given(doc=lock_docs)
def test_any_toml_document_reads_as_a_lock_or_fails_cleanly(doc: dict[str, Any]) -> None:
    text = _dump(doc)
    if text is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        _read_lock_cleanly(_write(Path(folder), "models.lock", text))


@FUZZ
@given(content=st.one_of(raw_text, st.binary(max_size=300)))
def test_any_text_or_bytes_read_as_a_lock_or_fail_cleanly(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _read_lock_cleanly(_write(Path(folder), "models.lock", content))


@settings(FUZZ, max_examples=8)
@given(doc=st.one_of(manifest_docs, plausible_docs), lock=st.one_of(lock_docs.map(_dump), raw_text))
def test_plan_on_fuzzed_input_exits_0_1_or_2_without_a_traceback(
    doc: dict[str, Any], lock: str | None
) -> None:
    """The real CLI on a fuzzed manifest and lock: an answer, never a traceback."""
    text = _dump(doc)
    if text is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        manifest = _write(Path(folder), "models.toml", text)
        _write(Path(folder), "models.lock", lock or "")
        run = modelsync("plan", manifest, "--json", "--root", folder, cwd=Path(folder), env=OFFLINE)
        assert run.code in (0, 1, 2), run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        json.loads(run.stdout)  # --json: one document, error or not


# -- file names ---------------------------------------------------------------------------
# A manifest is shared between Linux, macOS and Windows: a name that one of them cannot
# hold, or two names that are one file on one of them, are refused everywhere (exit 2).

URL = "http://127.0.0.1:9/"


def _manifest(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    text = "".join("[[models]]\n" + tomlkit.dumps(entry) + "\n" for entry in entries)
    return _write(tmp_path, "models.toml", text)


def _problems(tmp_path: Path, *entries: dict[str, Any]) -> str:
    """The error load_manifest gives (and that it gives one)."""
    try:
        load_manifest(_manifest(tmp_path, *entries))
    except ModelsyncError as exc:
        assert exc.exit_code == EXIT_USAGE
        return str(exc)
    raise AssertionError("the manifest loaded")


@pytest.mark.parametrize(
    ("first", "second", "words"),
    [
        ("a.bin", "a.bin", "is also the target of models[0]"),
        ("Model.safetensors", "model.SAFETENSORS", "only in letter case or Unicode form"),
        ("caf\u00e9.bin", "cafe\u0301.bin", "only in letter case or Unicode form"),  # NFC/NFD
    ],
)
def test_two_entries_that_are_one_file_on_some_system_are_refused(
    tmp_path: Path, first: str, second: str, words: str
) -> None:
    message = _problems(
        tmp_path,
        {"url": URL + "1.bin", "dir": "m", "filename": first, "sha256": SHA},
        {"url": URL + "2.bin", "dir": "m", "filename": second, "sha256": SHA},
    )
    assert "models[1]" in message and words in message and "change dir or filename" in message


def test_names_that_differ_in_more_than_case_or_form_are_two_files(tmp_path: Path) -> None:
    manifest = load_manifest(
        _manifest(
            tmp_path,
            {"url": URL + "a.bin", "dir": "m", "filename": "caf\u00e9 1.bin", "sha256": SHA},
            {"url": URL + "b.bin", "dir": "m", "filename": "cafe 1.bin", "sha256": SHA},
            {"url": URL + "c.bin", "dir": "m", "filename": "my model (v2).bin", "sha256": SHA},
        )
    )
    assert [e.relpath() for e in manifest.models] == [
        "m/caf\u00e9 1.bin",  # spaces are fine anywhere
        "m/cafe 1.bin",
        "m/my model (v2).bin",
    ]


@pytest.mark.parametrize(
    "name",
    ["CON", "nul.txt", "aux.safetensors", "COM1.bin", "lpt9", "Prn.ckpt", "a:b.bin", "what?.bin",
     "x.bin.", "a<b>.pt", 'say"hi".bin', "a|b"],
)  # fmt: skip
def test_names_windows_cannot_create_are_refused(tmp_path: Path, name: str) -> None:
    message = _problems(tmp_path, {"url": URL + "a.bin", "filename": name, "sha256": SHA})
    assert "models[0]" in message and "'filename'" in message and "Windows" in message
    message = _problems(tmp_path, {"url": URL + "a.bin", "dir": f"m/{name}", "sha256": SHA})
    assert "'dir'" in message and "Windows" in message


@pytest.mark.parametrize("name", ["console.bin", "nullify.bin", "com10.bin", "auxiliary", "con-1"])
def test_names_that_only_start_like_a_windows_device_are_fine(tmp_path: Path, name: str) -> None:
    manifest = load_manifest(_manifest(tmp_path, {"url": URL + "a.bin", "filename": name}))
    assert manifest.models[0].relpath() == name


def test_a_255_byte_name_is_fine_and_256_bytes_are_refused(tmp_path: Path) -> None:
    fits = "\u00e9" * 125 + "x.bin"  # 250 + 5 bytes in UTF-8: the length is counted in bytes
    manifest = load_manifest(_manifest(tmp_path, {"url": URL + "a.bin", "filename": fits}))
    assert manifest.models[0].relpath() == fits
    for key, value in [
        ("filename", fits + "x"),
        ("dir", "m/" + "d" * 256),
        ("url", URL + "u" * 256),  # the default file name: the url's last segment
    ]:
        entry = {"url": URL + "a.bin", "sha256": SHA, key: value}
        message = _problems(tmp_path, entry)
        assert "256 bytes long" in message and "at most 255" in message, message


@pytest.mark.parametrize(
    "entry",
    [
        {"url": URL + "a.bin", "filename": "a\x00b.bin"},
        {"url": URL + "a.bin", "dir": "x\x00y"},
        {"url": URL + "a%00b.bin"},  # decoded into the default file name
        {"url": URL + "a.bin", "filename": "line\nbreak.bin"},
    ],
)
def test_control_characters_in_names_are_refused(tmp_path: Path, entry: dict[str, Any]) -> None:
    assert "control characters" in _problems(tmp_path, entry)


def test_a_nul_byte_in_root_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "models.toml", 'version = 1\n[settings]\nroot = "a\\u0000b"\n')
    assert "control characters" in _problems_of_file(tmp_path / "models.toml")


def _problems_of_file(path: Path) -> str:
    with pytest.raises(ModelsyncError) as caught:
        load_manifest(path)
    return str(caught.value)


# -- import readers ----------------------------------------------------------------------------
# A workflow, a ComfyUI-Manager model list or an image someone shared: any JSON or bytes give
# Findings or an ImportInputError (exit 2), never another exception.

IMPORT_KEYS = [
    "nodes", "links", "models", "type", "widgets_values", "properties", "inputs", "class_type",
    "url", "name", "filename", "save_path", "directory", "hash", "hash_type", "base", "id",
    "extra", "subgraphs", "definitions", "groupNodes", "models", "ckpt_name", "lora_name",
]  # fmt: skip
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_text,
    st.sampled_from(["model.safetensors", "loras/x.safetensors", "../../etc/passwd", "default",
                     "checkpoints", "https://civitai.com/api/download/models/1", SHA]),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(IMPORT_KEYS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=25,
)
# Shaped like the real documents, with any value anywhere, so the readers go deep.
model_refs = st.fixed_dictionaries(
    {},
    optional={
        k: json_scalars
        for k in ("name", "url", "directory", "filename", "save_path", "type", "base", "hash")
    },
)
ui_workflow = st.fixed_dictionaries(
    {
        "nodes": st.lists(
            st.fixed_dictionaries(
                {"id": st.integers(), "type": st.sampled_from(
                    ["CheckpointLoaderSimple", "LoraLoader", "UNETLoader", "VAELoader", "Note"]
                ) | nasty_text},
                optional={
                    "widgets_values": st.lists(json_scalars, max_size=3) | json_values,
                    "properties": st.fixed_dictionaries(
                        {}, optional={"models": st.lists(model_refs, max_size=3) | json_values}
                    ),
                },
            ),
            max_size=4,
        )
    },
    optional={"models": st.lists(model_refs, max_size=3), "extra": json_values},
)  # fmt: skip
api_workflow = st.dictionaries(
    st.integers(min_value=1, max_value=99).map(str),
    st.fixed_dictionaries(
        {"class_type": st.sampled_from(["CheckpointLoaderSimple", "LoraLoader"]) | nasty_text},
        optional={
            "inputs": st.dictionaries(
                st.sampled_from(["ckpt_name", "lora_name", "unet_name"]), json_scalars
            )
        },
    ),
    max_size=4,
)
manager_list = st.fixed_dictionaries({"models": st.lists(model_refs, max_size=5) | json_values})
import_inputs = st.one_of(
    st.one_of(ui_workflow, api_workflow, manager_list).map(json.dumps),
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(IMPORT_KEYS), json_values, max_size=6).map(json.dumps),
    raw_text,
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),  # a damaged image
    st.binary(max_size=200).map(lambda b: b"RIFF\x20\x00\x00\x00WEBPVP8X" + b),
)


def _read_cleanly(reader: Any, path: Path) -> None:
    from modelsync.importers import Findings, ImportInputError, ImportOptions

    try:
        result = reader(path, ImportOptions(offline=True))
    except ImportInputError as exc:
        assert str(exc).strip()
        return
    assert isinstance(result, Findings)


@FUZZ
@given(content=import_inputs)
def test_the_workflow_reader_takes_any_input_cleanly(content: str | bytes) -> None:
    from modelsync.importers import workflow

    with tempfile.TemporaryDirectory() as folder:
        _read_cleanly(workflow.read, _write(Path(folder), "flow.json", content))
        _read_cleanly(workflow.read_png, _write(Path(folder), "flow.png", content))


@FUZZ
@given(content=import_inputs)
def test_the_comfyui_manager_reader_takes_any_input_cleanly(content: str | bytes) -> None:
    from modelsync.importers import comfyui_manager

    with tempfile.TemporaryDirectory() as folder:
        _read_cleanly(comfyui_manager.read, _write(Path(folder), "model-list.json", content))


@FUZZ
@given(rate=st.one_of(st.integers(), rates, nasty_text))
def test_any_rate_is_read_or_refused_cleanly(rate: int | str) -> None:
    """max_speed (and --max-speed, through the same parse_rate): hundreds of digits make a
    float infinity, which must be refused in words, not raise OverflowError."""
    text = _dump({"settings": {"max_speed": rate}})
    assert text is not None
    with tempfile.TemporaryDirectory() as folder:
        manifest = _load_manifest_cleanly(_write(Path(folder), "models.toml", text))
    if manifest is not None:
        assert 0 <= manifest.settings.max_speed < 2**63


def test_an_endless_max_speed_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "models.toml", "version = 1\n")
    run = modelsync("apply", manifest, "--root", tmp_path, "--max-speed", "9" * 400 + "M")
    assert run.code == 2, run.stderr
    assert "--max-speed" in run.stderr and "2^63" in run.stderr
    assert "Traceback" not in run.stderr


# -- hostile servers: what a source's API answers ------------------------------------------


civitai_files = st.fixed_dictionaries(
    {
        "name": st.just("a.safetensors") | json_scalars,
        "sizeKB": st.sampled_from([1e400, -1e400, float("nan"), 0, 1.5, 2**70, "12"])
        | json_scalars,
    },
    optional={
        "hashes": st.dictionaries(st.sampled_from(["SHA256", "AutoV2"]), json_scalars)
        | json_values,
        "downloadUrl": json_scalars,
        "primary": json_scalars,
        "type": json_scalars,
        "metadata": json_values,
    },
)
version_docs = st.fixed_dictionaries(
    {"files": st.lists(civitai_files, max_size=3) | json_values},
    optional={"downloadUrl": json_scalars, "id": json_scalars, "modelId": json_scalars},
)


@pytest.fixture(scope="module")
def api_server() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@FUZZ
@given(doc=st.one_of(version_docs, json_values))
def test_any_civitai_answer_resolves_or_fails_cleanly(api_server: FileServer, doc: Any) -> None:
    """A Civitai API (or anything at $CIVITAI_ENDPOINT) answering any JSON — NaN and
    1e400 included, which Python's json reads — gives a file or a SourceError."""
    from modelsync.errors import SourceError
    from modelsync.manifest import Entry, Settings
    from modelsync.sources import SourceContext, resolve

    body = json.dumps(doc).encode()  # Infinity and NaN as Python's json writes them
    api_server.add_bytes("/api/v1/model-versions/7", body, "application/json")
    ctx = SourceContext(Settings(), {"CIVITAI_ENDPOINT": api_server.url})
    try:
        remote = resolve(Entry(civitai=7), ctx)
    except SourceError as exc:
        assert str(exc).strip()
    else:
        assert remote.filename and remote.urls
        assert remote.size is None or remote.size >= 0
    finally:
        ctx.close()


hub_siblings = st.fixed_dictionaries(
    {"rfilename": st.just("a.safetensors") | json_scalars},
    optional={
        "size": json_scalars,
        "blobId": json_scalars,
        "lfs": st.fixed_dictionaries(
            {}, optional={"sha256": json_scalars, "size": json_scalars, "pointerSize": json_scalars}
        )
        | json_scalars,
    },
)
repo_docs = st.fixed_dictionaries(
    {"siblings": st.lists(hub_siblings, max_size=3) | json_values},
    optional={
        "sha": st.just("c" * 40) | json_scalars,
        "id": st.just("org/r") | json_scalars,
        "private": json_scalars,
        "gated": json_scalars,
        "lastModified": json_scalars,
        "cardData": json_values,
    },
)


@settings(FUZZ, max_examples=60)  # each example is a real request through huggingface_hub
@given(doc=st.one_of(repo_docs, json_values))
def test_any_hub_repository_listing_lists_or_fails_cleanly(
    api_server: FileServer, doc: Any
) -> None:
    """The Hub's repository API (or anything at $HF_ENDPOINT) answering any JSON: the
    files of a repository entry, or a SourceError."""
    from modelsync.errors import SourceError
    from modelsync.manifest import Entry, Settings
    from modelsync.sources import SourceContext, list_repository

    body = json.dumps(doc).encode()
    api_server.add_bytes("/api/models/org/r/revision/main", body, "application/json")
    ctx = SourceContext(Settings(), {"HF_ENDPOINT": api_server.url, "HF_TOKEN": ""})
    try:
        listing = list_repository(Entry(hf="org/r"), ctx)
    except SourceError as exc:
        assert str(exc).strip()
    else:
        assert listing.commit
        for f in listing.files:
            assert isinstance(f.path, str) and f.size >= 0
    finally:
        ctx.close()


locations = st.one_of(
    nasty_text,
    st.sampled_from(["http://[bad", "http://h:99999/x", "javascript:alert(1)", "ftp://h/f",
                     "//evil.example/f", "http://a b/", "/login", "https://cdn.example/f?sig=1",
                     "http://127.0.0.1:9/f", "http://[::1]:9/f", "\\\\evil\\f"]),
    st.builds(lambda a, b: f"{a}://{b}", st.sampled_from(["http", "https", "HTTP", "file"]),
              st.text(max_size=20)),
).filter(lambda text: "\r" not in text and "\n" not in text)  # fmt: skip


@FUZZ
@given(location=locations)
def test_any_redirect_from_civitai_is_followed_or_refused_cleanly(
    api_server: FileServer, location: str
) -> None:
    """The download link's redirect (the signed CDN URL) may be anything a server sends:
    aria2 gets an http(s) URL, or the entry fails with a SourceError."""
    from modelsync.errors import SourceError
    from modelsync.manifest import Entry, Settings
    from modelsync.sources import SourceContext, locate
    from modelsync.sources.http import origin

    doc = {"files": [{"name": "a.bin", "primary": True, "downloadUrl": api_server.url + "/dl"}]}
    api_server.add_bytes("/api/v1/model-versions/8", json.dumps(doc).encode(), "application/json")
    api_server.set_faults("/dl", redirect=location)
    ctx = SourceContext(Settings(), {"CIVITAI_ENDPOINT": api_server.url, "CIVITAI_TOKEN": "t1"})
    try:
        located = locate(Entry(civitai=8), ctx)
    except SourceError as exc:
        assert str(exc).strip()
    else:
        for url in located.urls:
            assert origin(url)[0] in ("http", "https"), url
        assert not located.headers or origin(located.urls[0]) == origin(api_server.url)
    finally:
        ctx.close()


class HeaderServer(BaseServer):
    """Answers every request with `status` and `headers`, whatever they are: a Hub that is
    not one (a wrong HF_ENDPOINT, a broken proxy)."""

    status = 302
    headers: ClassVar[dict[str, str]] = {}

    def handle(self, h: Handler, rec: RequestRecord) -> None:
        self.reply(h, rec, self.status, b"", headers=self.headers)


header_values = st.one_of(nasty_text, st.integers().map(str), st.just(SHA), st.just(f'"{SHA}"'))
hub_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Repo-Commit": header_values | st.just("c" * 40),
        "X-Linked-Etag": header_values,
        "X-Linked-Size": header_values,
        "ETag": header_values,
        "Location": locations,
        "Content-Length": header_values,
    },
).map(lambda d: {k: v for k, v in d.items() if v.isprintable() and v.isascii()})  # HTTP can send


@pytest.fixture(scope="module")
def header_server() -> Iterator[HeaderServer]:
    with HeaderServer() as server:
        yield server


@settings(FUZZ, max_examples=60)  # each example is a real request through huggingface_hub
@given(status=st.sampled_from([200, 302, 307, 404, 500]), headers=hub_headers)
@example(status=200, headers={"X-Linked-Size": "-1"})  # found by this test: a negative size
@example(status=302, headers={"Location": "http://[bad"})  # and a Location that is no URL
def test_any_hub_answer_to_a_file_resolves_or_fails_cleanly(
    header_server: HeaderServer, status: int, headers: dict[str, str]
) -> None:
    """`HEAD …/resolve/…` answered with any status and headers: a file (with an http(s)
    URL for aria2) or a SourceError."""
    from modelsync.errors import SourceError
    from modelsync.manifest import Entry, Settings
    from modelsync.sources import SourceContext, locate
    from modelsync.sources.http import origin

    header_server.status, header_server.headers = status, headers
    ctx = SourceContext(Settings(), {"HF_ENDPOINT": header_server.url, "HF_TOKEN": ""})
    try:
        located = locate(Entry(hf="org/r", file="a.bin"), ctx)
    except SourceError as exc:
        assert str(exc).strip()
    else:
        assert all(origin(url)[0] in ("http", "https") for url in located.urls)
        assert located.size is None or located.size >= 0
    finally:
        ctx.close()


@settings(FUZZ, max_examples=12)
@given(content=import_inputs, suffix=st.sampled_from([".json", ".png", ".webp", ".txt"]))
def test_import_on_fuzzed_input_exits_0_1_or_2_without_a_traceback(
    content: str | bytes, suffix: str
) -> None:
    """The real CLI: what it appends to the manifest loads, or it says why it wrote nothing."""
    with tempfile.TemporaryDirectory() as folder:
        source = _write(Path(folder), "shared" + suffix, content)
        manifest = Path(folder) / "models.toml"
        run = modelsync("import", source, "-o", manifest, "--offline", "--json", env=OFFLINE)
        assert run.code in (0, 1, 2), run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        json.loads(run.stdout)
        if manifest.exists():
            load_manifest(manifest)
