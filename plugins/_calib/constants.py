"""CalibrationConstants: everything the hot path needs, loaded and precomputed at configure time.

One immutable object holds the pedestal, the reciprocal gain (gain x
flatfield folded in), the multi-gain lookup tables, the pixel-status map and
the common-mode and photonize settings. The plugin swaps the whole object by
one reference assignment, so a frame always sees one consistent set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from framechain.ipc.errors import ConfigError

from .arrayfile import check_finite, check_integral, load_array
from .settings import CommonModeSettings, PhotonizeSettings, parse_common_mode, parse_photonize

__all__ = ["CalibrationConstants", "build_constants", "GAIN_CODES", "INVALID_CODE"]

#: gain bits (raw >> 14) of each JUNGFRAU gain stage G0, G1, G2
GAIN_CODES = (0, 1, 3)
#: gain bits 10: an invalid gain switch
INVALID_CODE = 2


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class CalibrationConstants:
    """Precomputed constants for one configuration (never modified after construction).

    Attributes
    ----------
    mode : str
        ``"single"`` or ``"multigain"``.
    shape : tuple or None
        Frame shape the constants fit (None: any shape, no constants loaded).
    pedestal : ndarray or None
        Single: float32 (N,) pedestal. Multigain: float32 (N,) G0 pedestal.
    recip : ndarray or None
        float32 (N,) ``1 / (gain * flatfield)`` (G0 for multigain).
    switch_table : ndarray or None
        Multigain: complex64 (N*2,), ``P + 1j * R`` for G1 and G2 of each pixel, interleaved.
    switch_pairs : ndarray or None
        The same memory as float32 (N*4,), ``P1 R1 P2 R2`` per pixel (read-only; for the fused kernel).
    invalid_fill : float32
        Output for the invalid gain code 10 (NaN or 0).
    pixel_status : ndarray or None
        uint32 (H, W), 0 = good.
    good : ndarray or None
        bool (H, W), ``pixel_status == 0`` (read-only; attached as ``frame.mask``).
    bad_nan : ndarray or None
        float32 (N,), NaN at bad pixels and 0 elsewhere (common-mode exclusion without branches).
    """

    def __init__(self, mode: str, shape: tuple[int, ...] | None, *, pedestal: np.ndarray | None = None,
                 recip: np.ndarray | None = None, switch_table: np.ndarray | None = None, pixel_status: np.ndarray | None = None,
                 common_mode: CommonModeSettings | None = None, photonize: PhotonizeSettings | None = None,
                 output_dtype: str = "float32", invalid_gain_value: str = "nan",
                 sources: dict[str, str] | None = None, raw_pedestal: np.ndarray | None = None) -> None:
        self.mode = mode
        self.shape = shape
        self.pedestal = pedestal
        self.recip = recip
        self.switch_table = switch_table
        self.switch_pairs = None if switch_table is None else _readonly(switch_table.view(np.float32))
        self.invalid_fill = np.float32(np.nan) if invalid_gain_value == "nan" else np.float32(0)
        self.pixel_status = pixel_status
        self.good = None if pixel_status is None else _readonly(pixel_status == 0)
        self.bad_pixels = 0 if pixel_status is None else int(np.count_nonzero(pixel_status))
        self.bad_nan = None
        if pixel_status is not None and common_mode is not None and self.bad_pixels:
            self.bad_nan = _readonly(np.where(pixel_status.reshape(-1) != 0, np.float32(np.nan), np.float32(0)))
        self.common_mode = common_mode
        self.photonize = photonize
        self.output_dtype = np.dtype(output_dtype)
        self.sources = sources or {}
        self.raw_pedestal = raw_pedestal  # as loaded ((H,W) or (3,H,W)), for dark collection of one stage


def _load(cfg: Mapping[str, Any], key: str, sources: dict[str, str]) -> tuple[np.ndarray, Any] | None:
    spec = cfg.get(key)
    if spec is None:
        return None
    arr, loc = load_array(spec, key)
    sources[key] = str(loc)
    return arr, loc


def _shape_error(key: str, loc: Any, arr: np.ndarray, want: str) -> ConfigError:
    return ConfigError(f"'{key}': {loc.describe()} has shape {arr.shape}; expected {want}", key)


def build_constants(cfg: Mapping[str, Any]) -> CalibrationConstants:
    """Load and check every constant named in ``cfg`` (the plugin's merged configuration).

    Raises
    ------
    ConfigError
        Missing file or dataset, wrong shape (naming both shapes), NaN/inf or zero gain,
        non-positive flatfield, unknown mode, inconsistent settings.
    """
    mode = cfg["mode"]
    if mode not in ("single", "multigain"):
        raise ConfigError(f"'mode' must be 'single' or 'multigain', not {mode!r}", "mode")
    out_dtype = cfg["output_dtype"]
    photonize = parse_photonize(cfg.get("photonize"))
    common_mode = parse_common_mode(cfg.get("common_mode"))
    if np.dtype(out_dtype).kind != "f" and photonize is None:
        raise ConfigError(f"'output_dtype' {out_dtype!r} is an integer type: it needs 'photonize' "
                          f"(photon counts); use float32 or float64 for energies", "output_dtype")
    sources: dict[str, str] = {}
    ped = _load(cfg, "pedestal", sources)
    gain = _load(cfg, "gain", sources)
    ff = _load(cfg, "flatfield", sources)
    status = _load(cfg, "pixel_status", sources)

    frame_shape: tuple[int, ...] | None = None
    ref = ""
    # -- multigain pedestal and gain: they fix the frame shape ----------------------
    if mode == "multigain":
        if ped is None or gain is None:
            raise ConfigError("mode 'multigain' needs both 'pedestal' and 'gain', each of shape (3, H, W) "
                              "for gain stages G0, G1, G2", "pedestal" if ped is None else "gain")
        for key, (arr, loc) in (("pedestal", ped), ("gain", gain)):
            if arr.ndim != 3 or arr.shape[0] != 3:
                raise _shape_error(key, loc, arr, "(3, H, W) for gain stages G0, G1, G2 in mode 'multigain'")
        if ped[0].shape != gain[0].shape:
            raise ConfigError(f"'pedestal' {ped[1].describe()} has shape {ped[0].shape} but 'gain' "
                              f"{gain[1].describe()} has shape {gain[0].shape}; they must match", "gain")
        frame_shape, ref = ped[0].shape[1:], f"'pedestal' {ped[1].describe()} (3, H, W)"
        per_frame = (("flatfield", ff), ("pixel_status", status))
    else:
        per_frame = (("pedestal", ped), ("gain", gain), ("flatfield", ff), ("pixel_status", status))
    # -- the (H, W) arrays: the first fixes the frame shape (multigain: pedestal did) -
    for key, item in per_frame:
        if item is not None:
            arr, loc = item
            if frame_shape is None:
                frame_shape, ref = arr.shape, f"'{key}' {loc.describe()}"
            elif arr.shape != frame_shape:
                raise _shape_error(key, loc, arr, f"{frame_shape}, the frame shape of {ref}")
    if ped is not None:
        check_finite(ped[0], ped[1], "pedestal")
    if gain is not None:
        check_finite(gain[0], gain[1], "gain", nonzero=True)
    if ff is not None:
        check_finite(ff[0], ff[1], "flatfield", positive=True)
    pixel_status = None
    if status is not None:
        arr, loc = status
        check_integral(arr, loc, "pixel_status", " (0 = good)")
        if arr.dtype.kind == "i" and np.any(arr < 0):
            raise ConfigError(f"'pixel_status': {loc.describe()} has negative values; 0 = good, bits = problems",
                              "pixel_status")
        pixel_status = _readonly(arr.astype(np.uint32))
    if common_mode is not None and frame_shape is not None:
        common_mode.banks(frame_shape)

    common = dict(pixel_status=pixel_status, common_mode=common_mode, photonize=photonize,
                  output_dtype=out_dtype, invalid_gain_value=cfg["invalid_gain_value"], sources=sources)
    ff64 = None if ff is None else ff[0].astype(np.float64)
    if mode == "single":
        pedestal = None if ped is None else _readonly(ped[0].astype(np.float32).reshape(-1))
        recip = None
        if gain is not None or ff64 is not None:
            g = np.ones(frame_shape) if gain is None else gain[0].astype(np.float64)
            if ff64 is not None:
                g = g * ff64
            recip = _readonly((1.0 / g).astype(np.float32).reshape(-1))
        return CalibrationConstants(mode, frame_shape, pedestal=pedestal, recip=recip,
                                    raw_pedestal=None if ped is None else ped[0], **common)

    n = int(np.prod(frame_shape))
    p3 = ped[0].astype(np.float32).reshape(3, n)
    g3 = gain[0].astype(np.float64).reshape(3, n)
    if ff64 is not None:
        g3 = g3 * ff64.reshape(1, n)
    r3 = (1.0 / g3).astype(np.float32)
    switch_table = np.empty((n, 2), np.complex64)
    switch_table.real = p3[1:].T
    switch_table.imag = r3[1:].T
    return CalibrationConstants(mode, frame_shape, pedestal=_readonly(np.ascontiguousarray(p3[0])),
                                recip=_readonly(np.ascontiguousarray(r3[0])),
                                switch_table=_readonly(switch_table.reshape(-1)),
                                raw_pedestal=ped[0], **common)
