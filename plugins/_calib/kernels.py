"""The calibration arithmetic on flat arrays: single gain, JUNGFRAU multi-gain, photonize.

Every function writes into preallocated arrays (``out=``); the only
allocations are proportional to the number of gain-switched pixels.

Single gain::

    E = (raw - pedestal) * recip        recip = 1 / (gain * flatfield)

Multi-gain (bits 15-14 of the raw uint16: 00 G0, 01 G1, 11 G2, 10 invalid)::

    E = ((raw & 0x3FFF) - P[g]) * R[g]  R = 1 / (G[g] * flatfield)

The G0 formula runs densely over the whole frame (for G0 pixels ``raw & 0x3FFF
== raw``), then the gain-switched pixels, found with one compare, are
recomputed from interleaved per-pixel tables indexed ``4 * pixel + code``.
"""

from __future__ import annotations

import numpy as np

from .constants import INVALID_CODE, CalibrationConstants
from .scratch import Scratch

__all__ = ["subtract_pedestal_single", "subtract_pedestal_multigain", "apply_gain_single",
           "apply_gain_multigain", "photonize", "SwitchedPixels"]

_ADC_MASK = np.uint16(0x3FFF)
_SWITCH_MIN = np.uint16(0x4000)


class SwitchedPixels:
    """The gain-switched pixels of one multi-gain frame: flat indices, table indices, ADU after pedestal."""

    __slots__ = ("index", "table_index", "adu", "invalid")

    def __init__(self, index: np.ndarray, table_index: np.ndarray, adu: np.ndarray, invalid: int) -> None:
        self.index = index
        self.table_index = table_index
        self.adu = adu
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


def subtract_pedestal_multigain(raw: np.ndarray, c: CalibrationConstants, out: np.ndarray,
                                scratch: Scratch) -> SwitchedPixels:
    """``out = raw - P0`` densely; returns the switched pixels with their own ``adc - P[g]``.

    After this ``out`` is right for G0 pixels only; call ``out[sw.index] = sw.adu``
    when every pixel must hold its ADU (common mode).
    """
    np.copyto(out, raw, casting="unsafe")
    np.subtract(out, c.pedestal, out=out)
    switched = scratch.get("switched", np.bool_)
    np.greater_equal(raw, _SWITCH_MIN, out=switched)
    index = np.flatnonzero(switched)
    if index.size == 0:
        return SwitchedPixels(index, index, np.empty(0, out.dtype), 0)
    values = raw[index]
    codes = values >> 14
    table_index = index << 2
    table_index |= codes
    np.bitwise_and(values, _ADC_MASK, out=values)
    adu = values.astype(out.dtype)
    adu -= c.ped_table[table_index]
    invalid = int(np.count_nonzero(codes == INVALID_CODE))
    return SwitchedPixels(index, table_index, adu, invalid)


def apply_gain_multigain(c: CalibrationConstants, out: np.ndarray, sw: SwitchedPixels) -> None:
    """``out *= R0`` densely, then the switched pixels ``out[i] = adu * R[g]``."""
    np.multiply(out, c.recip, out=out)
    if sw.index.size:
        adu = sw.adu
        adu *= c.recip_table[sw.table_index]
        out[sw.index] = adu


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
            np.minimum(energy, np.iinfo(out.dtype).max, out=energy)
        np.copyto(out, energy, casting="unsafe")
