"""QMap: the dynamic and static bin labels, mask and geometry the correlator works on.

Loaded from a ``.npy`` file of integer labels (0 = excluded; the same map is used
as dynamic and static map) or from an APS qmap HDF5 (``/qmap/dynamic_roi_map``,
``/qmap/static_roi_map``, ``/qmap/mask`` and, when present, the ``v_list``,
``num_pts``, ``map_names``/``map_units`` and geometry datasets beside them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

__all__ = ["QMap", "load_qmap", "load_mask", "uniform_qmap", "QMapError"]

_GEOMETRY = ("beam_center_x", "beam_center_y", "detector_distance", "pixel_size", "energy")


class QMapError(ValueError):
    """A qmap or mask file is missing, unreadable or inconsistent; the message says which and why."""


@dataclass
class QMap:
    """Label maps (0 = pixel not used) and what the result file needs to describe them.

    Attributes
    ----------
    dynamic, static : numpy.ndarray
        int32 label maps of the frame shape; bins are numbered 1..N.
    mask : numpy.ndarray
        bool, True = use.
    source : str
        Where it came from ("" for the built-in uniform map).
    extra : dict
        Optional datasets read from an APS qmap (v lists, num_pts, map names/units, geometry).
    """

    dynamic: np.ndarray
    static: np.ndarray
    mask: np.ndarray
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dynamic.shape

    @property
    def num_dynamic(self) -> int:
        return int(self.dynamic.max(initial=0))

    @property
    def num_static(self) -> int:
        return int(self.static.max(initial=0))

    def with_mask(self, mask: np.ndarray | None) -> QMap:
        """A copy with ``mask`` (True = use) combined into the mask."""
        if mask is None:
            return self
        return QMap(self.dynamic, self.static, self.mask & mask, self.source, self.extra)

    def labels(self, which: str = "dynamic") -> np.ndarray:
        """Label map with masked pixels set to 0."""
        lab = self.dynamic if which == "dynamic" else self.static
        return np.where(self.mask, lab, 0)


def uniform_qmap(shape: tuple[int, ...], rings: int = 10) -> QMap:
    """The default when no qmap is configured: every pixel in one dynamic bin, and ``rings``
    equal-width static rings around the frame centre (so scattering_1d is a radial profile)."""
    ones = np.ones(shape, np.int32)
    idx = np.indices(shape, dtype=np.float64)
    centre = (np.asarray(shape, np.float64) - 1) / 2
    r = np.sqrt(sum((i - c) ** 2 for i, c in zip(idx, centre)))
    rmax = float(r.max()) or 1.0
    static = np.minimum((r / rmax * rings).astype(np.int32) + 1, rings)
    return QMap(ones, static, np.ones(shape, bool))


def _labels(a: Any, what: str, path: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iub":
        raise QMapError(f"{what} in {path!r} must hold integer labels, not {a.dtype}")
    if a.ndim < 1 or a.size == 0:
        raise QMapError(f"{what} in {path!r} is empty (shape {a.shape})")
    if a.min() < 0:
        raise QMapError(f"{what} in {path!r} has negative labels (minimum {a.min()})")
    if a.max() > 1_000_000:
        raise QMapError(f"{what} in {path!r} has label {a.max()}; at most 1000000 bins are supported")
    return a.astype(np.int32)


def load_qmap(path: str) -> QMap:
    """Read a ``.npy`` label map or an APS qmap HDF5; raise QMapError saying what is wrong."""
    if not os.path.isfile(path):
        raise QMapError(f"qmap file {path!r} does not exist")
    if path.endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise QMapError(f"qmap file {path!r} is not a readable .npy array: {err}") from err
        lab = _labels(a, "the label array", path)
        qm = QMap(lab, lab, np.ones(lab.shape, bool), path)
    else:
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise QMapError(f"qmap file {path!r} is neither .npy nor a readable HDF5 file: {err}") from err
        with f:
            group = next((g for g in ("qmap", "xpcs/qmap", "data") if g in f and "dynamic_roi_map" in f[g]), None)
            if group is None:
                raise QMapError(f"qmap file {path!r} has no /qmap/dynamic_roi_map dataset")
            g = f[group]
            dyn = _labels(g["dynamic_roi_map"][()], "/qmap/dynamic_roi_map", path)
            sta = _labels(g["static_roi_map"][()], "/qmap/static_roi_map", path) if "static_roi_map" in g else dyn
            mask = np.asarray(g["mask"][()]).astype(bool) if "mask" in g else np.ones(dyn.shape, bool)
            extra = {}
            for key in ("dynamic_v_list_dim0", "dynamic_v_list_dim1", "static_v_list_dim0", "static_v_list_dim1",
                        "dynamic_num_pts", "static_num_pts", "map_names", "map_units", *_GEOMETRY):
                if key in g and isinstance(g[key], h5py.Dataset):
                    extra[key] = g[key][()]
        for name, a in (("static_roi_map", sta), ("mask", mask)):
            if a.shape != dyn.shape:
                raise QMapError(f"qmap file {path!r}: {name} shape {a.shape} differs from dynamic_roi_map "
                                f"shape {dyn.shape}")
        qm = QMap(dyn, sta, mask, path, extra)
    if not np.any(qm.labels() > 0):
        raise QMapError(f"qmap {path!r} selects no pixel (every label is 0 or masked)")
    return qm


def load_mask(path: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A ``.npy`` mask (nonzero = use) as bool; optional shape check."""
    if not os.path.isfile(path):
        raise QMapError(f"mask file {path!r} does not exist")
    try:
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise QMapError(f"mask file {path!r} is not a readable .npy array: {err}") from err
    if m.dtype.kind not in "biuf" or m.size == 0:
        raise QMapError(f"mask file {path!r} must be a non-empty numeric or bool array, not {m.dtype} {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise QMapError(f"mask file {path!r} has shape {m.shape} but the qmap has shape {tuple(shape)}")
    return m != 0
