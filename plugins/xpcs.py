"""XpcsCorrelatorPlugin: online multi-tau g2 per q-bin, two-time, live results and APS result files.

Logger ``framechain.frameprocessor.plugin.<index>``. The math lives in ``plugins._xpcs``
(no threads there); this module wires it to frames, configuration, status,
the live PUB socket and the end of acquisition. See docs/xpcs.md for the
definitions and docs/plugins.md (section ``xpcs``) for every key.

Example configuration::

    {"xpcs": {"qmap": "/data/qmap.h5", "num_bufs": 8, "frame_time": 0.001,
              "update_every": 500, "publish_endpoint": "tcp://127.0.0.1:5021",
              "output": "/data/results/{acquisition_id}_results.hdf", "plot": true}}
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from typing import Any

import numpy as np
import zmq

from framechain.frameprocessor import EndOfAcquisition, Frame, FrameProcessorPlugin, Option
from framechain.ipc.channel import endpoint_problem
from framechain.ipc.errors import ConfigError

from ._xpcs.aps import aps_g2
from ._xpcs.averages import TimeAverages
from ._xpcs.fit import fit_g2
from ._xpcs.layout import PixelLayout
from ._xpcs.live import LivePublisher
from ._xpcs.multitau import MultitauCorrelator, levels_for_frames, multitau_lags, result_from_sums
from ._xpcs import partition as _part
from ._xpcs.sparse import MAX_SPARSE_BUFS, SparseMultitauCorrelator
from ._xpcs.qmap import QMap, QMapError, load_mask, load_qmap, uniform_qmap
from ._xpcs.result_file import XpcsResultData, write_result
from ._xpcs.twotime import TwoTimeAccumulator

__all__ = ["XpcsCorrelatorPlugin"]

AUTO_LEVELS_UNKNOWN_RUN = 20     # auto levels without expected_frames: buffers are made only when reached
MAX_GAP = 1 << 16                # a frame-number jump larger than this is rejected, not filled
AUTO_SPARSE_OCCUPANCY = 0.12     # sparse: auto correlates event lists while fewer used pixels are occupied
AUTO_SPARSE_WINDOW = 64          # frames over which sparse: auto measures the occupancy


def _even_bufs(v: int) -> str | None:
    return None if v >= 2 and v % 2 == 0 and v <= 1024 else "must be an even integer from 2 to 1024"


def _levels(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v == "auto" else "must be a positive integer or \"auto\""
    return None if 1 <= v <= 40 else "must be a positive integer (at most 40) or \"auto\""


def _nonneg(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _endpoint(v: str) -> str | None:
    problem = None if v == "" else endpoint_problem(v, "tcp://127.0.0.1:5021")
    return problem and problem + ", or \"\" (off)"


def _output(v: str) -> str | None:
    try:
        v.format(acquisition_id="a", run=0)
    except (KeyError, IndexError, ValueError) as err:
        return f"may only use the placeholders {{acquisition_id}} and {{run}} ({err})"
    return None


_INPUT_KEYS = ("qmap", "mask")    # the files _load_inputs reads
_TWOTIME_KEYS = {"qmap", "mask", "twotime", "twotime_frames", "max_memory"}
_REBUILD = {"partition", "qmap", "mask", "use_frame_mask", "num_bufs", "num_levels", "expected_frames", "normalization",
            "precision", "twotime", "twotime_frames", "max_memory", "sparse"}


class _Run:
    """State of one acquisition: layouts and accumulators built from the first frame."""

    def __init__(self, qmap: QMap, cfg: dict[str, Any], frame: Frame, frame_mask: np.ndarray | None) -> None:
        qm = qmap.with_mask(frame_mask)
        self.qmap = qm
        self.shape = frame.shape
        self.dtype = frame.dtype
        self.acquisition_id = frame.acquisition_id
        self.start_time = _dt.datetime.now(_dt.timezone.utc).isoformat()
        self.frame_mask = frame_mask
        self.full = PixelLayout(qm.labels("dynamic"), num_bins=qmap.num_dynamic)  # every used pixel
        same = qm.static is qm.dynamic or np.array_equal(qm.static, qm.dynamic)
        self.static = self.full if same else PixelLayout(qm.labels("static"), num_bins=qmap.num_static)
        self.partition = _part.Partition.from_config(cfg["partition"])
        self.shard = (0, self.full.num_chunks)
        self.dynamic = self.full                       # the pixels this process correlates
        if self.partition is not None:                 # whole chunks of the full layout (partition.py)
            self.shard = _part.shard_range(self.full.num_chunks, self.partition.number, self.partition.rank)
            self.dynamic = _part.shard_layout(self.full, *self.shard)
        self.updates = 0                               # live updates shared (partition)
        self.published_update = 0                      # newest merged update published (partition rank 0)
        B = cfg["num_bufs"]
        levels = cfg["num_levels"]
        if levels == "auto":
            levels = (levels_for_frames(cfg["expected_frames"], B) if cfg["expected_frames"] > 0
                      else AUTO_LEVELS_UNKNOWN_RUN)
        self.aps = cfg["normalization"] == "aps"
        twotime_frames = cfg["twotime_frames"] if cfg["twotime"] else 0
        itemsize = np.dtype(cfg["precision"]).itemsize
        num_static = self.static.num_bins
        need = estimate_memory(self.dynamic, B, levels, self.aps, cfg["expected_frames"], twotime_frames, itemsize,
                               num_static)
        if need > cfg["max_memory"]:
            tt = TwoTimeAccumulator.bytes_for(self.dynamic, twotime_frames)
            sums = TimeAverages.bytes_for(self.shape, num_static)
            parts = (f"levels {(need - tt - sums) / 2**20:.0f} MiB, image and segment sums {sums / 2**20:.0f} MiB"
                     + (f", two-time {tt / 2**20:.0f} MiB ({twotime_frames} frames of {self.dynamic.num_pixels} "
                        f"pixels and {self.dynamic.num_active} matrices of {twotime_frames}^2 float32)"
                        if twotime_frames else ""))
            raise MemoryError(f"the correlator would need about {need / 2**20:.0f} MiB ({parts}) for "
                              f"{self.dynamic.num_pixels} pixels, num_bufs {B}, {levels} levels (max_memory is "
                              f"{cfg['max_memory'] / 2**20:.0f} MiB); reduce num_levels, num_bufs or "
                              f"twotime_frames, or raise max_memory")
        fixed = estimate_memory(self.dynamic, B, 0, False, 0, twotime_frames, num_static=num_static)
        self.precision = cfg["precision"]
        self.auto_sparse = cfg["sparse"] == "auto" and not self.aps and B <= MAX_SPARSE_BUFS
        self.occupancy = _occupancy(frame.data, self.dynamic)
        self.occupancy_sum = 0.0
        self.sparse_switched: int | None = None       # frame at which auto handed over to the dense correlator
        sparse = cfg["sparse"] is True or (self.auto_sparse and self.occupancy <= AUTO_SPARSE_OCCUPANCY)
        self.correlator: MultitauCorrelator = (
            SparseMultitauCorrelator(self.dynamic, B, levels, max_bytes=cfg["max_memory"] - fixed) if sparse else
            MultitauCorrelator(self.dynamic, B, levels, per_pixel=self.aps, max_bytes=cfg["max_memory"] - fixed,
                               dtype=cfg["precision"]))
        self.cap_warned = False
        self.averages = TimeAverages(self.static, self.shape)
        self.twotime = TwoTimeAccumulator(self.dynamic, cfg["twotime_frames"]) if cfg["twotime"] else None
        self.next_frame: int | None = None
        self.frames = 0           # frames received for this run
        self.frames_used = 0
        self.frames_nan = 0
        self.frames_missing = 0
        self.mask_changes = 0


def _occupancy(data: np.ndarray, layout: PixelLayout) -> float:
    """Fraction of the used pixels of one frame that are nonzero."""
    return float(np.count_nonzero(data.reshape(-1)[layout.pixels])) / max(1, layout.num_pixels)


def estimate_memory(layout: PixelLayout, num_bufs: int, num_levels: int, per_pixel: bool,
                    expected_frames: int, twotime_frames: int, itemsize: int = 8, num_static: int = 1) -> int:
    """Bytes a run needs at least: the levels a run of ``expected_frames`` reaches (one level when
    unknown: further levels are made as reached, within max_memory), two-time frames and the
    matrices computed from them at the end, image sums and segment sums of ``num_static`` bins."""
    levels = min(num_levels, levels_for_frames(expected_frames, num_bufs)) if expected_frames else min(num_levels, 1)
    padded = layout.padded_size * 8
    n = levels * num_bufs * layout.padded_size * itemsize
    if per_pixel and levels:
        n += 3 * multitau_lags(levels, num_bufs).size * padded
    return (n + TwoTimeAccumulator.bytes_for(layout, twotime_frames)
            + TimeAverages.bytes_for(layout.shape, num_static))


class XpcsCorrelatorPlugin(FrameProcessorPlugin):
    """Online XPCS correlator: multi-tau g2 per dynamic q-bin (scikit-beam definitions), optional APS
    normalisation and two-time, live g2 on a ZeroMQ PUB, an APS 8-ID-I result file at end of acquisition.

    Frames are passed on unchanged. Commands: ``reset`` (start over). See docs/xpcs.md.
    """

    version = "1.0.0"
    commands = {"reset": {}}
    options = {
        "qmap": Option(str, "", "label map: .npy integer labels (0 = excluded) or an APS qmap HDF5 "
                                "(/qmap/dynamic_roi_map, static_roi_map, mask); \"\" = every pixel in one bin"),
        "mask": Option(str, "", ".npy mask of the frame shape, nonzero = use (combined with the qmap's mask)"),
        "use_frame_mask": Option(bool, True, "also exclude pixels a mask plugin marks unused in frame.mask"),
        "num_bufs": Option(int, 8, "B: frames per multi-tau level (even)", check=_even_bufs),
        "num_levels": Option((int, str), "auto", "multi-tau levels, or \"auto\" (from expected_frames; "
                                                 f"{AUTO_LEVELS_UNKNOWN_RUN} made as reached when unknown)",
                             check=_levels),
        "expected_frames": Option(int, 0, "frames expected in a run, for num_levels auto (0 = unknown)",
                                  check=_nonneg),
        "frame_time": Option(float, 1.0, "seconds between frames (delays in seconds = frames * frame_time)",
                             check=_positive),
        "count_time": Option(float, 0.0, "exposure per frame in seconds for the result file (0 = frame_time)",
                             check=_nonneg),
        "precision": Option(str, "float64", "level buffers and per-chunk products: float64 (exact, matches "
                                            "scikit-beam to 1e-9) or float32 (about twice as fast, ~1e-6 "
                                            "relative); sums are float64 either way",
                            choices=("float64", "float32")),
        "sparse": Option((bool, str), "auto", "correlate only the occupied pixels (photon-sparse frames; exact, the "
                                              "same g2): true, false, or \"auto\" (sparse while at most "
                                              f"{AUTO_SPARSE_OCCUPANCY:g} of the used pixels are nonzero, measured on "
                                              f"the first frame and every {AUTO_SPARSE_WINDOW} frames; handed over "
                                              "to the dense correlator, mid-run, when the frames fill up)",
                         choices=(True, False, "auto")),
        "partition": Option(dict, {}, "correlate one pixel shard of several ranks that each see every frame: "
                                      "{number, rank, spool[, timeout]}; partial sums go to the spool directory "
                                      "at every update and at the end, rank 0 writes the result from the merged "
                                      "sums, two-time included (framechain run --mpi sets it; see docs/scaling.md)",
                            check=_part.check_partition),
        "normalization": Option(str, "symmetric", "symmetric (per-bin G/(P F), scikit-beam) or aps "
                                                  "(per-pixel, averaged over static bins)",
                                choices=("symmetric", "aps")),
        "update_every": Option(int, 100, "publish live g2 every this many frames (0 = only at the end)",
                               check=_nonneg),
        "publish_endpoint": Option(str, "", "ZeroMQ PUB endpoint to bind for live g2 (\"\" = off)",
                                   check=_endpoint),
        "output": Option(str, "", "result file written at end of acquisition (\"\" = none); may contain "
                                  "{acquisition_id} and {run}", check=_output),
        "plot": Option(bool, False, "also write a PNG of g2 per bin beside the result file"),
        "twotime": Option(bool, False, "also compute two-time correlation of the first twotime_frames frames"),
        "twotime_frames": Option(int, 1000, "frames kept for the two-time correlation",
                                 check=lambda v: None if 2 <= v <= 100000 else "must be from 2 to 100000"),
        "segments": Option(int, 10, "segments of the run for scattering_1d_segments",
                           check=lambda v: None if 1 <= v <= 1000 else "must be from 1 to 1000"),
        "max_memory": Option(int, 4 << 30, "bytes: a run whose first levels, two-time frames and sums do not fit "
                                           "is refused; beyond it no further levels are made",
                             check=_positive),
        "beam_center_x": Option(float, 0.0, "beam centre column (pixels), for the result file"),
        "beam_center_y": Option(float, 0.0, "beam centre row (pixels), for the result file"),
        "detector_distance": Option(float, 5.0, "sample-detector distance (m), for the result file",
                                    check=_positive),
        "pixel_size": Option(float, 75e-6, "pixel size (m), for the result file", check=_positive),
        "incident_energy": Option(float, 10.0, "X-ray energy (keV), for the result file", check=_positive),
    }

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lock = threading.RLock()
        self._qmap: QMap | None = None
        self._mask: np.ndarray | None = None
        self._publisher: LivePublisher | None = None
        self._run: _Run | None = None
        self._finished = False
        self._runs = 0
        self._explicit: set[str] = set()
        self._last_status: dict[str, Any] = {}
        self._logged: set[str] = set()       # rejection causes logged since the last configure or reset
        # the last refused start: ((shape, dtype), frame mask, cause, reason), kept until configure or reset
        self._refusal: tuple[tuple[Any, str], np.ndarray | None, str, str] | None = None
        self._ring_map: QMap | None = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.frames_rejected = 0
        self.rejections: dict[str, int] = {}
        self.last_rejection = ""
        self.updates_published = 0
        self.results_written = 0
        self.result_file = ""
        self.plot_file = ""
        self.last_result_error = ""
        self.fit: dict[str, Any] = {}
        self.warnings: list[str] = []

    # -- configuration --------------------------------------------------------------
    def prepare(self, params: Any) -> dict[str, Any]:
        """Check types; read qmap and mask when ``qmap`` or ``mask`` is given; check two-time memory;
        bind a changed ``publish_endpoint``. A configure of other keys only reads no file.

        The change: ``{"values", "inputs" (qmap, mask), "publisher" (new, or None: keep)}``.
        """
        values = super().prepare(params)
        cfg = {**self.config, **values}
        if values.get("output"):  # the folder part before any placeholder
            self.check_output_path(os.path.dirname(values["output"].split("{", 1)[0]) or ".", "output")
        if cfg["sparse"] is True and not {"sparse", "normalization", "num_bufs"}.isdisjoint(values):
            if cfg["normalization"] == "aps":
                raise ConfigError(f"The 'sparse' option of {self.owner}: the aps normalization keeps per-pixel "
                                  f"sums of every pixel, which a sparse correlation cannot give; use "
                                  f"normalization symmetric or sparse false (or auto)", "sparse")
            if cfg["num_bufs"] > MAX_SPARSE_BUFS:
                raise ConfigError(f"The 'sparse' option of {self.owner}: sparse correlation keeps one bit per ring "
                                  f"slot, so num_bufs must be at most {MAX_SPARSE_BUFS} (it is {cfg['num_bufs']}); "
                                  f"lower num_bufs or use sparse false (or auto)", "sparse")
        if cfg["partition"] and not {"partition", "normalization", "twotime"}.isdisjoint(values):
            if cfg["normalization"] == "aps":
                raise ConfigError(f"The 'partition' option of {self.owner}: a pixel shard merges per-bin sums, "
                                  f"which the aps normalization (per-pixel, averaged over static bins) cannot "
                                  f"use; set normalization symmetric, or correlate in one process", "partition")
            if not os.path.isdir(cfg["partition"]["spool"]):
                raise ConfigError(f"The 'partition' option of {self.owner}: spool {cfg['partition']['spool']!r} "
                                  f"is not a directory", "partition")
        inputs = self._inputs(cfg, values)
        if cfg["twotime"] and not _TWOTIME_KEYS.isdisjoint(values):
            self._check_twotime(cfg, *inputs)
        publisher: LivePublisher | None = None
        endpoint = values.get("publish_endpoint")
        if endpoint and endpoint != self.config["publish_endpoint"]:
            try:
                publisher = LivePublisher(endpoint)
            except zmq.ZMQError as err:
                raise ConfigError(f"The 'publish_endpoint' option of {self.owner}: cannot bind "
                                  f"{endpoint!r}: {err}", "publish_endpoint") from err
        return {"values": values, "inputs": inputs, "publisher": publisher}

    def abort(self, change: dict[str, Any]) -> None:
        if change["publisher"] is not None:
            change["publisher"].close()

    def _inputs(self, cfg: dict[str, Any], values: dict[str, Any]) -> tuple[QMap | None, np.ndarray | None]:
        """The qmap and mask of ``cfg``: the ones in use unless ``values`` names a file, else read now."""
        if all(k not in values for k in _INPUT_KEYS):
            return self._qmap, self._mask
        return self._load_inputs(cfg)

    def _load_inputs(self, cfg: dict[str, Any]) -> tuple[QMap | None, np.ndarray | None]:
        """Read qmap and mask files named in ``cfg``; ConfigError naming the key on any problem."""
        qmap = mask = None
        try:
            if cfg["qmap"]:
                qmap = load_qmap(cfg["qmap"])
        except QMapError as err:
            raise ConfigError(f"The 'qmap' option of {self.owner}: {err}", "qmap") from err
        try:
            if cfg["mask"]:
                mask = load_mask(cfg["mask"], qmap.shape if qmap is not None else None)
                if qmap is not None and not np.any(qmap.labels() * mask):
                    raise QMapError(f"mask {cfg['mask']!r} removes every labelled pixel of qmap {cfg['qmap']!r}")
        except QMapError as err:
            raise ConfigError(f"The 'mask' option of {self.owner}: {err}", "mask") from err
        return qmap, mask

    def _check_twotime(self, cfg: dict[str, Any], qmap: QMap | None, mask: np.ndarray | None) -> None:
        """Nack a twotime_frames whose matrices alone (known bins, or one bin without a qmap) pass max_memory."""
        n = cfg["twotime_frames"]
        if qmap is not None:
            labels = qmap.labels() * mask if mask is not None else qmap.labels()
            npix = np.bincount(labels.reshape(-1))[1:]
            bins, pixels, biggest = int(np.count_nonzero(npix)), int(npix.sum()), int(npix.max(initial=0))
        else:
            bins, pixels, biggest = 1, 0, 0                  # the default map: one dynamic bin, frame size unknown
        need = n * pixels * 4 + TwoTimeAccumulator.matrix_bytes(n, bins, biggest)
        if need > cfg["max_memory"]:
            raise ConfigError(f"The 'twotime_frames' option of {self.owner}: {n} two-time frames need about "
                              f"{need / 2**20:.0f} MiB ({bins} matrices of {n} x {n} float32 = "
                              f"{bins * n * n * 4 / 2**20:.0f} MiB, plus a {n} x {n} float64 product"
                              + (f" and {n} frames of {pixels} pixels" if pixels else "")
                              + f"), more than max_memory ({cfg['max_memory'] / 2**20:.0f} MiB); lower "
                              f"twotime_frames or raise max_memory", "twotime_frames")

    def commit(self, change: dict[str, Any]) -> None:
        values = change["values"]
        old_publisher = None
        with self._lock:  # the correlator runs a whole frame under this lock: the swap lands between frames
            if "publish_endpoint" in values and values["publish_endpoint"] != self.config["publish_endpoint"]:
                old_publisher, self._publisher = self._publisher, change["publisher"]
            rebuild = any(k in _REBUILD and values[k] != self.config[k] for k in values)
            self.config = {**self.config, **values}
            self._explicit.update(values)
            self._qmap, self._mask = change["inputs"]
            self._refusal = None
            self._logged.clear()
            if rebuild and self._run is not None:
                self.log.info("%s: configuration changed; the correlation starts over with the next frame", self.name)
                self._run = None
        if old_publisher is not None:
            old_publisher.close()

    def execute(self, command: str, params: Any) -> None:
        if command != "reset":
            super().execute(command, params)
        with self._lock:
            self._run = None
            self._finished = False
            self._refusal = None
            self._logged.clear()
            self._reset_counters()
        self.log.info("%s: reset; the correlation starts over with the next frame", self.name)

    # -- data path ----------------------------------------------------------------------
    def process_frame(self, frame: Frame) -> None:
        try:
            with self._lock:
                self._correlate(frame)
        finally:
            self.push(frame)

    def _reject(self, cause: str, why: str) -> None:
        """Count a rejected frame; the first of each ``cause`` (until configure or reset) is logged."""
        self.frames_rejected += 1
        self.rejections[cause] = self.rejections.get(cause, 0) + 1
        self.last_rejection = why
        if cause not in self._logged:
            self._logged.add(cause)
            self.log.warning("%s: frame rejected: %s (further frames rejected for this reason are counted in "
                             "status 'rejections', not logged)", self.name, why)

    def _start_run(self, frame: Frame) -> _Run | None:
        fmask = frame.mask if self.config["use_frame_mask"] else None
        key = (frame.shape, frame.dtype.str)
        refused = self._refusal
        if refused is not None and refused[0] == key and (
                refused[1] is fmask or (refused[1] is not None and fmask is not None
                                        and refused[1].shape == fmask.shape and np.array_equal(refused[1], fmask))):
            self._reject(refused[2], refused[3])              # the same frames and set-up: the same answer
            return None
        cause, why, run = self._try_start(frame, fmask)
        if run is None:
            self._refusal = (key, None if fmask is None else fmask.copy(), cause, why)
            self._reject(cause, why)
        else:
            self._refusal = None
        return run

    def _default_qmap(self, shape: tuple[int, ...]) -> QMap:
        """The ring map used without a qmap, made once per frame shape."""
        if self._ring_map is None or self._ring_map.shape != shape:
            self._ring_map = uniform_qmap(shape)
        return self._ring_map

    def _try_start(self, frame: Frame, fmask: np.ndarray | None) -> tuple[str, str, _Run | None]:
        """A new run for ``frame``, or ``(cause, reason, None)`` when its frames cannot be correlated."""
        qmap = self._qmap if self._qmap is not None else self._default_qmap(frame.shape)
        shape = list(frame.shape)
        if qmap.shape != frame.shape:
            return "qmap_shape", (f"frames of shape {shape} but qmap {self.config['qmap']!r} has shape "
                                  f"{list(qmap.shape)}"), None
        if frame.dtype.kind not in "uif":
            return "dtype", f"frames of dtype {frame.dtype}; the correlator needs numbers", None
        mask = self._mask
        if mask is not None and mask.shape != frame.shape:
            return "mask_shape", (f"frames of shape {shape} but the mask {self.config['mask']!r} has shape "
                                  f"{list(mask.shape)}"), None
        if fmask is not None:
            if fmask.shape != frame.shape:
                return "frame_mask_shape", (f"frames carry a mask of shape {list(fmask.shape)} for frames of "
                                            f"shape {shape}"), None
            mask = fmask if mask is None else mask & fmask
        if mask is not None and not np.any((qmap.labels() > 0) & mask):
            return "masked_out", ("the masks (mask option and frame.mask) remove every labelled pixel; nothing "
                                  "to correlate"), None
        try:
            run = _Run(qmap, self.config, frame, mask)
        except MemoryError as err:
            return "max_memory", str(err), None
        run.frame_mask = fmask
        self._runs += 1
        self._finished = False
        self.warnings = []
        empty = [int(b) + 1 for b in np.flatnonzero(run.full.npix == 0)]
        if empty:
            msg = (f"dynamic bin(s) {empty[:20]}{'...' if len(empty) > 20 else ''} have no pixel after masking; "
                   f"they report NaN")
            self.warnings.append(msg)
            self.log.warning("%s: %s", self.name, msg)
        self.log.info("%s: run %d (acquisition %r): %d pixels in %d bins, num_bufs %d, %d levels, %s",
                      self.name, self._runs, frame.acquisition_id, run.dynamic.num_pixels, run.dynamic.num_active,
                      run.correlator.num_bufs, run.correlator.num_levels, self.config["normalization"])
        return "", "", run

    def _correlate(self, frame: Frame) -> None:
        run = self._run
        if run is not None and (self._finished or frame.acquisition_id != run.acquisition_id):
            run = None
        if run is None:
            run = self._run = self._start_run(frame)
            if run is None:
                return
        if frame.shape != run.shape:
            self._reject("shape_changed", f"frame {frame.frame_number} has shape {list(frame.shape)}; this run's "
                         f"frames have shape {list(run.shape)} (reset or start a new acquisition to change it)")
            return
        n = frame.frame_number
        if run.next_frame is not None and n != run.next_frame:
            gap = n - run.next_frame
            if gap < 0 or gap > MAX_GAP:
                self._reject("out_of_order", f"frame {n} arrived when frame {run.next_frame} was expected (out of "
                             f"order or a jump of more than {MAX_GAP})")
                return
            run.correlator.add_missing(gap)        # keep the time axis: lost frames are bad frames
            for k in range(gap):
                run.averages.add(frame.data, run.next_frame + k, False)
                if run.twotime is not None:
                    run.twotime.add(frame.data, False)
            run.frames_missing += gap
        fmask = frame.mask if self.config["use_frame_mask"] else None
        if fmask is not run.frame_mask:
            if fmask is None or run.frame_mask is None or not np.array_equal(fmask, run.frame_mask):
                if run.mask_changes == 0:
                    self.log.warning("%s: frame %d carries a different mask; this run keeps its first mask",
                                     self.name, n)
                run.mask_changes += 1
            run.frame_mask = fmask      # an equal mask too: later frames with this object compare by identity
        c = run.correlator
        good = c.add(frame.data)
        if isinstance(c, SparseMultitauCorrelator):
            run.occupancy_sum += c.occupancy
            if run.frames % AUTO_SPARSE_WINDOW == AUTO_SPARSE_WINDOW - 1:
                run.occupancy = run.occupancy_sum / AUTO_SPARSE_WINDOW
                run.occupancy_sum = 0.0
                if run.auto_sparse and run.occupancy > AUTO_SPARSE_OCCUPANCY:
                    run.correlator = c.to_dense(run.precision)
                    run.sparse_switched = n
                    self.log.info("%s: frames %d..%d occupy %.3f of the used pixels (sparse: auto stops above %g): "
                                  "the dense correlator goes on from frame %d", self.name,
                                  n - AUTO_SPARSE_WINDOW + 1, n, run.occupancy, AUTO_SPARSE_OCCUPANCY, n + 1)
        lay = run.dynamic
        sums = lay.expand(lay.chunks_to_bins(c.last_chunk_sums), fill=0.0) if run.static is lay else None
        run.averages.add(frame.data, n, good, c.last_sum / lay.num_pixels, sums)
        if c.capped and not run.cap_warned:
            run.cap_warned = True
            msg = (f"max_memory ({self.config['max_memory']} bytes) stops the correlator at {c.level_limit} levels; "
                   f"lags from {int(c.delays[c.level_limit * (c.num_bufs // 2) + c.num_bufs // 2])} frames on "
                   f"stay NaN")
            self.warnings.append(msg)
            self.log.warning("%s: %s", self.name, msg)
        if run.twotime is not None:
            run.twotime.add(frame.data, good)
        run.next_frame = n + 1
        run.frames += 1
        run.frames_used += good
        run.frames_nan += not good
        every = self.config["update_every"]
        if every and run.frames % every == 0:
            if run.partition is not None:
                self._share_update(run)
            elif self._publisher is not None:
                self._publish(run, final=False)

    def process_end_of_acquisition(self, eoa: EndOfAcquisition) -> None:
        with self._lock:
            run = self._run
            if run is None or self._finished or run.frames == 0:
                return
            self._finished = True
            self._finish(run, eoa.stopping)

    # -- results -----------------------------------------------------------------------------
    def results(self) -> dict[str, Any] | None:
        """Current results of the run: delays (frames, lag 0 left out, lags with pairs), g2 and g2_err
        ``(lags, bins)`` over all dynamic bins (NaN for empty ones), pairs, npix. None before a run."""
        with self._lock:
            run = self._run
            return None if run is None else self._results(run)

    def _results(self, run: _Run, merged: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's results; from ``merged`` sums of every shard (partition) over the full layout if given."""
        if merged is None:
            r, lay, frames, used = run.correlator.result(), run.dynamic, run.frames, run.frames_used
        else:
            lay, frames, used = run.full, int(merged["frames"]), int(merged["frames_used"])
            r = result_from_sums(lay, merged["delays"], merged["pairs"], merged["G"], merged["P"], merged["F"],
                                 frames, int(merged["frames_bad"]))
        keep = (r.pairs > 0) & (r.delays > 0)
        if run.aps:  # never with a partition (prepare refuses it)
            G2, IP, IF = run.correlator.pixel_means()
            sb = run.qmap.labels("static").reshape(-1)[lay.pixels].astype(np.int64) - 1
            g2, err = aps_g2(G2[keep], IP[keep], IF[keep], lay.pixel_bins, sb, lay.num_bins,
                             max(1, run.qmap.num_static))
        else:
            g2, err = r.g2[keep], r.g2_err[keep]
        return {"delays": r.delays[keep], "g2": g2, "g2_err": err, "pairs": r.pairs[keep],
                "npix": lay.npix, "frames": frames, "frames_used": used}

    def _fit(self, res: dict[str, Any]) -> dict[str, Any]:
        g2, npix = res["g2"], res["npix"].astype(np.float64)
        cols = np.isfinite(g2).all(axis=0) & (npix > 0)
        if not len(res["delays"]) or not cols.any():
            return {}
        mean = (g2[:, cols] * npix[cols]).sum(axis=1) / npix[cols].sum()
        contrast, tau_frames = fit_g2(res["delays"], mean, weights=res["pairs"])
        ft = self.config["frame_time"]
        return {"contrast": contrast, "tau_c_frames": tau_frames, "tau_c": tau_frames * ft,
                "model": "g2 = 1 + contrast * exp(-2 tau / tau_c)"}

    def _message(self, run: _Run, res: dict[str, Any], final: bool) -> dict[str, Any]:
        ft = self.config["frame_time"]
        return {"msg_type": "xpcs_g2", "plugin": self.name, "acquisition_id": run.acquisition_id, "final": final,
                "frames": run.frames, "frames_used": run.frames_used, "frame_time": ft,
                "bins": list(range(1, run.dynamic.num_bins + 1)),
                "delays": [int(d) for d in res["delays"]], "delays_s": [float(d) * ft for d in res["delays"]],
                "g2": res["g2"].T.tolist(), "fit": dict(self.fit) if final else {}}  # NaN -> null on the wire

    def _publish(self, run: _Run, final: bool, res: dict[str, Any] | None = None) -> None:
        if self._publisher is None:
            return
        self._publisher.publish(self._message(run, res or self._results(run), final))
        self.updates_published += 1

    # -- pixel partition ---------------------------------------------------------------------------
    def _share(self, run: _Run, key: str, final: bool = False) -> None:
        """Write this shard's per-chunk sums as ``key`` into the spool (partition.py); two-time sums too at
        the end."""
        c = run.correlator
        c.drain()                                   # the sparse correlator's dense levels may run behind
        try:
            tt = run.twotime.partial() if final and run.twotime is not None else None
            _part.write_partial(run.partition, key, *run.shard, run.full.num_chunks, c.delays, c.pairs, c.G, c.P,
                                c.F, run.frames, run.frames_used, c.frames_bad, tt)
        except OSError as err:
            self.last_result_error = f"partition: cannot write partial sums {key}: {err}"
            self.log.error("%s: %s", self.name, self.last_result_error)

    def _share_update(self, run: _Run) -> None:
        """A live update: share this shard's sums; rank 0 publishes the newest merge of every shard's."""
        run.updates += 1
        self._share(run, f"r{self._runs}_u{run.updates}")
        if run.partition.rank != 0 or self._publisher is None:
            return
        for k in range(run.updates, max(0, run.updates - 8), -1):
            path = os.path.join(run.partition.spool, _part.merged_name(f"r{self._runs}_u{k}"))
            if k > run.published_update and os.path.exists(path):
                try:
                    merged = _part.read_npz(path)
                except (OSError, ValueError):
                    continue
                run.published_update = k
                self._publish(run, final=False, res=self._results(run, merged))
                return

    @staticmethod
    def _merged_twotime(run: _Run, G: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(bins, C)`` of every shard's two-time sums, as :meth:`TwoTimeAccumulator.compute` of all pixels."""
        lay = run.full
        c2 = np.stack([TwoTimeAccumulator.normalise(G[b], S[b], int(lay.npix[b])) for b in lay.active]) \
            if lay.active.size else np.zeros((0, G.shape[1], G.shape[1]), np.float32)
        return lay.active + 1, c2

    def _wait_merged(self, run: _Run, key: str) -> dict[str, Any] | None:
        """Rank 0 at the end: the merged sums of every shard, once the reducer has written them."""
        path = os.path.join(run.partition.spool, _part.merged_name(key))
        deadline = time.monotonic() + run.partition.timeout
        stop = os.path.join(run.partition.spool, _part.ABORT)
        while time.monotonic() < deadline:
            if os.path.exists(stop):
                try:
                    with open(stop) as fh:
                        why = fh.read().strip()
                except OSError as err:
                    why = str(err)
                self.last_result_error = f"partition: the merge was called off ({why}); no result file"
                return None
            if os.path.exists(path):
                try:
                    return _part.read_npz(path)
                except (OSError, ValueError) as err:
                    self.last_result_error = f"partition: unreadable merged sums {path}: {err}"
                    return None
            time.sleep(0.02)
        self.last_result_error = (f"partition: the merged sums of all {run.partition.number} shards ({path}) did "
                                  f"not arrive within {run.partition.timeout:g} s; no result file (is every rank "
                                  f"running, and does framechain run --mpi reduce them?)")
        return None

    def _finish(self, run: _Run, stopping: bool = False) -> None:
        merged = None
        if run.partition is not None:
            key = f"r{self._runs}_final"
            self._share(run, key, final=True)
            if stopping and run.partition.rank == 0:
                self.last_result_error = ("partition: the processor stopped mid-acquisition; the other shards' "
                                          "sums are not awaited, so no result file was written")
                self.log.error("%s: %s", self.name, self.last_result_error)
                return
            if run.partition.rank != 0:
                self.log.info("%s: shard %d of %d shared its sums; rank 0 writes the result", self.name,
                              run.partition.rank, run.partition.number)
                return
            merged = self._wait_merged(run, key)
            if merged is None:
                self.log.error("%s: %s", self.name, self.last_result_error)
                return
            if int(merged.get("mismatch", 0)):
                self.warnings.append("partition: the ranks counted different frame pairs (a frame bad on one "
                                     "shard only); the merged g2 uses their mean")
        res = self._results(run, merged)
        if merged is not None and run.twotime is not None:
            res["twotime_sums"] = (merged["tt_G"], merged["tt_S"])
        self.fit = self._fit(res)
        if self.fit:
            self.log.info("%s: %d frames (%d used); fitted contrast %.4g, tau_c %.4g s (%.4g frames)", self.name,
                          run.frames, run.frames_used, self.fit["contrast"], self.fit["tau_c"],
                          self.fit["tau_c_frames"])
        self._publish(run, final=True, res=res)
        if self.config["output"]:
            path = self.config["output"].format(acquisition_id=run.acquisition_id or "acquisition", run=self._runs)
            try:
                self.check_output_path(path, "output")  # an acquisition id with "../" must not leave the roots
                write_result(path, self._result_data(run, res))
                if self.config["plot"]:
                    from ._xpcs.plot import plot_g2
                    cols = run.full.active
                    self.plot_file = path.rsplit(".", 1)[0] + "_g2.png"
                    plot_g2(self.plot_file, res["delays"] * self.config["frame_time"],
                            res["g2"][:, cols], res["g2_err"][:, cols], [f"bin {b + 1}" for b in cols],
                            title=f"g2, {run.acquisition_id or 'acquisition'}, {run.frames_used} frames")
            except (OSError, ValueError, RuntimeError, MemoryError, ConfigError) as err:
                self.last_result_error = f"{path}: {type(err).__name__}: {err}"
                self.log.error("%s: could not write result file %s: %s", self.name, path, err)
            else:
                self.result_file = path
                self.results_written += 1
                self.log.info("%s: wrote %s", self.name, path)

    def _result_data(self, run: _Run, res: dict[str, Any]) -> XpcsResultData:
        cfg = self.config
        qm = run.qmap
        dyn_cols = run.full.active
        sta_cols = run.static.active
        geometry = {k: cfg[k] for k in ("beam_center_x", "beam_center_y", "detector_distance", "pixel_size",
                                        "incident_energy")}
        extra = dict(qm.extra)
        for key in ("beam_center_x", "beam_center_y", "detector_distance", "pixel_size"):
            if key not in self._explicit and key in extra:
                geometry[key] = float(np.asarray(extra[key]).ravel()[0])
        if "incident_energy" not in self._explicit and "energy" in extra:
            geometry["incident_energy"] = float(np.asarray(extra["energy"]).ravel()[0])
        twotime = None
        if run.twotime is not None:
            try:
                bins, c2 = (run.twotime.compute() if "twotime_sums" not in res else
                            self._merged_twotime(run, *res["twotime_sums"]))
                twotime = {"bins": bins, "c2": c2, "g2": TwoTimeAccumulator.g2_from_c2(c2),
                           "g2_segments": TwoTimeAccumulator.g2_segments(c2), "max_frames": run.twotime.max_frames}
            except MemoryError as err:                 # keep the multi-tau results: write them without two-time
                twotime = None
                n, bins_n = run.twotime.n, run.dynamic.num_active
                self.last_result_error = (f"two-time left out of the result file: MemoryError computing {bins_n} "
                                          f"matrices of {n} x {n} ({bins_n * n * n * 4 / 2**20:.0f} MiB): {err}")
                self.log.error("%s: %s", self.name, self.last_result_error)
        levels = run.correlator.num_levels
        return XpcsResultData(
            delays=res["delays"], g2=res["g2"][:, dyn_cols], g2_err=res["g2_err"][:, dyn_cols],
            dynamic_roi_map=qm.dynamic, static_roi_map=qm.static, mask=qm.mask,
            dynamic_index_mapping=dyn_cols, static_index_mapping=sta_cols,
            scattering_2d=run.averages.scattering_2d(),
            scattering_1d=run.averages.scattering_1d()[sta_cols],
            scattering_1d_segments=run.averages.segments(cfg["segments"])[:, sta_cols],
            intensity_vs_time=run.averages.intensity_vs_time(),
            frame_time=cfg["frame_time"], count_time=cfg["count_time"] or cfg["frame_time"],
            start_time=run.start_time, geometry=geometry,
            multitau_config={"num_bufs": run.correlator.num_bufs, "num_levels": levels,
                             "normalization": cfg["normalization"], "frames": run.frames,
                             "frames_used": run.frames_used},
            qmap_extra=extra, twotime=twotime)

    # -- reporting ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        # never keep the controller waiting behind a long end-of-acquisition (two-time, file writing)
        if not self._lock.acquire(timeout=0.25):
            return {**self._last_status, "busy": True}
        try:
            self._last_status = self._status()
            return self._last_status
        finally:
            self._lock.release()

    def _status(self) -> dict[str, Any]:
        """The status dictionary (call with the lock held)."""
        run = self._run
        st: dict[str, Any] = {
            "state": "idle" if run is None else ("finished" if self._finished else "running"),
            "runs": self._runs, "frames_rejected": self.frames_rejected, "rejections": dict(self.rejections),
            "last_rejection": self.last_rejection,
            "updates_published": self.updates_published, "results_written": self.results_written,
            "result_file": self.result_file, "plot_file": self.plot_file,
            "last_result_error": self.last_result_error,
            "fit": dict(self.fit), "warnings": list(self.warnings),  # NaN -> null in the reply
        }
        if run is None:
            return st
        c = run.correlator
        r = c.result()
        keep = (r.pairs > 0) & (r.delays > 0)
        lag1 = r.g2[keep][0] if keep.any() else np.full(run.dynamic.num_bins, np.nan)
        st.update({
            "acquisition_id": run.acquisition_id, "frames": run.frames, "frames_used": run.frames_used,
            "frames_nan": run.frames_nan, "frames_missing": run.frames_missing,
            "mask_changes": run.mask_changes, "num_bufs": c.num_bufs, "num_levels": c.num_levels,
            "levels_reached": c.levels_reached, "levels_capped": c.capped, "delays": int(keep.sum()),
            "max_delay": int(r.delays[keep][-1]) if keep.any() else 0,
            "bins": run.full.num_bins, "pixels": run.dynamic.num_pixels,
            "empty_bins": [int(b) + 1 for b in np.flatnonzero(run.full.npix == 0)],
            "partition": ({} if run.partition is None else
                          {"rank": run.partition.rank, "number": run.partition.number, "chunks": list(run.shard),
                           "of_chunks": run.full.num_chunks, "updates_shared": run.updates}),
            "g2_lag1": [float(v) for v in lag1],
            "memory_bytes": c.memory_bytes(),
            "sparse": isinstance(c, SparseMultitauCorrelator), "occupancy": run.occupancy,
            "sparse_switched_at": run.sparse_switched,
            "twotime_frames": run.twotime.n if run.twotime is not None else 0,
        })
        return st

    def reset_statistics(self) -> None:
        with self._lock:
            self.frames_rejected = 0
            self.rejections = {}
            self.last_rejection = ""
            self.updates_published = 0
            self._logged.clear()

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None


