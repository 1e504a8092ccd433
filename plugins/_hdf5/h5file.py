"""One HDF5 output file in the framechain/NeXus layout, written by a single thread.

Layout::

    /entry                              NXentry
    /entry/instrument/detector/<name>   (N, H, W) frames, one (1, H, W) chunk each
    /entry/instrument/detector/parameters/<key>   1-D per-frame values at the frame's index
    /entry/data                         NXdata, @signal="data", hard link to the master dataset

The file is created as ``<final name><temp suffix>`` and renamed on a clean
close. With SWMR on, readers in other processes can open it while it grows;
datasets are extended before each chunk lands, parameters are written at flush.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from framechain.frameprocessor.frame import DetectorHeader

from .codecs import Codec
from .config import DatasetSpec

__all__ = ["H5File", "DETECTOR"]

log = logging.getLogger(__name__)
DETECTOR = "/entry/instrument/detector"
#: where each layout keeps the frame datasets (and their parameters, and the detector's header)
FRAMES_GROUP = {"nexus": DETECTOR, "odin": "/"}
_GROW = 1024


def _param_dtype(value: Any) -> np.dtype | None:
    if isinstance(value, bool):
        return np.dtype(np.uint8)
    if isinstance(value, (int, np.integer)):
        return np.dtype(np.int64)
    if isinstance(value, (float, np.floating)):
        return np.dtype(np.float64)
    return None


class _ParamColumn:
    """One parameter's values since the last flush (a window from ``base``), written to its dataset at flush.

    Memory is the values of one flush interval, not of the whole file; a value for an index already
    flushed (a late frame) is kept aside and written on its own at the next flush.
    """

    __slots__ = ("values", "base", "hwm", "fill", "late")

    def __init__(self, dtype: np.dtype, capacity: int) -> None:
        self.fill = np.nan if dtype.kind == "f" else 0
        self.values = np.full(max(min(capacity, 4096), 1), self.fill, dtype)
        self.base = 0  # absolute index of values[0]
        self.hwm = 0   # one past the highest index set
        self.late: list[tuple[int, Any]] = []

    def set(self, index: int, value: Any) -> None:
        i = index - self.base
        if i < 0:
            self.values.dtype.type(value)  # the same type check a store into the window makes
            self.late.append((index, value))
            return
        if i >= self.values.shape[0]:
            grown = np.full(max(i + 1, 2 * self.values.shape[0]), self.fill, self.values.dtype)
            grown[:self.values.shape[0]] = self.values
            self.values = grown
        self.values[i] = value
        if index >= self.hwm:
            self.hwm = index + 1

    def flush_to(self, ds: h5py.Dataset) -> None:
        """Write the window (and late values) to ``ds``; the window then starts after them."""
        if self.hwm > self.base or self.late:
            if ds.shape[0] < self.hwm:
                ds.resize(self.hwm, axis=0)
            n = self.hwm - self.base
            if n > 0:
                ds[self.base:self.hwm] = self.values[:n]
                self.values[:n] = self.fill
            for index, value in self.late:
                ds[index] = value
            self.late.clear()
            self.base = max(self.base, self.hwm)


#: NXdetector fields and the stream keys they come from (stream v2 first, then v1's detector configuration)
_NEXUS_DETECTOR = {"count_time": ("count_time",), "frame_time": ("frame_time",),
                   "beam_center_x": ("beam_center_x",), "beam_center_y": ("beam_center_y",),
                   "x_pixel_size": ("pixel_size_x", "x_pixel_size"), "y_pixel_size": ("pixel_size_y", "y_pixel_size"),
                   "description": ("detector_description", "description"),
                   "detector_distance": ("detector_distance",), "sensor_thickness": ("sensor_thickness",)}


class H5File:
    """An open output file.

    Parameters
    ----------
    final_path : str
        Name after a clean close; the file is created as ``final_path + temp_suffix``.
    datasets : mapping of name to (DatasetSpec, Codec)
    master : str
        Dataset linked into ``/entry/data`` and counted as frames written.
    frames : int
        Frames this file will hold (0 = unknown, datasets unlimited).
    parameters : mapping
        One frame's parameters, used to create the per-frame parameter datasets
        (they must exist before SWMR starts).
    attrs : mapping
        Stored on ``/entry`` (config, versions), JSON-encoded when not scalar.
    detector : DetectorHeader, optional
        The detector's own header for the series (a DECTRIS start): see ``_write_detector``.
    """

    def __init__(self, final_path: str, temp_suffix: str, datasets: Mapping[str, tuple[DatasetSpec, Codec]],
                 master: str, frames: int, parameters: Mapping[str, Any], attrs: Mapping[str, Any],
                 swmr: bool, overwrite: bool = False, detector: DetectorHeader | None = None,
                 layout: str = "nexus") -> None:
        self.final_path = final_path
        self.path = final_path + temp_suffix
        for p in {final_path, self.path}:
            if os.path.exists(p) and overwrite:
                os.remove(p)
            elif os.path.exists(p):
                raise FileExistsError(f"{p} already exists; refusing to overwrite it")
        self.frames = frames
        self.master = master
        self.layout = layout
        self.closed = False
        # no chunk cache: frames go in by direct chunk writes and parameters are written once per flush, so a
        # cache only held every chunk written (the soak saw RSS grow with the file)
        self._f = h5py.File(self.path, "w-", libver="latest", rdcc_nbytes=0)
        try:
            self._build(datasets, parameters, attrs)
            if detector is not None:
                self._write_detector(detector)
            if swmr:
                self._f.swmr_mode = True
        except BaseException:
            self._f.close()
            raise

    def _build(self, datasets: Mapping[str, tuple[DatasetSpec, Codec]], parameters: Mapping[str, Any],
               attrs: Mapping[str, Any]) -> None:
        f = self._f
        nexus = self.layout == "nexus"
        if nexus:
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            inst = entry.create_group("instrument")
            inst.attrs["NX_class"] = "NXinstrument"
            det = inst.create_group("detector")
            det.attrs["NX_class"] = "NXdetector"
        else:  # odin-data's layout: every dataset at the root
            entry = det = f
        for k, v in attrs.items():
            entry.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        maxn = self.frames if self.frames > 0 else None
        self._ds: dict[str, h5py.Dataset] = {}
        self._ids: dict[str, tuple[h5py.h5d.DatasetID, tuple[int, ...], tuple[int, ...]]] = {}
        self._extent: dict[str, int] = {}
        for name, (spec, codec) in datasets.items():
            ds = det.create_dataset(name, shape=(0,) + spec.dims, maxshape=(maxn,) + spec.dims,
                                    chunks=spec.chunks, dtype=spec.dtype, **codec.filter_args())
            ds.attrs["compression"] = spec.compression
            self._ds[name] = ds
            self._ids[name] = (ds.id, tuple(spec.dims), (0,) * len(spec.dims))
            self._extent[name] = 0
        if nexus:
            nxdata = entry.create_group("data")
            nxdata.attrs["NX_class"] = "NXdata"
            nxdata.attrs["signal"] = "data"
            if self.master in self._ds:
                nxdata["data"] = self._ds[self.master]  # hard link
        pg = det.create_group("parameters")
        self._params: dict[str, _ParamColumn] = {}
        self._pds: dict[str, h5py.Dataset] = {}
        cap = self.frames if self.frames > 0 else _GROW
        base = {"frame_number": 0, "timestamp": 0.0}
        for key, value in {**base, **parameters}.items():
            dt = _param_dtype(value)
            if dt is None or "/" in key:
                continue
            self._params[key] = _ParamColumn(dt, cap)
            self._pds[key] = pg.create_dataset(key, shape=(0,), maxshape=(maxn,), dtype=dt,
                                               chunks=(min(max(cap, 1), 4096),),
                                               fillvalue=self._params[key].fill)

    def _write_detector(self, header: DetectorHeader) -> None:
        """The detector's header as DECTRIS and NeXus files hold it: every scalar and array under
        ``detector/detectorSpecific`` (arrays per dataset: ``<dataset>/pixel_mask``), the NeXus NXdetector
        fields (count_time, beam_center_x, pixel_mask of the master dataset, ...) in ``detector`` and the
        incident energy in ``instrument/beam``."""
        det = self._f[FRAMES_GROUP[self.layout]]
        spec = det.create_group("detectorSpecific")
        for key, value in header.parameters.items():
            if "/" not in key and key:
                spec[key] = value
        for key, arr in header.arrays.items():
            kind, _, dataset = key.partition("/")
            spec.create_dataset(f"{dataset}/{kind}", data=arr, compression="gzip", shuffle=True)
            if dataset == self.master and kind not in det:
                det[kind] = spec[f"{dataset}/{kind}"]
        for nexus, names in _NEXUS_DETECTOR.items():
            value = next((header.parameters[n] for n in names if n in header.parameters), None)
            if value is not None and nexus not in det:
                det[nexus] = value
        energy = header.parameters.get("incident_energy", header.parameters.get("photon_energy"))
        if isinstance(energy, (int, float)) and self.layout == "nexus":
            beam = self._f["entry/instrument"].create_group("beam")
            beam.attrs["NX_class"] = "NXbeam"
            beam["incident_energy"] = energy
            beam["incident_energy"].attrs["units"] = "eV"

    # -- writing ---------------------------------------------------------------
    def write_chunk(self, name: str, index: int, chunk: Any) -> None:
        """Write one frame's chunk bytes at ``index`` of dataset ``name`` (extending it if needed)."""
        dsid, dims, zeros = self._ids[name]
        if index >= self._extent[name]:
            dsid.set_extent((index + 1,) + dims)  # the low-level call: a third of Dataset.resize's cost
            self._extent[name] = index + 1
        dsid.write_direct_chunk((index,) + zeros, chunk)

    def set_parameters(self, index: int, frame_number: int, timestamp: float, parameters: Mapping[str, Any]) -> None:
        cols = self._params
        cols["frame_number"].set(index, frame_number)
        cols["timestamp"].set(index, timestamp)
        for key, value in parameters.items():
            col = cols.get(key)
            if col is None:  # not in the file's first frame, or not numeric: not stored
                continue
            try:
                col.set(index, value)
            except (TypeError, ValueError):  # a value of another type than the first frame's: not stored
                pass

    def flush(self) -> None:
        """Write pending parameter values and flush HDF5 (SWMR readers see everything up to here)."""
        for key, col in self._params.items():
            col.flush_to(self._pds[key])
        self._f.flush()

    def close(self, rename: bool = True) -> str:
        """Flush, close and (when ``rename``) move to the final name; safe to call twice. Returns the path."""
        if self.closed:
            return self.final_path if rename else self.path
        self.closed = True
        try:
            self.flush()
        finally:
            self._f.close()
        if rename:
            os.replace(self.path, self.final_path)
            return self.final_path
        return self.path

    def abort(self) -> None:
        """Close after an error, keeping the temporary name; never raises."""
        if self.closed:
            return
        try:
            self.close(rename=False)
        except (OSError, RuntimeError, ValueError) as err:  # unflushable (disk full): keep what is there
            log.warning("closing %s after an error failed: %s", self.path, " ".join(str(err).split()))
            self.closed = True

    def __repr__(self) -> str:
        return f"<H5File {self.path!r} {'closed' if self.closed else 'open'}>"


def versions() -> dict[str, str]:
    return {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "hdf5plugin": hdf5plugin.version,
            "numpy": np.__version__}
