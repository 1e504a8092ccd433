"""Dark collection: accumulate N raw frames, derive pedestal, rms and a pixel-status map, write them.

Pixel-status bits (0 = good), shared with the mask plugin and written to
``/pixel_status`` of the dark file:

=====  ==============  =========================================================
bit    name            meaning
=====  ==============  =========================================================
1      HOT_RMS         rms above median(rms) + rms_nsigma * sigma(rms)
2      COLD_RMS        rms below median(rms) - rms_nsigma * sigma(rms), or 0
4      SATURATED       reached ``saturation`` ADU in at least one dark frame
8      MEAN_OUTLIER    mean further than mean_nsigma * sigma(mean) from median(mean)
16     INVALID_GAIN    showed the invalid gain code 10 (multi-gain)
32     NO_DATA         never in the requested gain stage (multi-gain)
=====  ==============  =========================================================

sigma is the robust 1.4826 x median absolute deviation over the pixels with data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from .constants import GAIN_CODES, INVALID_CODE

__all__ = ["DarkRequest", "DarkCollector", "DarkResult", "write_dark_file", "HOT_RMS", "COLD_RMS", "SATURATED",
           "MEAN_OUTLIER", "INVALID_GAIN", "NO_DATA"]

HOT_RMS, COLD_RMS, SATURATED, MEAN_OUTLIER, INVALID_GAIN, NO_DATA = 1, 2, 4, 8, 16, 32


@dataclass(frozen=True)
class DarkRequest:
    """A validated ``collect_dark`` command."""

    frames: int
    file: str
    stage: int | None = None           # multi-gain: 0, 1 or 2
    rms_nsigma: float | None = 6.0
    mean_nsigma: float | None = 6.0
    saturation: float | None = None     # None: dtype maximum (single) or 0x3FFF (multi-gain)


@dataclass
class DarkResult:
    pedestal: np.ndarray        # float32 (H, W): mean of the frames (of the stage)
    rms: np.ndarray             # float32 (H, W)
    status: np.ndarray          # uint32 (H, W)
    frames: int


def _robust(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 0.0
    med = float(np.median(values))
    sig = 1.4826 * float(np.median(np.abs(values - med)))
    return med, max(sig, 1e-6 * max(abs(med), 1.0))


class DarkCollector:
    """Accumulates raw frames (on the plugin thread) without per-frame allocation."""

    def __init__(self, request: DarkRequest, shape: tuple[int, ...], raw_dtype: np.dtype, multigain: bool) -> None:
        self.request = request
        self.shape = shape
        self.raw_dtype = np.dtype(raw_dtype)
        self.multigain = multigain
        self.frames = 0
        n = int(np.prod(shape))
        self._sum = np.zeros(n, np.float64)
        self._sumsq = np.zeros(n, np.float64)
        self._tmp = np.empty(n, np.float64)
        self._max = np.full(n, -np.inf)
        if multigain:
            self._count = np.zeros(n, np.uint32)
            self._invalid = np.zeros(n, np.bool_)
            self._sel = np.empty(n, np.bool_)
            self._code = np.empty(n, np.uint16)
            self._adc = np.empty(n, np.uint16)
            self.saturation = 0x3FFF if request.saturation is None else request.saturation
        else:
            dt = np.dtype(raw_dtype)
            default = float(np.iinfo(dt).max) if dt.kind in "iu" else np.inf
            self.saturation = default if request.saturation is None else request.saturation

    @property
    def done(self) -> bool:
        return self.frames >= self.request.frames

    def add(self, raw: np.ndarray) -> None:
        """Accumulate one raw frame (flat view)."""
        tmp = self._tmp
        if self.multigain:
            np.right_shift(raw, 14, out=self._code)
            np.equal(self._code, INVALID_CODE, out=self._sel)
            np.logical_or(self._invalid, self._sel, out=self._invalid)
            np.equal(self._code, GAIN_CODES[self.request.stage], out=self._sel)
            np.add(self._count, self._sel, out=self._count, casting="unsafe")
            np.bitwise_and(raw, 0x3FFF, out=self._adc)
            np.multiply(self._adc, self._sel, out=self._adc)
            np.copyto(tmp, self._adc)
        else:
            np.copyto(tmp, raw, casting="unsafe")
        np.maximum(self._max, tmp, out=self._max)
        np.add(self._sum, tmp, out=self._sum)
        np.multiply(tmp, tmp, out=tmp)
        np.add(self._sumsq, tmp, out=self._sumsq)
        self.frames += 1

    def finish(self) -> DarkResult:
        """Pedestal, rms and pixel status from the accumulated frames."""
        req = self.request
        count = self._count.astype(np.float64) if self.multigain else np.full(self._sum.size, float(self.frames))
        have = count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(have, self._sum / count, 0.0)
            var = np.where(have, self._sumsq / count - mean * mean, 0.0)
        rms = np.sqrt(np.maximum(var, 0.0))
        status = np.zeros(self._sum.size, np.uint32)
        status[~have] |= NO_DATA
        if self.multigain:
            status[self._invalid] |= INVALID_GAIN
        status[have & (self._max >= self.saturation)] |= SATURATED
        if req.rms_nsigma is not None:
            med, sig = _robust(rms[have])
            status[have & (rms > med + req.rms_nsigma * sig)] |= HOT_RMS
            cold = have & ((rms < med - req.rms_nsigma * sig) | ((rms == 0) & (count > 1)))
            status[cold] |= COLD_RMS
        if req.mean_nsigma is not None:
            med, sig = _robust(mean[have])
            status[have & (np.abs(mean - med) > req.mean_nsigma * sig)] |= MEAN_OUTLIER
        return DarkResult(mean.astype(np.float32).reshape(self.shape), rms.astype(np.float32).reshape(self.shape),
                          status.reshape(self.shape), self.frames)


def write_dark_file(path: str, pedestal: np.ndarray, rms: np.ndarray, status: np.ndarray, attrs: dict) -> None:
    """Write ``/pedestal``, ``/rms``, ``/pixel_status`` (and attributes) atomically (temp file + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("pedestal", data=pedestal)
            f.create_dataset("rms", data=rms)
            f.create_dataset("pixel_status", data=status)
            for k, v in attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
