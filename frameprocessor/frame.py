"""Frame and DataBlock: a frame's metadata over pooled (or shared) pixel memory.

A Frame is passed by reference through the plugin chains. When the last
reference goes, its release callback returns the memory: a DataBlock to its
pool, or a shared-memory buffer to the receiver (zero-copy mode). A Frame made
by ``derive`` over a view of its parent's pixels keeps the parent (and so its
memory) alive. Do not keep ``frame.data`` (or views of it) after you drop every
Frame over it; copy what you keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from framechain.ipc.compression import decompress_bslz4, decompress_lz4

if TYPE_CHECKING:
    from .pool import DataBlockPool

__all__ = ["Frame", "EndOfAcquisition", "Compressed", "DetectorHeader", "decompress_frame"]


@dataclass(frozen=True, slots=True)
class Compressed:
    """What a compressed frame's chunk decodes to: ``algorithm`` (``bslz4`` | ``lz4``), pixel dtype and shape."""

    algorithm: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


class Frame:
    """One detector frame.

    Parameters
    ----------
    data : numpy.ndarray
        The pixels (a view over a DataBlock or a shared-memory buffer).
    frame_number : int
        Frame number from the receiver (0-based within an acquisition).
    dataset : str
        Dataset name the frame belongs to (``"data"`` by default).
    acquisition_id : str
        Acquisition the frame belongs to.
    parameters : dict
        Per-frame values plugins add (sums, timestamps, flags); writers store them.
    on_release : callable, optional
        Called once with no arguments when the Frame is garbage (last reference dropped).

    Examples
    --------
    >>> f = Frame(np.zeros((4, 4), "u2"), frame_number=7)
    >>> f.shape, f.dtype
    ((4, 4), dtype('uint16'))
    """

    __slots__ = ("data", "frame_number", "dataset", "acquisition_id", "timestamp", "parameters",
                 "mask", "compressed", "detector", "_on_release", "_base", "__weakref__")

    def __init__(self, data: np.ndarray, frame_number: int, dataset: str = "data",
                 acquisition_id: str = "", timestamp: float = 0.0,
                 parameters: dict[str, Any] | None = None,
                 on_release: Callable[[], None] | None = None) -> None:
        self.data = data
        self.frame_number = frame_number
        self.dataset = dataset
        self.acquisition_id = acquisition_id
        self.timestamp = timestamp
        self.parameters = {} if parameters is None else parameters
        self.mask: np.ndarray | None = None
        #: set when ``data`` is a compressed chunk (uint8) of the pixels it describes, not the pixels
        self.compressed: Compressed | None = None
        #: what the detector said about this frame's series at its start (DECTRIS streams), shared by its frames
        self.detector: DetectorHeader | None = None
        self._on_release = on_release
        self._base: Frame | None = None  # the frame whose memory ``data`` views (set by derive)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def fan_out(self, consumers: int) -> None:
        """Call before handing the frame to ``consumers`` plugins: shared by several, it becomes read-only."""
        if consumers > 1 and self.data.flags.writeable:
            self.data.flags.writeable = False

    def derive(self, data: np.ndarray, on_release: Callable[[], None] | None = None) -> Frame:
        """A new Frame with this frame's metadata (parameters copied, mask shared) over ``data``.

        When ``data`` may share memory with this frame's pixels (a crop, a reshaped or
        re-typed view), the new Frame keeps this one alive, so the pool block or shared-memory
        buffer underneath is not recycled while the derived frame is in use. ``on_release``
        is for memory the caller owns (called when the derived frame dies).
        """
        f = Frame(data, self.frame_number, self.dataset, self.acquisition_id, self.timestamp,
                  dict(self.parameters), on_release)
        f.mask, f.detector = self.mask, self.detector
        if data is self.data or np.may_share_memory(data, self.data):
            f._base = self
        return f

    def __del__(self) -> None:
        cb = self._on_release
        if cb is not None:
            self._on_release = None
            cb()

    def __repr__(self) -> str:
        return (f"<Frame {self.frame_number} {self.dataset!r} {self.dtype} {self.shape} "
                f"acq={self.acquisition_id!r}>")


class FrameBatch(list):
    """Frames of one data-path batch, in order, handed to a plugin thread as one queue item (the plugin
    still sees them one by one); built by the shared-memory controller from a batched frame_ready."""

    __slots__ = ()


def decompress_frame(frame: Frame, pool: DataBlockPool, timeout: float = 2.0) -> Frame | None:
    """A pooled Frame holding the pixels of compressed ``frame`` (metadata kept); None when the pool is full.

    Raises ``framechain.ipc.compression.CompressionError`` for a chunk that does not decode.
    """
    c = frame.compressed
    out = pool.frame_like(frame, c.dtype, timeout, shape=c.shape)
    if out is not None:
        (decompress_bslz4 if c.algorithm == "bslz4" else decompress_lz4)(frame.data, out.data)
    return out


class DetectorHeader:
    """A detector's own description of a series, from its start message: ``parameters`` (count_time,
    incident_energy, beam centre, ... as the stream names them) and ``arrays`` (``pixel_mask/<dataset>``,
    ``flatfield/<dataset>``, ``countrate_table/<dataset>``; read-only). The HDF5 writer stores both."""

    __slots__ = ("acquisition_id", "parameters", "arrays")

    def __init__(self, acquisition_id: str, parameters: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.acquisition_id, self.parameters, self.arrays = acquisition_id, parameters, arrays
        for a in arrays.values():
            a.flags.writeable = False

    def __repr__(self) -> str:
        return f"<DetectorHeader acq={self.acquisition_id!r} {sorted(self.parameters)} arrays={sorted(self.arrays)}>"


class EndOfAcquisition:
    """The end-of-acquisition marker that flows down every chain after the last frame."""

    __slots__ = ("acquisition_id", "frames", "stopping")

    def __init__(self, acquisition_id: str = "", frames: int = 0, stopping: bool = False) -> None:
        self.acquisition_id = acquisition_id
        self.frames = frames
        self.stopping = stopping  # injected by a processor shutting down mid-acquisition

    def __repr__(self) -> str:
        return f"<EndOfAcquisition acq={self.acquisition_id!r} frames={self.frames}>"
