"""PluginWorker: runs one plugin on its own thread with a bounded input queue.

Logger ``framechain.frameprocessor.worker``. Counters: frames_received (accepted into the
queue), frames_processed, frames_dropped (non-blocking input full), errors,
and timing/{last,max,mean}_process in microseconds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from framechain.ipc.compression import CompressionError

from .frame import EndOfAcquisition, Frame, FrameBatch, decompress_frame
from .plugin import FrameProcessorPlugin
from .pool import DataBlockPool

__all__ = ["PluginWorker"]

log = logging.getLogger(__name__)
_STOP = object()
STUCK_AFTER_S = 5.0  #: a frame in process_frame this long marks the plugin stuck in status


class PluginWorker:
    """Thread + bounded queue around a plugin."""

    def __init__(self, plugin: FrameProcessorPlugin, queue_size: int = 64, stuck_after: float = STUCK_AFTER_S) -> None:
        self.plugin = plugin
        self.stuck_after = stuck_after
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.queue_size = queue_size
        self._thread = threading.Thread(target=self._run, name=f"plugin-{plugin.name}", daemon=True)
        self._started = threading.Event()
        self._running = False
        self._counts = threading.Lock()  # counters are bumped from several threads
        self.inputs = 0  # upstream connections (set by the chain): the end of acquisition waits for all
        self._eoa_arrivals: dict[int, int] = {}
        self._pixels = DataBlockPool(256 << 20)  # compressed frames decoded for a plugin that needs pixels
        self._busy_since = 0  # perf_counter_ns when the frame in process_frame started (0: between frames)
        self._busy_frame = -1
        self.abandoned = False  # its thread did not stop in time at shutdown
        self.reset_statistics()

    @property
    def name(self) -> str:
        return self.plugin.name

    def reset_statistics(self) -> None:
        """Zero the counters (timing included)."""
        self.frames_received = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.errors = 0
        self.last_error = ""
        self.acquisitions = 0
        self.frames_decompressed = 0
        self._t_last = 0
        self._t_max = 0
        self._t_sum = 0

    def start(self) -> None:
        self._running = True
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError(f"plugin thread {self.name} did not start")

    def stuck(self) -> dict[str, Any] | None:
        """``{frame, seconds, since}`` when one frame has been in ``process_frame`` over STUCK_AFTER_S, else None."""
        t0, frame = self._busy_since, self._busy_frame
        if not t0:
            return None
        seconds = (time.perf_counter_ns() - t0) / 1e9
        if seconds < self.stuck_after:
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - seconds))
        return {"frame": frame, "seconds": round(seconds, 1), "since": since}

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop the thread, after processing queued frames when ``drain`` (else they count as dropped).

        A plugin still busy after ``timeout`` is abandoned: logged, its thread left to die with the process
        (a daemon thread), its ``close`` not called (it may hang too)."""
        if not self._running:
            return
        if not drain:
            try:
                while True:
                    item = self.queue.get_nowait()
                    self.queue.task_done()
                    if item.__class__ is Frame:
                        self.count_drop()
                    elif item.__class__ is FrameBatch:
                        self.count_drop(len(item))
            except queue.Empty:
                pass
        deadline = time.monotonic() + timeout
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._running = False
        if self._thread.is_alive():
            self.abandoned = True
            stuck = self.stuck()
            log.error("plugin %s did not stop within %g s%s; abandoning its thread", self.name, timeout,
                      f" (stuck on frame {stuck['frame']} for {stuck['seconds']} s)" if stuck else "")
            return
        self.plugin.close()

    # -- input ------------------------------------------------------------
    def count_drop(self, n: int = 1) -> None:
        with self._counts:
            self.frames_dropped += n

    def _count_received(self, n: int = 1) -> None:
        with self._counts:
            self.frames_received += n

    def offer(self, item: Frame | FrameBatch | EndOfAcquisition) -> bool:
        """Queue without waiting (a FrameBatch takes one place); False when full."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            return False
        if item.__class__ is Frame:
            self._count_received()
        elif item.__class__ is FrameBatch:
            self._count_received(len(item))
        return True

    def submit(self, item: Frame | EndOfAcquisition, blocking: bool) -> None:
        """Queue an item from an upstream plugin thread: wait when ``blocking``, else drop and count."""
        if self.offer(item):
            return
        if not blocking and item.__class__ is Frame:
            self.count_drop()
            return
        while self._running:
            try:
                self.queue.put(item, timeout=0.5)
            except queue.Full:
                continue
            if item.__class__ is Frame:
                self._count_received()
            return
        if item.__class__ is Frame:
            self.count_drop()  # the plugin was stopped while we waited

    def idle(self) -> bool:
        return self.queue.unfinished_tasks == 0

    # -- thread -------------------------------------------------------------
    def _run(self) -> None:
        self._started.set()
        get, done = self.queue.get, self.queue.task_done
        process = self._process
        while True:
            item = get()
            try:
                if item is _STOP:
                    return
                cls = item.__class__
                if cls is FrameBatch:
                    for frame in item:
                        process(frame)
                    frame = None
                elif cls is EndOfAcquisition:
                    self._end_of_acquisition(item)
                else:
                    process(item)
            finally:
                item = None
                done()

    def _process(self, item: Frame) -> None:
        """One frame through the plugin, timed; an exception is counted, never the end of the thread."""
        plugin = self.plugin
        t0 = time.perf_counter_ns()
        self._busy_frame = item.frame_number
        self._busy_since = t0
        try:
            if item.compressed is not None and not plugin.wants_compressed(item):
                item = self._decompressed(item)
            plugin.process_frame(item)
        except Exception as err:  # a bad frame must never kill the thread
            self.errors += 1
            self.last_error = f"frame {item.frame_number}: {type(err).__name__}: {err}"
            if self.errors <= 3:
                log.exception("plugin %s failed on frame %s", self.name, item.frame_number)
        self._busy_since = 0
        dt = time.perf_counter_ns() - t0
        self.frames_processed += 1
        self._t_last = dt
        self._t_sum += dt
        if dt > self._t_max:
            self._t_max = dt

    def _decompressed(self, frame: Frame) -> Frame:
        """The pixels of a compressed frame, for a plugin that needs them (decoded on this plugin's thread)."""
        try:
            out = decompress_frame(frame, self._pixels)
        except CompressionError as err:
            raise ValueError(f"compressed frame does not decode: {err}") from err
        if out is None:
            raise MemoryError("no memory to decompress the frame into (256 MiB of decoded frames held)")
        self.frames_decompressed += 1
        return out

    def _end_of_acquisition(self, eoa: EndOfAcquisition) -> None:
        # act once, after the marker has come down every input (a diamond's slow branch included)
        key = id(eoa)
        arrived = self._eoa_arrivals.get(key, 0) + 1
        if arrived < self.inputs:
            self._eoa_arrivals[key] = arrived
            return
        self._eoa_arrivals.pop(key, None)
        try:
            self.plugin.process_end_of_acquisition(eoa)
        except Exception as err:
            self.errors += 1
            self.last_error = f"end of acquisition: {type(err).__name__}: {err}"
            log.exception("plugin %s failed at end of acquisition", self.name)
        self.acquisitions += 1  # after the plugin's end-of-acquisition work (result files) is done
        for worker, _blocking in self.plugin.outputs:
            worker.submit(eoa, True)

    def status(self) -> dict[str, Any]:
        n = self.frames_processed
        st: dict[str, Any] = {
            "frames_received": self.frames_received, "frames_processed": n, "frames_handled": n,
            "frames_dropped": self.frames_dropped, "errors": self.errors, "last_error": self.last_error,
            "acquisitions": self.acquisitions, "frames_decompressed": self.frames_decompressed,
            "queue": {"size": self.queue.qsize(), "max": self.queue_size, "dropped": self.frames_dropped},
            "timing": {"last_process": self._t_last / 1000, "max_process": self._t_max / 1000,
                       "mean_process": (self._t_sum / n / 1000) if n else 0.0},
        }
        stuck = self.stuck()
        if stuck is not None:  # its own status may wait on what it is stuck in: not asked
            st["stuck"] = stuck
            return st
        try:
            own = self.plugin.status()
            timing = own.pop("timing", None)
            st.update(own)  # a plugin may redefine a counter (the writer's odin-data frames_processed)
            if isinstance(timing, dict):
                st["timing"].update(timing)
        except Exception as err:
            log.exception("plugin %s status failed", self.name)
            st["status_error"] = f"{type(err).__name__}: {err}"
        return st

    def __repr__(self) -> str:
        return f"<PluginWorker {self.name} {'running' if self._running else 'stopped'}>"
