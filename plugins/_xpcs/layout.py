"""PixelLayout: frames compressed to their labelled pixels, sorted by bin, padded into chunks.

The correlator never touches unlabelled pixels. Each frame is gathered once
with a precomputed index into a ``(n_chunks, chunk)`` float64 array where the
pixels of bin 1 come first, then bin 2, ...; each bin occupies whole chunks
(its last chunk is zero-padded). Per-bin sums are then ``sum(axis=1)``
followed by ``np.add.reduceat`` over the bins' first chunks, and products
with stored frames become one batched matrix-vector product per level.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PixelLayout"]


def _chunk_size(npixels: int, nbins: int) -> int:
    """A power of two near npixels / (8 * nbins), between 8 and 1024: padding stays below ~1/8."""
    target = max(8, npixels // max(1, 8 * nbins))
    return int(min(1024, 1 << (int(target).bit_length() - 1)))


class PixelLayout:
    """The compressed layout of a label map.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels of the frame's shape; 0 = not used, 1..N = bin number.
        Pass labels already multiplied by any mask.
    num_bins : int, optional
        Number of bins reported (default ``labels.max()``); bins with no pixel are
        "empty" and report NaN.
    chunk : int, optional
        Chunk length (default chosen from the pixel and bin counts).

    Attributes
    ----------
    shape : tuple
        Frame shape.
    npix : numpy.ndarray
        Pixels per bin, shape ``(num_bins,)``.
    active : numpy.ndarray
        0-based indices of the bins with at least one pixel (the correlator's columns).
    chunk_starts : numpy.ndarray
        First chunk of each active bin (for ``np.add.reduceat``).
    pixels : numpy.ndarray
        Flat frame index of every labelled pixel, bin-sorted (no padding).
    positions : numpy.ndarray
        Where each of ``pixels`` sits in the padded flat layout.

    Examples
    --------
    >>> lay = PixelLayout(np.array([[1, 1, 0], [2, 0, 2]]))
    >>> x = lay.empty()
    >>> lay.gather(np.arange(6.0).reshape(2, 3), x)
    >>> lay.bin_sums(x).tolist()
    [1.0, 8.0]
    """

    def __init__(self, labels: np.ndarray, num_bins: int | None = None, chunk: int | None = None) -> None:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iub":
            raise ValueError(f"labels must be integers, not {labels.dtype}")
        self.shape = labels.shape
        flat = labels.reshape(-1).astype(np.int64)
        if flat.size and flat.min() < 0:
            raise ValueError("labels must be >= 0")
        self.num_bins = int(flat.max(initial=0)) if num_bins is None else int(num_bins)
        pixels = np.flatnonzero(flat > 0)
        lab = flat[pixels]
        order = np.argsort(lab, kind="stable")
        self.pixels = pixels[order]
        self.pixel_bins = lab[order] - 1                       # 0-based bin of each pixel
        self.npix = np.bincount(self.pixel_bins, minlength=self.num_bins)[:self.num_bins].astype(np.int64)
        self.active = np.flatnonzero(self.npix)
        counts = self.npix[self.active]
        self.chunk = chunk or _chunk_size(int(counts.sum()), max(1, self.active.size))
        nchunks = -(-counts // self.chunk)
        self.chunk_starts = (np.cumsum(nchunks) - nchunks).astype(np.intp)
        self.num_chunks = int(nchunks.sum())
        # position of each pixel in the padded layout
        first_pixel = np.cumsum(counts) - counts
        rank = np.arange(self.pixels.size) - np.repeat(first_pixel, counts)
        self.positions = np.repeat(self.chunk_starts * self.chunk, counts) + rank
        size = self.num_chunks * self.chunk
        self.src = np.zeros(size, np.intp)
        self.src[self.positions] = self.pixels
        pad = np.ones(size, bool)
        pad[self.positions] = False
        self.pads = np.flatnonzero(pad)
        self._pad_rc = (self.pads // self.chunk, self.pads % self.chunk)
        self.active_npix = counts.astype(np.float64)
        # pixels in each chunk and the active-bin index (0..num_active-1) of each chunk
        self.chunk_bin = np.repeat(np.arange(self.active.size), nchunks)
        last = counts - (nchunks - 1) * self.chunk
        self.chunk_npix = np.full(self.num_chunks, float(self.chunk))
        if self.num_chunks:
            self.chunk_npix[self.chunk_starts + nchunks - 1] = last
        self._scratch: dict[np.dtype, np.ndarray] = {}

    @property
    def num_pixels(self) -> int:
        return int(self.pixels.size)

    @property
    def num_active(self) -> int:
        return int(self.active.size)

    @property
    def padded_size(self) -> int:
        return self.num_chunks * self.chunk

    def empty(self) -> np.ndarray:
        """A zeroed ``(n_chunks, chunk)`` float64 array for one compressed frame."""
        return np.zeros((self.num_chunks, self.chunk), np.float64)

    def gather(self, frame: np.ndarray, out: np.ndarray) -> None:
        """Compress ``frame`` into ``out`` (float64 ``(n_chunks, chunk)``, may be a strided view;
        padding zeroed); one indexed read per pixel."""
        flat = frame.reshape(-1)
        scratch = self._scratch.get(flat.dtype)
        if scratch is None:
            scratch = self._scratch[flat.dtype] = np.empty(self.padded_size, flat.dtype)
        np.take(flat, self.src, out=scratch)
        out[...] = scratch.reshape(self.num_chunks, self.chunk)
        if self.pads.size:
            out[self._pad_rc] = 0.0

    def bin_sums(self, x: np.ndarray) -> np.ndarray:
        """Per active bin sums of a compressed frame (or the last axis of a stack of them)."""
        return self.chunks_to_bins(x.sum(axis=-1))

    def chunks_to_bins(self, per_chunk: np.ndarray) -> np.ndarray:
        """Sum per-chunk values (last axis) into per-active-bin values."""
        if not self.num_chunks:
            return np.zeros(per_chunk.shape[:-1] + (0,))
        return np.add.reduceat(per_chunk, self.chunk_starts, axis=-1)

    def expand(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Active-bin values (last axis) to all ``num_bins`` bins, ``fill`` for empty bins."""
        out = np.full(values.shape[:-1] + (self.num_bins,), fill, np.float64)
        out[..., self.active] = values
        return out

    def __repr__(self) -> str:
        return (f"<PixelLayout {self.shape} pixels={self.num_pixels} bins={self.num_bins} "
                f"active={self.num_active} chunks={self.num_chunks}x{self.chunk}>")
