"""Online multi-tau correlator: g2(q, tau) per bin, one frame at a time, matching scikit-beam.

Definitions (the same as scikit-beam's ``multi_tau_auto_corr``; see docs/xpcs.md):

* level 0 holds the frames; level ``l`` holds averages ``(a + b) / 2`` of consecutive
  pairs of level ``l-1`` frames (an unpaired trailing frame waits for its partner);
* lags are ``0..B-1`` at level 0 and ``(B/2..B-1) * 2**l`` at level ``l >= 1``;
* for each lag, over its ``m`` good pairs ``(k-i, k)`` at that level,
  ``G = mean_k <X_{k-i} X_k>_q``, ``P = mean_k <X_{k-i}>_q``, ``F = mean_k <X_k>_q``
  with ``<>_q`` the mean over the pixels of bin ``q``; ``g2 = G / (P F)``;
* a frame with a non-finite value in a used pixel is *bad*: it keeps its time slot,
  every pair that involves it (or a level average built from it) is left out.

Sums are float64. The per-frame work is one gather, one batched matrix-vector
product per level reached (numpy/BLAS, no Python loop over pixels or bins) and a
few ``(lags, bins)`` updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import PixelLayout

__all__ = ["MultitauCorrelator", "MultitauResult", "multitau_lags", "levels_for_frames", "multitau_batch",
           "result_from_sums"]


def multitau_lags(num_levels: int, num_bufs: int) -> np.ndarray:
    """Lags in frames: ``0..B-1`` then ``(B/2..B-1) * 2**l`` for ``l = 1..num_levels-1``."""
    half = num_bufs // 2
    parts = [np.arange(num_bufs)] + [np.arange(half, num_bufs) << lev for lev in range(1, num_levels)]
    return np.concatenate(parts).astype(np.int64)


def levels_for_frames(frames: int, num_bufs: int) -> int:
    """Levels that get at least one pair at their shortest lag in a run of ``frames`` frames."""
    levels = 1
    while frames >> levels >= num_bufs // 2 + 1:
        levels += 1
    return levels


def _check(num_bufs: int, num_levels: int) -> None:
    if not isinstance(num_bufs, (int, np.integer)) or num_bufs < 2 or num_bufs % 2:
        raise ValueError(f"num_bufs must be an even integer >= 2, not {num_bufs!r}")
    if not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
        raise ValueError(f"num_levels must be an integer >= 1, not {num_levels!r}")


@dataclass
class MultitauResult:
    """Results so far. Arrays are ``(n_lags, num_bins)``; empty bins and lags without pairs are NaN.

    Attributes
    ----------
    delays : numpy.ndarray
        Lags in frames (int), lag 0 first.
    pairs : numpy.ndarray
        Good pairs averaged for each lag.
    G, P, F, g2 : numpy.ndarray
        As defined in the module docstring.
    g2_err : numpy.ndarray or None
        Standard error of g2 (see :meth:`MultitauCorrelator.result`).
    frames, frames_bad : int
        Frames added (including bad ones) and bad frames among them.
    """

    delays: np.ndarray
    pairs: np.ndarray
    G: np.ndarray
    P: np.ndarray
    F: np.ndarray
    g2: np.ndarray
    frames: int
    frames_bad: int
    g2_err: np.ndarray | None = None


class MultitauCorrelator:
    """Online multi-tau auto-correlation over the bins of a :class:`PixelLayout`.

    Parameters
    ----------
    layout : PixelLayout
        Which pixels, in which bins.
    num_bufs : int
        ``B``, even: frames kept per level.
    num_levels : int
        Levels (>= 1). Level buffers are allocated when a level receives its first frame.
    per_pixel : bool
        Also keep per-pixel ``G2``, ``IP``, ``IF`` (for the APS normalisation); costs
        ``3 * n_lags * pixels`` float64 and about three times the time.
    max_bytes : int, optional
        A level whose buffers would take the correlator past this many bytes is not made:
        the correlation stops at the levels it has (``level_limit``, ``capped``), longer lags stay NaN.
    dtype : float64 or float32
        Storage of the level buffers and of each chunk's products. float64 (default) is exact to
        rounding (matches scikit-beam to 1e-9); float32 halves the memory traffic (about twice the
        speed) at about 1e-6 relative; bin sums, pairs and G, P, F accumulate in float64 either way.

    Examples
    --------
    >>> lay = PixelLayout(np.ones((4, 4), int))
    >>> c = MultitauCorrelator(lay, num_bufs=4, num_levels=2)
    >>> for k in range(8):
    ...     c.add(np.full((4, 4), 1.0 + k % 2))
    True
    True
    True
    True
    True
    True
    True
    True
    >>> c.result().delays.tolist()
    [0, 1, 2, 3, 4, 6]
    """

    def __init__(self, layout: PixelLayout, num_bufs: int = 8, num_levels: int = 8, per_pixel: bool = False,
                 max_bytes: int | None = None, dtype: np.dtype | str = np.float64) -> None:
        _check(num_bufs, num_levels)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, not {self.dtype}")
        self.layout = layout
        self.max_bytes = max_bytes
        self.level_limit = int(num_levels)      # lowered when a new level would exceed max_bytes
        self.num_bufs = int(num_bufs)
        self.num_levels = int(num_levels)
        self.per_pixel = per_pixel
        self.delays = multitau_lags(self.num_levels, self.num_bufs)
        n_t, nc, B = self.delays.size, layout.num_chunks, self.num_bufs
        # sums per chunk (a run of at most `chunk` pixels of one bin); bins are sums of their chunks
        self.G = np.zeros((n_t, nc))
        self.P = np.zeros((n_t, nc))
        self.F = np.zeros((n_t, nc))
        self.pairs = np.zeros(n_t, np.int64)
        self._buf: list[np.ndarray | None] = [None] * self.num_levels
        self._sums = np.zeros((self.num_levels, B, nc))
        self._bad = np.zeros((self.num_levels, B), bool)
        self._count = np.zeros(self.num_levels, np.int64)
        self._pending = np.zeros(self.num_levels, bool)
        self._r = np.empty((layout.num_chunks, B, 1), self.dtype)
        # past slot for lag i when the newest frame sits in slot s: (s - i) % B
        self._slots = (np.arange(B)[:, None] - np.arange(B)[None, :]) % B
        self._plans: dict[tuple[bool, int, int], tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]] = {}
        # per-pixel accumulators, one (lags of the level, chunks, chunk) triple per level, made when reached
        self._pix: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * self.num_levels
        self.last_sum = float("nan")
        self.last_chunk_sums = np.zeros(layout.num_chunks)
        self.frames = 0
        self.frames_bad = 0

    @property
    def levels_reached(self) -> int:
        return int(np.count_nonzero(self._count))

    def memory_bytes(self) -> int:
        """Bytes held in level buffers and accumulators now."""
        n = sum(b.nbytes for b in self._buf if b is not None) + self.G.nbytes * 3
        n += sum(a[0].nbytes * 3 for a in self._pix if a is not None)
        return n

    # -- input ------------------------------------------------------------------
    def add(self, frame: np.ndarray) -> bool:
        """Add the next frame; return False (and count it) when it is bad (non-finite used pixel)."""
        x = self._slot_view(0)
        assert x is not None                               # level 0 is always made
        self.layout.gather(frame, x)                      # straight into its ring slot: no extra copy
        return self._add_slot(x)

    def _add_slot(self, x: np.ndarray) -> bool:
        sums = x.sum(axis=1, dtype=np.float64)
        self.last_chunk_sums = sums
        self.last_sum = float(sums.sum())
        bad = not np.isfinite(self.last_sum)
        self._cascade(x, sums, bad)
        return not bad

    def add_missing(self, count: int = 1) -> None:
        """Account for ``count`` frames that never arrived: they keep their time slots as bad frames."""
        for _ in range(count):
            self._cascade(None, None, True)

    def drain(self) -> None:
        """Wait until every frame added so far is in G, P, F (the dense correlator: always)."""

    @property
    def capped(self) -> bool:
        """True when ``max_bytes`` stopped the correlator from making all its levels."""
        return self.level_limit < self.num_levels

    def _slot_view(self, level: int) -> np.ndarray | None:
        """The ring slot the next frame of ``level`` goes to, as a ``(chunks, chunk)`` view
        (None when the level cannot be made within ``max_bytes``)."""
        buf = self._buf[level]
        if buf is None:
            lay = self.layout
            need = lay.padded_size * (self.num_bufs * self.dtype.itemsize + (3 * 8 * self.num_bufs if self.per_pixel
                                                                              else 0))
            if level and self.max_bytes is not None and self.memory_bytes() + need > self.max_bytes:
                self.level_limit = min(self.level_limit, level)
                return None
            buf = self._buf[level] = np.zeros((lay.num_chunks, self.num_bufs, lay.chunk), self.dtype)
        return buf[:, int(self._count[level]) % self.num_bufs, :]

    def _cascade(self, x: np.ndarray | None, sums: np.ndarray | None, bad: bool) -> None:
        self.frames += 1
        self.frames_bad += bad
        self._insert(0, x, sums, bad)
        cur_x = x
        B = self.num_bufs
        for level in range(1, self.level_limit):
            if not self._pending[level]:
                self._pending[level] = True
                return
            self._pending[level] = False
            below = level - 1
            cur = (self._count[below] - 1) % B
            prev = (cur - 1) % B
            bad = bool(self._bad[below, cur] or self._bad[below, prev])
            if bad:
                x = sums = None
            else:
                x = self._slot_view(level)                 # the average is built in its ring slot
                if x is None:
                    return                                 # max_bytes reached: no more levels
                np.add(self._buf[below][:, prev, :], cur_x, out=x)
                x /= 2
                sums = (self._sums[below, prev] + self._sums[below, cur]) / 2
            self._insert(level, x, sums, bad)
            cur_x = x

    def _advance(self, level: int, bad: bool) -> int:
        """Give the next ring slot of ``level`` to a new frame (marked bad or not); the level's count before it."""
        c = int(self._count[level])
        self._count[level] = c + 1
        self._bad[level, c % self.num_bufs] = bad
        return c

    def _insert(self, level: int, x: np.ndarray | None, sums: np.ndarray | None, bad: bool) -> None:
        """Account for the frame just written to the next ring slot of ``level`` (``x`` is that slot)."""
        B = self.num_bufs
        c = self._advance(level, bad)
        slot = c % B
        if bad:
            return
        buf = self._buf[level]
        self._sums[level, slot] = sums
        i_min = B // 2 if level else 0
        n_avail = min(c + 1, B)
        if n_avail <= i_min:
            return
        key = (level > 0, slot, n_avail)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(i_min, slot, n_avail)
        lags, past, ranges = plan
        if self._bad[level].any():
            good = ~self._bad[level, past]
            lags, past = lags[good], past[good]
            if not lags.size:
                return
            t = level * (B // 2) + lags
        else:                                              # the usual case: a contiguous block of lags
            t0 = level * (B // 2) + i_min
            t = slice(t0, t0 + lags.size)
        r = self._r
        for a, b in ranges:                                # x times the stored frames of those lags
            np.matmul(buf[:, a:b, :], x[:, :, None], out=r[:, a:b, :])
        self.G[t] += r[:, past, 0].T
        self.P[t] += self._sums[level, past]
        self.F[t] += sums
        self.pairs[t] += 1
        if self.per_pixel:
            pix = self._pix[level]
            if pix is None:
                shape = (B - i_min, self.layout.num_chunks, self.layout.chunk)
                pix = self._pix[level] = (np.zeros(shape), np.zeros(shape), np.zeros(shape))
            rows = lags - i_min
            pb = buf[:, past, :].transpose(1, 0, 2)          # (k, chunks, chunk)
            pix[0][rows] += pb * x
            pix[1][rows] += pb
            pix[2][rows] += x

    def _plan(self, i_min: int, slot: int, n_avail: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Lags, their past slots and the (at most two) contiguous slot ranges holding them."""
        B = self.num_bufs
        lags = np.arange(i_min, n_avail)
        past = self._slots[slot, lags]
        lo, n = (slot - n_avail + 1) % B, n_avail - i_min   # ring interval [slot-n_avail+1, slot-i_min]
        ranges = [(a, b) for a, b in ((lo, min(lo + n, B)), (0, max(0, lo + n - B))) if b > a]
        return lags, past, ranges

    # -- output -----------------------------------------------------------------
    def result(self) -> MultitauResult:
        """Current G, P, F, g2 and g2_err for every lag and bin (NaN where undefined).

        ``g2_err`` is the standard error of g2 over the chunks (runs of pixels) of each bin:
        ``std(g2_chunk, ddof=1) / sqrt(n_chunks)``, NaN for a bin of one chunk.
        """
        return result_from_sums(self.layout, self.delays, self.pairs, self.G, self.P, self.F, self.frames,
                                self.frames_bad)

    def pixel_means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel time means ``(G2, IP, IF)``, each ``(n_lags, pixels)`` in ``layout.pixels`` order."""
        if not self.per_pixel:
            raise RuntimeError("per-pixel accumulators are off (per_pixel=False)")
        pos = self.layout.positions
        B = self.num_bufs
        out = []
        for k in range(3):
            parts = []
            for level in range(self.num_levels):
                rows = B if level == 0 else B // 2
                pix = self._pix[level]
                parts.append(np.zeros((rows, pos.size)) if pix is None else
                             pix[k].reshape(rows, -1)[:, pos])
            out.append(np.concatenate(parts))
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.pairs[:, None].astype(np.float64)
            return out[0] / n, out[1] / n, out[2] / n


def result_from_sums(lay: PixelLayout, delays: np.ndarray, pairs: np.ndarray, G: np.ndarray, P: np.ndarray,
                     F: np.ndarray, frames: int = 0, frames_bad: int = 0) -> MultitauResult:
    """:meth:`MultitauCorrelator.result` from per-chunk sums ``G, P, F`` ``(lags, chunks of lay)``: also the
    result of sums merged from pixel shards (each shard a set of whole chunks of ``lay``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = pairs[:, None] * lay.active_npix[None, :]
        Gb, Pb, Fb = (lay.chunks_to_bins(a) / norm for a in (G, P, F))
        g2 = Gb / (Pb * Fb)
        # per chunk c: G_c / (P_c F_c) with G_c = G_sum / (pairs npix_c), likewise P_c and F_c
        g2c = G * (pairs[:, None] * lay.chunk_npix) / (P * F)
        ok = np.isfinite(g2c)
        g2c = np.where(ok, g2c, 0.0)
        n = lay.chunks_to_bins(ok.astype(np.float64))
        mean = lay.chunks_to_bins(g2c) / n
        var = (lay.chunks_to_bins(g2c ** 2) - n * mean ** 2) / (n - 1)
        err = np.sqrt(np.maximum(var, 0.0) / n)
        err[n < 2] = np.nan
    return MultitauResult(delays.copy(), pairs.copy(), lay.expand(Gb), lay.expand(Pb), lay.expand(Fb),
                          lay.expand(g2), frames, frames_bad, lay.expand(err))


def multitau_batch(frames: np.ndarray, labels: np.ndarray, num_levels: int, num_bufs: int) -> MultitauResult:
    """The same quantities as :class:`MultitauCorrelator` computed from a whole stack at once.

    For offline use and as an independent check of the online code: every level is built
    by averaging the whole stack pairwise, every lag's pairs are multiplied in one go.
    ``frames`` is ``(N, ...)`` with the labels' shape per frame.
    """
    _check(num_bufs, num_levels)
    lay = PixelLayout(labels)
    X = np.asarray(frames).reshape(len(frames), -1)[:, lay.pixels].astype(np.float64)
    bins = lay.pixel_bins
    good = np.isfinite(X).all(axis=1)
    delays = multitau_lags(num_levels, num_bufs)
    n_t, nb = delays.size, lay.num_bins
    G, P, F = (np.zeros((n_t, nb)) for _ in range(3))
    pairs = np.zeros(n_t, np.int64)
    npix = lay.npix.astype(np.float64)

    def binned(rows: np.ndarray) -> np.ndarray:          # (m, pixels) -> per-bin sums of all rows
        return np.bincount(bins, weights=rows.sum(axis=0), minlength=nb)[:nb]

    t = 0
    half = num_bufs // 2
    for level in range(num_levels):
        for i in range(0 if level == 0 else half, num_bufs):
            if i < len(X):
                ok = good[i:] & good[:len(X) - i]
                past, fut = X[:len(X) - i][ok], X[i:][ok]
                pairs[t] = int(ok.sum())
                if pairs[t]:
                    G[t], P[t], F[t] = binned(past * fut), binned(past), binned(fut)
            t += 1
        m = len(X) // 2
        X = (X[0:2 * m:2] + X[1:2 * m:2]) / 2
        good = good[0:2 * m:2] & good[1:2 * m:2]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = pairs[:, None] * npix[None, :]
        G, P, F = G / norm, P / norm, F / norm
        g2 = G / (P * F)
    return MultitauResult(delays, pairs, G, P, F, g2, int(len(frames)), int((~np.isfinite(
        np.asarray(frames).reshape(len(frames), -1)[:, lay.pixels]).all(axis=1)).sum()))
