"""CalibrationPlugin: raw detector frames in, calibrated frames (energy or photon counts) out.

Single gain: ``E = (raw - pedestal) / (gain * flatfield)``. JUNGFRAU multi-gain:
``E = ((raw & 0x3FFF) - P[g]) / (G[g] * flatfield)`` with ``g`` from bits 15-14.
Optional common mode (after pedestal, in ADU) and photonize. Each output is a
new Frame from the plugin's own DataBlockPool, carrying the raw frame's
metadata and parameters; the raw frame is not modified, so a writer on another
branch can store it. When a pixel-status map is loaded the output carries it as
``frame.mask`` (bool, True = use) for the mask plugin and the correlator.

Constants come from ``file.npy`` or ``file.h5:/dataset``; they are loaded and
checked at configure time (a bad file is a nack and the previous constants stay
in use) and swapped in by one reference assignment between frames.

Loggers: ``framechain.frameprocessor.plugin.<index>`` (no per-frame logging).

Example::

    {"calib": {"mode": "multigain", "pedestal": "/data/dark.h5:/pedestal",
               "gain": "/data/gain.h5:/gain", "common_mode": {"mode": "row", "bank_shape": [256, 256]}}}
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from framechain.frameprocessor import DataBlockPool, Frame, FrameProcessorPlugin, Option
from framechain.ipc.errors import ConfigError

from ._calib.common_mode import apply_common_mode
from ._calib.constants import CalibrationConstants, build_constants
from ._calib.dark import NO_DATA, DarkCollector, DarkRequest, write_dark_file
from ._calib.kernels import (apply_gain_multigain, apply_gain_single, photonize, subtract_pedestal_multigain,
                             subtract_pedestal_single)
from ._calib.fused import (fused_multigain, fused_photonize, fused_single, multigain_supported, photonize_supported,
                           single_supported)
from ._calib.scratch import Scratch
from ._calib.settings import OUTPUT_DTYPES
from ._calib.shared import IdentityCache, and_masks, check_mib

__all__ = ["CalibrationPlugin"]

_SPEC_HELP = "as 'file.npy' or 'file.h5:/dataset'; null for none"
#: the keys build_constants reads: only a change of one of these reloads the constants
_CONSTANT_KEYS = ("mode", "pedestal", "gain", "flatfield", "pixel_status", "common_mode", "photonize", "output_dtype",
                  "invalid_gain_value")
_POOL_WAIT_S = 2.0


def _constants_key(cfg: Mapping[str, Any]) -> str:
    """The part of a configuration the constants depend on, as a comparable string."""
    return json.dumps([cfg[k] for k in _CONSTANT_KEYS], sort_keys=True, default=repr)


class CalibrationPlugin(FrameProcessorPlugin):
    """Pedestal, gain (single or JUNGFRAU multi-gain), flatfield, common mode, photonize, dark collection.

    Status counters: ``frames_calibrated``, ``frames_wrong_shape``, ``frames_wrong_dtype``,
    ``frames_dropped_pool``, ``invalid_gain_pixels``, ``common_mode/*``, ``constants/*``, ``dark/*``.
    Commands: ``collect_dark {frames, file?, gain?, rms_nsigma?, mean_nsigma?, saturation?}``,
    ``cancel_dark``, ``reload``.

    Examples
    --------
    >>> plugin = CalibrationPlugin("calib")
    >>> plugin.configure({"mode": "single", "output_dtype": "float32"})
    """

    options = {
        "mode": Option(str, "single", "'single' (pedestal, gain, flatfield) or 'multigain' (JUNGFRAU gain bits)",
                       choices=("single", "multigain")),
        "pedestal": Option((str, type(None)), None, f"pedestal (ADU): (H, W), or (3, H, W) for multigain; {_SPEC_HELP}"),
        "gain": Option((str, type(None)), None, f"gain (ADU per keV or per photon): (H, W), or (3, H, W) for "
                       f"multigain; finite and non-zero; {_SPEC_HELP}"),
        "flatfield": Option((str, type(None)), None, f"relative pixel response (H, W), > 0; output is divided by "
                            f"it; {_SPEC_HELP}"),
        "pixel_status": Option((str, type(None)), None, f"pixel status (H, W), 0 = good; {_SPEC_HELP}"),
        "common_mode": Option((dict, type(None)), None, "{mode: row|bank|none, bank_shape: [h, w] | null, "
                              "cormax: ADU, npix_min, threshold: ADU | null} or null"),
        "photonize": Option((dict, type(None)), None, "{photon_energy, threshold} in output units, or null"),
        "output_dtype": Option(str, "float32", "output dtype; integer types need photonize", choices=OUTPUT_DTYPES),
        "invalid_gain_value": Option(str, "nan", "output for the invalid gain code 10: 'nan' or 'zero'",
                                     choices=("nan", "zero")),
        "attach_mask": Option(bool, True, "attach frame.mask = (pixel_status == 0) when a status map is loaded"),
        "dark_file": Option(str, "dark.h5", "default output file of collect_dark (HDF5)"),
        "pool_memory": Option(int, 512, "memory bound of the output frame pool, MiB", check=check_mib),
    }
    commands = {
        "collect_dark": {
            "frames": Option(int, 0, "dark frames to average", low=1, high=1_000_000, required=True),
            "file": Option(str, "", "HDF5 file to write the pedestal to (default: dark_file)"),
            "gain": Option((int, type(None)), None, "mode multigain: the gain stage 0, 1 or 2 (default 0)",
                           choices=(None, 0, 1, 2)),
            "rms_nsigma": Option((float, type(None)), 6.0, "flag pixels whose noise is this many sigma off "
                                 "(null: never)", low=0, low_open=True),
            "mean_nsigma": Option((float, type(None)), 6.0, "flag pixels whose pedestal is this many sigma off "
                                  "(null: never)", low=0, low_open=True),
            "saturation": Option((float, type(None)), None, "flag pixels at or above this ADU (null: the dtype "
                                 "maximum, 0x3FFF multi-gain)", low=0, low_open=True),
        },
        "cancel_dark": {},
        "reload": {},
    }
    version = "1.0.0"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lock = threading.Lock()          # dark collection commands / dark finish (never the hot path)
        self._constants: CalibrationConstants = build_constants(self.config)
        self.pool = DataBlockPool(self.config["pool_memory"] << 20)
        self._scratch: Scratch | None = None
        self._mask_and: IdentityCache[np.ndarray] = IdentityCache(and_masks)   # upstream mask & pixel status
        self._dark_request: DarkRequest | None = None
        self._dark: DarkCollector | None = None
        self._dark_state: dict[str, Any] = {"state": "idle", "frames": 0, "frames_collected": 0, "file": "",
                                             "error": ""}
        self.reloads = 0
        self.reset_statistics()

    # -- configuration ------------------------------------------------------------
    def prepare(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], CalibrationConstants | None]:
        """Check types, then, if a constant, mode or setting changes, load and check the new constants.

        A configure of other keys only (``pool_memory``, ``dark_file``, ``attach_mask``) or with
        unchanged values reads no file; ``reload`` re-reads files rewritten under the same name.
        """
        values = super().prepare(params)
        merged = {**self.config, **values}
        changed = _constants_key(merged) != _constants_key(self.config)
        return values, build_constants(merged) if changed else None

    def commit(self, change: tuple[dict[str, Any], CalibrationConstants | None]) -> None:
        values, constants = change
        super().commit(values)
        if constants is not None:
            self._swap(constants)
        if "pool_memory" in values:
            self.pool.max_memory = values["pool_memory"] << 20

    def _swap(self, constants: CalibrationConstants) -> None:
        self._constants = constants  # one reference assignment: the next frame sees all of it
        self.reloads += 1
        self.log.info("calibration constants in use: mode %s, shape %s, %s", constants.mode, constants.shape,
                      constants.sources or "no constant files")

    def request_configuration(self) -> dict[str, Any]:
        return dict(self.config)

    # -- commands -------------------------------------------------------------------
    def execute(self, command: str, params: Mapping[str, Any]) -> None:
        if command == "collect_dark":
            with self._lock:
                req = self._check_dark(params)
                self._dark_request = req
                self._dark_state = {"state": "requested", "frames": req.frames, "frames_collected": 0,
                                    "file": req.file, "error": ""}
            self.log.info("dark collection requested: %d frames to %s", req.frames, req.file)
        elif command == "cancel_dark":
            with self._lock:  # the plugin thread starts and updates a collection under this lock too
                if self._dark_request is None and self._dark is None:
                    if self._dark_state["state"] == "collecting":
                        raise ConfigError(f"{self.owner}: the dark collection has all its frames and is being "
                                          f"written to {self._dark_state['file']}; too late to cancel", "command")
                    raise ConfigError(f"{self.owner}: no dark collection is running", "command")
                self._dark_request = self._dark = None
                self._dark_state = {**self._dark_state, "state": "cancelled"}
            self.log.info("dark collection to %s cancelled", self._dark_state["file"])
        elif command == "reload":
            with self._lock:
                self._swap(build_constants(self.config))
        else:
            super().execute(command, params)

    def _check_dark(self, params: Mapping[str, Any]) -> DarkRequest:
        """A DarkRequest from collect_dark's declared (already checked) parameters and the plugin's state."""
        if self._dark is not None or self._dark_request is not None or self._dark_state["state"] == "collecting":
            raise ConfigError(f"{self.owner}: a dark collection is already running "
                              f"({self._dark_state['frames_collected']} of {self._dark_state['frames']} frames); "
                              f"wait for it or send cancel_dark", "collect_dark")
        stage = params["gain"]
        if self.config["mode"] == "multigain":
            stage = 0 if stage is None else stage
        elif stage is not None:
            raise ConfigError("collect_dark 'gain' applies to mode 'multigain' only", "gain")
        path = params["file"] or self.config["dark_file"]
        if not path:
            raise ConfigError(f"collect_dark needs 'file' (a path) when {self.owner} has no dark_file", "file")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise ConfigError(f"collect_dark 'file' {path!r}: directory {directory!r} does not exist or is not "
                              f"writable", "file")
        return DarkRequest(params["frames"], path, stage, params["rms_nsigma"], params["mean_nsigma"],
                           params["saturation"])

    # -- data path ---------------------------------------------------------------------
    def _scratch_for(self, shape: tuple[int, ...], c: CalibrationConstants) -> Scratch | None:
        s = self._scratch
        if s is None or s.shape != shape:
            if c.common_mode is not None:
                try:
                    c.common_mode.banks(shape)
                except ConfigError:
                    return None
            s = self._scratch = Scratch(shape)
        return s

    def process_frame(self, frame: Frame) -> None:
        c = self._constants
        raw = frame.data
        if c.shape is not None and raw.shape != c.shape:
            self.frames_wrong_shape += 1
            return
        multigain = c.mode == "multigain"
        if multigain and raw.dtype != np.uint16:
            self.frames_wrong_dtype += 1
            return
        scratch = self._scratch_for(raw.shape, c)
        if scratch is None:
            self.frames_wrong_shape += 1
            return
        flat = raw.reshape(-1)
        finished = None
        if self._dark_request is not None or self._dark is not None:
            finished = self._dark_step(frame.frame_number, flat, raw, c)
        out = self.pool.frame_like(frame, c.output_dtype, _POOL_WAIT_S)
        if out is None:
            self.frames_dropped_pool += 1
            if finished is not None:
                self._finish_dark(finished)
            return
        dst = out.data.reshape(-1)
        work = dst if c.output_dtype.kind == "f" else scratch.get("energy", np.float32)
        if multigain:
            if multigain_supported(c, work):
                invalid = fused_multigain(flat, c, work)
            else:
                sw = subtract_pedestal_multigain(flat, c, work, scratch)
                if c.common_mode is not None:
                    self._common_mode(work, raw.shape, c, scratch, sw.index)
                apply_gain_multigain(c, work, sw)
                invalid = sw.invalid
            if invalid:
                self.invalid_gain_pixels += invalid
                self.frames_with_invalid_gain += 1
            self.last_invalid_gain_pixels = invalid
        elif single_supported(flat, c, work):
            fused_single(flat, c, work)
        else:
            subtract_pedestal_single(flat, c, work)
            if c.common_mode is not None:
                self._common_mode(work, raw.shape, c, scratch, None)
            apply_gain_single(c, work)
        if c.photonize is not None and dst is not work and photonize_supported(work, dst):
            fused_photonize(work, c.photonize.photon_energy, c.photonize.threshold, dst)
        elif c.photonize is not None:
            photonize(work, c.photonize.photon_energy, c.photonize.threshold, dst, scratch)
        if c.good is not None and self.config["attach_mask"]:
            out.mask = c.good if frame.mask is None else self._mask_and(frame.mask, c.good)
        else:
            out.mask = frame.mask
        self.frames_calibrated += 1
        self.push(out)
        if finished is not None:
            self._finish_dark(finished)

    def _common_mode(self, values: np.ndarray, shape: tuple[int, ...], c: CalibrationConstants, scratch: Scratch,
                     exclude: np.ndarray | None) -> None:
        r = apply_common_mode(values, shape, c.common_mode, scratch, c.bad_nan, exclude)
        self.cm_groups_corrected += r.corrected
        self.cm_groups_skipped_npix += r.skipped_npix
        self.cm_groups_skipped_cormax += r.skipped_cormax
        self.cm_last_mean = r.mean_correction

    # -- dark collection (plugin thread) ---------------------------------------------------
    def _dark_step(self, number: int, flat: np.ndarray, raw: np.ndarray,
                   c: CalibrationConstants) -> DarkCollector | None:
        """Add one raw frame to the dark being collected; return the collector when it has all its frames.

        The start, the bookkeeping and the end of a collection run under ``self._lock``, as does
        ``cancel_dark`` on the control thread, so a cancelled collection is never continued or written.
        """
        d = self._dark
        if d is None:
            with self._lock:
                req, self._dark_request = self._dark_request, None
                if req is None:
                    return None  # cancelled before this frame
                d = self._dark = DarkCollector(req, raw.shape, raw.dtype, c.mode == "multigain")
                self._dark_state = {**self._dark_state, "state": "collecting"}
        if raw.shape != d.shape or raw.dtype != d.raw_dtype:
            self._fail_dark(d, f"frame {number} has shape {raw.shape} and dtype {raw.dtype}, but "
                               f"the dark collection started with shape {d.shape} and dtype {d.raw_dtype}; "
                               f"dark discarded after {d.frames} of {d.request.frames} frames")
            return None
        d.add(flat)
        with self._lock:
            if self._dark is not d:
                return None  # cancelled while this frame was added
            self._dark_state["frames_collected"] = d.frames
            if not d.done:
                return None
            self._dark = None  # claimed: from here on it is finished (or failed), never cancelled
            return d

    def _fail_dark(self, d: DarkCollector, why: str) -> None:
        with self._lock:
            if self._dark is not d:
                return
            self._dark = None
            self._dark_state = {**self._dark_state, "state": "failed", "error": why}
        self.log.warning("dark collection to %s failed: %s", d.request.file, why)

    def _finish_dark(self, collector: DarkCollector) -> None:
        req = collector.request
        try:
            result = collector.finish()
            with self._lock:
                c = self._constants
                if (c.mode == "multigain") != collector.multigain:
                    raise ConfigError("the mode changed during dark collection; dark discarded", "mode")
                pedestal, rms, status = result.pedestal, result.rms, result.status
                if collector.multigain:
                    pedestal = np.array(c.raw_pedestal, dtype=np.float32)
                    stage_ped = pedestal[req.stage]
                    np.copyto(stage_ped, result.pedestal, where=(result.status & NO_DATA) == 0)
                    rms = np.zeros_like(pedestal)
                    rms[req.stage] = result.rms
                    if c.pixel_status is not None and c.pixel_status.shape == status.shape:
                        status = status | c.pixel_status
                write_dark_file(req.file, pedestal, rms, status,
                                {"frames": result.frames, "mode": c.mode,
                                 "gain_stage": -1 if req.stage is None else req.stage,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "status_bits": "1 hot rms, 2 cold rms, 4 saturated, 8 mean outlier, "
                                                "16 invalid gain, 32 no data"})
                merged = {**self.config, "pedestal": f"{req.file}:/pedestal",
                          "pixel_status": f"{req.file}:/pixel_status"}
                constants = build_constants(merged)
                self.config = merged
                self._swap(constants)
                self._dark_state = {**self._dark_state, "state": "done",
                                    "bad_pixels": int(np.count_nonzero(status))}
            self.log.info("dark collection of %d frames written to %s and in use (%d bad pixels)", result.frames,
                          req.file, np.count_nonzero(status))
        except Exception as err:  # noqa: BLE001 -- any failure to derive or write the dark is reported, not raised
            with self._lock:
                self._dark_state = {**self._dark_state, "state": "failed", "error": str(err) or repr(err)}
            self.log.warning("dark collection to %s failed: %s", req.file, err)

    # -- reporting ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        c = self._constants
        return {
            "frames_calibrated": self.frames_calibrated,
            "frames_wrong_shape": self.frames_wrong_shape,
            "frames_wrong_dtype": self.frames_wrong_dtype,
            "frames_dropped_pool": self.frames_dropped_pool,
            "invalid_gain_pixels": self.invalid_gain_pixels,
            "frames_with_invalid_gain": self.frames_with_invalid_gain,
            "last_invalid_gain_pixels": self.last_invalid_gain_pixels,
            "common_mode": {"enabled": c.common_mode is not None, "groups_corrected": self.cm_groups_corrected,
                            "groups_skipped_npix": self.cm_groups_skipped_npix,
                            "groups_skipped_cormax": self.cm_groups_skipped_cormax,
                            "last_mean_correction": self.cm_last_mean},
            "constants": {"mode": c.mode, "shape": list(c.shape) if c.shape is not None else None,
                          "bad_pixels": c.bad_pixels, "loads": self.reloads, **c.sources},
            "dark": dict(self._dark_state),
            "pool": self.pool.stats(),
        }

    def reset_statistics(self) -> None:
        self.frames_calibrated = 0
        self.frames_wrong_shape = 0
        self.frames_wrong_dtype = 0
        self.frames_dropped_pool = 0
        self.invalid_gain_pixels = 0
        self.frames_with_invalid_gain = 0
        self.last_invalid_gain_pixels = 0
        self.cm_groups_corrected = 0
        self.cm_groups_skipped_npix = 0
        self.cm_groups_skipped_cormax = 0
        self.cm_last_mean = 0.0

    def close(self) -> None:
        self._dark = None
        self._dark_request = None
        self._scratch = None
