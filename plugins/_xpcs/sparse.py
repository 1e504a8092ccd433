"""Sparse multi-tau: the correlator of :mod:`multitau` computed from the occupied pixels only.

Photon-counting XPCS frames are mostly zeros (0.001-0.1 photons per pixel at
the fastest frame rates). A product ``X_{k-i} X_k`` is nonzero only where both
frames hold a photon, so each level keeps, per ring slot, the *events* of its
frame (flat pixel index and value, in index order) and, per pixel, a bit mask
of the slots in which that pixel is occupied (one byte per pixel for B <= 8:
it stays in cache). A new frame's event reads its pixel's mask; only a set bit
(a pixel occupied ``i`` frames ago) costs a product, found by binary search in
that slot's events. Level averages are sorted unions of two event lists. The
per-lag ``P``, ``F`` and pair counts use the per-chunk sums, as the dense
correlator does, so G, P, F, g2 and g2_err equal :class:`MultitauCorrelator`'s
to rounding (sums taken in another order: ~1e-15 relative).

Cost per frame is about (events) x (levels reached, amortised) instead of
(pixels) x (lags); the dense scan that finds the events is one pass over the
frame's words. :meth:`SparseMultitauCorrelator.to_dense` hands the state to a
dense correlator mid-run (the plugin's ``sparse: auto`` does so when the
occupancy turns out too high).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from .layout import PixelLayout
from .multitau import MultitauCorrelator, MultitauResult

__all__ = ["SparseMultitauCorrelator", "MAX_SPARSE_BUFS"]

MAX_SPARSE_BUFS = 64               # one bit per ring slot in a uint64 mask
_OPTS = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")
_FIRST_CAPACITY = 1024
_POOL: ThreadPoolExecutor | None = None   # one thread for every correlator's dense levels, made when first needed


def _forget_pool() -> None:         # a forked child has no thread behind the parent's pool
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)
COUNT_TYPES = (np.uint8, np.uint16)   # a counts level widens to the next when its sums outgrow it, then to float64
DENSE_ABOVE = 0.05              # a level whose frames would occupy more of the pixels is kept dense


@numba.njit(**_OPTS)
def _scan(words, frame, per_word, chunk_of, pos, val, chunk, sums, work, flags):  # pragma: no cover - compiled
    """Events (index order) of the nonzero used pixels of ``frame`` into ``pos``/``val``/``chunk``; chunk
    sums into ``sums``; ``flags[0]`` = 1 when a value is not a count (negative or not a whole number).
    ``words`` is the frame's leading ``words.size * per_word`` elements seen as uint64.
    Branch-free compaction (nonzero words, then their nonzero pixels, then the used ones): a
    mispredicted branch per photon would cost more than the photon. ``work`` holds one int64 per word
    and per pixel. Returns the event count (``pos`` etc. must have room for every used pixel and one more:
    a nonzero unused pixel is written at the next place before it is skipped)."""
    m = 0
    nw = words.size
    for w in range(nw):
        work[m] = w
        m += words[w] != 0
    n = 0
    for k in range(m):                      # candidate pixels after the word indices, in place
        base = work[k] * per_word
        for i in range(base, base + per_word):
            work[m + n] = i
            n += frame[i] != 0              # NaN too: it makes the sums NaN, the frame bad
    for i in range(nw * per_word, frame.size):
        work[m + n] = i
        n += frame[i] != 0
    sums[:] = 0.0
    e = 0
    for k in range(m, m + n):
        i = work[k]
        c = chunk_of[i]
        pos[e] = i
        chunk[e] = c
        val[e] = np.float64(frame[i])
        e += c >= 0
    odd = 0
    for k in range(e):
        x = val[k]
        sums[chunk[k]] += x
        odd |= (x < 0) | (x != np.floor(x))
    flags[0] = odd
    return e


@numba.njit(**_OPTS)
def _take(pos_in, val_in, chunk_of, pos, val, chunk, sums, flags):  # pragma: no cover - compiled
    """Given events (ascending unique flat indices) of the used pixels into the slot; chunk sums; ``flags``
    as :func:`_scan`. Returns the count, or -1 - k when index k is out of range or not above the one before it."""
    n = 0
    odd = 0
    sums[:] = 0.0
    last = -1
    size = chunk_of.size
    for k in range(pos_in.size):
        p = pos_in[k]
        if p <= last or p >= size:
            return -1 - k
        last = p
        c = chunk_of[p]
        if c >= 0:
            x = np.float64(val_in[k])
            pos[n] = p
            val[n] = x
            chunk[n] = c
            n += 1
            sums[c] += x
            odd |= (x < 0) | (x != np.floor(x))
    flags[0] = odd
    return n


@numba.njit(**_OPTS)
def _clear(mask, pos, n, keep):  # pragma: no cover - compiled
    """Drop one slot's bit (``keep`` is its complement) from the masks of that slot's pixels."""
    for k in range(n):
        mask[pos[k]] &= keep


@numba.njit(**_OPTS)
def _correlate(mask, pos, val, chunk, counts, slot, bit, i_min, G, t_base, B, hits):  # pragma: no cover
    """Products of the new events in ``slot`` with every stored event of the same pixel at lags >= i_min
    into ``G[t_base + lag, chunk]``; lag 0 (the frame with itself) when ``i_min`` is 0; sets the slot's bit.

    One branch-free pass reads and sets the masks and lists the events with a history (``hits``, int64
    scratch). Only those look up the older slots' values: hits come in pixel order, so each older
    slot's list is searched forward from where its last hit was found (galloping, then bisection):
    reads stay close together and in order."""
    n = counts[slot]
    h = 0
    p_s = pos[slot]
    v_s = val[slot]
    c_s = chunk[slot]
    for k in range(n):
        p = p_s[k]
        m = mask[p]
        mask[p] = m | bit
        hits[h] = k
        h += m != 0
    if i_min == 0:
        for k in range(n):
            v = v_s[k]
            G[t_base, c_s[k]] += v * v
    cursor = np.zeros(B, np.int64)
    for q in range(h):
        k = hits[q]
        p = p_s[k]
        v = v_s[k]
        c = c_s[k]
        m = mask[p]
        for j in range(B):
            if j != slot and (m >> j) & 1:
                lag = (slot - j + B) % B
                if lag >= i_min:
                    lo = cursor[j]
                    step = 1
                    hi = lo
                    end = counts[j]
                    while hi < end and pos[j, hi] < p:     # gallop: the pixel is at or after lo
                        lo = hi + 1
                        hi = lo + step
                        step <<= 1
                    if hi > end:
                        hi = end
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if pos[j, mid] < p:
                            lo = mid + 1
                        else:
                            hi = mid
                    cursor[j] = lo + 1
                    G[t_base + lag, c] += v * val[j, lo]


@numba.njit(**_OPTS)
def _pairs(P, F, pairs, sums, bad, slot, i_min, n_avail, t_base, B):  # pragma: no cover - compiled
    """Per-lag P (past chunk sums), F (the new frame's) and pair counts, skipping bad past slots."""
    nc = sums.shape[1]
    for lag in range(i_min, n_avail):
        j = (slot - lag + B) % B
        if bad[j]:
            continue
        t = t_base + lag
        for c in range(nc):
            P[t, c] += sums[j, c]
            F[t, c] += sums[slot, c]
        pairs[t] += 1


@numba.njit(**_OPTS)
def _average(pa, va, ca, na, pb, vb, cb, nb, po, vo, co):  # pragma: no cover - compiled
    """Sorted union of two event lists with values ``(a + b) / 2`` (a missing side is 0, as in the dense
    ``(a + 0) / 2``); returns the count."""
    i = 0
    j = 0
    n = 0
    while i < na and j < nb:
        if pa[i] < pb[j]:
            po[n] = pa[i]
            vo[n] = va[i] / 2
            co[n] = ca[i]
            i += 1
        elif pb[j] < pa[i]:
            po[n] = pb[j]
            vo[n] = vb[j] / 2
            co[n] = cb[j]
            j += 1
        else:
            po[n] = pa[i]
            vo[n] = (va[i] + vb[j]) / 2
            co[n] = ca[i]
            i += 1
            j += 1
        n += 1
    while i < na:
        po[n] = pa[i]
        vo[n] = va[i] / 2
        co[n] = ca[i]
        i += 1
        n += 1
    while j < nb:
        po[n] = pb[j]
        vo[n] = vb[j] / 2
        co[n] = cb[j]
        j += 1
        n += 1
    return n


@numba.njit(**_OPTS)
def _scatter(pa, va, na, pb, vb, nb, at, scale, buf, slot, cap):  # pragma: no cover - compiled
    """``(a + b) * scale`` of two event lists (a missing side is 0) into ``slot`` of a dense level's (chunks, B,
    chunk) ``buf``, zeroed first; pixel ``p`` of slot 0 is ``buf.flat[at[p]]``. Values: scale 0.5 (halving is
    exact, so ``a/2 + b/2`` is the dense ``(a + b) / 2``); counts: scale ``2**below``, whole numbers, stored at
    most ``cap``. Returns the largest (above the dtype's largest, the slot is wrong)."""
    nc, B, ch = buf.shape
    for r in range(nc):
        for k in range(ch):
            buf[r, slot, k] = 0
    flat = buf.reshape(-1)
    x0 = slot * ch
    top = 0.0
    for i in range(na):
        s = va[i] * scale
        top = max(top, s)
        flat[x0 + at[pa[i]]] = min(s, cap)
    for j in range(nb):
        q = x0 + at[pb[j]]
        s = flat[q] + vb[j] * scale
        top = max(top, s)
        flat[q] = min(s, cap)
    return top


@numba.njit(**_OPTS)
def _sum2(below, prev, cur, buf, slot):  # pragma: no cover - compiled
    """Slot ``slot`` of ``buf`` = slots ``prev + cur`` of ``below`` (unsigned counts, (chunks, B, chunk));
    returns the largest sum (above the largest of ``buf``'s dtype the slot is wrong)."""
    top = np.uint32(0)
    nc, B, ch = buf.shape
    for r in range(nc):
        a = below[r, prev]
        b = below[r, cur]
        x = buf[r, slot]
        for k in range(ch):
            s = np.uint32(a[k]) + np.uint32(b[k])
            x[k] = s
            top = max(top, s)
    return top


@numba.njit(**_OPTS)
def _mean(below, prev, cur, scale, x):  # pragma: no cover - compiled
    """``x = (prev + cur) * scale`` of two slots of a dense level ``below`` (chunks, B, chunk), in one pass: scale
    0.5 for values (exactly the dense ``(a + b) / 2``), ``2**-level`` for counts below."""
    for r in range(x.shape[0]):
        a = below[r, prev]
        b = below[r, cur]
        for k in range(x.shape[1]):
            x[r, k] = (np.float64(a[k]) + np.float64(b[k])) * scale


@numba.njit(**_OPTS)
def _count_products(buf, slot, i_min, n_avail, bad, t_base, scale, G):  # pragma: no cover - compiled
    """``G[t_base + lag, c] += scale * sum_i buf[c, slot, i] buf[c, past, i]`` for the lags ``i_min..n_avail-1``
    whose past slot is good: a counts level (unsigned, ``buf`` is (chunks, B, chunk)); products and their sum
    are exact integers."""
    nc, B, ch = buf.shape
    for c in range(nc):                         # chunk by chunk: the new frame's chunk stays in L1 over the lags
        for lag in range(i_min, n_avail):
            j = (slot - lag + B) % B
            if bad[j]:
                continue
            acc = np.uint64(0)
            for i in range(ch):
                acc += np.uint64(buf[c, slot, i]) * np.uint64(buf[c, j, i])
            G[t_base + lag, c] += np.float64(acc) * scale


def _cap(buf: np.ndarray) -> float:
    """The largest value ``buf``'s dtype stores (what :func:`_scatter` clamps to)."""
    return float(np.iinfo(buf.dtype).max) if buf.dtype.kind == "u" else np.inf


def _mask_dtype(num_bufs: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if num_bufs <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt)
    raise ValueError(f"sparse correlation keeps one bit per ring slot: num_bufs must be <= {MAX_SPARSE_BUFS}, "
                     f"not {num_bufs}")


@dataclass
class _Level:
    """One sparse level's ring of event lists and its per-pixel occupancy bits."""

    mask: np.ndarray          # (frame pixels,) bit j set = the pixel holds an event in slot j
    pos: np.ndarray           # (B, capacity) int32 flat pixel index, ascending within a slot
    val: np.ndarray           # (B, capacity) float64
    chunk: np.ndarray         # (B, capacity) int32 the event's chunk (G's column)
    n: np.ndarray             # (B,) events per slot

    @classmethod
    def make(cls, pixels: int, num_bufs: int, capacity: int) -> _Level:
        return cls(np.zeros(pixels, _mask_dtype(num_bufs)), np.zeros((num_bufs, capacity), np.int32),
                   np.zeros((num_bufs, capacity)), np.zeros((num_bufs, capacity), np.int32),
                   np.zeros(num_bufs, np.int64))

    @property
    def capacity(self) -> int:
        return self.pos.shape[1]

    def ensure(self, need: int) -> None:
        """Room for ``need`` events per slot (grown by doubling, stored events kept)."""
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity)
        for name in ("pos", "val", "chunk"):
            old = getattr(self, name)
            new = np.zeros((old.shape[0], cap), old.dtype)
            new[:, :old.shape[1]] = old
            setattr(self, name, new)

    def nbytes(self) -> int:
        return self.mask.nbytes + self.pos.nbytes + self.val.nbytes + self.chunk.nbytes

    def clear(self, slot: int) -> None:
        n = int(self.n[slot])
        if n:
            _clear(self.mask, self.pos[slot], n, ~self.mask.dtype.type(1 << slot))
            self.n[slot] = 0

    def slot(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        return self.pos[j], self.val[j], self.chunk[j], int(self.n[j])


class SparseMultitauCorrelator(MultitauCorrelator):
    """:class:`MultitauCorrelator` (symmetric normalisation, float64) computed from occupied pixels only.

    Same parameters, results and bad/missing frame handling; ``num_bufs`` at most 64, no ``per_pixel``.
    Averaging fills the higher levels: a level whose first frame would occupy more than
    ``dense_above`` of the used pixels (and every level above it) is kept dense, as the dense
    correlator keeps it. ``max_bytes`` caps the levels exactly where the dense correlator would (its
    buffer sizes are counted), so a :meth:`to_dense` hand-over keeps the same levels. With ``background``
    (the default) the dense levels run on a thread of their own, at most two of their frames behind
    (their kernels release the GIL); :meth:`result`, :meth:`to_dense` and :meth:`memory_bytes` wait for it.
    Read ``G``, ``P``, ``F`` and ``pairs`` directly only after :meth:`drain`.

    Attributes
    ----------
    last_events : int
        Events (occupied used pixels) of the last frame added.
    sparse_levels : int
        Levels kept as event lists so far (the rest, once made, are dense).
    """

    def __init__(self, layout: PixelLayout, num_bufs: int = 8, num_levels: int = 8,
                 max_bytes: int | None = None, dense_above: float = DENSE_ABOVE, background: bool = True) -> None:
        _mask_dtype(num_bufs)
        super().__init__(layout, num_bufs, num_levels, per_pixel=False, max_bytes=max_bytes)
        size = int(np.prod(layout.shape))
        if size >= 2**31:
            raise ValueError(f"frames of {size} pixels: sparse event indices are int32")
        self.dense_above = float(dense_above)
        self.background = bool(background)
        self._tasks: tuple[Future | None, Future | None] = (None, None)     # the last two submitted
        # each pixel's chunk (-1: unused); read at every event, so as small as the chunk count allows
        self._chunk_of = np.full(size, -1, np.int16 if layout.num_chunks < 2**15 else np.int32)
        self._chunk_of[layout.pixels] = layout.positions // layout.chunk
        # each pixel's place in slot 0 of a dense level's (chunks, B, chunk) buffer seen flat; int32 where it fits
        # (the first dense level's scatter reads it at every event: half the bytes, ~1.6x that scatter alone)
        q, ch = layout.positions, layout.chunk
        self._at = np.full(size, -1, np.int32 if layout.padded_size * self.num_bufs < 2**31 else np.int64)
        self._at[layout.pixels] = (q // ch) * (self.num_bufs * ch) + q % ch
        self._levels: list[_Level | None] = [None] * self.num_levels
        self.sparse_levels = self.num_levels       # lowered when a level is made dense
        self._equiv_bytes = 0          # what the dense correlator's level buffers would hold
        self._work = np.zeros(2 * size + 1, np.int64)    # scan scratch: word and pixel indices; hit lists
        self._flags = np.zeros(1, np.int64)
        self.counts = True        # every value so far a photon count: dense levels hold unsigned sums
        self.last_events = 0

    def result(self) -> MultitauResult:
        self.drain()
        return super().result()

    def memory_bytes(self) -> int:
        self.drain()
        n = sum(lv.nbytes() for lv in self._levels if lv is not None) + self.G.nbytes * 3
        return n + sum(b.nbytes for b in self._buf if b is not None)

    def _room(self, level: int) -> bool:
        """Count a new level's dense-equivalent bytes; False (and cap the levels) beyond max_bytes."""
        need = self.layout.padded_size * self.num_bufs * 8
        if level and self.max_bytes is not None and self._equiv_bytes + self.G.nbytes * 3 + need > self.max_bytes:
            self.level_limit = min(self.level_limit, level)
            return False
        self._equiv_bytes += need
        return True

    def _level(self, level: int, expected: int) -> _Level | None:
        lv = self._levels[level]
        if lv is None and self._room(level):
            cap = max(_FIRST_CAPACITY, expected)
            lv = self._levels[level] = _Level.make(self._chunk_of.size, self.num_bufs, cap)
            if level == 0:                      # a frame's scan stores its events straight into the slot, and
                lv.ensure(self.layout.num_pixels + 1)   # writes one place past the last used one
        return lv

    def _dense_slot(self, level: int) -> np.ndarray | None:
        buf = self._buf[level]
        if buf is None:
            if not self._room(level):
                return None
            lay = self.layout
            buf = self._buf[level] = np.zeros((lay.num_chunks, self.num_bufs, lay.chunk),
                                              COUNT_TYPES[0] if self.counts else np.float64)
        return buf[:, int(self._count[level]) % self.num_bufs, :]

    def _holds_counts(self, level: int) -> bool:
        """Dense ``level`` holds each pixel's summed counts (value * 2**level, unsigned), not float64 values."""
        buf = self._buf[level]
        return buf is not None and buf.dtype.kind == "u"

    def _values(self, level: int) -> np.ndarray:
        """Dense ``level``'s buffer as float64 values (counts scaled by ``2**-level``)."""
        buf = self._buf[level]
        assert buf is not None
        return buf * 2.0 ** -level if self._holds_counts(level) else buf

    def _to_values(self, level: int) -> None:
        """Make dense ``level`` hold float64 values from now on (exactly the counts it held)."""
        if self._holds_counts(level):
            self._buf[level] = self._values(level)

    def _widen(self, level: int, top: float) -> bool:
        """Counts ``level`` must hold ``top``: keep its dtype, widen it, or make it float64 values. True when it
        changed (its next slot must then be built again)."""
        buf = self._buf[level]
        assert buf is not None
        if top <= _cap(buf):
            return False
        for dt in COUNT_TYPES:
            if top <= np.iinfo(dt).max and np.dtype(dt).itemsize > buf.itemsize:
                self._buf[level] = buf.astype(dt)
                return True
        self._to_values(level)
        return True

    def _not_counts(self) -> None:
        """A value that is not a photon count arrived: every dense level holds float64 values from now on."""
        self.drain()
        self.counts = False
        for level in range(self.num_levels):
            self._to_values(level)

    # -- input ------------------------------------------------------------------
    def add(self, frame: np.ndarray) -> bool:
        lv = self._level(0, 0)
        assert lv is not None
        slot = int(self._count[0]) % self.num_bufs
        lv.clear(slot)
        flat = frame.reshape(-1)
        words, per = _words(flat)
        sums = self._sums[0, slot]
        if flat.size != self._chunk_of.size:
            raise ValueError(f"frame of {flat.size} pixels; the layout has {self._chunk_of.size}")
        n = _scan(words, flat, per, self._chunk_of, lv.pos[slot], lv.val[slot], lv.chunk[slot], sums, self._work,
                  self._flags)
        return self._added(lv, slot, n)

    def add_events(self, index: np.ndarray, values: np.ndarray) -> bool:
        """Add the next frame given as events: flat pixel indices (ascending, unique) and their values
        (a photon finder's or a sparse detector's output); unused pixels are ignored."""
        index = np.ascontiguousarray(index, np.int64)
        values = np.ascontiguousarray(values)
        if index.shape != values.shape or index.ndim != 1:
            raise ValueError(f"index and values must be 1-d of one length, not {index.shape} and {values.shape}")
        lv = self._level(0, 0)
        assert lv is not None
        slot = int(self._count[0]) % self.num_bufs
        lv.clear(slot)
        lv.ensure(index.size)
        n = _take(index, values, self._chunk_of, lv.pos[slot], lv.val[slot], lv.chunk[slot], self._sums[0, slot],
                  self._flags)
        if n < 0:
            k = -1 - n
            raise ValueError(f"event {k}: pixel index {int(index[k])} is out of range (frame of "
                             f"{self._chunk_of.size} pixels) or not above the one before it")
        return self._added(lv, slot, n)

    def _added(self, lv: _Level, slot: int, n: int) -> bool:
        lv.n[slot] = n
        sums = self._sums[0, slot]
        self.last_events = n
        self.last_chunk_sums = sums
        self.last_sum = float(sums.sum())
        bad = not np.isfinite(self.last_sum)
        if bad:
            lv.clear(slot)                      # no bits were set yet: just forget its events
            lv.n[slot] = 0
        elif self._flags[0] and self.counts:
            self._not_counts()
        self._cascade_events(bad)
        return not bad

    def add_missing(self, count: int = 1) -> None:
        for _ in range(count):
            lv = self._levels[0]
            if lv is not None:
                lv.clear(int(self._count[0]) % self.num_bufs)
            self._cascade_events(True)

    @property
    def occupancy(self) -> float:
        """Events of the last frame per used pixel."""
        return self.last_events / max(1, self.layout.num_pixels)

    def _cascade_events(self, bad: bool) -> None:
        """Level 0's next slot holds the new frame's events (none when bad): correlate it, build averages."""
        self.frames += 1
        self.frames_bad += bad
        self._insert_events(0, bad)
        self._climb(1)

    def _climb(self, start: int) -> None:
        """Build and correlate the averages of levels ``start`` and up that the last frame completes. The first
        dense level and those above go to the background thread (with copies of the events they are built from)."""
        B = self.num_bufs
        for level in range(start, self.level_limit):
            if not self._pending[level]:
                self._pending[level] = True
                return
            self._pending[level] = False
            below = level - 1
            cur = int(self._count[below] - 1) % B
            prev = (cur - 1) % B
            bad = bool(self._bad[below, cur] or self._bad[below, prev])
            if not bad and level < self.sparse_levels and self._levels[level] is None:
                lb = self._levels[below]
                assert lb is not None
                if lb.n[prev] + lb.n[cur] > self.dense_above * self.layout.num_pixels:
                    self.sparse_levels = level                 # this level and all above: dense
            if self.background and level == self.sparse_levels:
                self._submit(level, bad, None if bad else self._snapshot(below, prev, cur))
                return
            if not bad and not self._average_into(level, below, prev, cur):
                return                                     # max_bytes reached: no more levels
            if level >= self.sparse_levels:  # dense: the average is in its slot (x and sums), as dense does it
                self._insert_dense(level, bad)
            else:
                if bad:
                    lv = self._levels[level]
                    if lv is not None:
                        lv.clear(int(self._count[level]) % B)
                self._insert_events(level, bad)

    def _insert_dense(self, level: int, bad: bool) -> None:
        if self._holds_counts(level):
            self._insert_counts(level, bad)
        else:
            slot = int(self._count[level]) % self.num_bufs
            x = None if bad else self._buf[level][:, slot, :]
            self._insert(level, x, None if bad else self._sums[level, slot], bad)

    # -- the dense levels' thread ---------------------------------------------------
    def _snapshot(self, below: int, prev: int, cur: int) -> tuple:
        """Copies of what the first dense level's next frame is built from: ``below``'s slots prev and cur."""
        lb = self._levels[below]
        assert lb is not None
        na, nb = int(lb.n[prev]), int(lb.n[cur])
        return (lb.pos[prev, :na].copy(), lb.val[prev, :na].copy(), na, lb.pos[cur, :nb].copy(),
                lb.val[cur, :nb].copy(), nb, self._sums[below, prev].copy(), self._sums[below, cur].copy())

    def _dense_task(self, level: int, bad: bool, snap: tuple | None) -> None:
        if not bad and not self._average_into(level, level - 1, 0, 0, snap):
            return
        self._insert_dense(level, bad)
        self._climb(level + 1)

    def _submit(self, level: int, bad: bool, snap: tuple | None) -> None:
        """Queue the first dense level's next frame; at most two wait (the caller waits for the one before)."""
        global _POOL
        if _POOL is None:
            _POOL = ThreadPoolExecutor(1, thread_name_prefix="sparse-dense-levels")
        before = self._tasks[0]
        if before is not None:
            before.result()                              # a failure in the thread is raised here
        self._tasks = (self._tasks[1], _POOL.submit(self._dense_task, level, bad, snap))

    def drain(self) -> None:
        """Wait until the dense levels have taken every frame added so far (results, hand-over, memory)."""
        last = self._tasks[1]                            # the pool's one thread runs tasks in order
        if last is not None:
            last.result()

    def _average_into(self, level: int, below: int, prev: int, cur: int, snap: tuple | None = None) -> bool:
        """Build the average of ``below``'s slots prev and cur (or of a :meth:`_snapshot` of them) in ``level``'s
        next slot (sparse or dense)."""
        B = self.num_bufs
        slot = int(self._count[level]) % B
        lb = self._levels[below] if below < self.sparse_levels else None
        if level < self.sparse_levels:
            assert lb is not None
            lv = self._level(level, int(2 * max(lb.n[prev], lb.n[cur])))
            if lv is None:
                return False
            lv.clear(slot)
            pa, va, ca, na = lb.slot(prev)
            pb, vb, cb, nb = lb.slot(cur)
            lv.ensure(na + nb)
            lv.n[slot] = _average(pa, va, ca, na, pb, vb, cb, nb, lv.pos[slot], lv.val[slot], lv.chunk[slot])
        else:
            if self._dense_slot(level) is None:
                return False
            counts = self._holds_counts(level)
            if lb is None:                                 # dense below: as the dense correlator does it
                a = self._buf[below]
                if counts:                                 # values below: this level holds values too
                    top = _sum2(a, prev, cur, self._buf[level], slot) if self._holds_counts(below) else np.inf
                    if self._widen(level, top) and self._holds_counts(level):
                        _sum2(a, prev, cur, self._buf[level], slot)
                if not self._holds_counts(level):
                    scale = 2.0 ** -level if self._holds_counts(below) else 0.5
                    _mean(a, prev, cur, scale, self._buf[level][:, slot, :])
            else:                                          # the first dense level: scatter the union
                if snap is None:
                    pa, va, _, na = lb.slot(prev)
                    pb, vb, _, nb = lb.slot(cur)
                else:
                    pa, va, na, pb, vb, nb = snap[:6]
                scale = 2.0 ** below if counts else 0.5
                top = _scatter(pa, va, na, pb, vb, nb, self._at, scale, self._buf[level], slot, _cap(self._buf[level]))
                if counts and self._widen(level, top):         # wider counts, or values (at scale 0.5)
                    scale = 2.0 ** below if self._holds_counts(level) else 0.5
                    _scatter(pa, va, na, pb, vb, nb, self._at, scale, self._buf[level], slot, _cap(self._buf[level]))
        if snap is None:
            self._sums[level, slot] = (self._sums[below, prev] + self._sums[below, cur]) / 2
        else:
            self._sums[level, slot] = (snap[6] + snap[7]) / 2
        return True

    def _insert_events(self, level: int, bad: bool) -> None:
        B = self.num_bufs
        c = self._advance(level, bad)
        slot = c % B
        if bad:
            return
        lv = self._levels[level]
        assert lv is not None
        i_min = B // 2 if level else 0
        t_base = level * (B // 2)
        if self._work.size < lv.n[slot]:
            self._work = np.zeros(int(lv.n[slot]), np.int64)
        _correlate(lv.mask, lv.pos, lv.val, lv.chunk, lv.n, slot, lv.mask.dtype.type(1 << slot), i_min,
                   self.G, t_base, B, self._work)
        n_avail = min(c + 1, B)
        if n_avail > i_min:
            _pairs(self.P, self.F, self.pairs, self._sums[level], self._bad[level], slot, i_min, n_avail, t_base, B)

    def _insert_counts(self, level: int, bad: bool) -> None:
        """:meth:`_insert` for a level of counts: products in integers, scaled by ``4**-level``."""
        B = self.num_bufs
        c = self._advance(level, bad)
        if bad:
            return
        slot, i_min, t_base = c % B, B // 2 if level else 0, level * (B // 2)
        n_avail = min(c + 1, B)
        if n_avail > i_min:
            _count_products(self._buf[level], slot, i_min, n_avail, self._bad[level], t_base, 4.0 ** -level, self.G)
            _pairs(self.P, self.F, self.pairs, self._sums[level], self._bad[level], slot, i_min, n_avail, t_base, B)

    # -- hand-over ----------------------------------------------------------------
    def to_dense(self, dtype: np.dtype | str = np.float64) -> MultitauCorrelator:
        """A dense correlator in this one's exact state (it goes on from here with the next frame)."""
        self.drain()
        lay = self.layout
        d = MultitauCorrelator(lay, self.num_bufs, self.num_levels, max_bytes=self.max_bytes, dtype=dtype)
        for name in ("G", "P", "F", "pairs", "_sums", "_bad", "_count", "_pending"):
            setattr(d, name, getattr(self, name).copy())
        d.frames, d.frames_bad, d.level_limit = self.frames, self.frames_bad, self.level_limit
        d.last_sum, d.last_chunk_sums = self.last_sum, np.array(self.last_chunk_sums)
        for level in range(self.num_levels):
            lv, dense = self._levels[level], self._buf[level]
            if dense is not None:
                d._buf[level] = self._values(level).astype(d.dtype)
            elif lv is not None:
                buf = d._buf[level] = np.zeros((lay.num_chunks, self.num_bufs, lay.chunk), d.dtype)
                for j in range(self.num_bufs):
                    n = int(lv.n[j])
                    if n:
                        buf.reshape(-1)[self._at[lv.pos[j, :n]] + j * lay.chunk] = lv.val[j, :n]
        return d


def _words(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """The frame's leading elements as uint64 words (for the zero skip) and elements per word."""
    item = flat.dtype.itemsize
    if item <= 8 and 8 % item == 0 and flat.flags.c_contiguous:
        per = 8 // item
        lead = flat.size - flat.size % per
        try:
            return flat[:lead].view(np.uint64), per
        except ValueError:                                # not 8-byte aligned
            pass
    return _NO_WORDS, 1


_NO_WORDS = np.zeros(0, np.uint64)
