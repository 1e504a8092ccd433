"""Frame sources: where the receiver's frames come from (simulated patterns, HDF5 replay).

A source fills a caller-provided array in place (no per-frame allocation for
the ramp pattern or replay) and knows its shape, dtype, frame count and rate.

The speckle pattern is an XPCS stream with an analytically known g2: the
complex field of each pixel is an AR(1) (Ornstein-Uhlenbeck) process with
``rho = exp(-1/correlation_time)`` per frame, the intensity is mixed so the
speckle contrast is ``contrast``, and counts are Poisson with mean
``intensity``. Then, for lag tau >= 1 frame::

    g2(tau) = 1 + contrast * exp(-2 * tau / correlation_time)

With ``pedestal``/``gain``/``read_noise`` set, the speckle photon counts are
turned into raw detector ADU (``pedestal + gain * photons + noise``, per-pixel
maps from ``detector_maps()``), so calibration has something real to undo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from framechain.ipc.errors import ConfigError

__all__ = ["FrameSource", "SimulatedSource", "Hdf5Source", "make_source", "speckle_g2"]

_RAMP_DTYPES = ("uint8", "uint16", "uint32", "float32")
_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32", "float64")


def speckle_g2(tau: np.ndarray, correlation_time: float, contrast: float) -> np.ndarray:
    """The g2 the speckle pattern produces at lags ``tau`` (frames, >= 1)."""
    return 1.0 + contrast * np.exp(-2.0 * np.asarray(tau, float) / correlation_time)


class FrameSource:
    """Base: ``fill(index, out)`` writes frame ``index`` into ``out``."""

    kind = "base"

    def __init__(self, shape: tuple[int, ...], dtype: str, frames: int, rate: float,
                 acquisition_id: str = "") -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.frames = frames
        self.rate = rate
        self.acquisition_id = acquisition_id
        self.frame_bytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def reset(self) -> None:
        """Start again from frame 0."""

    def fill(self, index: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "shape": list(self.shape), "dtype": self.dtype.name, "frames": self.frames,
                "rate": self.rate, "acquisition_id": self.acquisition_id}

    def close(self) -> None:
        pass


class SimulatedSource(FrameSource):
    """Synthetic frames: ``ramp`` (pixel = (frame + index) mod dtype range) or ``speckle``."""

    kind = "simulated"

    def __init__(self, shape: tuple[int, ...], dtype: str, frames: int, rate: float, pattern: str,
                 acquisition_id: str = "", correlation_time: float = 20.0, contrast: float = 0.3,
                 intensity: float = 2.0, seed: int = 0, pedestal: float = 0.0, gain: float = 1.0,
                 read_noise: float = 0.0, fixed_pattern: float = 0.0) -> None:
        super().__init__(shape, dtype, frames, rate, acquisition_id)
        self.pattern = pattern
        self.correlation_time, self.contrast, self.intensity, self.seed = correlation_time, contrast, intensity, seed
        self.pedestal, self.gain, self.read_noise, self.fixed_pattern = pedestal, gain, read_noise, fixed_pattern
        self._raw = (pedestal, gain, read_noise) != (0.0, 1.0, 0.0)
        self._modulus = 1 << 24 if self.dtype.kind == "f" else 1 << (8 * self.dtype.itemsize)
        # Frame-sized state is built on first use (reset or fill), not here: configuring a source must not
        # allocate, so the receiver can refuse a frame too big for memory before touching any of it.
        self._index: np.ndarray | None = None
        self._field: np.ndarray | None = None
        self._next = 0

    def _ramp_index(self) -> np.ndarray:
        if self._index is None:
            size = int(np.prod(self.shape))
            self._index = (np.arange(size, dtype=np.uint64) % self._modulus).astype(self.dtype).reshape(self.shape)
        return self._index

    def reset(self) -> None:
        if self.pattern != "speckle":
            self._ramp_index()
            return
        self._rng = np.random.default_rng(self.seed)
        self._rho = float(np.exp(-1.0 / self.correlation_time))
        self._noise_scale = float(np.sqrt((1.0 - self._rho ** 2) / 2.0))
        self._field = np.empty((2,) + self.shape, np.float32)  # real, imaginary
        self._rng.standard_normal(dtype=np.float32, out=self._field)
        self._field *= np.float32(np.sqrt(0.5))
        self._noise = np.empty_like(self._field)
        self._mean = np.empty(self.shape, np.float64)
        self._beta = float(np.sqrt(self.contrast))
        self._next = 0
        if self._raw:
            self._pedestal_map, self._gain_map = self.detector_maps()
            self._noise_rng = np.random.default_rng(self.seed + 7919)
            self._adu = np.empty(self.shape, np.float64)

    def detector_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel pedestal (ADU) and gain (ADU per photon) this source applies to speckle counts.

        ``pedestal`` and ``gain`` varied per pixel by a fixed pattern of relative spread
        ``fixed_pattern`` (deterministic for a given seed): what a dark run and a flat field measure.
        """
        rng = np.random.default_rng(self.seed + 104729)
        spread = rng.standard_normal((2,) + self.shape) * self.fixed_pattern
        return ((self.pedestal * (1.0 + spread[0])).astype(np.float32),
                (self.gain * (1.0 + spread[1])).astype(np.float32))

    def fill(self, index: int, out: np.ndarray) -> None:
        if self.pattern == "ramp":
            ramp = self._index if self._index is not None else self._ramp_index()
            if self.dtype.kind == "f":
                np.add(ramp, np.float32(index % self._modulus), out=out)
                np.fmod(out, np.float32(self._modulus), out=out)
            else:
                np.add(ramp, self.dtype.type(index % self._modulus), out=out)
            return
        # speckle: advance the field to frame `index` (frames are produced in order)
        if self._field is None or index < self._next - 1 or index == 0 and self._next > 0:
            self.reset()
        while self._next <= index:
            if self._next > 0:
                self._rng.standard_normal(dtype=np.float32, out=self._noise)
                self._field *= np.float32(self._rho)
                self._noise *= np.float32(self._noise_scale)
                self._field += self._noise
            self._next += 1
        re, im = self._field
        np.multiply(re, re, out=self._mean)
        self._mean += im * im                         # |E|^2, mean 1
        self._mean *= self._beta
        self._mean += 1.0 - self._beta
        self._mean *= self.intensity
        if not self._raw:
            out[...] = self._mean if self.dtype.kind == "f" else self._rng.poisson(self._mean)
            return
        # detector response: ADU = pedestal + gain * photons (+ read noise)
        adu = self._adu
        np.multiply(self._gain_map, self._rng.poisson(self._mean), out=adu)
        adu += self._pedestal_map
        if self.read_noise:
            adu += self._noise_rng.standard_normal(self.shape) * self.read_noise
        if self.dtype.kind == "f":
            out[...] = adu
        else:
            info = np.iinfo(self.dtype)
            np.rint(adu, out=adu)
            np.clip(adu, info.min, info.max, out=adu)
            out[...] = adu

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["pattern"] = self.pattern
        if self.pattern == "speckle":
            d.update(correlation_time=self.correlation_time, contrast=self.contrast, intensity=self.intensity,
                     seed=self.seed, pedestal=self.pedestal, gain=self.gain, read_noise=self.read_noise,
                     fixed_pattern=self.fixed_pattern)
        return d


class Hdf5Source(FrameSource):
    """Replays frames from a 3-D dataset ``(N, H, W)`` in an HDF5 file."""

    kind = "hdf5"

    def __init__(self, file: str, dataset: str, frames: int, rate: float, acquisition_id: str = "") -> None:
        if not os.path.isfile(file):
            raise ConfigError(f"source file {file!r} does not exist", "file")
        try:
            self._file = h5py.File(file, "r")
        except OSError as err:
            raise ConfigError(f"source file {file!r} is not a readable HDF5 file: {err}", "file") from err
        dset = self._file.get(dataset)
        if not isinstance(dset, h5py.Dataset):
            self._file.close()
            raise ConfigError(f"source file {file!r} has no dataset {dataset!r}", "dataset")
        if dset.ndim != 3 or dset.dtype.name not in _DTYPES:
            self._file.close()
            raise ConfigError(f"dataset {dataset!r} in {file!r} must be 3-D (frames, H, W) of {_DTYPES}; "
                              f"it is {dset.shape} {dset.dtype}", "dataset")
        n = dset.shape[0] if frames == 0 else min(frames, dset.shape[0])
        super().__init__(dset.shape[1:], dset.dtype.name, n, rate, acquisition_id)
        self.file, self.dataset, self._dset = file, dataset, dset

    def fill(self, index: int, out: np.ndarray) -> None:
        self._dset.read_direct(out, np.s_[index])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(file=self.file, dataset=self.dataset)
        return d

    def close(self) -> None:
        self._file.close()


def _positive_int(cfg: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    v = cfg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"source {key} must be an integer >= {minimum}, not {v!r}", key)
    return v


def _number(cfg: Mapping[str, Any], key: str, default: float, lo: float, hi: float = float("inf"),
            lo_open: bool = False) -> float:
    v = cfg.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo < v if lo_open else lo <= v) or v > hi:
        raise ConfigError(f"source {key} must be a number in {'(' if lo_open else '['}{lo}, {hi}], not {v!r}", key)
    return float(v)


def make_source(cfg: Any) -> FrameSource:
    """Build a source from its configuration; raise ConfigError naming the bad key."""
    if not isinstance(cfg, Mapping):
        raise ConfigError("source must be an object like {\"type\": \"simulated\", ...}", "source")
    kind = cfg.get("type")
    common = {"type", "frames", "rate", "acquisition_id"}
    acq = cfg.get("acquisition_id", "")
    if not isinstance(acq, str) or len(acq.encode()) > 32:
        raise ConfigError("source acquisition_id must be a string of at most 32 bytes", "acquisition_id")
    rate = _number(cfg, "rate", 0.0, 0.0, 1e7)
    frames = _positive_int(cfg, "frames", 0, minimum=0)
    if kind == "simulated":
        allowed = common | {"shape", "dtype", "pattern", "correlation_time", "contrast", "intensity", "seed",
                            "pedestal", "gain", "read_noise", "fixed_pattern"}
        _no_unknown(cfg, allowed, kind)
        shape = cfg.get("shape", [512, 512])
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise ConfigError(f"source shape must be a list of 1 to 3 positive integers like [512, 512], not {shape!r}",
                              "shape")
        pattern = cfg.get("pattern", "ramp")
        if pattern not in ("ramp", "speckle"):
            raise ConfigError(f"source pattern must be 'ramp' or 'speckle', not {pattern!r}", "pattern")
        dtype = cfg.get("dtype", "uint16")
        allowed_dtypes = _RAMP_DTYPES if pattern == "ramp" else _DTYPES
        if dtype not in allowed_dtypes:
            raise ConfigError(f"source dtype for pattern {pattern!r} must be one of {list(allowed_dtypes)}, "
                              f"not {dtype!r}", "dtype")
        return SimulatedSource(tuple(shape), dtype, frames, rate, pattern, acq,
                               correlation_time=_number(cfg, "correlation_time", 20.0, 0.0, 1e9, lo_open=True),
                               contrast=_number(cfg, "contrast", 0.3, 0.0, 1.0, lo_open=True),
                               intensity=_number(cfg, "intensity", 2.0, 0.0, 1e6, lo_open=True),
                               seed=_positive_int(cfg, "seed", 0, minimum=0),
                               pedestal=_number(cfg, "pedestal", 0.0, 0.0, 1e9),
                               gain=_number(cfg, "gain", 1.0, 0.0, 1e6, lo_open=True),
                               read_noise=_number(cfg, "read_noise", 0.0, 0.0, 1e6),
                               fixed_pattern=_number(cfg, "fixed_pattern", 0.0, 0.0, 0.5))
    if kind == "hdf5":
        _no_unknown(cfg, common | {"file", "dataset"}, kind)
        for key in ("file", "dataset"):
            if not isinstance(cfg.get(key), str):
                raise ConfigError(f"hdf5 source needs '{key}' (a string)", key)
        return Hdf5Source(cfg["file"], cfg["dataset"], frames, rate, acq)
    raise ConfigError(f"source type must be 'simulated' or 'hdf5', not {kind!r}", "type")


def _no_unknown(cfg: Mapping[str, Any], allowed: set[str], kind: str) -> None:
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} for a {kind} source; known: {sorted(allowed)}",
                          sorted(unknown)[0])
