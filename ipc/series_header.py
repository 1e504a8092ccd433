"""A detector series' header arrays (pixel mask, flatfield, count-rate table) handed from receiver to processor.

A DECTRIS ``start`` / ``dheader-1.0`` carries image-sized arrays too large for a
JSON notification. The receiver writes them into one small POSIX shared-memory
segment, ``<shared_buffer_name>_header``, rebuilt at every series, and
announces the series with a ``frame_ready`` notification::

    {"start_of_acquisition": true, "acquisition_id": "42",
     "detector": {"count_time": 0.001, "incident_energy": 12400.0, ...},
     "header_segment": "fc_buf_header",
     "arrays": {"pixel_mask": {"offset": 0, "dtype": "<u4", "shape": [512, 1024]}, ...}}

The processor copies the arrays out (``read_arrays``) as soon as it reads the
notification, so the receiver may replace the segment at the next series.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
import posix_ipc

from .errors import ShmError
from .shm import posix_name

__all__ = ["HeaderSegment", "read_arrays", "header_segment_name"]

_ALIGN = 64
_MAX_BYTES = 1 << 30


def header_segment_name(shared_buffer_name: str) -> str:
    return f"{shared_buffer_name.lstrip('/')}_header"


class HeaderSegment:
    """The receiver's side: one segment per series, replaced by the next, unlinked at close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._mem: posix_ipc.SharedMemory | None = None

    def write(self, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        """Put ``arrays`` in a fresh segment; their descriptors for the notification."""
        self.unlink()
        layout, offset = {}, 0
        for key, arr in arrays.items():
            layout[key] = {"offset": offset, "dtype": arr.dtype.str, "shape": list(arr.shape)}
            offset += -(-arr.nbytes // _ALIGN) * _ALIGN
        if not layout:
            return layout
        try:
            mem = posix_ipc.SharedMemory(posix_name(self.name), posix_ipc.O_CREAT | posix_ipc.O_TRUNC, mode=0o600,
                                         size=max(offset, 1))
        except (posix_ipc.Error, OSError, ValueError) as err:
            raise ShmError(f"cannot create the series header segment {self.name!r}: {err}") from err
        try:
            with mmap.mmap(mem.fd, max(offset, 1)) as m:
                for key, arr in arrays.items():
                    d = layout[key]
                    np.frombuffer(m, arr.dtype, arr.size, d["offset"]).reshape(arr.shape)[...] = arr
        finally:
            mem.close_fd()
        self._mem = mem
        return layout

    def unlink(self) -> None:
        if self._mem is not None:
            try:
                self._mem.unlink()
            except posix_ipc.ExistentialError:
                pass
            self._mem = None


def read_arrays(name: str, layout: Any) -> dict[str, np.ndarray]:
    """Copies of the arrays ``layout`` describes in segment ``name``; ShmError if it does not hold them."""
    if not isinstance(name, str) or not name or "/" in name or not isinstance(layout, dict):
        raise ShmError("a start_of_acquisition needs 'header_segment' (a name) and 'arrays' (a mapping)")
    try:
        mem = posix_ipc.SharedMemory(posix_name(name))
    except posix_ipc.ExistentialError as err:
        raise ShmError(f"series header segment {name!r} does not exist (replaced by a later series?)") from err
    out: dict[str, np.ndarray] = {}
    try:
        with mmap.mmap(mem.fd, mem.size, prot=mmap.PROT_READ) as m:
            for key, d in layout.items():
                try:
                    dtype, shape, offset = np.dtype(d["dtype"]), tuple(int(x) for x in d["shape"]), int(d["offset"])
                    nbytes = int(np.prod(shape)) * dtype.itemsize
                except (KeyError, TypeError, ValueError) as err:
                    raise ShmError(f"series header array {key!r}: bad descriptor {d!r}") from err
                if dtype.hasobject or offset < 0 or nbytes > _MAX_BYTES or offset + nbytes > len(m):
                    raise ShmError(f"series header array {key!r} lies outside segment {name!r}")
                out[str(key)] = np.frombuffer(m, dtype, nbytes // dtype.itemsize, offset).reshape(shape).copy()
    finally:
        mem.close_fd()
    return out
