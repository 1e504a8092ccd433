"""WriterEngine: one thread owns every HDF5 call; a thread pool compresses frames ahead of it.

The plugin thread hands each accepted frame to ``submit``: compressed
datasets get a compression task on the pool (ctypes releases the GIL, so the
pool runs in parallel) and the job goes on a bounded FIFO to the writer
thread, which takes results in order and writes them with
``write_direct_chunk``. Commands (start, stop, end of acquisition) travel on
the same FIFO so they are ordered with the frames. The writer thread also
runs the flush timer, ``close_file_timeout`` and the duration watchdog.

Logger ``framechain.plugins.hdf5_writer.engine``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Protocol

import numpy as np

from framechain.frameprocessor import Frame

from .codecs import Codec
from .config import DatasetSpec
from .h5file import H5File, versions
from .master import write_master
from .session import Session, file_name

__all__ = ["Job", "WriterEngine"]

log = logging.getLogger(__name__)
_STOP = object()
_TIMINGS = ("create", "write", "flush", "close")


class MetaSink(Protocol):
    """Where the engine's meta items go (the plugin's ``meta_endpoint`` publisher)."""

    enabled: bool

    def __call__(self, item: str, body: Any, header: dict[str, Any]) -> None: ...


class Job:
    """One frame on its way to the file."""

    __slots__ = ("session", "dataset", "frame", "offset", "timestamp", "acq", "params", "future", "buf", "bufq",
                 "precompressed")

    def __init__(self, session: int, frame: Frame, acq: str, precompressed: bool = False) -> None:
        self.precompressed = precompressed  # frame.data is already the dataset's chunk (a detector's bslz4)
        self.session = session
        self.dataset = frame.dataset
        self.frame: Frame | None = frame  # dropped as soon as its pixels are compressed or written
        self.offset = frame.frame_number
        self.timestamp = frame.timestamp
        self.acq = acq
        # a copy: the frame goes on downstream, where plugins may still add parameters
        self.params: dict[str, Any] = dict(frame.parameters)
        self.future: Future | None = None
        self.buf: np.ndarray | None = None
        self.bufq: queue.SimpleQueue[np.ndarray] | None = None


class _Timing:
    __slots__ = ("last", "max", "sum", "n")

    def __init__(self) -> None:
        self.last = self.max = self.sum = 0.0
        self.n = 0

    def add(self, us: float) -> None:
        self.last = us
        self.sum += us
        self.n += 1
        if us > self.max:
            self.max = us


class _Acquisition:
    def __init__(self, acq: str, frames_max: int) -> None:
        self.id = acq
        self.frames_max = frames_max
        self.written = 0
        self.lost = 0  # master-dataset frames not written (their file could not be created)
        self.failed = ""  # why this acquisition's frames are not written
        self.files: dict[int, H5File] = {}
        self.deadline: float | None = None

        self.others: dict[str, int] = {}  # frames dealt with per other dataset (a detector's second channel)
        self.meta_started = False  # startacquisition published: stopacquisition follows when it closes

    @property
    def done(self) -> int:
        """Master-dataset frames dealt with: written or counted lost."""
        return self.written + self.lost

    def complete(self) -> bool:
        """Every frame expected is dealt with: the master's, and those of each other dataset that has frames."""
        n = self.frames_max
        return bool(n) and self.done >= n and all(k >= n for k in self.others.values())


class WriterEngine:
    """The writer thread plus the compression pool.

    Parameters
    ----------
    on_idle : callable(session_id)
        Called on the writer thread when a session ends by itself (frames
        reached, end of acquisition, timeout, error) so the plugin can clear
        its ``writing`` flag.
    queue_size : int
        Frames in flight between the plugin thread and the writer thread.
    """

    def __init__(self, on_idle: Callable[[int], None], queue_size: int = 16) -> None:
        self._on_idle = on_idle
        #: odin's Acquisition meta items go here (``meta(item, body, header)``) while ``meta.enabled``;
        #: nothing is built for them otherwise, the writeframe item included
        self.meta: MetaSink | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.queue_size = queue_size
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0
        self._pool_lock = threading.Lock()  # submit never hands a task to a pool start() is shutting down
        self._session: Session | None = None
        self._acq: _Acquisition | None = None
        self._since_flush = 0
        self._next_flush = 0.0
        self._closed = False
        self.reset_statistics()
        self.error = ""
        self.last_file_path = ""
        self.master_file = ""
        self._busy: tuple[str, float] | None = None
        self.last_written = 0
        self.frames_flushed = 0
        self._thread = threading.Thread(target=self._run, name="hdf5-writer", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError("the HDF5 writer thread did not start")

    def reset_statistics(self) -> None:
        self.timing = {k: _Timing() for k in _TIMINGS}
        self.frames_discarded = 0
        self.frames_lost = 0
        self.watchdog_warnings = 0
        self.last_watchdog = ""

    # -- called from the control thread -------------------------------------------
    def start(self, session: Session) -> None:
        """Begin a writing session; the first frame opens the file.

        Call before the plugin thread can see ``session``: this gives the session its own
        compression buffers. A pool of another size replaces the current one first, and the old
        one is shut down only once ``submit`` can no longer reach it (frames of the previous
        session still on their way compress on the new pool, into their own session's buffers).
        """
        threads = session.config.threads
        depth = self.queue_size + threads + 2
        session.bufs = {n: _buffers(c, depth) for n, c in session.codecs.items() if c.compressed}
        old = None
        if session.bufs and self._pool_threads != threads:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="hdf5-compress")
            with self._pool_lock:
                old, self._pool, self._pool_threads = self._pool, pool, threads
        if old is not None:
            old.shutdown(wait=True)
        self._q.put(("start", session))

    def stop(self, session_id: int) -> None:
        self._q.put(("stop", session_id))

    def end_of_acquisition(self, acquisition_id: str, frames: int) -> None:
        self._q.put(("eoa", acquisition_id, frames))

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far has been handled; False on timeout."""
        done = threading.Event()
        self._q.put(("sync", done))
        return done.wait(timeout)

    # -- called from the plugin thread --------------------------------------------------
    def submit(self, job: Job, session: Session) -> None:
        """Queue one frame of ``session`` (compressing on the pool when the dataset is compressed).

        Blocks while every buffer of the dataset, or the queue, is full.
        """
        codec = session.codecs[job.dataset]
        if codec.compressed and not job.precompressed:
            bufq = job.bufq = session.bufs[job.dataset]
            job.buf = bufq.get()
            with self._pool_lock:
                if self._pool is None:
                    bufq.put(job.buf)
                    raise RuntimeError("the HDF5 writer is closed")
                job.future = self._pool.submit(_compress, codec, job)
        self._q.put(("frame", job))

    # -- writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        self._started.set()
        get = self._q.get
        while True:
            timeout = self._wait_time()
            try:
                item = get(timeout=timeout) if timeout is not None else get()
            except queue.Empty:
                self._tick()
                continue
            if item is _STOP:
                self._end_session(clean=True)
                return
            kind = item[0]
            try:
                if kind == "frame":
                    self._frame(item[1])
                elif kind == "start":
                    self._start(item[1])
                elif kind == "stop":
                    if self._session is not None and self._session.id == item[1]:
                        self._end_session(clean=True)
                elif kind == "eoa":
                    self._eoa(item[1], item[2])
                elif kind == "sync":
                    item[1].set()
            except Exception as err:  # h5py raises OSError/RuntimeError/ValueError/KeyError
                self._fail(err)
            finally:
                item = None
                self._busy = None
            self._tick()

    def _wait_time(self) -> float | None:
        acq = self._acq
        if acq is None or not acq.files:
            return None if acq is None or acq.deadline is None else max(acq.deadline - time.monotonic(), 0.0)
        t = self._next_flush if self._since_flush else None
        if acq.deadline is not None:
            t = acq.deadline if t is None else min(t, acq.deadline)
        return None if t is None else max(t - time.monotonic(), 0.0)

    def _tick(self) -> None:
        acq = self._acq
        if acq is None:
            return
        now = time.monotonic()
        try:
            if self._since_flush and now >= self._next_flush:
                self._flush()
            if acq.deadline is not None and now >= acq.deadline:
                cfg = self._session.config if self._session else None
                timeout = cfg.close_file_timeout if cfg else 0
                if not acq.failed:  # a refused acquisition keeps the error saying why
                    self.error = (f"acquisition {acq.id!r}: closed after close_file_timeout {timeout:g} s "
                                  f"with {acq.written} of {acq.frames_max} frames written")
                    log.warning("%s", self.error)
                self._end_session(clean=True)
        except Exception as err:
            self._fail(err)

    def _start(self, session: Session) -> None:
        if self._session is not None:
            self._end_session(clean=True, notify=False)
        self._session = session
        self.error = ""
        self.last_written = self.frames_flushed = 0
        self._acq = None

    def _frame(self, job: Job) -> None:
        s = self._session
        if s is None or job.session != s.id:
            self.frames_discarded += 1
            self._release(job)
            return
        written = False
        try:
            acq = self._acquisition_for(s, job)
            h5 = None if acq.failed else self._file_for(s, acq, job)
            if h5 is not None:
                chunk = job.future.result() if job.future is not None else job.frame.data  # type: ignore[union-attr]
                index = s.config.process.index_in_file(job.offset)
                t0 = self._begin("write")
                h5.write_chunk(job.dataset, index, chunk)
                if job.dataset == h5.master:
                    h5.set_parameters(index, job.offset, job.timestamp, job.params)
                self._timed("write", t0)
                written = True
        finally:
            if not written:  # also when writing raised: that frame is lost, and counted
                self.frames_lost += 1
            self._release(job)
        if job.dataset != s.config.master:
            acq.others[job.dataset] = acq.others.get(job.dataset, 0) + 1  # written or lost, like done
            if acq.complete():
                self._end_session(clean=True)
            return
        if written:
            acq.written += 1
            self.last_written = acq.written
            if self._meta_on():
                t = self.timing
                self.meta("writeframe", {"frame": job.offset, "offset": job.offset, "proc": s.config.process.number,
                                         "write_duration": round(t["write"].last), "flush_duration":
                                         round(t["flush"].last)}, self._meta_header(s, acq))
            self._since_flush += 1
            if self._since_flush == 1:
                self._next_flush = time.monotonic() + s.config.flush_ms / 1000
            if self._since_flush >= s.config.flush_frames:
                self._flush()
        else:
            acq.lost += 1
        if acq.complete():
            self._end_session(clean=True)

    def _acquisition_for(self, s: Session, job: Job) -> _Acquisition:
        """The job's acquisition: a new id closes the current one and starts the next (checking its names)."""
        acq = self._acq
        if acq is not None and job.acq != acq.id:
            if acq.frames_max and acq.done < acq.frames_max and not acq.failed:
                self.error = (f"acquisition {acq.id!r}: closed by the next acquisition {job.acq!r} with "
                              f"{acq.written} of {acq.frames_max} frames written")
            self._close_acquisition(acq, clean=True)
            acq = None
        if acq is None:
            acq = self._acq = _Acquisition(job.acq, s.frames_max())
            path = s.existing(job.acq)
            if path:
                self._refuse(acq, f"{path} already exists")
            else:
                self._write_master(s, job.acq)
                if self._meta_on():
                    acq.meta_started = True
                    self.meta("startacquisition", None, self._meta_header(s, acq, total=True))
        return acq

    def _file_for(self, s: Session, acq: _Acquisition, job: Job) -> H5File | None:
        """The open file for the job's frame, opening it (and closing the previous one) when needed."""
        fi = s.config.process.file_index(job.offset)
        h5 = acq.files.get(fi)
        if h5 is None:
            for other in list(acq.files):
                t0 = self._begin("close")
                acq.files.pop(other).close()
                self._timed("close", t0)
                self._closed_file(acq, other)
            try:
                h5 = acq.files[fi] = self._open(s, acq, fi, job)
            except FileExistsError:  # a later file of an unbounded acquisition (checked up front otherwise)
                self._refuse(acq, f"{s.file_path(acq.id, fi)} (or its temporary name) already exists")
                return None
        return h5

    def _refuse(self, acq: _Acquisition, why: str) -> None:
        """Never overwrite: the acquisition's remaining frames are counted in ``frames_lost``, not written."""
        acq.failed = why
        self.error = (f"acquisition {acq.id!r}: {why} and files are never overwritten; its frames are "
                      "not written (counted in frames_lost)")
        log.error("HDF5 writer: %s", self.error)

    def _release(self, job: Job) -> None:
        if job.buf is not None:
            if job.future is not None and not job.future.done():
                job.future.exception()  # never hand back a buffer still being written
            if job.bufq is not None:
                job.bufq.put(job.buf)
            job.buf = job.bufq = None
        job.frame = None

    def _open(self, s: Session, acq: _Acquisition, fi: int, job: Job) -> H5File:
        c = s.config
        path = s.file_path(acq.id, fi)
        n = c.process.frames_in_file(c.frames, fi)  # 0 when frames is 0 (unlimited)
        specs: dict[str, DatasetSpec] = c.datasets
        t0 = self._begin("create")
        h5 = H5File(path, c.file.temp_suffix, {k: (specs[k], s.codecs[k]) for k in specs}, c.master, n, job.params,
                    {"acquisition_id": acq.id, "file_index": fi, "rank": c.process.rank,
                     "processes": c.process.number, "config": c.describe(), "versions": versions(),
                     "writer": "framechain FileWriterPlugin"}, c.swmr, c.file.overwrite,
                    job.frame.detector if job.frame is not None else None, c.layout)
        self._timed("create", t0)
        self._since_flush = 0
        if self._meta_on():
            self.meta("createfile", {"filePath": path, "create_duration": round(self.timing["create"].last)},
                      self._meta_header(s, acq, total=True))
        return h5

    def _write_master(self, s: Session, acq: str) -> None:
        """Write the VDS master when this rank writes one (its name was checked by ``s.existing(acq)``)."""
        c = s.config
        if not s.wants_master():
            return
        stem = s.stem(acq)
        path = s.master_path(acq)
        write_master(path, c.process, c.frames, c.datasets, c.master, lambda fi: file_name(c, stem, fi), c.layout)
        self.master_file = path

    def _flush(self) -> None:
        acq = self._acq
        self._since_flush = 0
        if acq is None:
            return
        t0 = self._begin("flush")
        for h5 in acq.files.values():
            h5.flush()
        self.frames_flushed = acq.written
        self._timed("flush", t0)

    def _eoa(self, acquisition_id: str, frames: int) -> None:
        s, acq = self._session, self._acq
        if s is None:
            return
        if acq is None:  # nothing arrived for this rank: the acquisition is over for us
            self._end_session(clean=True)
            return
        if acquisition_id and acquisition_id != acq.id:
            return
        c = s.config
        total = min(c.frames, frames) if c.frames and frames else (c.frames or frames)
        expected = c.process.frames_mine(total)
        if acq.done >= expected or c.close_file_timeout == 0:
            if acq.done < expected and not acq.failed:
                self.error = (f"acquisition {acq.id!r}: ended with {acq.written} of {expected} frames written")
            self._end_session(clean=True)
        else:
            acq.frames_max = expected
            acq.deadline = time.monotonic() + c.close_file_timeout

    def _closed_file(self, acq: _Acquisition, fi: int, close_us: float | None = None) -> None:
        s = self._session
        self.last_file_path = s.file_path(acq.id, fi) if s else ""
        if s is not None and self._meta_on():
            us = self.timing["close"].last if close_us is None else close_us
            self.meta("closefile", {"filePath": self.last_file_path, "close_duration": round(us)},
                      self._meta_header(s, acq))

    def _meta_on(self) -> bool:
        meta = self.meta
        return meta is not None and meta.enabled

    @staticmethod
    def _meta_header(s: Session, acq: _Acquisition, total: bool = False) -> dict[str, Any]:
        """odin's Acquisition meta header: acqID and rank (and totalFrames on start and createfile)."""
        h: dict[str, Any] = {"acqID": acq.id, "rank": s.config.process.rank}
        if total:
            h["totalFrames"] = s.config.frames
        return h

    def _close_acquisition(self, acq: _Acquisition, clean: bool) -> None:
        t0 = self._begin("close")
        try:
            for fi in list(acq.files):
                h5 = acq.files.pop(fi)
                if clean:
                    c0 = time.perf_counter()
                    h5.close()
                    self.frames_flushed = acq.written
                    self._closed_file(acq, fi, (time.perf_counter() - c0) * 1e6)
                else:
                    h5.abort()
        finally:
            if self._acq is acq:
                self._acq = None
            self._since_flush = 0
            self._timed("close", t0)
            s = self._session
            if acq.meta_started and s is not None and self.meta is not None:
                acq.meta_started = False
                self.meta("stopacquisition", None, self._meta_header(s, acq))

    def _end_session(self, clean: bool, notify: bool = True) -> None:
        s = self._session
        acq = self._acq
        try:
            if acq is not None:
                self._close_acquisition(acq, clean)  # needs the session to name the closed files
        finally:
            self._session = None
            if s is not None and notify:
                self._on_idle(s.id)

    def _fail(self, err: BaseException) -> None:
        """Stop writing after an error: open files closed under their temporary names, the plugin told."""
        self._busy = None
        self.error = f"writing stopped: {type(err).__name__}: {' '.join(str(err).split())}"
        log.error("HDF5 writer: %s", self.error)
        self._end_session(clean=False)

    def _begin(self, what: str) -> float:
        """Mark an HDF5 operation as running (the status watchdog sees one that hangs)."""
        t0 = time.perf_counter()
        self._busy = (what, t0)
        return t0

    def stalled(self) -> str:
        """A sentence when an HDF5 operation has been running longer than ``watchdog_ms``, else ``""``."""
        busy, s = self._busy, self._session
        if busy is None:
            return ""
        ms = (time.perf_counter() - busy[1]) * 1000
        limit = s.config.watchdog_ms if s is not None else 2000
        return f"{busy[0]} running for {ms:.0f} ms (limit {limit} ms)" if ms > limit else ""

    def _timed(self, what: str, t0: float) -> None:
        self._busy = None
        us = (time.perf_counter() - t0) * 1e6
        self.timing[what].add(us)
        s = self._session
        limit = s.config.watchdog_ms * 1000 if s is not None else 2e6
        if us > limit:
            self.watchdog_warnings += 1
            self.last_watchdog = f"{what} took {us / 1000:.1f} ms (limit {limit / 1000:g} ms)"
            if self.watchdog_warnings <= 10:
                log.warning("HDF5 writer watchdog: %s", self.last_watchdog)

    # -- reporting / teardown ---------------------------------------------------------------
    @property
    def acquisition(self) -> _Acquisition | None:
        return self._acq

    def current_paths(self) -> list[str]:
        acq = self._acq
        return [h.path for h in list(acq.files.values())] if acq is not None else []

    def timing_status(self) -> dict[str, float]:
        out = {}
        for k, t in self.timing.items():
            out[f"last_{k}"] = round(t.last, 1)
            out[f"max_{k}"] = round(t.max, 1)
            out[f"mean_{k}"] = round(t.sum / t.n, 1) if t.n else 0.0
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Close any open file cleanly and stop the threads; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)
        with self._pool_lock:
            pool, self._pool, self._pool_threads = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"<WriterEngine {'closed' if self._closed else 'running'} files={self.current_paths()}>"


def _buffers(codec: Codec, n: int) -> queue.SimpleQueue[np.ndarray]:
    """``n`` output buffers for ``codec``, touched now (see ``Codec.alloc``)."""
    q: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
    for _ in range(n):
        q.put(codec.alloc())
    return q


def _compress(codec: Codec, job: Job) -> Any:
    """Pool task: compress the frame into the job's buffer, then drop the frame (its memory goes back)."""
    try:
        return codec.compress(job.frame.data, job.buf)  # type: ignore[union-attr,arg-type]
    finally:
        job.frame = None
