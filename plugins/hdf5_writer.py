"""FileWriterPlugin: odin-data's HDF5 file writer -- direct chunk writes, compression on a thread pool, SWMR, VDS.

Configure with odin-data's keys (see docs/plugins.md, section hdf5_writer)::

    {"hdf": {"process": {"number": 1, "rank": 0},
             "file": {"path": "/data", "prefix": "scan"},
             "dataset": {"data": {"datatype": "uint16", "dims": [512, 512], "compression": "BSLZ4"}},
             "frames": 1000}}
    execute {"hdf": {"command": "start_writing"}}     (or {"hdf": {"write": true}})

The plugin thread only checks each frame and hands it on; compression runs on
a pool and a single writer thread makes every h5py call (``_hdf5/engine.py``).
Frames that do not match their dataset's dtype and dims are counted in
``frames_rejected`` and never written. Frames are passed downstream unchanged.

Loggers ``framechain.frameprocessor.plugin.<index>`` and ``framechain.plugins.hdf5_writer.*``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from framechain.frameprocessor import Frame, FrameProcessorPlugin
from framechain.frameprocessor.frame import Compressed, EndOfAcquisition
from framechain.ipc.compression import CompressionError, check_chunk
from framechain.ipc.errors import ConfigError

from ._hdf5.codecs import make_codec
from ._hdf5.config import WRITER_OPTIONS, DatasetSpec, WriterConfig, check_path, merge
from ._hdf5.engine import Job, WriterEngine
from ._hdf5.session import Session, file_name

__all__ = ["FileWriterPlugin"]

_ids = itertools.count(1)
_PASSTHROUGH = {"BSLZ4": "bslz4", "LZ4": "lz4"}  # dataset compression -> the detector chunk it stores as it is


def _bad_chunk(chunk: np.ndarray, packed: Compressed) -> str:
    """Why a detector's chunk must not be stored as it is ('' when its blocks all lie within it)."""
    try:
        check_chunk(chunk, packed.algorithm, int(np.prod(packed.shape)) * packed.dtype.itemsize,
                    packed.dtype.itemsize)
    except CompressionError as err:
        return str(err)
    return ""


def _passes_through(spec: DatasetSpec, packed: Compressed) -> bool:
    return _PASSTHROUGH.get(spec.compression) == packed.algorithm and packed.dtype == spec.dtype \
        and packed.shape == spec.dims


class _AcquisitionMeta:
    """odin's FileWriterPlugin items (startacquisition ... stopacquisition) from the engine, published on the
    processor's meta_endpoint as odin's meta_writer reads them; ``enabled`` only while one is configured."""

    __slots__ = ("plugin",)

    def __init__(self, plugin: FrameProcessorPlugin) -> None:
        self.plugin = plugin

    @property
    def enabled(self) -> bool:
        meta = self.plugin.meta
        return meta is not None and meta.enabled

    def __call__(self, item: str, body: Any, header: dict[str, Any]) -> None:
        self.plugin.publish_meta(item, body, header, source="Acquisition")


class FileWriterPlugin(FrameProcessorPlugin):
    """Write frames to HDF5 files in the NeXus layout, odin-data compatible.

    Examples
    --------
    >>> import tempfile
    >>> from framechain.frameprocessor.frame import Frame, EndOfAcquisition
    >>> d = tempfile.mkdtemp()
    >>> hdf = FileWriterPlugin("hdf")
    >>> hdf.configure({"file": {"path": d, "prefix": "x"}, "frames": 2,
    ...                "dataset": {"data": {"datatype": "uint16", "dims": [4, 4]}}})
    >>> hdf.execute("start_writing", {})
    >>> for n in range(2):
    ...     hdf.process_frame(Frame(np.zeros((4, 4), "u2"), n))
    >>> hdf.sync()
    True
    >>> hdf.status()["frames_written"], hdf.status()["writing"]
    (2, False)
    >>> hdf.close()
    """

    commands = {"start_writing": {}, "stop_writing": {}}
    # a detector's bslz4 chunk is written as it is into a BSLZ4 dataset: see wants_compressed
    version = "0.1.0"
    options = WRITER_OPTIONS

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._cfg = WriterConfig()
        self._session: Session | None = None
        self._writing = False
        self._engine = WriterEngine(self._idle)
        self._engine.meta = _AcquisitionMeta(self)
        self.reset_statistics()

    # -- configuration --------------------------------------------------------------------
    def prepare(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``params``; with ``write: true`` also build the session start_writing needs (carried to commit)."""
        cfg, write = merge(self._cfg, params)
        if isinstance(params, Mapping) and "file" in params:
            self.check_output_path(cfg.file.path, "file/path")
        changing = [k for k in params if k != "write"]
        if self._writing and changing:
            raise ConfigError(f"{self.owner} is writing {self._file_hint()}; stop_writing before changing "
                              f"{changing}", changing[0])
        session = self._session_for(cfg) if write and not self._writing else None
        return {"config": cfg, "write": write, "session": session}

    def commit(self, values: dict[str, Any]) -> None:
        self._cfg = values["config"]
        write = values["write"]
        if write is True and not self._writing:
            # no session only when writing stopped by itself (frames reached) since prepare
            self._start(values["session"] or self._session_for(self._cfg))
        elif write is False:
            self._stop()

    def request_configuration(self) -> dict[str, Any]:
        return {**self._cfg.describe(), "write": self._writing}

    def execute(self, command: str, params: Mapping[str, Any]) -> None:
        if command not in self.commands:
            super().execute(command, params)
        if command == "start_writing":
            if not self._writing:
                self._start(self._session_for(self._cfg))
        else:
            self._stop()

    def _session_for(self, cfg: WriterConfig) -> Session:
        """Check everything start_writing needs; build the session or raise ConfigError."""
        if not cfg.datasets:
            raise ConfigError(f"{self.owner} cannot start writing without a dataset; configure "
                              "{\"dataset\": {\"data\": {\"datatype\": \"uint16\", \"dims\": [H, W]}}} first",
                              "dataset")
        undefined = sorted(n for n, d in cfg.datasets.items() if not d.dims)
        if undefined:
            raise ConfigError(f"{self.owner}: dataset(s) {undefined} have no dims yet; configure "
                              f"{{\"dataset\": {{\"{undefined[0]}\": {{\"datatype\": ..., \"dims\": [H, W]}}}}}} "
                              "before start_writing", "dataset")
        if cfg.master not in cfg.datasets and len(cfg.datasets) == 1:  # odin: no master set, every frame counts
            cfg = replace(cfg, master=next(iter(cfg.datasets)))
        if cfg.master not in cfg.datasets:
            raise ConfigError(f"{self.owner} 'master' dataset {cfg.master!r} is not configured; datasets: "
                              f"{sorted(cfg.datasets)}", "master")
        check_path(cfg.file.path)
        self.check_output_path(cfg.file.path, "file/path")
        p = cfg.process
        if not cfg.file.use_numbers and (p.number > 1 or p.blocks_per_file):
            raise ConfigError(f"{self.owner} 'file/use_numbers' is false but {p.number} processes / "
                              f"blocks_per_file {p.blocks_per_file} write several files; names would collide",
                              "use_numbers")
        codecs = {n: make_codec(d.compression, d.dtype, d.dims, d.blosc_compressor, d.blosc_level,
                                d.blosc_shuffle) for n, d in cfg.datasets.items()}
        session = Session(next(_ids), cfg, codecs)
        path = session.existing("")  # with the configured acquisition_id; ids frames carry are checked at open
        if path:
            raise ConfigError(f"{self.owner}: file {path} already exists; choose another file/prefix or "
                              "acquisition_id, or remove it (files are never overwritten)", "file")
        return session

    def _start(self, session: Session) -> None:
        self._engine.start(session)  # gives the session its buffers: before the plugin thread can see it
        self._session = session
        self._writing = True

    def _stop(self) -> None:
        s = self._session
        if self._writing and s is not None:
            self._writing = False
            self._engine.stop(s.id)

    def _idle(self, session_id: int) -> None:
        s = self._session
        if s is not None and s.id == session_id:
            self._writing = False

    def _file_hint(self) -> str:
        paths = self._engine.current_paths()
        return paths[0] if paths else f"in {self._cfg.file.path!r}"

    # -- data path ---------------------------------------------------------------------------
    def wants_compressed(self, frame: Frame) -> bool:
        """A compressed frame is taken as it is when its dataset stores that compression (pass-through);
        for any other dataset the worker decodes it first."""
        s = self._session
        spec = s.config.datasets.get(frame.dataset) if s is not None else None
        return spec is None or _passes_through(spec, frame.compressed)

    def process_frame(self, frame: Frame) -> None:
        s = self._session
        if self._writing and s is not None:
            self._write(frame, s, s.config.datasets.get(frame.dataset))
        self.push(frame)

    def _write(self, frame: Frame, s: Session, spec: DatasetSpec | None) -> None:
        packed, data = frame.compressed, frame.data
        dtype, shape = (packed.dtype, packed.shape) if packed is not None else (data.dtype, data.shape)
        if spec is None:
            self._reject(frame, f"dataset {frame.dataset!r} is not configured")
        elif dtype != spec.dtype or shape != spec.dims:
            self._reject(frame, f"{dtype} {list(shape)} does not match dataset {spec.name!r} "
                                f"{spec.datatype} {list(spec.dims)}")
        elif packed is not None and not _passes_through(spec, packed):  # the dataset changed since it was checked
            self._reject(frame, f"a {packed.algorithm} chunk for dataset {spec.name!r} stored {spec.compression}")
        elif packed is not None and (bad := _bad_chunk(frame.data, packed)):
            self._reject(frame, bad)
        elif 0 < s.config.frames <= frame.frame_number or frame.frame_number < 0:
            self._reject(frame, f"frame number outside the acquisition's {s.config.frames} frames")
        elif not s.config.process.owns(frame.frame_number):
            self.frames_other_rank += 1
        else:
            f = frame if packed is not None or data.flags.c_contiguous else frame.derive(np.ascontiguousarray(data))
            job = Job(s.id, f, frame.acquisition_id or s.config.acquisition_id, precompressed=packed is not None)
            self.frames_processed += 1
            self.frames_passed_through += packed is not None  # the detector's chunk, written as it came
            self._engine.submit(job, s)

    def _reject(self, frame: Frame, why: str) -> None:
        self.frames_rejected += 1
        self.last_rejected = f"frame {frame.frame_number}: {why}"

    def process_end_of_acquisition(self, eoa: EndOfAcquisition) -> None:
        if self._writing:
            self._engine.end_of_acquisition(eoa.acquisition_id, eoa.frames)

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until every frame handed over so far has been written (for tests and benchmarks)."""
        return self._engine.sync(timeout)

    # -- reporting ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        e, s, cfg = self._engine, self._session, self._cfg
        acq = e.acquisition
        paths = e.current_paths()
        if acq is not None:
            frames_max = acq.frames_max
        else:
            frames_max = s.frames_max() if s is not None else cfg.process.frames_mine(cfg.frames)
        cur = paths[0] if paths else ""
        name = os.path.basename(cur[:-len(cfg.file.temp_suffix)] if cur and cfg.file.temp_suffix else cur)
        if not name and e.last_file_path and not self._writing:
            name = os.path.basename(e.last_file_path)  # the file just closed, acquisition id and all
        if not name and s is not None:
            name = file_name(s.config, s.stem(""), s.config.process.rank)
        return {
            "writing": self._writing,
            "frames_max": frames_max,
            "frames_written": acq.written if acq is not None else e.last_written,
            "frames_flushed": e.frames_flushed,
            "frames_processed": self.frames_processed,
            "frames_rejected": self.frames_rejected,
            "last_rejected": self.last_rejected,
            "frames_other_rank": self.frames_other_rank,
            "frames_discarded": e.frames_discarded,
            "frames_lost": e.frames_lost,
            "file_name": name or os.path.basename(e.last_file_path),
            "file_path": cfg.file.path,
            "current_file_path": cur,
            "last_file_path": e.last_file_path,
            "master_file": e.master_file,
            "acquisition_id": acq.id if acq is not None else cfg.acquisition_id,
            "current_acquisition_id": acq.id if acq is not None else "",
            "processes": cfg.process.number,
            "rank": cfg.process.rank,
            "timeout_active": acq is not None and acq.deadline is not None,
            "error": e.error,
            "watchdog_warnings": e.watchdog_warnings,
            "last_watchdog": e.last_watchdog,
            "stalled": e.stalled(),
            "frames_passed_through": self.frames_passed_through,
            "datasets": {n: {"dimensions": list(d.dims), "type": d.datatype, "compression": d.compression}
                         for n, d in cfg.datasets.items()},
            "timing": e.timing_status(),  # the worker adds {last,max,mean}_process
        }

    def clear_errors(self) -> None:
        self._engine.error = ""

    def reset_statistics(self) -> None:
        self.frames_processed = 0
        self.frames_rejected = 0
        self.frames_other_rank = 0
        self.frames_passed_through = 0
        self.last_rejected = ""
        self._engine.reset_statistics()

    def close(self) -> None:
        self._writing = False
        self._engine.close()
