"""Two-time correlation ``C_q(t1, t2) = <I_t1 I_t2>_q / (<I_t1>_q <I_t2>_q)`` for the first frames of a run.

The first ``max_frames`` frames are kept as float32 copies of their labelled
pixels (``max_frames x pixels x 4`` bytes); the matrices (``bins x n^2 x 4`` bytes,
plus one ``n^2`` float64 product at a time, see :meth:`TwoTimeAccumulator.matrix_bytes`)
are computed at the end of the acquisition, one symmetric matrix product per bin (float64 sums).
Bad frames give NaN rows and columns.
"""

from __future__ import annotations

import numpy as np

from .layout import PixelLayout

__all__ = ["TwoTimeAccumulator"]


class TwoTimeAccumulator:
    """Keeps frames for the two-time correlation.

    Parameters
    ----------
    layout : PixelLayout
        Dynamic bins (unpadded bin-sorted pixel order is used).
    max_frames : int
        Frames kept; later frames are counted in ``frames_beyond``.
    """

    def __init__(self, layout: PixelLayout, max_frames: int) -> None:
        self.layout = layout
        self.max_frames = max_frames
        self._data: np.ndarray | None = None
        self._scratch: dict[np.dtype, np.ndarray] = {}   # per frame dtype: the gathered pixels before the cast
        self.n = 0
        self.frames_beyond = 0

    @staticmethod
    def matrix_bytes(frames: int, num_bins: int, max_bin_pixels: int = 0) -> int:
        """Bytes :meth:`compute` needs at its peak for ``frames`` frames: the float32 matrices
        (``bins x frames^2 x 4``) plus one bin's float64 product and pixel copy."""
        return frames * frames * (4 * num_bins + 8) + frames * max_bin_pixels * 8

    @staticmethod
    def bytes_for(layout: PixelLayout, frames: int) -> int:
        """Bytes a run keeping ``frames`` frames needs in all: kept frames plus :meth:`matrix_bytes`."""
        if not frames:
            return 0
        npix = layout.npix[layout.active]
        return (frames * layout.num_pixels * 4
                + TwoTimeAccumulator.matrix_bytes(frames, layout.num_active, int(npix.max(initial=0))))

    def add(self, frame: np.ndarray, good: bool) -> None:
        if self.n >= self.max_frames:
            self.frames_beyond += 1
            return
        if self._data is None:
            self._data = np.empty((self.max_frames, self.layout.num_pixels), np.float32)
        row = self._data[self.n]
        if good:
            flat = frame.reshape(-1)
            if flat.dtype == np.float32:
                np.take(flat, self.layout.pixels, out=row)
            else:
                gathered = self._scratch.get(flat.dtype)
                if gathered is None:
                    gathered = self._scratch[flat.dtype] = np.empty(self.layout.num_pixels, flat.dtype)
                np.take(flat, self.layout.pixels, out=gathered)
                row[:] = gathered
        else:
            row[:] = np.nan
        self.n += 1

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bins, C)``: 1-based labels of the non-empty bins and ``C`` of shape ``(bins, n, n)`` float32."""
        lay, n = self.layout, self.n
        bins = lay.active + 1
        out = np.full((bins.size, n, n), np.nan, np.float32)
        if self._data is None or n == 0:
            return bins, out
        starts = np.concatenate(([0], np.cumsum(lay.npix[lay.active])))
        for k in range(bins.size):                 # once per run: one matrix product per bin
            X = self._data[:n, starts[k]:starts[k + 1]].astype(np.float64)
            G = X @ X.T                            # the one (n, n) float64 temporary (see matrix_bytes)
            S = X.sum(axis=1)
            del X
            out[k] = self.normalise(G, S, starts[k + 1] - starts[k])
        return bins, out

    def partial(self) -> tuple[np.ndarray, np.ndarray]:
        """Sums a pixel shard contributes, for every bin of the layout (``num_bins``, empty bins zero):
        ``G[b] = sum_p I_p(t1) I_p(t2)`` ``(num_bins, n, n)`` and ``S[b] = sum_p I_p(t)`` ``(num_bins, n)``,
        float64. Summed over shards they give :meth:`compute` of all pixels (:meth:`normalise`)."""
        lay, n = self.layout, self.n
        G = np.zeros((lay.num_bins, n, n))
        S = np.zeros((lay.num_bins, n))
        if self._data is None or n == 0:
            return G, S
        starts = np.concatenate(([0], np.cumsum(lay.npix[lay.active])))
        for k, b in enumerate(lay.active):
            X = self._data[:n, starts[k]:starts[k + 1]].astype(np.float64)
            G[b] = X @ X.T
            S[b] = X.sum(axis=1)
        return G, S

    @staticmethod
    def normalise(G: np.ndarray, S: np.ndarray, npix: int) -> np.ndarray:
        """``C = (G / npix) / (m m^T)`` with ``m = S / npix``, as float32 (G is divided in place)."""
        m = S / npix
        with np.errstate(invalid="ignore", divide="ignore"):
            G /= npix
            G /= m[:, None]
            G /= m[None, :]
        return G.astype(np.float32)

    @staticmethod
    def g2_segments(c2: np.ndarray, segments: int = 5) -> np.ndarray:
        """g2 from the diagonal blocks of ``segments`` equal parts of the run: ``(len - 1, segments, bins)``."""
        nb, n, _ = c2.shape
        length = n // segments
        out = np.full((max(length - 1, 0), segments, nb), np.nan)
        for k in range(segments if length > 1 else 0):
            s = k * length
            out[:, k, :] = TwoTimeAccumulator.g2_from_c2(c2[:, s:s + length, s:s + length])
        return out

    @staticmethod
    def g2_from_c2(c2: np.ndarray) -> np.ndarray:
        """g2 at lags ``1..n-1`` as the mean of each off-diagonal of every ``C``: ``(n-1, bins)``."""
        nb, n, _ = c2.shape
        g2 = np.full((max(n - 1, 0), nb), np.nan)
        with np.errstate(invalid="ignore"):
            for d in range(1, n):                   # once per run
                diag = np.diagonal(c2, offset=d, axis1=1, axis2=2)
                ok = np.isfinite(diag)
                cnt = ok.sum(axis=1)
                g2[d - 1] = np.where(cnt > 0, np.where(ok, diag, 0).sum(axis=1) / np.maximum(cnt, 1), np.nan)
        return g2
