"""Fused calibration kernels: pedestal, gain and gain switching in one pass over the frame (numba).

The numpy kernels (``kernels.py``) make three or more passes over a 1 Mpixel
frame (cast, subtract, multiply, gain-bit search); these make one, compiled
with numba, release the GIL, and serve the common configuration:
uint16/uint32 raw data (contiguous, or strided through layout "A"
signatures), float32 energies, pedestal and gain both given, no common mode
(which must run between pedestal and gain). Everything else takes the numpy
path; both give the same numbers (tests compare them).

Multi-gain: each 32-pixel block is computed with the G0 formula while the
block's raw words are OR-ed together; only a block whose OR has a gain bit set
is revisited, pixel by pixel, reading ``P[g]`` and ``R[g]`` from the
interleaved ``switch_pairs`` (``P1 R1 P2 R2`` per pixel: one cache line serves
four pixels). A frame with few switched pixels so costs one pass plus a
little.

Compiled at import with ``cache=True`` (about a second the first time on a
machine, milliseconds after that).
"""

from __future__ import annotations

import numba
import numpy as np

from .constants import CalibrationConstants
from .kernels import photon_top

__all__ = ["fused_multigain", "fused_photonize", "fused_single", "multigain_supported", "photonize_supported",
           "single_supported"]

_BLOCK = 32
_SWITCH_MIN = np.uint16(0x4000)
_ADC_MASK = np.uint16(0x3FFF)
_OPTS = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")
_F32 = numba.float32[::1]
_CF32 = numba.types.Array(numba.float32, 1, "C", readonly=True)   # constants are read-only arrays


def _raw(dtype: numba.types.Integer) -> list[numba.types.Array]:
    """Raw frames come writable (own buffer) or read-only (shared between plugins), contiguous or strided
    (a view an upstream plugin pushed): one signature each, the contiguous ones first so they are chosen
    (vectorized) whenever they match."""
    return [numba.types.Array(dtype, 1, layout, readonly=readonly) for layout in ("C", "A")
            for readonly in (False, True)]


@numba.njit([numba.int64(r, _CF32, _F32, numba.int64, numba.int64, numba.float32) for r in _raw(numba.uint16)],
            inline="never", **_OPTS)
def _switched_block(raw, table, out, b0, b1, invalid_fill):  # pragma: no cover - compiled
    """Recompute the gain-switched pixels of ``raw[b0:b1]``; returns how many carry the invalid code 10."""
    invalid = 0
    for i in range(b0, b1):
        v = raw[i]
        if v >= _SWITCH_MIN:
            code = v >> 14
            if code == 2:
                out[i] = invalid_fill
                invalid += 1
            else:
                k = 4 * i + 2 * (code >> 1)
                out[i] = (np.float32(v & _ADC_MASK) - table[k]) * table[k + 1]
    return invalid


@numba.njit([numba.int64(r, _CF32, _CF32, _CF32, _F32, numba.float32) for r in _raw(numba.uint16)], **_OPTS)
def _multigain(raw, p0, r0, table, out, invalid_fill):  # pragma: no cover - compiled
    n = raw.size
    full = n - n % _BLOCK
    invalid = 0
    for b0 in range(0, full, _BLOCK):   # fixed trip count: the loop vectorizes
        acc = np.uint16(0)
        for i in range(b0, b0 + _BLOCK):
            v = raw[i]
            acc |= v
            out[i] = (np.float32(v) - p0[i]) * r0[i]
        if acc >= _SWITCH_MIN:
            invalid += _switched_block(raw, table, out, b0, b0 + _BLOCK, invalid_fill)
    for i in range(full, n):
        out[i] = (np.float32(raw[i]) - p0[i]) * r0[i]
    return invalid + _switched_block(raw, table, out, full, n, invalid_fill)


@numba.njit([numba.void(r, _CF32, _CF32, _F32) for r in _raw(numba.uint16) + _raw(numba.uint32)], **_OPTS)
def _single(raw, pedestal, recip, out):  # pragma: no cover - compiled
    for i in range(raw.size):
        out[i] = (np.float32(raw[i]) - pedestal[i]) * recip[i]


_PHOTON_TYPES = (numba.uint8, numba.uint16, numba.int16, numba.int32, numba.uint32)


@numba.njit([numba.void(_F32, numba.float32, numba.float32, numba.float32, numba.types.Array(t, 1, "C"))
             for t in _PHOTON_TYPES], **_OPTS)
def _photonize(energy, photon_energy, threshold, top, out):  # pragma: no cover - compiled
    for i in range(energy.size):
        e = energy[i]
        if e >= threshold:                     # NaN -> False -> 0, as the numpy kernel
            v = e / photon_energy
            if v < 0:
                v = np.float32(0)
            v = np.rint(v)
            if v > top:
                v = top
            out[i] = v
        else:
            out[i] = 0


def photonize_supported(energy: np.ndarray, out: np.ndarray) -> bool:
    """Whether ``fused_photonize`` serves this output (integer photon counts; else the numpy kernel)."""
    return (energy.dtype == np.float32 and energy.flags.c_contiguous and out.flags.c_contiguous
            and out.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.uint32))


def fused_photonize(energy: np.ndarray, photon_energy: float, threshold: float, out: np.ndarray) -> None:
    """``kernels.photonize`` in one pass, straight into the integer output (``energy`` is left as it is)."""
    _photonize(energy, np.float32(photon_energy), np.float32(threshold), photon_top(out.dtype), out)


def single_supported(raw: np.ndarray, c: CalibrationConstants, out: np.ndarray) -> bool:
    """Whether ``fused_single`` serves this frame (else use the numpy kernels)."""
    return (c.pedestal is not None and c.recip is not None and c.common_mode is None
            and raw.dtype in (np.uint16, np.uint32) and out.dtype == np.float32)


def multigain_supported(c: CalibrationConstants, out: np.ndarray) -> bool:
    """Whether ``fused_multigain`` serves a (uint16, as multi-gain requires) frame (else use the numpy kernels)."""
    return c.common_mode is None and out.dtype == np.float32


def fused_single(raw: np.ndarray, c: CalibrationConstants, out: np.ndarray) -> None:
    """``out = (raw - pedestal) * recip`` in one pass (flat arrays, ``out`` contiguous)."""
    _single(raw, c.pedestal, c.recip, out)


def fused_multigain(raw: np.ndarray, c: CalibrationConstants, out: np.ndarray) -> int:
    """``out = ((raw & 0x3FFF) - P[g]) * R[g]`` in one pass; returns the number of invalid-code pixels."""
    return int(_multigain(raw, c.pedestal, c.recip, c.switch_pairs, out, c.invalid_fill))
