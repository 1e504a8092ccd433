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

from framechain.ipc.channel import endpoint_problem
from framechain.ipc.errors import ConfigError
from framechain.ipc.options import Option, defaults, validate_options

from .dectris import StreamV1Source, StreamV2Source
from .udp import UdpSource
from .udp_assembler import HAVE_RECVMMSG

__all__ = ["FrameSource", "SimulatedSource", "Hdf5Source", "SOURCE_OPTIONS", "make_source", "speckle_g2"]

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

    #: ``fill_run`` makes several frames in one operation (the receiver then fills a batch at once)
    fills_runs = False

    def fill_run(self, first: int, out: np.ndarray) -> None:
        """Frames ``first, first + 1, ...`` into the stack ``out`` (``len(out)`` frames)."""
        for i in range(len(out)):
            self.fill(first + i, out[i])

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

    @property
    def fills_runs(self) -> bool:  # type: ignore[override]
        return self.pattern == "ramp" and self.dtype.kind in "ui"

    def fill_run(self, first: int, out: np.ndarray) -> None:
        if not self.fills_runs:
            super().fill_run(first, out)
            return
        ramp = self._index if self._index is not None else self._ramp_index()
        offsets = (np.arange(first, first + len(out), dtype=np.uint64) % self._modulus).astype(self.dtype)
        np.add(ramp, offsets.reshape((-1,) + (1,) * ramp.ndim), out=out)   # wraps like fill's per-frame add

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


def _acquisition_id(v: str) -> str | None:
    return "must be at most 32 bytes (UTF-8)" if len(v.encode()) > 32 else None


def _shape(v: list) -> str | None:
    ok = 1 <= len(v) <= 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
    return None if ok else "must be a list of 1 to 3 positive integers like [512, 512]"


_COMMON = {
    "type": Option(str, "simulated", "source kind: one of SOURCE_OPTIONS"),
    "frames": Option(int, 0, "frames to send (0: no end; hdf5: the whole file)", low=0),
    "rate": Option(float, 0.0, "frames per second (0: as fast as possible)", low=0, high=1e7),
    "acquisition_id": Option(str, "", "acquisition id carried by every frame", check=_acquisition_id),
}
#: each source type's declared keys (``type`` selects the table; dectris_v1 shares dectris_v2's)
SOURCE_OPTIONS: dict[str, dict[str, Option]] = {
    "simulated": {
        **_COMMON,
        "shape": Option(list, [512, 512], "frame shape", check=_shape),
        "dtype": Option(str, "uint16", "pixel type (ramp: uint8, uint16, uint32, float32)", choices=_DTYPES),
        "pattern": Option(str, "ramp", "ramp (pixel = frame + index) or speckle (XPCS, known g2)",
                          choices=("ramp", "speckle")),
        "correlation_time": Option(float, 20.0, "speckle: intensity correlation time, frames", low=0, high=1e9,
                                   low_open=True),
        "contrast": Option(float, 0.3, "speckle: contrast beta of g2 = 1 + beta exp(-2 tau / tau_c)", low=0,
                           high=1, low_open=True),
        "intensity": Option(float, 2.0, "speckle: mean photons per pixel", low=0, high=1e6, low_open=True),
        "seed": Option(int, 0, "speckle: random seed", low=0),
        "pedestal": Option(float, 0.0, "speckle: ADU offset added (raw detector frames)", low=0, high=1e9),
        "gain": Option(float, 1.0, "speckle: ADU per photon", low=0, high=1e6, low_open=True),
        "read_noise": Option(float, 0.0, "speckle: gaussian read noise, ADU", low=0, high=1e6),
        "fixed_pattern": Option(float, 0.0, "speckle: per-pixel pedestal spread (fraction)", low=0, high=0.5),
    },
    "dectris_v2": {
        "type": Option(str, "dectris_v2", "source kind"),
        "endpoint": Option(str, "tcp://127.0.0.1:31001", "the detector's stream PUSH endpoint "
                           "(tcp://<DCU>:31001 for v2, :9999 for v1)", check=endpoint_problem),
        "shape": Option(list, [512, 512], "the largest image [height, width] (sizes the buffers)", check=_shape),
        "dtype": Option(str, "uint16", "the widest pixel type the detector sends (sizes the buffers)",
                        choices=("uint8", "uint16", "uint32")),
        "rcvhwm": Option(int, 1000, "messages ZeroMQ may queue on the receiver's side", low=1),
        "decompress": Option(bool, True, "decode bslz4/lz4 images here (false: they travel compressed and the "
                                         "processor decodes them only for plugins that need pixels)"),
    },
    "udp": {
        "type": Option(str, "udp", "source kind"),
        "rx_ports": Option(list, [61649], "UDP ports to receive on", check=lambda v: None if v and all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in v)
            else "must be a non-empty list of port numbers 1..65535"),
        "rx_address": Option(str, "127.0.0.1", "address to bind (the NIC facing the detector)"),
        "shape": Option(list, [512, 512], "frame shape [height, width]", check=_shape),
        "dtype": Option(str, "uint16", "pixel type", choices=("uint8", "uint16", "uint32")),
        "decoder": Option(str, "dummy_udp", "packet layout", choices=("dummy_udp",)),
        "packet_size": Option(int, 8000, "payload bytes per packet (the last of a frame may be shorter)",
                              low=1, high=65000),
        "frame_timeout_ms": Option(int, 1000, "an incomplete frame is dropped (frames/timedout) after this",
                                   low=1),
        "rcvbuf": Option(int, 4 << 20, "socket receive buffer, bytes (the kernel may cap it: a warning says so)",
                         low=4096),
        "frames": Option(int, 0, "end the acquisition after this many frames (0: at execute stop)", low=0),
        "batch_receive": Option(bool, True, "receive packets in recvmmsg batches (Linux); false: one recv "
                                            "call per packet"),
    },
    "hdf5": {
        **_COMMON,
        "file": Option(str, "", "HDF5 file to replay"),
        "dataset": Option(str, "", "dataset of frames in it, e.g. /entry/data/data"),
    },
}


SOURCE_OPTIONS["dectris_v1"] = {**SOURCE_OPTIONS["dectris_v2"], "type": Option(str, "dectris_v1", "source kind")}


def make_source(cfg: Any) -> FrameSource:
    """Build a source from its configuration; raise ConfigError naming the bad key."""
    if not isinstance(cfg, Mapping):
        raise ConfigError("source must be an object like {\"type\": \"simulated\", ...}", "source")
    kind = cfg.get("type")
    options = SOURCE_OPTIONS.get(kind) if isinstance(kind, str) else None
    if options is None:
        raise ConfigError(f"source type must be one of {sorted(SOURCE_OPTIONS)}, not {kind!r}", "type")
    v = {**defaults(options), **validate_options(f"a {kind} source", options, cfg, "source/")}
    if kind == "simulated":
        if v["pattern"] == "ramp" and v["dtype"] not in _RAMP_DTYPES:
            raise ConfigError(f"source dtype for pattern 'ramp' must be one of {list(_RAMP_DTYPES)}, "
                              f"not {v['dtype']!r}", "dtype")
        return SimulatedSource(tuple(v["shape"]), v["dtype"], v["frames"], v["rate"], v["pattern"],
                               v["acquisition_id"], **{k: v[k] for k in (
                                   "correlation_time", "contrast", "intensity", "seed", "pedestal", "gain",
                                   "read_noise", "fixed_pattern")})
    if kind == "udp":
        if not HAVE_RECVMMSG:
            raise ConfigError("the udp source needs Linux (its receive loop calls recvmmsg and poll)", "type")
        return UdpSource(v["rx_ports"], v["rx_address"], tuple(v["shape"]), v["dtype"], v["packet_size"],
                         v["frame_timeout_ms"], v["rcvbuf"], v["decoder"], v["frames"], v["batch_receive"])
    if kind in ("dectris_v2", "dectris_v1"):
        cls = StreamV2Source if kind == "dectris_v2" else StreamV1Source
        endpoint = v["endpoint"] if "endpoint" in cfg or kind == "dectris_v2" else "tcp://127.0.0.1:9999"
        return cls(endpoint, tuple(v["shape"]), v["dtype"], rcvhwm=v["rcvhwm"], decompress=v["decompress"])
    for key in ("file", "dataset"):
        if not v[key]:
            raise ConfigError(f"an hdf5 source needs '{key}' (a string)", key)
    return Hdf5Source(v["file"], v["dataset"], v["frames"], v["rate"], v["acquisition_id"])


