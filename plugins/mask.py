"""MaskPlugin: apply a static pixel mask, combined with the calibration's pixel status.

The mask comes from ``file.npy`` or ``file.h5:/dataset`` in one of two
conventions: ``use`` (1 = use the pixel, 0 = masked; as in ParCorAna) or
``pixel_mask`` (the NeXus/DECTRIS bit field, 0 = good, any set bit masks the
pixel; ``pixel_mask_bits`` selects which bits count). An upstream
``frame.mask`` (bool, True = use; the calibration plugin attaches its pixel
status there) is combined with it by AND.

``action: "fill"`` writes ``fill_value`` (0 or NaN) into masked pixels and
also attaches the combined ``frame.mask``; ``action: "attach"`` only attaches
it for downstream plugins (the correlator). Filling is done in place only when
``frame.data`` is writable (the processor leaves a frame writable only for its
sole consumer), C-contiguous and can hold the fill value, and ``copy`` is
false; otherwise into a new frame from the plugin's own pool (float32 when an
integer dtype cannot hold the fill value: NaN, a fraction, out of range). A read-only (shared) frame is never changed:
when only ``frame.mask`` is set on one, it is set on a new Frame over the same
pixels, so sibling branches do not see it.

Logger ``framechain.frameprocessor.plugin.<index>``.

Example::

    {"mask": {"mask": "/data/mask.h5:/entry/instrument/detector/pixel_mask",
              "convention": "pixel_mask", "action": "fill", "fill_value": "nan"}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from framechain.frameprocessor import DataBlockPool, Frame, FrameProcessorPlugin, Option
from framechain.ipc.errors import ConfigError

from ._calib.arrayfile import check_integral, load_array
from ._calib.shared import IdentityCache, and_masks, check_mib

__all__ = ["MaskPlugin", "StaticMask"]

_POOL_WAIT_S = 2.0


def _fill_check(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v.lower() == "nan" else "must be a number or 'nan'"
    return None if math.isfinite(v) else "must be a finite number or 'nan'"


class StaticMask:
    """A loaded mask: ``use`` (bool, True = use, read-only), its source and masked count."""

    __slots__ = ("use", "source", "masked")

    def __init__(self, use: np.ndarray, source: str) -> None:
        use.flags.writeable = False
        self.use = use
        self.source = source
        self.masked = int(use.size - np.count_nonzero(use))


def load_mask(spec: str, convention: str, bits: int | None) -> StaticMask:
    """Load and check a mask file; raise ConfigError naming file, dataset and the problem."""
    arr, loc = load_array(spec, "mask")
    if arr.ndim < 1:
        raise ConfigError(f"'mask': {loc.describe()} is a scalar; it must be an array of the frame shape", "mask")
    if convention == "use":
        ok = (arr == 0) | (arr == 1)
        if not ok.all():
            n = int(arr.size - np.count_nonzero(ok))
            bad = arr.reshape(-1)[np.flatnonzero(~ok.reshape(-1))[0]]
            raise ConfigError(f"'mask': {loc.describe()} (shape {arr.shape}) declared convention 'use' (1 = use, "
                              f"0 = masked) but has {n} value(s) other than 0 and 1, e.g. {bad!r}; use convention "
                              f"'pixel_mask' for a NeXus bit field", "mask")
        return StaticMask(arr == 1, str(loc))
    check_integral(arr, loc, "mask", " for convention 'pixel_mask'")
    field = arr.astype(np.int64).astype(np.uint64)
    masked = field != 0 if bits is None else (field & np.uint64(bits)) != 0
    return StaticMask(~masked, str(loc))


def _combine(own: np.ndarray | None, upstream: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(use, flat masked indices) of the static and upstream masks (at least one given)."""
    use = upstream if own is None else own if upstream is None else and_masks(own, upstream)
    return use, np.flatnonzero(~use.reshape(-1))


class MaskPlugin(FrameProcessorPlugin):
    """Static mask (+ upstream pixel status) filled into frames or attached as ``frame.mask``.

    Status: ``masked_pixels`` (static mask), ``masked_pixels_combined`` (last frame, with the
    upstream mask), ``frames_masked``, ``frames_copied``, ``frames_wrong_shape``, ``frames_dropped_pool``,
    ``mask_file``.

    Examples
    --------
    >>> plugin = MaskPlugin("mask")
    >>> plugin.configure({"action": "attach"})
    """

    options = {
        "mask": Option((str, type(None)), None, "mask as 'file.npy' or 'file.h5:/dataset'; null for none"),
        "convention": Option(str, "use", "'use' (1 = use, 0 = masked) or 'pixel_mask' (NeXus bit field, 0 = good)",
                             choices=("use", "pixel_mask")),
        "pixel_mask_bits": Option((int, type(None)), None, "pixel_mask convention: bits that mask a pixel "
                                  "(null: any set bit)", check=lambda v: None if v is None or v > 0 else "must be > 0"),
        "use_upstream": Option(bool, True, "combine with an upstream frame.mask (the calibration's pixel status)"),
        "action": Option(str, "fill", "'fill' masked pixels with fill_value (and attach frame.mask) or only "
                         "'attach' frame.mask", choices=("fill", "attach")),
        "fill_value": Option((int, float, str), 0, "value for masked pixels: a number or 'nan'", check=_fill_check),
        "copy": Option(bool, False, "fill into a new frame even when the frame could be filled in place"),
        "pool_memory": Option(int, 256, "memory bound of the pool for copied frames, MiB", check=check_mib),
    }
    version = "1.0.0"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._mask: StaticMask | None = None
        self._fill: float = 0
        self._combined: IdentityCache[tuple[np.ndarray, np.ndarray]] = IdentityCache(_combine)  # once per pair
        self.pool = DataBlockPool(self.config["pool_memory"] << 20)
        self.reset_statistics()

    # -- configuration ---------------------------------------------------------------
    def prepare(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], StaticMask | None | bool]:
        """Check values; read the mask file when it, its convention or its bits change (or are named)."""
        values = super().prepare(params)
        merged = {**self.config, **values}
        key = (merged["mask"], merged["convention"], merged["pixel_mask_bits"])
        if "mask" in values or key != (self.config["mask"], self.config["convention"], self.config["pixel_mask_bits"]):
            return values, None if merged["mask"] is None else load_mask(*key)
        return values, False  # the mask in use stays

    def commit(self, change: tuple[dict[str, Any], StaticMask | None | bool]) -> None:
        values, mask = change
        super().commit(values)
        fill = self.config["fill_value"]
        self._fill = float("nan") if isinstance(fill, str) else fill
        if mask is not False:
            self._mask = mask  # one reference assignment, picked up by the next frame
            if mask is not None:
                self.log.info("mask %s in use: %d of %d pixels masked", mask.source, mask.masked, mask.use.size)
        if "pool_memory" in values:
            self.pool.max_memory = values["pool_memory"] << 20

    # -- data path ---------------------------------------------------------------------
    def process_frame(self, frame: Frame) -> None:
        static = self._mask
        own = None if static is None else static.use
        upstream = frame.mask if self.config["use_upstream"] else None
        shape = frame.shape
        if (own is not None and own.shape != shape) or (upstream is not None and upstream.shape != shape):
            self.frames_wrong_shape += 1
            return
        if own is None and upstream is None:
            self.push(frame)
            return
        use, masked = self._combined(own, upstream)
        self.masked_pixels_combined = int(masked.size)
        if self.config["action"] == "fill" and masked.size:
            frame = self._fill_frame(frame, masked)
            if frame is None:
                self.frames_dropped_pool += 1
                return
        if frame.mask is not use and not frame.data.flags.writeable:
            frame = frame.derive(frame.data)  # shared frame: its siblings must not see our mask
        frame.mask = use
        self.frames_masked += 1
        self.push(frame)

    def _fill_frame(self, frame: Frame, masked: np.ndarray) -> Frame | None:
        fill = self._fill
        data = frame.data
        nan = fill != fill
        fits = data.dtype.kind == "f" or (not nan and float(fill).is_integer()
                                           and np.can_cast(np.min_scalar_type(int(fill)), data.dtype))
        if fits and data.flags.writeable and data.flags.c_contiguous and not self.config["copy"]:
            np.put(data, masked, fill)
            return frame
        dtype = data.dtype if fits else np.dtype(np.float32)
        new = self.pool.frame_like(frame, dtype, _POOL_WAIT_S)
        if new is None:
            return None
        np.copyto(new.data, data, casting="unsafe")
        np.put(new.data, masked, fill)
        self.frames_copied += 1
        return new

    def status(self) -> dict[str, Any]:
        m = self._mask
        return {"masked_pixels": 0 if m is None else m.masked,
                "masked_pixels_combined": self.masked_pixels_combined,
                "mask_file": "" if m is None else m.source,
                "frames_masked": self.frames_masked, "frames_copied": self.frames_copied,
                "frames_wrong_shape": self.frames_wrong_shape, "frames_dropped_pool": self.frames_dropped_pool}

    def reset_statistics(self) -> None:
        self.masked_pixels_combined = 0
        self.frames_masked = 0
        self.frames_copied = 0
        self.frames_wrong_shape = 0
        self.frames_dropped_pool = 0

    def close(self) -> None:
        self._combined.clear()
