"""The shared-memory buffer pool layout shared by receiver and processor.

Segment layout (POSIX shared memory, via posix_ipc)::

    offset 0              struct "QQQ": manager_id, num_buffers, buffer_size
    offset 24 + i*size    buffer i: FRAME_HEADER (128 bytes) then pixel data

``manager_id`` is the process id of the receiver that created the segment, so
a second receiver can tell a live owner from a stale segment of a crashed run.

Frame header (little endian, 128 bytes; see docs/protocol.md)::

    0   4s   magic b"FCFR"
    4   H    header version (1)
    6   H    state (0 empty, 1 filling, 2 ready)
    8   Q    frame number
    16  Q    data size in bytes
    24  d    timestamp (seconds since the epoch)
    32  8s   numpy dtype string, e.g. b"<u2", NUL padded
    40  I    ndim (1..4)
    44  I    reserved (0)
    48  4Q   shape (unused dimensions 0)
    80  32s  acquisition id, UTF-8, NUL padded
    112 16s  dataset name, UTF-8, NUL padded
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
import posix_ipc

from .errors import ShmError

__all__ = ["SEGMENT_HEADER", "FRAME_HEADER", "FrameHeader", "SharedBuffer", "buffer_size_for",
           "STATE_EMPTY", "STATE_FILLING", "STATE_READY", "MAGIC", "COMPRESSION_CODES"]

SEGMENT_HEADER = struct.Struct("QQQ")
FRAME_HEADER = struct.Struct("<4sHHQQd8sII4Q32s16s")
assert FRAME_HEADER.size == 128
_STATE_FRAME = struct.Struct("<HQ")   # state at byte 6, frame number at 8
#: FRAME_HEADER as a numpy record: a segment's headers seen as one strided array (SharedBuffer.header_table)
HEADER_DTYPE = np.dtype([("magic", "S4"), ("version", "<u2"), ("state", "<u2"), ("frame_number", "<u8"),
                         ("data_size", "<u8"), ("timestamp", "<f8"), ("dtype", "S8"), ("ndim", "<u4"),
                         ("compression", "<u4"), ("shape", "<u8", (4,)), ("acquisition_id", "S32"),
                         ("dataset", "S16")])
MAGIC = b"FCFR"
HEADER_VERSION = 1
STATE_EMPTY, STATE_FILLING, STATE_READY = 0, 1, 2
#: the header's compression field (offset 44): the data is a pixel array (0) or an HDF5-framed chunk
COMPRESSION_CODES = {0: "", 1: "bslz4", 2: "lz4"}
_ALIGN = 4096
_VALID_KINDS = frozenset("biuf")


def buffer_size_for(frame_bytes: int) -> int:
    """Buffer size (header + data) for frames of ``frame_bytes``, rounded to a page."""
    need = FRAME_HEADER.size + frame_bytes
    return -(-need // _ALIGN) * _ALIGN


@dataclass(slots=True)
class FrameHeader:
    """The decoded fixed header at the start of every buffer."""

    frame_number: int
    dtype: str
    shape: tuple[int, ...]
    data_size: int
    timestamp: float = 0.0
    acquisition_id: str = ""
    dataset: str = "data"
    state: int = STATE_READY
    compression: int = 0
    magic: bytes = MAGIC
    version: int = HEADER_VERSION

    def pack_into(self, buf: memoryview | mmap.mmap, offset: int) -> None:
        shape = tuple(self.shape) + (0,) * (4 - len(self.shape))
        FRAME_HEADER.pack_into(buf, offset, self.magic, self.version, self.state, self.frame_number,
                               self.data_size, self.timestamp, self.dtype.encode(), len(self.shape),
                               self.compression,
                               *shape, self.acquisition_id.encode(), self.dataset.encode())

    @classmethod
    def from_fields(cls, fields: tuple) -> FrameHeader:
        (magic, version, state, number, size, ts, dtype, ndim, compression, s0, s1, s2, s3, acq, dset) = fields
        shape = (s0, s1, s2, s3)[:min(ndim, 4)]
        return cls(number, dtype.rstrip(b"\0").decode("ascii", "replace"), shape, size, ts,
                   acq.rstrip(b"\0").decode("utf-8", "replace"),
                   dset.rstrip(b"\0").decode("utf-8", "replace"), state, compression, magic, version)

    def problem(self, buffer_size: int) -> str | None:
        """Why this header cannot describe a valid frame in a buffer of ``buffer_size``, or None."""
        if self.magic != MAGIC:
            return f"bad magic {self.magic!r}"
        if self.state != STATE_READY:
            return f"buffer state is {self.state}, not ready (2)"
        if not 1 <= len(self.shape) <= 4 or any(d <= 0 for d in self.shape):
            return f"bad shape {self.shape}"
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            return f"unknown dtype {self.dtype!r}"
        if dt.kind not in _VALID_KINDS:
            return f"unsupported dtype {self.dtype!r}"
        expected = int(np.prod(self.shape)) * dt.itemsize
        if self.compression:
            if self.compression not in COMPRESSION_CODES:
                return f"unknown compression code {self.compression}"
            if self.data_size < 12:
                return f"compressed data size {self.data_size} is shorter than its 12-byte header"
        elif self.data_size != expected:
            return f"data size {self.data_size} does not match shape {self.shape} of {self.dtype} ({expected} bytes)"
        if FRAME_HEADER.size + self.data_size > buffer_size:
            return f"data size {self.data_size} exceeds the buffer size {buffer_size}"
        return None


def shm_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a POSIX shared-memory segment here, or None.

    Checked before any posix_ipc call: posix_ipc crashes the process (a segfault, not an exception) on a
    name holding NUL or an unpaired surrogate, and such names arrive in JSON from sockets."""
    if not isinstance(name, str) or not name or len(name) > 200 or "/" in name.lstrip("/"):
        return "must be a short name without '/'"
    if not name.isprintable():
        return "must be printable text (no NUL, control or unpaired surrogate characters)"
    return None


def posix_name(name: object) -> str:
    """``/name`` for posix_ipc; ShmError saying why for a name it must not be given."""
    problem = shm_name_problem(name)
    if problem:
        raise ShmError(f"bad shared buffer name {name!r}: {problem}")
    return name if name.startswith("/") else "/" + name  # type: ignore[union-attr]


class SharedBuffer:
    """A mapped shared-memory buffer pool (creator or user side).

    Use :meth:`create` in the receiver and :meth:`open` in the processor.
    ``close()`` drops the cached :meth:`views` and unmaps; ``unlink()`` (creator) removes the name.
    """

    def __init__(self, name: str, mem: posix_ipc.SharedMemory, mapping: mmap.mmap, owner: bool,
                 inode: int = 0) -> None:
        self.name = name
        self.inode = inode
        self._mem = mem
        self._map = mapping
        self.owner = owner
        self.manager_id, self.num_buffers, self.buffer_size = SEGMENT_HEADER.unpack_from(mapping, 0)
        self.closed = False
        self._views: tuple[tuple, list[np.ndarray]] | None = None  # (dtype, shape, writeable), views
        self._table: np.ndarray | None = None

    @property
    def identity(self) -> tuple[int, int, int, int]:
        """(inode, manager_id, num_buffers, buffer_size): differs when a receiver rebuilt the segment."""
        return (self.inode, self.manager_id, self.num_buffers, self.buffer_size)

    @staticmethod
    def _posix_name(name: str) -> str:
        return posix_name(name)

    @classmethod
    def create(cls, name: str, num_buffers: int, buffer_size: int, manager_id: int | None = None,
               replace_stale: bool = True) -> tuple[SharedBuffer, str | None]:
        """Create the segment. Returns (buffer, note) where note says a stale segment was replaced.

        Raises ShmError if the name is held by a live process other than this one.
        """
        pname = cls._posix_name(name)
        manager_id = os.getpid() if manager_id is None else manager_id
        note = None
        try:
            old = posix_ipc.SharedMemory(pname)
        except posix_ipc.ExistentialError:
            old = None
        if old is not None:
            owner = None
            try:
                if old.size >= SEGMENT_HEADER.size:
                    with mmap.mmap(old.fd, SEGMENT_HEADER.size) as m:
                        owner = SEGMENT_HEADER.unpack_from(m, 0)[0]
            finally:
                old.close_fd()
            if owner and owner != manager_id and _pid_alive(owner):
                raise ShmError(f"shared buffer name {name!r} is in use by a live receiver (pid {owner}); "
                               "choose another shared_buffer_name or stop that receiver")
            if not replace_stale:
                raise ShmError(f"shared buffer name {name!r} already exists")
            posix_ipc.unlink_shared_memory(pname)
            note = (f"replaced stale shared buffer {name!r} left by process {owner}" if owner != manager_id
                    else f"rebuilt shared buffer {name!r}")
        total = SEGMENT_HEADER.size + num_buffers * buffer_size
        try:
            mem = posix_ipc.SharedMemory(pname, posix_ipc.O_CREX, mode=0o600, size=total)  # this user only
        except (posix_ipc.Error, OSError, ValueError) as err:
            raise ShmError(f"cannot create shared buffer {name!r} of {total} bytes: {err}") from err
        try:
            mapping = mmap.mmap(mem.fd, total)
        except OSError as err:
            mem.close_fd()
            posix_ipc.unlink_shared_memory(pname)
            raise ShmError(f"cannot map shared buffer {name!r} of {total} bytes: {err}") from err
        inode = os.fstat(mem.fd).st_ino
        mem.close_fd()
        SEGMENT_HEADER.pack_into(mapping, 0, manager_id, num_buffers, buffer_size)
        return cls(name, mem, mapping, owner=True, inode=inode), note

    @classmethod
    def open(cls, name: str) -> SharedBuffer:
        """Map an existing segment created by a receiver."""
        pname = cls._posix_name(name)
        try:
            mem = posix_ipc.SharedMemory(pname)
        except posix_ipc.ExistentialError as err:
            raise ShmError(f"shared buffer {name!r} does not exist; is the receiver configured?") from err
        size = mem.size
        try:
            if size < SEGMENT_HEADER.size:
                raise ShmError(f"shared buffer {name!r} is too small ({size} bytes) to hold a header")
            mapping = mmap.mmap(mem.fd, size)
            inode = os.fstat(mem.fd).st_ino
        finally:
            mem.close_fd()
        buf = cls(name, mem, mapping, owner=False, inode=inode)
        if SEGMENT_HEADER.size + buf.num_buffers * buf.buffer_size > size:
            buf.close()
            raise ShmError(f"shared buffer {name!r} header claims more buffers than the segment holds")
        return buf

    def offset(self, buffer_id: int) -> int:
        """Byte offset of buffer ``buffer_id``."""
        return SEGMENT_HEADER.size + buffer_id * self.buffer_size

    def header_fields(self, buffer_id: int) -> tuple:
        """The raw unpacked FRAME_HEADER tuple of ``buffer_id`` (fast path; see FrameHeader for meaning)."""
        return FRAME_HEADER.unpack_from(self._map, self.offset(buffer_id))

    def unpack_header(self, buffer_id: int, layout: struct.Struct) -> tuple:
        """A foreign receiver's frame header (``layout`` at the start of ``buffer_id``), unpacked."""
        return layout.unpack_from(self._map, self.offset(buffer_id))

    def write_header(self, buffer_id: int, header: FrameHeader) -> None:
        header.pack_into(self._map, self.offset(buffer_id))

    def set_frame(self, buffer_id: int, frame_number: int, state: int) -> None:
        """Set a buffer's frame number and state, the rest of its header kept (a source's next frame)."""
        _STATE_FRAME.pack_into(self._map, self.offset(buffer_id) + 6, state, frame_number)

    def set_state(self, buffer_id: int, state: int, timestamp: float | None = None) -> None:
        """Set a buffer's state (and its timestamp when given) without rewriting the header."""
        off = self.offset(buffer_id)
        struct.pack_into("<H", self._map, off + 6, state)
        if timestamp is not None:
            struct.pack_into("<d", self._map, off + 24, timestamp)

    def data(self, buffer_id: int, dtype: np.dtype | str, shape: tuple[int, ...],
             header_size: int = FRAME_HEADER.size) -> np.ndarray:
        """A writable numpy view of the pixel data of ``buffer_id`` (no copy); ``header_size`` for a foreign
        receiver's frame header (odin-data's decoders put their own before the pixels)."""
        start = self.offset(buffer_id) + header_size
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        return np.frombuffer(self._map, dtype=dt, count=count, offset=start).reshape(shape)

    def views(self, dtype: np.dtype | str, shape: tuple[int, ...], writeable: bool = True,
              header_size: int = FRAME_HEADER.size) -> list[np.ndarray]:
        """Per-buffer numpy views of the pixel data, indexed by buffer id; cached until another layout or close().

        Keep the list only as long as this buffer: ``close()`` drops it so that the mapping can go.
        """
        key = (np.dtype(dtype), tuple(shape), writeable, header_size)
        cached = self._views
        if cached is not None and cached[0] == key:
            return cached[1]
        if self.closed:
            raise ShmError(f"shared buffer {self.name!r} is closed")
        views = [self.data(i, key[0], key[1], header_size) for i in range(self.num_buffers)]
        if not writeable:
            for v in views:
                v.flags.writeable = False
        self._views = (key, views)
        return views

    def header_table(self) -> np.ndarray:
        """Every buffer's header as one strided HEADER_DTYPE array (no copy): read or set a field of many
        buffers in one numpy operation (the batched data path)."""
        if self._table is None:
            if self.closed:
                raise ShmError(f"shared buffer {self.name!r} is closed")
            self._table = np.ndarray((self.num_buffers,), HEADER_DTYPE, buffer=self._map, offset=SEGMENT_HEADER.size,
                                     strides=(self.buffer_size,))
        return self._table

    def pixel_stack(self, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        """Every buffer's pixels as one ``(num_buffers, *shape)`` strided array (no copy)."""
        dt = np.dtype(dtype)
        inner = np.empty(shape, dt).strides
        return np.ndarray((self.num_buffers, *shape), dt, buffer=self._map,
                          offset=SEGMENT_HEADER.size + FRAME_HEADER.size, strides=(self.buffer_size, *inner))

    def segment(self) -> np.ndarray:
        """The whole mapping as one writable 1-D uint8 array (no copy): buffer ``i``'s pixels start at
        ``offset(i) + FRAME_HEADER.size``."""
        if self.closed:
            raise ShmError(f"shared buffer {self.name!r} is closed")
        return np.frombuffer(self._map, np.uint8)

    def raw(self, buffer_id: int, nbytes: int) -> memoryview:
        """The first ``nbytes`` of pixel data of ``buffer_id`` as a memoryview."""
        start = self.offset(buffer_id) + FRAME_HEADER.size
        return memoryview(self._map)[start:start + nbytes]

    def close(self) -> None:
        """Drop the cached views and unmap (safe to call twice). Views still held elsewhere keep the mapping alive."""
        if self.closed:
            return
        self.closed = True
        self._views = self._table = None
        try:
            self._map.close()
        except BufferError:
            pass  # numpy views still exported; the mapping goes when they do

    def unlink(self) -> None:
        """Remove the segment name (creator only); safe if already gone."""
        try:
            posix_ipc.unlink_shared_memory(self._posix_name(self.name))
        except posix_ipc.ExistentialError:
            pass

    def __enter__(self) -> SharedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<SharedBuffer {self.name!r} {self.num_buffers}x{self.buffer_size} B "
                f"{'owner' if self.owner else 'user'} {state}>")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
