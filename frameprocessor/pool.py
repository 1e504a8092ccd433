"""DataBlock and DataBlockPool: reusable pixel memory, pooled by size with a memory bound."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import numpy as np

from .frame import Frame

__all__ = ["DataBlock", "DataBlockPool", "PoolExhausted"]


class PoolExhausted(Exception):
    """No free block and the pool is at its memory limit; retry after frames are released."""


class DataBlock:
    """A fixed-size byte block reused frame after frame."""

    __slots__ = ("buffer", "size", "index", "_view")

    def __init__(self, size: int, index: int) -> None:
        self.buffer = np.empty(size, dtype=np.uint8)
        self.size = size
        self.index = index
        self._view: np.ndarray | None = None  # the last view made: frame after frame has the same layout

    def view(self, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        """The block's first bytes as an array of ``dtype`` and ``shape`` (no copy), writeable."""
        v = self._view
        if v is not None and v.shape == shape and v.dtype == dtype:
            if not v.flags.writeable:  # the last frame in it was shared read-only between plugins
                v.flags.writeable = True
            return v
        dt = np.dtype(dtype)
        n = dt.itemsize
        for d in shape:
            n *= d
        v = self._view = self.buffer[:n].view(dt).reshape(shape)
        return v

    def __repr__(self) -> str:
        return f"<DataBlock #{self.index} {self.size} B>"


class DataBlockPool:
    """Blocks pooled by size; total allocated memory is bounded by ``max_memory`` bytes.

    Thread-safe: frames are released from plugin threads.

    Examples
    --------
    >>> pool = DataBlockPool(max_memory=1 << 20)
    >>> frame = pool.frame((16, 16), "u2", frame_number=0)
    >>> pool.stats()["blocks_in_use"]
    1
    >>> del frame
    >>> pool.stats()["blocks_in_use"]
    0
    """

    def __init__(self, max_memory: int = 1 << 30) -> None:
        self.max_memory = max_memory
        self._free: dict[int, list[DataBlock]] = defaultdict(list)
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # notified by release() when frame_like waits
        self._waiting = 0
        self._allocated = 0
        self._blocks = 0
        self._in_use = 0
        self._reused = 0
        self._exhausted = 0

    def acquire(self, size: int) -> DataBlock:
        """A free block of exactly ``size`` bytes (new if none free); raise PoolExhausted at the limit."""
        with self._lock:
            got = self._take(size)
        return got if got.__class__ is DataBlock else DataBlock(size, got)

    def _take(self, size: int) -> DataBlock | int:
        """With the lock held: a free block, or the index of a new block to allocate; PoolExhausted at the limit."""
        free = self._free.get(size)
        if free:
            self._in_use += 1
            self._reused += 1
            return free.pop()
        if self._allocated + size > self.max_memory:
            # Give back idle blocks of other sizes before refusing.
            for other, blocks in self._free.items():
                while blocks and self._allocated + size > self.max_memory:
                    blocks.pop()
                    self._allocated -= other
                    self._blocks -= 1
            if self._allocated + size > self.max_memory:
                self._exhausted += 1
                raise PoolExhausted(f"DataBlockPool at its limit of {self.max_memory} bytes")
        self._allocated += size
        self._blocks += 1
        self._in_use += 1
        return self._blocks

    def release(self, block: DataBlock) -> None:
        """Return a block for reuse (waking any ``frame_like`` waiting for memory)."""
        with self._lock:
            self._in_use -= 1
            self._free[block.size].append(block)
            if self._waiting:
                self._released.notify_all()

    def frame(self, shape: tuple[int, ...], dtype: np.dtype | str, frame_number: int, **meta: object) -> Frame:
        """A new Frame over a pooled block; the block returns to the pool when the Frame dies."""
        dt = np.dtype(dtype)
        block = self.acquire(_nbytes(dt, shape))
        return Frame(block.view(dt, shape), frame_number, on_release=lambda: self.release(block), **meta)

    def frame_like(self, frame: Frame, dtype: np.dtype | str | None = None, timeout: float = 0.0,
                   shape: tuple[int, ...] | None = None) -> Frame | None:
        """A pooled Frame with ``frame``'s shape and metadata (parameters copied, mask shared).

        When the pool is at its limit, waits up to ``timeout`` seconds for downstream
        plugins to release frames; returns None if there is still no memory (count it as a drop).
        """
        dt, shape = np.dtype(frame.dtype if dtype is None else dtype), frame.shape if shape is None else shape
        size = _nbytes(dt, shape)
        deadline = None
        with self._lock:
            while True:
                try:
                    got = self._take(size)
                    break
                except PoolExhausted:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + timeout
                    if now >= deadline:
                        return None
                    self._waiting += 1
                    try:
                        self._released.wait(deadline - now)
                    finally:
                        self._waiting -= 1
        block = got if got.__class__ is DataBlock else DataBlock(size, got)
        new = Frame(block.view(dt, shape), frame.frame_number, frame.dataset, frame.acquisition_id,
                    frame.timestamp, dict(frame.parameters), on_release=lambda: self.release(block))
        new.mask, new.detector = frame.mask, frame.detector
        return new

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"blocks_total": self._blocks, "blocks_in_use": self._in_use,
                    "blocks_free": self._blocks - self._in_use, "memory_allocated": self._allocated,
                    "max_memory": self.max_memory, "blocks_reused": self._reused,
                    "exhausted": self._exhausted}


def _nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n
