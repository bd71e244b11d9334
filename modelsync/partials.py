"""How many bytes a download waiting in tmp/ really holds, as aria2 will count them.

aria2's control file (`<file>.aria2`, "Control File (*.aria2) Format" in aria2c(1)) lists
the finished pieces and, for pieces in flight, their finished 16 KiB blocks. A resume
keeps exactly those and fetches the rest, so this is the figure that makes plan's "to
download" match what apply then transfers. Parsed here, outside modelsync.aria2, so that
plan does not import the RPC client.

Layout (version 1 is big-endian; version 0 is the host's byte order):
  version u16, extension u32, infohash length u32 + bytes, piece length u32,
  total length u64, upload length u64, bitfield length u32 + bitfield,
  in-flight count u32, then per in-flight piece: index u32, length u32,
  bitfield length u32 + bitfield (one bit per 16 KiB block).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

BLOCK = 16 * 1024  # aria2's block inside a piece
_MAX_CONTROL = 64 << 20  # a control file is a few KiB; anything huge is not one


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes a file really holds: aria2 writes segments at their offsets, so a sparse
    file's length overstates them; its allocated blocks do not."""
    return min(st.st_size, st.st_blocks * 512)


def control_bytes(control: Path) -> int | None:
    """Bytes that a resume from `control` keeps; None when it cannot be read or parsed."""
    try:
        if control.stat().st_size > _MAX_CONTROL:
            return None
        data = control.read_bytes()
    except OSError:
        return None
    try:
        return _completed(data)
    except (struct.error, ValueError, IndexError):
        return None


def partial_bytes(tmp: Path, control: Path) -> int:
    """What a resume of `tmp` starts from: the control file's count, else the allocated
    blocks (a file without control file is a finished download or garbage)."""
    counted = control_bytes(control) if control.exists() else None
    if counted is not None:
        return counted
    try:
        return allocated_bytes(tmp.stat())
    except FileNotFoundError:
        return 0


class _Reader:
    def __init__(self, data: bytes, order: str) -> None:
        self.data = data
        self.order = order
        self.at = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def skip(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("truncated control file")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk


def _completed(data: bytes) -> int:
    (version,) = struct.unpack_from(">H", data, 0)
    if version not in (0, 1):
        raise ValueError(f"unknown control file version {version}")
    r = _Reader(data, ">" if version == 1 else "=")
    r.at = 2
    r.take("I")  # extension
    r.skip(r.take("I"))  # infohash (BitTorrent only)
    piece = r.take("I")
    total = r.take("Q")
    r.take("Q")  # uploaded
    bitfield = r.skip(r.take("I"))
    if piece <= 0:
        raise ValueError("piece length 0")
    pieces = -(-total // piece)
    done = 0
    for index in range(pieces):
        if bitfield[index // 8] & (0x80 >> (index % 8)):
            done += min(piece, total - index * piece)
    for _ in range(r.take("I")):
        r.take("I")  # index
        length = r.take("I")
        blocks = r.skip(r.take("I"))
        for block in range(-(-length // BLOCK)):
            if blocks[block // 8] & (0x80 >> (block % 8)):
                done += min(BLOCK, length - block * BLOCK)
    return min(done, total)
