"""XPCS correlator frames/s (multi-tau, 30 ring bins) against a straightforward numpy implementation.

Baseline: the same formulas done the obvious way, online, on the same frames in
the same run: a ``(levels, B, pixels)`` float64 ring buffer of the labelled
pixels and, for every lag of every level reached, three ``np.bincount`` calls
(past x future, past, future) -- the scikit-beam algorithm without its Python
per-lag NaN test. Both must agree on g2 to 1e-9 (checked; reported in ``extra``).

Each case is measured with the default float64 level buffers (exact) and with
``precision: float32`` (half the memory traffic). Frames/s are steady state: each correlator first sees frames that reach every level,
then the next frames are timed. Peak memory of the correlator is measured with tracemalloc in a separate pass
over the same frames; the baseline's is the size of its arrays.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np

from framechain.plugins._xpcs import MultitauCorrelator, PixelLayout, levels_for_frames, multitau_lags
from framechain.plugins._xpcs.sparse import SparseMultitauCorrelator

from . import Figure

CASES = [(512, 8), (512, 16), (1024, 8), (1024, 16)]
NUM_BINS = 30
DISTINCT_FRAMES = 8


def ring_labels(size: int, bins: int = NUM_BINS) -> np.ndarray:
    """``bins`` equal-width rings filling the circle inscribed in the frame (0 outside)."""
    y, x = np.mgrid[:size, :size]
    r = np.hypot(y - (size - 1) / 2, x - (size - 1) / 2)
    lab = (r / (size / 2) * bins).astype(np.int32) + 1
    lab[lab > bins] = 0
    return lab


class NaiveMultitau:
    """The baseline: straightforward online multi-tau with bincount per lag (no NaN handling needed here)."""

    def __init__(self, labels: np.ndarray, num_bufs: int, num_levels: int) -> None:
        flat = labels.ravel()
        self.pixels = np.flatnonzero(flat)
        self.lab = flat[self.pixels]
        self.nb = int(labels.max()) + 1
        self.npix = np.bincount(self.lab, minlength=self.nb)[1:].astype(float)
        self.B, self.L = num_bufs, num_levels
        n_t = multitau_lags(num_levels, num_bufs).size
        self.buf = np.zeros((num_levels, num_bufs, self.pixels.size))
        self.G, self.P, self.F = (np.zeros((n_t, self.nb - 1)) for _ in range(3))
        self.pairs = np.zeros(n_t, np.int64)
        self.count = np.zeros(num_levels, np.int64)
        self.pending = np.zeros(num_levels, bool)

    def nbytes(self) -> int:
        return self.buf.nbytes + 3 * self.G.nbytes

    def _process(self, level: int, img: np.ndarray) -> None:
        B = self.B
        slot = self.count[level] % B
        self.buf[level, slot] = img
        self.count[level] += 1
        for i in range(0 if level == 0 else B // 2, min(int(self.count[level]), B)):
            t = level * B // 2 + i
            past = self.buf[level, (slot - i) % B]
            self.G[t] += np.bincount(self.lab, weights=past * img, minlength=self.nb)[1:]
            self.P[t] += np.bincount(self.lab, weights=past, minlength=self.nb)[1:]
            self.F[t] += np.bincount(self.lab, weights=img, minlength=self.nb)[1:]
            self.pairs[t] += 1

    def add(self, frame: np.ndarray) -> None:
        img = frame.ravel()[self.pixels].astype(np.float64)
        self._process(0, img)
        for level in range(1, self.L):
            if not self.pending[level]:
                self.pending[level] = True
                return
            self.pending[level] = False
            below = level - 1
            cur = (self.count[below] - 1) % self.B
            img = (self.buf[below, (cur - 1) % self.B] + self.buf[below, cur]) / 2
            self._process(level, img)

    def g2(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.pairs[:, None] * self.npix
            return (self.G / n) / ((self.P / n) * (self.F / n))


def _frames(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.poisson(2.0, (size, size)).astype(np.uint16) for _ in range(DISTINCT_FRAMES)]


def _time(correlator: object, frames: list[np.ndarray], n: int, start: int = 0) -> float:
    add = correlator.add  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for k in range(start, start + n):
        add(frames[k % len(frames)])
    getattr(correlator, "drain", lambda: None)()    # the sparse correlator's dense levels: every frame in
    return n / (time.perf_counter() - t0)


SPARSE_SHAPE = (512, 1024)
OCCUPANCIES = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0)


def _photon_frames(photons: float, count: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.poisson(photons, SPARSE_SHAPE).astype(np.uint16) for _ in range(count)]


def _sparse(quick: bool) -> list[Figure]:
    """Sparse against dense multi-tau at 512x1024, 30 bins, B=8, over photon occupancies (same frames, same run)."""
    labels = ring_labels(1024)[256:768]
    layout = PixelLayout(labels)
    out = []
    for photons in OCCUPANCIES:
        frames = _photon_frames(photons)
        n = max(64, int((400 if quick else 2000) * min(1.0, 0.01 / photons)))
        n_dense = 64 if quick else 200
        levels = levels_for_frames(max(n, n_dense) * 2, 8)
        sparse, dense = SparseMultitauCorrelator(layout, 8, levels), MultitauCorrelator(layout, 8, levels)
        warm = 8 * len(frames)
        _time(sparse, frames, warm)
        fps = _time(sparse, frames, n, start=warm)
        _time(dense, frames, warm)
        base = _time(dense, frames, n_dense, start=warm)
        # exactness on the frames both saw: the first warm + n_dense
        a, b = SparseMultitauCorrelator(layout, 8, levels), MultitauCorrelator(layout, 8, levels)
        for k in range(warm + n_dense):
            a.add(frames[k % len(frames)])
            b.add(frames[k % len(frames)])
        ra, rb = a.result(), b.result()
        ok = rb.pairs > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = float(np.nanmax(np.abs(ra.g2[ok] / rb.g2[ok] - 1)))
        occ = float(np.count_nonzero(frames[0].reshape(-1)[layout.pixels])) / layout.num_pixels
        name = f"sparse 512x1024 B=8 {NUM_BINS} bins {photons:g} photons/px"
        extra = (f"occupancy {occ:.4f}, {levels} levels, {sparse.sparse_levels} kept sparse; "
                 f"max |g2/g2_dense - 1| = {diff:.1e}")
        main = photons == 0.01
        out.append(Figure("xpcs", name, fps, "frames/s", base, "dense correlator", 10.0 if main else None,
                          extra=extra))
        if main:  # the events path: what a photon finder or a sparse detector hands over
            events = [(np.flatnonzero(f.reshape(-1)), f.reshape(-1)[np.flatnonzero(f.reshape(-1))]) for f in frames]
            ev = SparseMultitauCorrelator(layout, 8, levels)
            for k in range(warm):
                ev.add_events(*events[k % len(events)])
            t0, cpu0 = time.perf_counter(), time.process_time()
            for k in range(n):
                ev.add_events(*events[k % len(events)])
            ev.drain()
            efps = n / (time.perf_counter() - t0)
            cpu = (time.process_time() - cpu0) / n * 1e6          # both threads: what the cores spend per frame
            cores = os.cpu_count() or 1
            out.append(Figure("xpcs", f"sparse 512x1024 B=8 {NUM_BINS} bins 0.01 photons/px from event lists", efps,
                              "frames/s", base, "dense correlator", 10000.0, "value",
                              extra=f"add_events(index, values): no scan of a dense frame; CPU {cpu:,.0f} us/frame "
                                    f"over both threads ({cores * 100} available on {cores} cores at 10 kHz)"))
        del sparse, dense, a, b
    return out


def run(quick: bool = False) -> list[Figure]:
    figures = _sparse(quick)
    for size, B in CASES:
        n = (300 if size == 512 else 100) if quick else (1000 if size == 512 else 300)
        n_base = max(2 * B, n // 4)            # the baseline is slow: fewer frames, same sequence
        labels = ring_labels(size)
        frames = _frames(size)
        levels = levels_for_frames(n, B)
        layout = PixelLayout(labels)
        # steady state: the first n frames reach every level (and touch every buffer page), the next n are timed
        ours = MultitauCorrelator(layout, B, levels)
        _time(ours, frames, n)
        fps = _time(ours, frames, n, start=n)
        base = NaiveMultitau(labels, B, levels)
        _time(base, frames, 2 * B)
        base_fps = _time(base, frames, n_base, start=2 * B)
        check = MultitauCorrelator(layout, B, levels)
        for k in range(n_base + 2 * B):
            check.add(frames[k % len(frames)])
        r, g2b = check.result(), base.g2()
        ok = r.pairs > 0
        diff = float(np.nanmax(np.abs(r.g2[ok] / g2b[ok] - 1)))
        fast = MultitauCorrelator(layout, B, levels, dtype="float32")
        _time(fast, frames, n)
        fps32 = _time(fast, frames, n, start=n)
        check32 = MultitauCorrelator(layout, B, levels, dtype="float32")
        for k in range(n_base + 2 * B):
            check32.add(frames[k % len(frames)])
        diff32 = float(np.nanmax(np.abs(check32.result().g2[ok] / g2b[ok] - 1)))
        del fast, check32
        tracemalloc.start()
        mem = MultitauCorrelator(PixelLayout(labels), B, levels)
        for k in range(n):
            mem.add(frames[k % len(frames)])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del mem, ours, check
        name = f"{size}x{size} B={B} {NUM_BINS} bins"
        target = 300.0 if (size, B) == (512, 8) else None
        figures.append(Figure("xpcs", f"correlator {name}", fps, "frames/s", base_fps, "numpy bincount multi-tau",
                              target, "value" if target else "ratio",
                              extra=f"{layout.num_pixels} px, {levels} levels, {n} frames timed after {n} "
                                    f"(baseline {n_base}); "
                                    f"max |g2/g2_base - 1| = {diff:.1e}"))
        figures.append(Figure("xpcs", f"correlator {name} precision float32", fps32, "frames/s", base_fps,
                              "numpy bincount multi-tau",
                              extra=f"max |g2/g2_base - 1| = {diff32:.1e} (float32 level buffers, float64 sums)"))
        figures.append(Figure("xpcs", f"peak memory {name}", peak / 2**20, "MiB (lower is better)",
                              base.nbytes() / 2**20, "baseline arrays",
                              extra="tracemalloc peak over the run, frames excluded"))
    return figures
