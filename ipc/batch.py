"""Batched data-path notifications: one ZeroMQ frame announces (or releases) many buffers.

odin-data sends one JSON ``frame_ready`` per frame and one ``frame_release`` back; at
64x64 pixels that JSON, not the pixels, is the cost. Between framechain daemons the
receiver may batch (its ``notify_batch`` key, 1 = odin's messages, the default) and then
says so in ``buffer_config`` (``notify_batch``), and the processor batches its releases too.

Byte layout (little-endian)::

    offset 0   4 bytes  magic b"FCB1"
    offset 4   1 byte   kind: b"R" frame_ready, b"L" frame_release
    offset 5   uint32   count n (1..MAX_BATCH)
    offset 9   n x {int64 frame, int32 buffer_id}   12 bytes each

Start/end of acquisition and buffer_config stay JSON IpcMessages, in order with the
batches around them (a batch is sent before any JSON notice that follows its frames).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from .errors import ProtocolError

__all__ = ["BATCH_MAGIC", "MAX_BATCH", "PendingBatch", "encode_batch", "decode_batch", "is_batch"]

BATCH_MAGIC = b"FCB1"
MAX_BATCH = 4096
_KINDS = {"frame_ready": b"R", "frame_release": b"L"}
_NAMES = {v: k for k, v in _KINDS.items()}
_HEAD = struct.Struct("<4scI")
ITEM = np.dtype([("frame", "<i8"), ("buffer_id", "<i4")])


def is_batch(raw: bytes) -> bool:
    """Whether a data-path frame is a batch (JSON messages start with ``{``)."""
    return raw[:4] == BATCH_MAGIC


def encode_batch(msg_val: str, frames: list[int], buffer_ids: list[int]) -> bytes:
    """The batch of ``msg_val`` (frame_ready or frame_release) for these frames and buffers."""
    n = len(frames)
    if msg_val not in _KINDS or n != len(buffer_ids) or not 0 < n <= MAX_BATCH:
        raise ValueError(f"a batch is frame_ready or frame_release of 1..{MAX_BATCH} frame/buffer pairs, not "
                         f"{msg_val!r} with {n} frames and {len(buffer_ids)} buffers")
    items = np.empty(n, ITEM)
    items["frame"] = frames
    items["buffer_id"] = buffer_ids
    return _HEAD.pack(BATCH_MAGIC, _KINDS[msg_val], n) + items.tobytes()


def decode_batch(raw: bytes) -> tuple[str, list[int], list[int]]:
    """``(msg_val, frames, buffer_ids)`` of a batch; ProtocolError saying what is wrong otherwise."""
    if len(raw) < _HEAD.size:
        raise ProtocolError(f"batch of {len(raw)} bytes is shorter than its {_HEAD.size}-byte head")
    magic, kind, n = _HEAD.unpack_from(raw)
    if magic != BATCH_MAGIC:
        raise ProtocolError(f"not a batch: it starts with {magic!r}, not {BATCH_MAGIC!r}")
    if kind not in _NAMES:
        raise ProtocolError(f"batch kind {kind!r} is neither b'R' (frame_ready) nor b'L' (frame_release)")
    if not 0 < n <= MAX_BATCH:
        raise ProtocolError(f"batch count {n} is outside 1..{MAX_BATCH}")
    if len(raw) != _HEAD.size + n * ITEM.itemsize:
        raise ProtocolError(f"batch of {n} frames must be {_HEAD.size + n * ITEM.itemsize} bytes, not {len(raw)}")
    items = np.frombuffer(raw, ITEM, n, _HEAD.size)
    return _NAMES[kind], items["frame"].tolist(), items["buffer_id"].tolist()


class PendingBatch:
    """Frame/buffer pairs gathered for the next batch of ``msg_val`` (the receiver's announcements, the
    processor's releases)."""

    __slots__ = ("msg_val", "frames", "buffer_ids")

    def __init__(self, msg_val: str) -> None:
        self.msg_val = msg_val
        self.frames: list[int] = []
        self.buffer_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.buffer_ids)

    def add(self, frame: int, buffer_id: int) -> int:
        """Gather one pair; returns how many are gathered."""
        self.frames.append(frame)
        self.buffer_ids.append(buffer_id)
        return len(self.buffer_ids)

    def extend(self, frames: Iterable[int], buffer_ids: Iterable[int]) -> int:
        self.frames.extend(frames)
        self.buffer_ids.extend(buffer_ids)
        return len(self.buffer_ids)

    def take(self) -> bytes | None:
        """The batch message of everything gathered (None when nothing is), and start again."""
        if not self.buffer_ids:
            return None
        raw = encode_batch(self.msg_val, self.frames, self.buffer_ids)
        self.frames, self.buffer_ids = [], []
        return raw

    def clear(self) -> int:
        """Forget what is gathered; returns how many pairs that was."""
        n = len(self.buffer_ids)
        self.frames, self.buffer_ids = [], []
        return n
