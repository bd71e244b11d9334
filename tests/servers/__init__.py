"""In-process HTTP servers for tests and the demo: files with faults, a fake HF Hub, a fake Civitai.

All bind 127.0.0.1 on a free port; `start()`/`stop()` or `with`; `.port`, `.url` (no trailing /).
"""

from ._core import Content, Faults, RequestRecord
from .fake_civitai import CivitaiFile, CivitaiVersion, FakeCivitai
from .fake_hf import FakeHub, HubFile, HubRepo
from .fileserver import SIGNATURE_MARK, FileServer

__all__ = [
    "SIGNATURE_MARK",
    "CivitaiFile",
    "CivitaiVersion",
    "Content",
    "FakeCivitai",
    "FakeHub",
    "Faults",
    "FileServer",
    "HubFile",
    "HubRepo",
    "RequestRecord",
]
