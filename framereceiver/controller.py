"""ReceiverController: the receiver's configuration, buffer pool and source state machine.

Plain logic: it publishes through a ``publish(IpcMessage)`` callable and is
driven by the daemon's single thread (``handle`` for control, ``produce`` for
frames, ``on_release`` for frame_release / request_buffer_config).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import zmq

from framechain import __version__ as VERSION

from framechain.ipc.channel import same_endpoint
from framechain.ipc.compression import CompressionError
from framechain.ipc.control import ControlHandler, ThrottledLog
from framechain.ipc.errors import ConfigError, FramechainError, ShmError
from framechain.ipc.batch import MAX_BATCH, PendingBatch
from framechain.ipc.message import IpcMessage, frame_notification
from framechain.ipc.odin import ChangeStamp, commands_reply, value_metadata, version_block
from framechain.ipc.options import Option, Section, validate_options
from framechain.ipc.series_header import HeaderSegment, header_segment_name
from framechain.ipc.shm import (FRAME_HEADER, shm_name_problem, STATE_EMPTY, STATE_FILLING, STATE_READY, FrameHeader, SharedBuffer,
                                buffer_size_for)

from .buffers import BufferManager
from .dectris import Channel, End, Image, Start, StreamError
from .odin_config import translate
from .udp import Finished, UdpSource
from .sources import SOURCE_OPTIONS, FrameSource, make_source

__all__ = ["ReceiverController", "VERSION", "DEFAULT_BUFFERS", "RECEIVER_OPTIONS"]

log = logging.getLogger(__name__)
DEFAULT_BUFFERS = 64
MIN_BUFFERS = 4  # the default pool shrinks to fit memory, but not below this


#: the name the receiver's status and configuration go by in ``plugins/names`` (odin-data main's adapters show
#: only listed parts)
ODIN_PART = "receiver"

#: the receiver's configure keys
RECEIVER_OPTIONS = {
    "shared_buffer_name": Option(str, "FrameReceiverBuffer", "POSIX shared-memory segment name", check=shm_name_problem),
    "max_buffer_mem": Option((int, type(None)), None, "bytes for the buffer pool (null: 64 buffers of the "
                             "frame size, fewer if memory is short)", low=1),
    "mode": Option(str, "block", "block: wait for a free buffer; drop: drop and count the frame",
                   choices=("block", "drop")),
    "source": Option(dict, {}, "frame source {type, ...}; see framereceiver.sources.SOURCE_OPTIONS"),
    "notify_batch": Option(int, 1, "frames announced per data-path message: 1 = odin-data's one JSON frame_ready "
                                   f"per frame (any processor); 2..{MAX_BATCH} = framechain's binary batches "
                                   "(framechain processors only; see ipc/batch.py)", low=1, high=MAX_BATCH),
}


def _memory_limit() -> int:
    """Half the machine's physical memory: more than that for buffers is surely a mistake."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 16 << 30


def _shm_free() -> int | None:
    """Bytes free for unprivileged users on /dev/shm (where POSIX shared memory lives), None if unknown."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class ReceiverController(ControlHandler):
    """State of one frame receiver."""

    role = "receiver"

    def __init__(self, publish: Callable[[IpcMessage], None], publish_raw: Callable[[bytes], None],
                 shared_buffer_name: str = "FrameReceiverBuffer") -> None:
        self.send_json = publish           # the ready channel (the daemon swaps both when it rebinds)
        self.publish_raw = publish_raw
        self.notify_batch = 1
        self._announced = PendingBatch("frame_ready")  # announced, not yet sent (notify_batch > 1)
        self.shared_buffer_name = shared_buffer_name
        self.max_buffer_mem: int | None = None  # None: DEFAULT_BUFFERS buffers
        self.mode = "block"
        self.source: FrameSource | None = None
        self.source_cfg: dict[str, Any] = {}
        self.buffer: SharedBuffer | None = None
        self.buffers: BufferManager | None = None
        self.state = "unconfigured"  # unconfigured, idle, running, done, stopped, failed
        self.next_frame = 0
        self.next_due = 0.0
        self.started_at = 0.0
        self.ended_at = 0.0
        self.shutdown_requested = False
        self.subscribers = 0  # processors subscribed to frame_ready
        self.peer_subscribers = 0  # of which framechain processors (the others: odin-data's C++ frameProcessor)
        self.acquisition_notices_skipped = 0
        self.source_error = ""  # why the last acquisition failed (state "failed")
        self._pending: list[tuple[Image, Channel]] = []  # stream image channels waiting for a buffer
        self.stream_acquisition = ""
        self.series_frames = 0
        self.series_ended = 0  # stream series whose end message arrived since the source started
        self._header_segment: HeaderSegment | None = None  # the current series' header arrays
        self.warnings = ThrottledLog(log, 5, "status frames/bad_releases")
        self._header: FrameHeader | None = None
        self._headed = bytearray()
        self._fill_views: list[np.ndarray] = []
        self._fill_stack: np.ndarray | None = None
        self._unheard: set[int] = set()  # mapped buffers whose frame_ready no live processor may have heard
        self._last_start: dict[str, Any] | None = None  # the current acquisition's start notice
        self._unheard_end: dict[str, Any] | None = None  # an end notice to send after the unheard frames
        #: endpoints the daemon bound (ctrl, ready, release) and how to rebind ready/release (set by the daemon)
        self.endpoints: dict[str, str] = {}
        self.rebind: Callable[[dict[str, str]], Callable[[bool], None]] | None = None
        self.decoder_path = ""
        self.config_ts = ChangeStamp()
        self.status_ts = ChangeStamp()
        self.reset_statistics()

    def reset_statistics(self) -> None:
        self.frames_received = 0
        self.frames_released = 0
        self.frames_dropped = 0
        self.frames_timedout = 0
        self.frames_reclaimed = 0
        self.bad_releases = 0
        self.images_bad = 0
        self.frames_passed_compressed = 0
        self.packets_lost = 0
        self.frames_reannounced = 0
        self._udp_no_buffer = getattr(getattr(self, "source", None), "frames_no_buffer", 0)  # counted from here

    # -- control -----------------------------------------------------------------
    def _on_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        st: dict[str, Any] = {
            "buffers": self.buffers.status() if self.buffers else {"total": 0, "empty": 0, "mapped": 0,
                                                                     "consistent": True},
            "frames": {"received": self.frames_received, "released": self.frames_released,
                       "dropped": self.frames_dropped, "timedout": self.frames_timedout,
                       "reclaimed": self.frames_reclaimed, "bad_releases": self.bad_releases,
                       "bad_images": self.images_bad, "packets_lost": self.packets_lost,
                       "compressed": self.frames_passed_compressed, "reannounced": self.frames_reannounced,
                       "held_unheard": len(self._unheard)},
            "source": {"state": self.state, "frame": self.next_frame, "error": self.source_error,
                       "series_ended": self.series_ended, "in_series": bool(self.stream_acquisition),
                       **(self.source.describe() if self.source else {}),
                       "elapsed": round((self.ended_at or time.monotonic()) - self.started_at, 6)
                       if self.started_at else 0.0},
            "shared_memory": {"shared_buffer_name": self.shared_buffer_name,
                              "num_buffers": self.buffer.num_buffers if self.buffer else 0,
                              "buffer_size": self.buffer.buffer_size if self.buffer else 0},
            "mode": self.mode,
            "ready_subscribers": self.subscribers,
            "ready_subscribers_framechain": self.peer_subscribers,
            "acquisition_notices_skipped": self.acquisition_notices_skipped,
            "process": {"pid": os.getpid(), **self.control_status()},
            # odin-data's FrameReceiverController keys, for odin's adapters and tools
            "status": self._odin_configured(),
            "decoder": self.source.describe() if self.source else {},
            "plugins": {"names": [ODIN_PART]},
            "error": [self.source_error] if self.source_error else [],
            "warning": [],
            "status_ts": self.status_ts.value,
        }
        # odin-data main's adapters show only the parts listed in plugins/names: the receiver's own is one part
        st[ODIN_PART] = {k: st[k] for k in ("source", "frames", "buffers", "shared_memory", "mode")}
        if params.get("metadata") is True:
            st["metadata"] = value_metadata({k: v for k, v in st.items() if k not in ("plugins", "status_ts")})
        return st

    def _odin_configured(self) -> dict[str, bool]:
        parts = {"ipc_configured": bool(self.endpoints), "decoder_configured": self.source is not None,
                 "buffer_manager_configured": self.buffer is not None, "rx_thread_configured": self.source is not None}
        return {**parts, "configuration_complete": all(parts.values())}

    def _on_request_configuration(self, params: Mapping[str, Any]) -> dict[str, Any]:
        src = self.source_cfg
        cfg: dict[str, Any] = {
            "shared_buffer_name": self.shared_buffer_name, "max_buffer_mem": self.effective_buffer_mem(),
            "mode": self.mode, "source": dict(src), "notify_batch": self.notify_batch,
            # odin-data's names for the same things
            "ctrl_endpoint": self.endpoints.get("ctrl", ""),
            "frame_ready_endpoint": self.endpoints.get("ready", ""),
            "frame_release_endpoint": self.endpoints.get("release", ""),
            "decoder_type": {"udp": "DummyUDP"}.get(src.get("type", ""), src.get("type", "")),
            "decoder_path": self.decoder_path,
            "rx_type": "udp" if src.get("type") == "udp" else "zmq" if src.get("type", "").startswith("dectris")
            else "",
            "rx_ports": ",".join(str(p) for p in src.get("rx_ports", [])),
            "rx_address": src.get("rx_address", ""),
            "frames": src.get("frames", 0),
            "plugins": {"names": [ODIN_PART]},
            "config_ts": self.config_ts.value,
        }
        cfg[ODIN_PART] = {k: cfg[k] for k in ("shared_buffer_name", "max_buffer_mem", "mode", "source",
                                              "notify_batch")}
        if params.get("metadata") is True:
            kind = src.get("type")
            options = {**RECEIVER_OPTIONS, "source": Section(SOURCE_OPTIONS.get(kind, {}), "frame source")}
            cfg["metadata"] = value_metadata({k: v for k, v in cfg.items() if k not in ("plugins", "config_ts")},
                                             {**options, ODIN_PART: Section(options, "the receiver")})
        return cfg

    def _on_request_commands(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """odin's shape: the source's commands under its index (odin's receiver names it ``decoder``)."""
        return commands_reply({"source": ["start", "stop"]})

    def _on_request_version(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"version": {"framechain": version_block(VERSION)},
                "libraries": {"python": platform.python_version(), "numpy": np.__version__, "pyzmq": zmq.__version__,
                              "libzmq": zmq.zmq_version()}}

    def _on_request_buffer_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.buffer_config()

    def _on_reset_statistics(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.reset_statistics()
        return {}

    def _on_reset(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Take back every mapped buffer, e.g. after the processor holding them died."""
        if params:
            raise ConfigError(f"reset takes no params, not {sorted(params)}")
        if self.state == "running":
            raise ConfigError("the source is running; stop it (execute source stop) before reset")
        return {"reclaimed": self.reclaim("reset")}

    def reclaim(self, why: str) -> int:
        """Return every mapped buffer to the empty queue; count and log them. Returns how many."""
        if self.buffers is None or not self.buffers.mapped:
            return 0
        held = sorted(self.buffers.mapped)
        for bid in held:
            self.buffers.release(bid)
            self.buffer.set_state(bid, STATE_EMPTY)
        self.frames_reclaimed += len(held)
        self._unheard.clear()
        self._unheard_end = None
        log.warning("%s: reclaimed %d buffers that no processor released (%d processors subscribed); "
                    "a processor that still holds one will have its release counted as a bad release",
                    why, len(held), self.subscribers)
        return len(held)

    def _reclaim_orphans(self, why: str) -> None:
        """With no processor subscribed to frame_ready, nobody can release the mapped buffers: take them back."""
        if self.subscribers == 0:
            self.reclaim(f"{why} with no processor subscribed")

    def _on_shutdown(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.shutdown_requested = True
        return {}

    def _on_execute(self, params: Mapping[str, Any]) -> dict[str, Any]:
        key = "decoder" if set(params) == {"decoder"} else "source"  # odin's receiver calls it the decoder
        spec = params.get(key)
        if set(params) != {key} or not isinstance(spec, dict) or spec.get("command") not in ("start", "stop"):
            raise ConfigError("receiver execute takes {\"source\": {\"command\": \"start\" | \"stop\"}} "
                              "(or odin's name for it, \"decoder\")")
        if spec["command"] == "start":
            self.start()
        else:
            self.stop()
        return {"state": self.state}

    def _on_configure(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Prepare everything (values, the new source, the buffer layout), then commit; a nack changes nothing.

        Making the new segment is the last step that can fail: it runs after every check, and a
        failure there closes the prepared source, so the receiver keeps its old source and segment.
        """
        part = params.get(ODIN_PART)
        if part is not None:  # the same keys as listed under the receiver's part (see ODIN_PART)
            if not isinstance(part, Mapping):
                raise ConfigError(f"'{ODIN_PART}' must be an object of the receiver's configure keys", ODIN_PART)
            params = {**{k: v for k, v in params.items() if k != ODIN_PART}, **part}
        odin = translate(params, self.source_cfg)
        values = validate_options("the frame receiver", RECEIVER_OPTIONS, odin.params)
        params = odin.params
        if odin.ctrl_endpoint is not None and not same_endpoint(odin.ctrl_endpoint, self.endpoints.get("ctrl", "")):
            raise ConfigError(f"ctrl_endpoint {odin.ctrl_endpoint!r}: the receiver's control endpoint is chosen when "
                              f"it starts (--ctrl); it listens on {self.endpoints.get('ctrl', '')!r}, so only that "
                              "value is taken", "ctrl_endpoint")
        rebind = {k: v for k, v in odin.endpoints.items() if not same_endpoint(v, self.endpoints.get(k, ""))}
        if rebind and self.rebind is None:
            raise ConfigError("this receiver cannot rebind its frame_ready/frame_release endpoints", "frame_ready_endpoint")
        if self.state == "running":
            raise ConfigError("the source is running; stop it (execute source stop) before configuring")
        mode = values.get("mode", self.mode)
        name = values.get("shared_buffer_name", self.shared_buffer_name)
        mem = values.get("max_buffer_mem", self.max_buffer_mem)
        if mem is not None and mem > _memory_limit():
            raise ConfigError(f"max_buffer_mem {mem} bytes is more than half this machine's memory "
                              f"({_memory_limit()} bytes); ask for less", "max_buffer_mem")
        budget, budget_why = self._buffer_budget()
        if mem is not None and mem > budget:
            raise ConfigError(f"max_buffer_mem {mem} bytes is more than {budget_why}; ask for less",
                              "max_buffer_mem")
        source = make_source(values["source"]) if "source" in values else None
        commit_endpoints = None
        try:
            if rebind:
                commit_endpoints = self.rebind(rebind)  # binds the new sockets; nothing in use changes yet
            layout = self._layout(source or self.source, name, mem, budget, budget_why)
            if layout is not None:
                self._build(name, *layout, explicit=mem is not None)
        except FramechainError:
            if source is not None:
                source.close()
            if commit_endpoints is not None:
                commit_endpoints(False)
            raise
        # commit: nothing below fails
        if commit_endpoints is not None:
            commit_endpoints(True)
            self.status_ts.touch()
        if odin.decoder_path is not None:
            self.decoder_path = odin.decoder_path
        if odin.debug_level is not None:
            logging.getLogger("framechain").setLevel(logging.DEBUG if odin.debug_level > 0 else logging.INFO)
        self.config_ts.touch()
        self.mode, self.shared_buffer_name, self.max_buffer_mem = mode, name, mem
        if values.get("notify_batch", self.notify_batch) != self.notify_batch:
            self.notify_batch = values["notify_batch"]
            if self.buffer is not None:  # processors learn it from the buffer config
                self.publish(IpcMessage("notify", "buffer_config", self.buffer_config()))
        if source is not None:
            if self.source is not None:
                self.source.close()
            self.source, self.source_cfg = source, dict(params["source"])
            self.state = "idle"
            self.next_frame = 0
            self.status_ts.touch()
        c = self._odin_configured()
        return {"configured": {"ipc": c["ipc_configured"], "decoder": c["decoder_configured"],
                               "buffer_manager": c["buffer_manager_configured"], "rx_thread": c["rx_thread_configured"]}}

    def _layout(self, src: FrameSource | None, name: str, mem: int | None, budget: int,
                budget_why: str) -> tuple[int, int] | None:
        """(buffers, buffer size) of a segment to build for ``src``, or None when the current one serves."""
        if src is None:
            return None
        size = buffer_size_for(src.frame_bytes)
        num = (mem // size) if mem is not None else self._default_count(src, size, budget, budget_why)
        if num < 1:
            raise ConfigError(f"max_buffer_mem {mem} bytes cannot hold one buffer of {size} bytes "
                              f"(a {src.frame_bytes}-byte frame plus header)", "max_buffer_mem")
        self._reclaim_orphans("configure")  # buffers nobody can release (no processor subscribed) come back
        if (self.buffer is not None and name == self.shared_buffer_name and num == self.buffer.num_buffers
                and size == self.buffer.buffer_size):
            return None
        if self.buffers is not None and self.buffers.mapped:
            raise ConfigError(f"{len(self.buffers.mapped)} buffers are still held by the processor; "
                              "wait for their release before changing the buffer layout")
        return num, size

    def _buffer_budget(self) -> tuple[int, str]:
        """The most bytes a buffer pool may take, and a phrase saying which limit that is.

        Half the physical memory, and what /dev/shm has free (counting the segment this receiver holds now,
        which a rebuild gives back).
        """
        limit, why = _memory_limit(), f"half this machine's memory ({_gib(_memory_limit())})"
        free = _shm_free()
        if free is not None:
            free += self.buffer.num_buffers * self.buffer.buffer_size if self.buffer is not None else 0
            if free < limit:
                limit, why = free, f"what /dev/shm has free ({_gib(free)})"
        return limit, why

    @staticmethod
    def _default_count(src: FrameSource, size: int, budget: int, why: str) -> int:
        """DEFAULT_BUFFERS, or fewer (at least MIN_BUFFERS) when that many do not fit in ``budget``."""
        num = min(DEFAULT_BUFFERS, budget // size)
        frame = f"a {list(src.shape)} {src.dtype.name} frame ({src.frame_bytes} bytes, {size}-byte buffers)"
        if num < MIN_BUFFERS:
            raise ConfigError(f"{frame}: the default pool of {DEFAULT_BUFFERS} buffers needs "
                              f"{_gib(DEFAULT_BUFFERS * size)} and even {MIN_BUFFERS} buffers "
                              f"({_gib(MIN_BUFFERS * size)}) are more than {why}; use a smaller frame", "source")
        if num < DEFAULT_BUFFERS:
            log.warning("%s: the default pool of %d buffers (%s) is more than %s; using %d buffers (%s)",
                        frame, DEFAULT_BUFFERS, _gib(DEFAULT_BUFFERS * size), why, num, _gib(num * size))
        return num

    def effective_buffer_mem(self) -> int | None:
        if self.buffer is None:
            return self.max_buffer_mem
        return self.max_buffer_mem or self.buffer.num_buffers * self.buffer.buffer_size

    def _build(self, name: str, num: int, size: int, explicit: bool) -> None:
        self._fill_views, self._headed, self._fill_stack = [], bytearray(), None  # of the segment being replaced
        try:
            new, note = SharedBuffer.create(name, num, size)
        except ShmError as err:
            raise ConfigError(str(err), "shared_buffer_name") from err
        if note:
            log.warning("%s", note)
        old = self.buffer
        if old is not None:
            old.close()
            if old.name != name:
                old.unlink()
        self.buffer, self.buffers = new, BufferManager(num)
        how = "" if explicit else f" (default: {num} buffers for this frame size)"
        log.info("shared buffer %s: %d buffers of %d bytes = %.1f MiB%s", name, num, size,
                 num * size / 2**20, how)
        self.publish(IpcMessage("notify", "buffer_config", self.buffer_config()))

    def buffer_config(self) -> dict[str, Any]:
        if self.buffer is None:
            raise ConfigError("no shared buffer yet: configure a source first")
        cfg = {"shared_buffer_name": self.shared_buffer_name, "num_buffers": self.buffer.num_buffers,
               "buffer_size": self.buffer.buffer_size}
        if self.notify_batch > 1:  # framechain processors batch their releases too
            cfg["notify_batch"] = self.notify_batch
        return cfg

    # -- source ------------------------------------------------------------------
    def start(self) -> None:
        if self.source is None or self.buffer is None:
            raise ConfigError("no source configured: configure {\"source\": {...}} first")
        if self.state == "running":
            raise ConfigError("the source is already running")
        self._reclaim_orphans("source start")
        if isinstance(self.source, UdpSource):  # its receive thread writes pixels straight into the buffers
            buf = self.buffer
            self.source.attach(buf.segment(), buf.offset(0) + FRAME_HEADER.size
                               + buf.buffer_size * np.arange(buf.num_buffers, dtype=np.int64))
        try:
            self.source.reset()
        except OSError as err:  # a UDP port in use, an address not on this host
            raise ConfigError(f"the {self.source.kind} source cannot start: {err}", "source") from err
        src = self.source
        if isinstance(src, UdpSource):  # every free buffer goes to the receive thread before the start is acked
            self._lend_udp()
        self._header = FrameHeader(0, src.dtype.str, src.shape, src.frame_bytes, 0.0, src.acquisition_id)
        self._headed = bytearray(self.buffer.num_buffers)  # 1: the buffer holds this run's header already
        self._fill_views = self.buffer.views(src.dtype, src.shape)  # built now, not on the first frame
        runs = not getattr(src, "streaming", False) and src.fills_runs  # stream sources have no fill_run
        self._fill_stack = self.buffer.pixel_stack(src.dtype, src.shape) if runs else None
        self.next_frame = self.series_ended = 0
        self.started_at = self.next_due = time.monotonic()
        self.ended_at = 0.0
        self.source_error = ""
        self._last_start = self._unheard_end = None
        self.state = "running"
        log.info("source started: %s", self.source.describe())

    def stop(self) -> None:
        if self.state != "running":
            return
        if isinstance(self.source, UdpSource):
            self._stop_udp("stopped")
            return
        if getattr(self.source, "streaming", False):
            self.frames_dropped += len(self._pending)  # channels of an image that never got a buffer
            self.frames_received += len(self._pending)
            self._pending = []
            self.source.close()  # disconnect: the detector's PUSH sends to other consumers
            if self.stream_acquisition:
                self._end_series(self.stream_acquisition)
            self.state, self.ended_at = "stopped", time.monotonic()
            log.info("stream source stopped after %d frames (%d dropped)", self.next_frame, self.frames_dropped)
            return
        self._end("stopped")

    def _end(self, state: str) -> None:
        self.state = state
        self.ended_at = time.monotonic()
        src = self.source
        self._notify_acquisition({"end_of_acquisition": True, "acquisition_id": src.acquisition_id if src else "",
                                  "frames": self.next_frame})
        log.info("source %s after %d frames (%d dropped)", state, self.next_frame, self.frames_dropped)

    def _announce(self, frame: int, bid: int) -> None:
        """frame_ready for a filled buffer; one nobody hears (no processor subscribed) is announced again to
        the next processor that asks for the buffer config."""
        if self.subscribers == 0:
            self._unheard.add(bid)
        if self.notify_batch == 1:
            self.publish_raw(frame_notification("frame_ready", frame, bid))
            return
        if self._announced.add(frame, bid) >= self.notify_batch:
            self.flush_announcements()

    def flush_announcements(self) -> None:
        """Send the frames announced since the last batch (at the end of every produce, before any JSON notice)."""
        raw = self._announced.take()
        if raw is not None:
            self.publish_raw(raw)

    def publish(self, msg: IpcMessage) -> None:
        """A JSON notice on the ready channel, after the batched frames announced before it."""
        self.flush_announcements()
        self.send_json(msg)

    def subscribers_changed(self) -> None:
        """Every processor gone: the frames they held (mapped, never released) may never be released; they are
        kept, and announced again to the next processor (``_reannounce``)."""
        if self.subscribers == 0 and self.buffers is not None and self.buffers.mapped:
            new = set(self.buffers.mapped) - self._unheard
            if new:
                self._unheard |= new
                log.warning("no processor subscribed to frame_ready: %d frames held in buffers will be announced "
                            "again to the next processor", len(self._unheard))

    def _reannounce(self) -> None:
        """Announce the frames nobody released to a processor that (re)connected, in frame order, after the
        acquisition's start notice; the end notice too when the acquisition ended meanwhile."""
        held = [b for b in self._unheard if self.buffers is not None and b in self.buffers.mapped]
        self._unheard.clear()
        if not held and self._unheard_end is None:
            return
        if self._last_start is not None:
            self.publish(IpcMessage("notify", "frame_ready", self._last_start))
        for frame, bid in sorted((self.buffer.header_fields(b)[3], b) for b in held):
            self.publish_raw(frame_notification("frame_ready", frame, bid))
        self.frames_reannounced += len(held)
        if self._unheard_end is not None:
            self.publish(IpcMessage("notify", "frame_ready", self._unheard_end))
            self._unheard_end = None
        log.info("announced %d held frames again to a processor that connected", len(held))

    def _notify_acquisition(self, params: dict[str, Any]) -> None:
        """A start/end-of-acquisition frame_ready (no buffer_id: framechain's extension). odin-data's C++
        frameProcessor logs an error for one, so it is not sent when every subscriber is an odin processor."""
        if params.get("start_of_acquisition"):
            self._last_start = params
        elif params.get("end_of_acquisition") and (self.subscribers == 0 or self._unheard):
            self._unheard_end = params  # its frames are still to be heard: it follows them
        if self.subscribers > 0 and self.peer_subscribers == 0:
            self.acquisition_notices_skipped += 1
            return
        self.publish(IpcMessage("notify", "frame_ready", params))

    def _fail(self, bid: int, err: Exception) -> None:
        """Frame ``next_frame`` could not be made: give its buffer back and end the acquisition as failed."""
        self.buffer.set_state(bid, STATE_EMPTY)
        self.buffers.release(bid)
        self.source_error = f"frame {self.next_frame}: {type(err).__name__}: {err}"
        log.exception("the %s source failed at frame %d; acquisition ended", self.source.kind, self.next_frame)
        self._end("failed")

    def stream_socket(self) -> zmq.Socket | int | None:
        """A stream source's socket while it should be read: running, and a free buffer (or drop mode).

        For a UDP source, the eventfd its receive thread signals finished frames on.
        """
        if self.state != "running" or not getattr(self.source, "streaming", False):
            return None
        if isinstance(self.source, UdpSource):
            return self.source.socket
        if self.mode == "block" and (not self.buffers.empty or self._pending):
            return None  # the detector's PUSH queues (then blocks) until we release a buffer
        return self.source.socket

    def wait_time(self) -> float | None:
        """Seconds until ``produce`` has work: 0 now, a delay for rate limiting, None when idle/blocked."""
        if self.state != "running":
            return None
        if getattr(self.source, "streaming", False):
            return 0.0 if self._pending and self.buffers.empty else None  # else the stream socket wakes us
        if self.mode == "block" and not self.buffers.empty:
            return None  # wake on a release
        return max(0.0, self.next_due - time.monotonic())

    def produce(self, limit: int = 32) -> int:
        """Announce up to ``limit`` frames (at least one batch) that are due; return how many were handled."""
        try:
            return self._produce(max(limit, self.notify_batch))
        finally:
            self.flush_announcements()

    def _produce(self, limit: int) -> int:
        if self.state != "running":
            return 0
        if isinstance(self.source, UdpSource):
            return self._produce_udp()
        if getattr(self.source, "streaming", False):
            return self._produce_stream(limit)
        src, buffers = self.source, self.buffers
        rate = src.rate
        done = 0
        if self.notify_batch > 1 and not rate and src.fills_runs:  # a whole batch in a few numpy operations
            return self._produce_run(limit)
        now = time.monotonic()
        while done < limit:
            if src.frames and self.next_frame >= src.frames:
                self._end("done")
                break
            if rate and now < self.next_due:
                break
            bid = buffers.take()
            if bid is None:
                if self.mode == "block":
                    break
                self.frames_dropped += 1
            else:
                try:
                    self._fill(bid)
                except Exception as err:  # the source broke (a file truncated under us): end, keep serving
                    self._fail(bid, err)
                    break
            self.frames_received += 1
            self.next_frame += 1
            done += 1
            if rate:
                self.next_due += 1.0 / rate
                now = time.monotonic()
        return done

    # -- stream sources ------------------------------------------------------------
    def _produce_stream(self, limit: int) -> int:
        """Read up to ``limit`` stream messages; each image channel goes to a buffer (block: waits for one)."""
        src, done = self.source, 0
        while self._pending and self._fill_channels():
            done += 1
        while done < limit and not self._pending:
            if self.mode == "block" and not self.buffers.empty:
                break
            msg = src.receive()
            if msg is None:
                break
            done += 1
            if isinstance(msg, Start):
                self.stream_acquisition = str(msg.series_id)
                self.series_frames = 0
                log.info("series %s started: channels %s", msg.series_id, list(msg.channels))
                self._start_series(msg)
            elif isinstance(msg, End):
                self._end_series(str(msg.series_id))
            elif isinstance(msg, Image):
                self._pending = [(msg, ch) for ch in msg.channels]
                self._fill_channels()
        return done

    def _fill_channels(self) -> bool:
        """Put pending image channels into buffers; False when block mode must wait for a release."""
        while self._pending:
            image, channel = self._pending[0]
            if not self._fill_channel(image, channel):
                return False
            self._pending.pop(0)
        return True

    def _fill_channel(self, image: Image, ch: Channel) -> bool:
        """One channel into one buffer; False only when block mode has no free buffer."""
        buf = self.buffer
        if not 1 <= len(ch.shape) <= 4 or FRAME_HEADER.size + ch.nbytes > buf.buffer_size:
            self.images_bad += 1
            self.warnings.warning("image %d channel %r: a %s %s image does not fit the %d-byte buffers "
                                  "(configure the source's shape and dtype for this detector)", image.image_id,
                                  ch.name, list(ch.shape), ch.dtype.str, buf.buffer_size)
            return True
        bid = self.buffers.take()
        if bid is None:
            if self.mode == "block":
                return False
            self.frames_dropped += 1
            self.frames_received += 1
            return True
        header = FrameHeader(image.image_id, ch.dtype.str, ch.shape, ch.nbytes, 0.0,
                             self.stream_acquisition or str(image.series_id), ch.name[:16], STATE_FILLING)
        try:
            packed = ch.passthrough() if not self.source.decompress else None  # checked: CompressionError if bad
            if packed is not None and FRAME_HEADER.size + len(packed[1]) > buf.buffer_size:
                packed = None  # incompressible data grew past the buffer: decode it instead
            if packed is not None:  # the chunk travels compressed; the processor decodes it if a plugin needs pixels
                code, chunk = packed
                header.compression, header.data_size = code, len(chunk)
                buf.data(bid, np.uint8, (len(chunk),))[:] = np.frombuffer(chunk, np.uint8)
                self.frames_passed_compressed += 1
            else:
                ch.decode_into(buf.views(ch.dtype, ch.shape)[bid])
            buf.write_header(bid, header)
        except (StreamError, CompressionError) as err:
            self.buffers.release(bid)
            buf.set_state(bid, STATE_EMPTY)
            self.images_bad += 1
            self.warnings.warning("image %d channel %r dropped: %s", image.image_id, ch.name, err)
            return True
        buf.set_state(bid, STATE_READY, time.time())
        self._announce(image.image_id, bid)
        self.frames_received += 1
        self.next_frame += 1
        self.series_frames += 1
        return True

    def _start_series(self, start: Start) -> None:
        """Announce a series with the detector's header: scalars in the notification, arrays in a segment."""
        try:
            params, arrays = self.source.header(start)
        except StreamError as err:
            self.images_bad += 1  # counted with the bad images: the series' frames still flow
            self.warnings.warning("series %s: start message's header dropped: %s", start.series_id, err)
            params, arrays = {}, {}
        name = header_segment_name(self.buffer.name)
        if self._header_segment is None or self._header_segment.name != name:
            if self._header_segment is not None:
                self._header_segment.unlink()
            self._header_segment = HeaderSegment(name)
        try:
            layout = self._header_segment.write(arrays)
        except ShmError as err:
            self.warnings.warning("series %s: header arrays not passed on: %s", start.series_id, err)
            layout = {}
        self._notify_acquisition({"start_of_acquisition": True, "acquisition_id": str(start.series_id),
                                  "detector": params, "header_segment": self._header_segment.name, "arrays": layout})

    def _end_series(self, acquisition_id: str) -> None:
        """A stream's end message: end of acquisition downstream; the source keeps listening."""
        self._notify_acquisition({"end_of_acquisition": True, "acquisition_id": acquisition_id,
                                  "frames": self.series_frames})
        log.info("series %s ended after %d frames", acquisition_id, self.series_frames)
        self.series_ended += 1
        self.stream_acquisition, self.series_frames = "", 0

    # -- UDP ---------------------------------------------------------------------------
    def _produce_udp(self) -> int:
        """Announce the frames the receive thread finished, then lend it every free buffer."""
        src = self.source
        done = self._udp_finished(src.take_finished())
        lost = src.frames_no_buffer - self._udp_no_buffer  # first packets that found no buffer: dropped
        if lost:
            self._udp_no_buffer += lost
            self.frames_dropped += lost
            self.frames_received += lost
        if src.frames and self.frames_received + self.frames_timedout >= src.frames:
            self._stop_udp("done")
            return done
        self._lend_udp()
        return done

    def _lend_udp(self) -> None:
        """Every free buffer to the UDP receive thread."""
        while (bid := self.buffers.take()) is not None:
            self.source.lend(bid)

    def _udp_finished(self, finished: list[Finished]) -> int:
        src, buf = self.source, self.buffer
        for fin in finished:
            if fin.complete:
                buf.write_header(fin.buffer_id, FrameHeader(fin.frame, src.dtype.str, src.shape, src.frame_bytes,
                                                            time.time(), src.acquisition_id, "data", STATE_READY))
                self._announce(fin.frame, fin.buffer_id)
                self.frames_received += 1
                self.next_frame += 1
            else:  # released unannounced after frame_timeout_ms, counted with its lost packets
                buf.set_state(fin.buffer_id, STATE_EMPTY)
                self.buffers.release(fin.buffer_id)
                self.frames_timedout += 1
                self.packets_lost += fin.packets_expected - fin.packets_received
        return len(finished)

    def _stop_udp(self, state: str) -> None:
        src = self.source
        held = src.close()
        self._udp_finished(src.take_finished())
        for bid in held:  # lent, never used
            self.buffers.release(bid)
        src.lent = 0
        self._end(state)

    def _produce_run(self, limit: int) -> int:
        """Unthrottled batch, the same frames as the per-frame loop: fill the free buffers with the next
        frames (each run of consecutive buffers in one numpy operation, their headers set as one strided
        array), drop the rest of ``limit`` in drop mode, announce them; end the acquisition after the last."""
        src, buffers, buf = self.source, self.buffers, self.buffer
        left = (src.frames - self.next_frame) if src.frames else limit
        count = min(limit, left)
        want = min(count, len(buffers.empty))
        if want:
            bids = [buffers.take() for _ in range(want)]
            for bid in bids:
                if not self._headed[bid]:
                    header = self._header
                    header.frame_number, header.state, header.timestamp = 0, STATE_FILLING, 0.0
                    buf.write_header(bid, header)
                    self._headed[bid] = 1
            table, stack = buf.header_table(), self._fill_stack
            ids = np.asarray(bids)
            first = self.next_frame
            table["state"][ids] = STATE_FILLING
            table["frame_number"][ids] = np.arange(first, first + want)
            cuts = np.flatnonzero(np.diff(ids) != 1) + 1
            for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, want].tolist()):
                src.fill_run(first + a, stack[bids[a]:bids[a] + (b - a)])
            table["timestamp"][ids] = time.time()
            table["state"][ids] = STATE_READY
            if self.subscribers == 0:
                self._unheard.update(bids)
            size, pos = self.notify_batch, 0
            while pos < want:  # batches of at most notify_batch frames
                take = min(want - pos, size - len(self._announced))
                gathered = self._announced.extend(range(first + pos, first + pos + take), bids[pos:pos + take])
                pos += take
                if gathered >= size:
                    self.flush_announcements()
        dropped = count - want if self.mode == "drop" else 0
        self.frames_dropped += dropped
        done = want + dropped
        self.frames_received += done
        self.next_frame += done
        if src.frames and self.next_frame >= src.frames:
            self._end("done")
        return done

    def _fill(self, bid: int) -> None:
        src, buf = self.source, self.buffer
        n = self.next_frame
        if self._headed[bid]:  # only the frame number and state differ from the header it holds
            buf.set_frame(bid, n, STATE_FILLING)
        else:
            header = self._header
            header.frame_number, header.state, header.timestamp = n, STATE_FILLING, 0.0
            buf.write_header(bid, header)
            self._headed[bid] = 1
        src.fill(n, self._fill_views[bid])
        buf.set_state(bid, STATE_READY, time.time())
        self._announce(n, bid)

    # -- data path in ------------------------------------------------------------
    def release_buffers(self, buffer_ids: list[int]) -> None:
        """A batch of frame_release (ipc/batch.py)."""
        for bid in buffer_ids:
            self._release(bid)

    def _release(self, bid: Any) -> None:
        if self.buffers is not None and isinstance(bid, int) and self.buffers.release(bid):
            self._unheard.discard(bid)
            self.frames_released += 1
            self.buffer.set_state(bid, STATE_EMPTY)
        else:
            self.bad_releases += 1
            self.warnings.warning("release of buffer %r that is not mapped (ignored)", bid)

    def on_release(self, msg: IpcMessage) -> None:
        if msg.msg_val == "frame_release":
            self._release(msg.params.get("buffer_id"))
        elif msg.msg_val in ("request_buffer_config", "buffer_config"):
            if self.buffer is not None:
                self.publish(IpcMessage("notify", "buffer_config", self.buffer_config()))
                if self.subscribers > 0 and (self._unheard or self._unheard_end is not None):
                    self._reannounce()

    def close(self) -> None:
        self._fill_views, self._fill_stack = [], None  # exported views of the segment
        if self.source is not None:
            self.source.close()
        if self._header_segment is not None:
            self._header_segment.unlink()
        if self.buffer is not None:
            self.buffer.close()
            self.buffer.unlink()
            log.info("unlinked shared buffer %s", self.shared_buffer_name)
            self.buffer = None
