"""XPCS result file in the APS 8-ID-I layout (the one pyXPCSViewer opens as a Multitau result).

Written once at the end of an acquisition, to ``<path>.part`` then renamed, so a
reader never sees half a file; a failed write removes the ``.part`` file. Paths
(shapes; ``T`` lags without lag 0, ``D``/``S`` non-empty dynamic/static bins,
``N`` frames)::

    /xpcs/multitau/delay_list              (T,)      float64, frames
    /xpcs/multitau/normalized_g2           (T, D)
    /xpcs/multitau/normalized_g2_err       (T, D)
    /xpcs/multitau/config/{stride_frame, avg_frame, num_bufs, num_levels, normalization, frames, frames_used}
    /xpcs/qmap/{mask, dynamic_roi_map, static_roi_map}                       (H, W)
    /xpcs/qmap/{dynamic,static}_index_mapping  (D,) / (S,)   0-based natural bin index
    /xpcs/qmap/{dynamic,static}_num_pts        (2,)
    /xpcs/qmap/{dynamic,static}_v_list_dim0/1
    /xpcs/qmap/{beam_center_x, beam_center_y, detector_distance, pixel_size, map_names, map_units}, @hash
    /xpcs/temporal_mean/scattering_2d          (1, H, W) float32
    /xpcs/temporal_mean/scattering_1d          (1, S)
    /xpcs/temporal_mean/scattering_1d_segments (segments, S)
    /xpcs/spatial_mean/intensity_vs_time       (2, N)    frame number, mean intensity
    /entry/start_time, /entry/instrument/detector_1/{frame_time, count_time},
    /entry/instrument/incident_beam/incident_energy (keV)
    /entry/instrument/bluesky/metadata         (group; pyXPCSViewer recognises the file type by it)
    /xpcs/twotime/correlation_map/c2_00001..   (n, n) float32, upper triangle of C (APS "c2_half")
    /xpcs/twotime/{processed_bins, delay_list, normalized_g2, normalized_g2_segments,
                   config/{max_frames, stride_frame, avg_frame}}
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

__all__ = ["XpcsResultData", "write_result", "qmap_hash"]


@dataclass
class XpcsResultData:
    """Everything the result file holds (see the module docstring for shapes)."""

    delays: np.ndarray
    g2: np.ndarray
    g2_err: np.ndarray
    dynamic_roi_map: np.ndarray
    static_roi_map: np.ndarray
    mask: np.ndarray
    dynamic_index_mapping: np.ndarray
    static_index_mapping: np.ndarray
    scattering_2d: np.ndarray
    scattering_1d: np.ndarray
    scattering_1d_segments: np.ndarray
    intensity_vs_time: np.ndarray
    frame_time: float
    count_time: float
    start_time: str
    geometry: dict[str, float]
    multitau_config: dict[str, Any]
    qmap_extra: dict[str, Any] = field(default_factory=dict)
    twotime: dict[str, Any] | None = None


def qmap_hash(*arrays: np.ndarray) -> str:
    """sha256 over the maps' shapes and bytes (pyXPCSViewer caches qmaps by this attribute)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _strings(values: Any) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else str(v).encode() for v in np.atleast_1d(values)])


def write_result(path: str, d: XpcsResultData) -> None:
    """Write ``d`` to ``path`` (parent directories created); atomic rename at the end."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + ".part"
    n_dyn = int(d.dynamic_roi_map.max(initial=0))
    n_sta = int(d.static_roi_map.max(initial=0))
    ex = d.qmap_extra
    try:
        _write(tmp, d, n_dyn, n_sta, ex)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):                           # the write failed: leave no half file behind
            os.remove(tmp)


def _write(tmp: str, d: XpcsResultData, n_dyn: int, n_sta: int, ex: dict[str, Any]) -> None:
    with h5py.File(tmp, "w") as f:
        mt = f.create_group("xpcs/multitau")
        mt["delay_list"] = np.asarray(d.delays, np.float64)
        mt["normalized_g2"] = d.g2
        mt["normalized_g2_err"] = d.g2_err
        cfg = mt.create_group("config")
        cfg["stride_frame"] = 1
        cfg["avg_frame"] = 1
        for k, v in d.multitau_config.items():
            cfg[k] = v
        q = f.create_group("xpcs/qmap")
        q["mask"] = d.mask.astype(np.uint8)
        q["dynamic_roi_map"] = d.dynamic_roi_map.astype(np.int32)
        q["static_roi_map"] = d.static_roi_map.astype(np.int32)
        q["dynamic_index_mapping"] = np.asarray(d.dynamic_index_mapping, np.int64)
        q["static_index_mapping"] = np.asarray(d.static_index_mapping, np.int64)
        q["dynamic_num_pts"] = np.asarray(ex.get("dynamic_num_pts", [n_dyn, 1]), np.int64)
        q["static_num_pts"] = np.asarray(ex.get("static_num_pts", [n_sta, 1]), np.int64)
        q["dynamic_v_list_dim0"] = np.asarray(ex.get("dynamic_v_list_dim0", np.arange(1, n_dyn + 1)), np.float64)
        q["dynamic_v_list_dim1"] = np.asarray(ex.get("dynamic_v_list_dim1", [0.0]), np.float64)
        q["static_v_list_dim0"] = np.asarray(ex.get("static_v_list_dim0", np.arange(1, n_sta + 1)), np.float64)
        q["static_v_list_dim1"] = np.asarray(ex.get("static_v_list_dim1", [0.0]), np.float64)
        for key in ("beam_center_x", "beam_center_y", "detector_distance", "pixel_size"):
            q[key] = float(d.geometry[key])
        q["energy"] = float(d.geometry["incident_energy"])
        q["map_names"] = _strings(ex.get("map_names", ["bin", "phi"]))
        q["map_units"] = _strings(ex.get("map_units", ["index", "deg"]))
        q.attrs["hash"] = qmap_hash(d.dynamic_roi_map, d.static_roi_map, d.mask)
        tm = f.create_group("xpcs/temporal_mean")
        tm["scattering_2d"] = d.scattering_2d.astype(np.float32)[None]
        tm["scattering_1d"] = np.asarray(d.scattering_1d, np.float64)[None]
        tm["scattering_1d_segments"] = np.asarray(d.scattering_1d_segments, np.float64)
        f.create_group("xpcs/spatial_mean")["intensity_vs_time"] = d.intensity_vs_time
        entry = f.require_group("entry")
        entry["start_time"] = d.start_time
        det = entry.create_group("instrument/detector_1")
        det["frame_time"] = float(d.frame_time)
        det["count_time"] = float(d.count_time)
        det["x_pixel_size"] = float(d.geometry["pixel_size"])
        det["y_pixel_size"] = float(d.geometry["pixel_size"])
        det["distance"] = float(d.geometry["detector_distance"])
        entry.create_group("instrument/incident_beam")["incident_energy"] = float(d.geometry["incident_energy"])
        # pyXPCSViewer tells a NeXus (APS 8-ID-I) result file by this group
        meta = entry.create_group("instrument/bluesky/metadata")
        meta.attrs["creator"] = "framechain xpcs plugin"
        if d.twotime is not None:
            tt = f.create_group("xpcs/twotime")
            cm = tt.create_group("correlation_map")
            for label, c2 in zip(d.twotime["bins"], d.twotime["c2"]):
                # APS stores one triangle (C is symmetric); readers rebuild C = T + T' with the diagonal halved
                cm.create_dataset(f"c2_{int(label):05d}", data=np.triu(c2), compression="gzip", compression_opts=1)
            tt["processed_bins"] = np.asarray(d.twotime["bins"], np.int64)
            tt["delay_list"] = np.arange(1, d.twotime["c2"].shape[1], dtype=np.float64)
            tt["normalized_g2"] = d.twotime["g2"]
            tt["normalized_g2_segments"] = d.twotime["g2_segments"]
            tcfg = tt.create_group("config")
            tcfg["max_frames"] = int(d.twotime["max_frames"])
            tcfg["stride_frame"] = 1
            tcfg["avg_frame"] = 1
