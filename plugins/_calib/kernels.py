"""The calibration arithmetic on flat arrays: single gain, JUNGFRAU multi-gain, photonize.

The numpy path, for what the fused kernels (``fused.py``) do not serve: common
mode (which runs between pedestal and gain), float64 output, a missing pedestal
or gain, raw data other than uint16/uint32; photonize always runs here. Every
function writes into preallocated arrays (``out=``); the only allocations are
proportional to the number of gain-switched pixels.

Single gain::

    E = (raw - pedestal) * recip        recip = 1 / (gain * flatfield)

Multi-gain (bits 15-14 of the raw uint16: 00 G0, 01 G1, 11 G2, 10 invalid)::

    E = ((raw & 0x3FFF) - P[g]) * R[g]  R = 1 / (G[g] * flatfield)

The G0 formula runs densely over the whole frame (for G0 pixels ``raw & 0x3FFF
== raw``), then the gain-switched pixels, found with one compare, are
recomputed from one complex64 table per pixel and stage (G1, G2) holding
``P + 1j * R``, indexed ``2 * pixel + (code >> 1)``: one gather for both.
"""

from __future__ import annotations

import numpy as np

from .constants import INVALID_CODE, CalibrationConstants
from .scratch import Scratch

__all__ = ["find_switched", "subtract_pedestal_single", "subtract_pedestal_multigain", "apply_gain_single",
           "apply_gain_multigain", "photonize", "SwitchedPixels"]

_ADC_MASK = np.uint16(0x3FFF)
_SWITCH_MIN = np.uint16(0x4000)


class SwitchedPixels:
    """The gain-switched pixels of one multi-gain frame.

    ``index``: flat pixel indices; ``adu``: ``(raw & 0x3FFF) - P[g]``; ``recip``: ``1 / (G[g] * flatfield)``;
    ``invalid_mask``: which of them carry the invalid code 10 (None if none); ``invalid``: how many.
    """

    __slots__ = ("index", "adu", "recip", "invalid_mask", "invalid")

    def __init__(self, index: np.ndarray, adu: np.ndarray, recip: np.ndarray, invalid_mask: np.ndarray | None,
                 invalid: int) -> None:
        self.index = index
        self.adu = adu
        self.recip = recip
        self.invalid_mask = invalid_mask
        self.invalid = invalid


def subtract_pedestal_single(raw: np.ndarray, c: CalibrationConstants, out: np.ndarray) -> None:
    """``out = raw - pedestal`` (``out`` float, flat)."""
    np.copyto(out, raw, casting="unsafe")
    if c.pedestal is not None:
        np.subtract(out, c.pedestal, out=out)


def apply_gain_single(c: CalibrationConstants, out: np.ndarray) -> None:
    """``out *= 1 / (gain * flatfield)``."""
    if c.recip is not None:
        np.multiply(out, c.recip, out=out)


def find_switched(raw: np.ndarray, scratch: Scratch) -> np.ndarray:
    """Flat indices (ascending) of the pixels whose gain bits are not 00."""
    switched = scratch.get("switched", np.bool_)
    np.greater_equal(raw, _SWITCH_MIN, out=switched)
    return np.flatnonzero(switched)


def subtract_pedestal_multigain(raw: np.ndarray, c: CalibrationConstants, out: np.ndarray,
                                scratch: Scratch) -> SwitchedPixels:
    """``out = raw - P0`` densely; returns the switched pixels with their own ``adc - P[g]``.

    After this ``out`` is right for G0 pixels only (switched ones are finished by
    ``apply_gain_multigain``).
    """
    np.copyto(out, raw, casting="unsafe")
    index = find_switched(raw, scratch)   # while raw is still in cache
    np.subtract(out, c.pedestal, out=out)
    if index.size == 0:
        return SwitchedPixels(index, np.empty(0, out.dtype), np.empty(0, np.float32), None, 0)
    values = raw[index]
    codes = values >> 14
    table_index = index << 1
    table_index += codes >> 1                       # 01 -> G1 slot, 11 -> G2 slot (10 -> G2 slot, then invalid)
    np.bitwise_and(values, _ADC_MASK, out=values)
    pr = c.switch_table[table_index]                # one gather: pedestal + 1j * reciprocal gain
    if out.dtype == np.float32:
        adu = values - pr.real
    else:
        adu = values.astype(out.dtype)
        adu -= pr.real
    invalid_mask = codes == INVALID_CODE
    invalid = int(np.count_nonzero(invalid_mask))
    return SwitchedPixels(index, adu, pr.imag, invalid_mask if invalid else None, invalid)


def apply_gain_multigain(c: CalibrationConstants, out: np.ndarray, sw: SwitchedPixels) -> None:
    """``out *= R0`` densely, then the switched pixels ``out[i] = adu * R[g]`` (invalid code: NaN or 0)."""
    np.multiply(out, c.recip, out=out)
    if sw.index.size:
        adu = sw.adu
        adu *= sw.recip
        if sw.invalid_mask is not None:
            adu[sw.invalid_mask] = c.invalid_fill
        out[sw.index] = adu


def photon_top(dtype: np.dtype) -> np.float32:
    """The largest float32 count an integer ``dtype`` holds (uint32's and int32's maxima round up in float32,
    past the type, so they cannot be the clip)."""
    top = np.float32(np.iinfo(dtype).max)
    return top if int(top) <= np.iinfo(dtype).max else np.nextafter(top, np.float32(0))


def photonize(energy: np.ndarray, photon_energy: float, threshold: float, out: np.ndarray,
              scratch: Scratch) -> None:
    """``out = rint(E / photon_energy)`` where ``E >= threshold`` else 0 (NaN -> 0), clipped to ``out``'s range.

    ``energy`` is overwritten. ``out`` may be ``energy`` itself (float output).
    """
    keep = scratch.get("photon_keep", np.bool_)
    np.greater_equal(energy, threshold, out=keep)        # NaN -> False
    np.divide(energy, photon_energy, out=energy)
    np.fmax(energy, 0, out=energy)                        # NaN -> 0
    np.multiply(energy, keep, out=energy)
    np.rint(energy, out=energy)
    if out is not energy:
        if out.dtype.kind in "iu":
            np.minimum(energy, photon_top(out.dtype), out=energy)
        np.copyto(out, energy, casting="unsafe")
