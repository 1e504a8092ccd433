"""TimeAverages: the time-averaged image, per-static-bin means (whole run and segments) and intensity vs time.

Bad frames (non-finite used pixel) are left out of the averages and give NaN in
``intensity_vs_time``. Per-frame static-bin sums are kept (``frames x bins``
float64, small) so the run can be cut into segments at the end without knowing
its length in advance.
"""

from __future__ import annotations

import numpy as np

from .layout import PixelLayout

__all__ = ["TimeAverages", "Growable"]


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


class TimeAverages:
    """Accumulates the APS temporal and spatial means.

    Parameters
    ----------
    static : PixelLayout
        Layout of the static bins (unpadded pixel order is used).
    shape : tuple
        Frame shape.
    """

    def __init__(self, static: PixelLayout, shape: tuple[int, ...]) -> None:
        self.static = static
        self.sum2d = np.zeros(shape)
        self.good = 0
        self.static_sums = Growable(static.num_bins)
        self.intensity = Growable(2)          # frame number, mean intensity over used pixels
        self._x = static.empty()
        self._total_pixels = max(1, static.num_pixels)

    def add(self, frame: np.ndarray, frame_number: int, good: bool, mean_intensity: float | None = None,
            bin_sums: np.ndarray | None = None) -> None:
        """Add one frame.

        ``mean_intensity`` (over the used pixels) and ``bin_sums`` (per static bin, all bins) are
        computed here when not given; the plugin passes them when the correlator already has them.
        """
        if not good:
            self.intensity.append((frame_number, np.nan))
            self.static_sums.append(np.nan)
            return
        np.add(self.sum2d, frame, out=self.sum2d)
        self.good += 1
        if bin_sums is None:
            self.static.gather(frame, self._x)
            bin_sums = self.static.expand(self.static.bin_sums(self._x), fill=0.0)
        self.static_sums.append(bin_sums)
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
        sums = self.static_sums.array
        npix = self.static.npix.astype(np.float64)
        out = np.full((count, self.static.num_bins), np.nan)
        if not len(sums):
            return out
        edges = np.linspace(0, len(sums), count + 1).round().astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            for k in range(count):               # a handful of segments, once per run
                part = sums[edges[k]:edges[k + 1]]
                part = part[np.isfinite(part).all(axis=1)]
                if len(part):
                    out[k] = part.mean(axis=0) / npix
        return out

    def intensity_vs_time(self) -> np.ndarray:
        """``(2, frames)``: frame number and mean intensity of the used pixels."""
        return self.intensity.array.T.copy()
