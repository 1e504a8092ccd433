"""TimeAverages: the time-averaged image, per-static-bin means (whole run and segments) and intensity vs time.

Bad frames (non-finite used pixel) are left out of the averages and give NaN in
``intensity_vs_time``. Static-bin sums are kept in at most ``SEGMENT_BLOCKS``
blocks of consecutive frames (:class:`BlockSums`, ``SEGMENT_BLOCKS x bins``
float64 whatever the run length) so the run can be cut into segments at the
end without knowing its length in advance: exact up to ``SEGMENT_BLOCKS``
frames, beyond that segment edges fall on block edges.
"""

from __future__ import annotations

import numpy as np

from .layout import PixelLayout

__all__ = ["TimeAverages", "Growable", "BlockSums", "SEGMENT_BLOCKS"]

SEGMENT_BLOCKS = 2048   # even; after a merge 1024 blocks remain, at least one per segment (segments <= 1000)


class Growable:
    """An append-only 2-D float64 array that doubles its capacity (amortised O(1) appends)."""

    def __init__(self, width: int, capacity: int = 1024) -> None:
        self._a = np.empty((capacity, width))
        self.n = 0

    def append(self, row: np.ndarray | float) -> None:
        if self.n == len(self._a):
            self._a = np.concatenate([self._a, np.empty_like(self._a)])
        self._a[self.n] = row
        self.n += 1

    @property
    def array(self) -> np.ndarray:
        return self._a[:self.n]


class BlockSums:
    """Per-frame rows summed into at most ``capacity`` blocks of ``block`` consecutive frames.

    When every block is used, neighbouring blocks are merged pairwise and ``block``
    doubles, so memory stays ``capacity x width`` float64 for any number of frames.

    Parameters
    ----------
    width : int
        Values per frame (static bins).
    capacity : int
        Blocks kept (even, >= 2).
    """

    def __init__(self, width: int, capacity: int = SEGMENT_BLOCKS) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"capacity must be an even integer >= 2, not {capacity!r}")
        self.capacity = capacity
        self.sums = np.zeros((capacity, width))
        self.good = np.zeros(capacity, np.int64)     # frames summed in each block
        self.block = 1                               # frames per block
        self.frames = 0                              # frames added, counted or not

    @staticmethod
    def bytes_for(width: int, capacity: int = SEGMENT_BLOCKS) -> int:
        return capacity * (width + 1) * 8

    def nbytes(self) -> int:
        return self.sums.nbytes + self.good.nbytes

    def add(self, row: np.ndarray | None) -> None:
        """Add the next frame's row (None: the frame keeps its time slot but is not summed)."""
        i = self.frames // self.block
        if i == self.capacity:                       # full: merge neighbours, in place
            half = self.capacity // 2
            self.sums[:half] = self.sums[0::2] + self.sums[1::2]
            self.sums[half:] = 0.0
            self.good[:half] = self.good[0::2] + self.good[1::2]
            self.good[half:] = 0
            self.block *= 2
            i = half
        if row is not None:
            self.sums[i] += row
            self.good[i] += 1
        self.frames += 1

    def segments(self, count: int) -> np.ndarray:
        """Mean row of the summed frames in ``count`` consecutive parts of the run, ``(count, width)``
        (NaN for a part without summed frames); part edges are the nearest block edges."""
        out = np.full((count, self.sums.shape[1]), np.nan)
        n_blocks = -(-self.frames // self.block)
        edges = np.minimum(np.rint(np.linspace(0, self.frames, count + 1) / self.block), n_blocks).astype(int)
        edges[-1] = n_blocks
        for k in range(count):                       # a handful of segments, once per run
            a, b = edges[k], edges[k + 1]
            good = int(self.good[a:b].sum())
            if good:
                out[k] = self.sums[a:b].sum(axis=0) / good
        return out


class TimeAverages:
    """Accumulates the APS temporal and spatial means.

    Parameters
    ----------
    static : PixelLayout
        Layout of the static bins (unpadded pixel order is used).
    shape : tuple
        Frame shape.
    blocks : int
        Blocks of static-bin sums kept for the segments (see :class:`BlockSums`).
    """

    def __init__(self, static: PixelLayout, shape: tuple[int, ...], blocks: int = SEGMENT_BLOCKS) -> None:
        self.static = static
        self.sum2d = np.zeros(shape)
        self.good = 0
        self.static_sums = BlockSums(static.num_bins, blocks)
        self.intensity = Growable(2)          # frame number, mean intensity over used pixels
        self._x = static.empty()
        self._total_pixels = max(1, static.num_pixels)

    @staticmethod
    def bytes_for(shape: tuple[int, ...], num_static: int, blocks: int = SEGMENT_BLOCKS) -> int:
        """Bytes of the image sum and the static-bin block sums (``intensity_vs_time`` adds 16 per frame)."""
        return int(np.prod(shape)) * 8 + BlockSums.bytes_for(num_static, blocks)

    def add(self, frame: np.ndarray, frame_number: int, good: bool, mean_intensity: float | None = None,
            bin_sums: np.ndarray | None = None) -> None:
        """Add one frame.

        ``mean_intensity`` (over the used pixels) and ``bin_sums`` (per static bin, all bins) are
        computed here when not given; the plugin passes them when the correlator already has them.
        """
        if not good:
            self.intensity.append((frame_number, np.nan))
            self.static_sums.add(None)
            return
        np.add(self.sum2d, frame, out=self.sum2d)
        self.good += 1
        if bin_sums is None:
            self.static.gather(frame, self._x)
            bin_sums = self.static.expand(self.static.bin_sums(self._x), fill=0.0)
        self.static_sums.add(bin_sums if np.isfinite(bin_sums).all() else None)
        if mean_intensity is None:
            mean_intensity = float(bin_sums.sum()) / self._total_pixels
        self.intensity.append((frame_number, mean_intensity))

    def scattering_2d(self) -> np.ndarray:
        """Time-averaged image (NaN before any good frame)."""
        return self.sum2d / self.good if self.good else np.full(self.sum2d.shape, np.nan)

    def scattering_1d(self) -> np.ndarray:
        """Mean intensity per static bin over the good frames, ``(num_static,)`` (NaN for empty bins)."""
        return self.segments(1)[0]

    def segments(self, count: int) -> np.ndarray:
        """Per-static-bin means in ``count`` consecutive segments of the run, ``(count, num_static)``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.static_sums.segments(count) / self.static.npix.astype(np.float64)

    def intensity_vs_time(self) -> np.ndarray:
        """``(2, frames)``: frame number and mean intensity of the used pixels."""
        return self.intensity.array.T.copy()
