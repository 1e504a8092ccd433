"""SharedMemoryController: frame_ready in, Frames out, frame_release back.

Owns the data-path sockets (ready SUB, release PUB) and is driven by the
daemon's single control thread. Plugin threads never touch a socket: in
zero-copy mode a Frame's release callback queues the buffer id and wakes the
control thread through an eventfd.

Logger ``framechain.frameprocessor.shm``. Every frame_ready ends in exactly one of:
passed to the chain, counted bad, or counted unrouted (no plugin attached);
all three release the buffer.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from framechain.ipc.batch import MAX_BATCH, PendingBatch, decode_batch, is_batch
from framechain.ipc.channel import IpcChannel
from framechain.ipc.control import ThrottledLog
from framechain.ipc.errors import FramechainError, ProtocolError, ShmError
from framechain.ipc.message import IpcMessage, frame_notification
from framechain.ipc.series_header import read_arrays
from framechain.ipc.shm import COMPRESSION_CODES, FRAME_HEADER, STATE_READY, FrameHeader, SharedBuffer

from .chain import PluginChain
from .decoders import FrameDecoder
from .frame import Compressed, DetectorHeader, EndOfAcquisition, Frame, FrameBatch
from .pool import DataBlockPool, PoolExhausted

__all__ = ["SharedMemoryController"]

log = logging.getLogger(__name__)
_CONFIG_RETRY_S = 0.25
_BATCH_ITEM_FRAMES = 64  # frames of a batch per plugin queue item (a full queue holds 64 items)
_VARYING = np.zeros(FRAME_HEADER.size, bool)
_VARYING[6:16] = _VARYING[24:32] = True  # state, frame number, timestamp: the rest is the layout
_LAYOUT_BYTES = np.flatnonzero(~_VARYING)


def _short(params: Any, limit: int = 120) -> str:
    text = repr(params)
    return text if len(text) <= limit else text[:limit] + "..."


class ReleaseQueue:
    """Buffer releases from any thread to the control thread: a queue plus an eventfd that wakes it.

    Owned by the processor for its whole life (never closed while plugin threads may
    still drop frames), so a late release can never write to a recycled descriptor.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[tuple[int, int, int]] = SimpleQueue()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False
        self._armed = False  # a wakeup is pending: later puts need no system call until the next drain

    def put(self, frame: int, bid: int, generation: int = 0) -> None:
        self._queue.put((frame, bid, generation))
        if not self._armed:
            self._armed = True
            os.eventfd_write(self.fd, 1)

    def drain(self) -> list[tuple[int, int, int]]:
        """Every release queued so far (resets the wakeup)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        self._armed = False  # before reading the queue: a put from now on wakes us again
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except Empty:
                return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __repr__(self) -> str:
        return f"<ReleaseQueue fd={self.fd} {'closed' if self.closed else 'open'}>"


class SharedMemoryController:
    """Connects to one receiver and turns its buffers into Frames."""

    def __init__(self, ready_cnxn: str, release_cnxn: str, chain: PluginChain, pool: DataBlockPool,
                 releases: ReleaseQueue, shared_buffer_name: str | None = None, copy: bool = True,
                 context: zmq.Context | None = None) -> None:
        self.ready_cnxn, self.release_cnxn = ready_cnxn, release_cnxn
        self.chain, self.pool, self.copy = chain, pool, copy
        self.ready = IpcChannel(zmq.SUB, context, hwm=0)
        # XPUB: we see the receiver's subscription arrive, and hold releases until it has (a PUB drops
        # what it sends before the subscriber has joined, and a lost release is a lost buffer)
        self.release = IpcChannel(zmq.XPUB, context, hwm=0)
        self.release_subscribed = False
        self._unsent: deque[bytes] = deque()
        # the ready SUB's connection events tell us when the receiver goes away and comes back
        self._link = self.ready.socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.receiver_connected = False
        try:
            self.ready.connect(ready_cnxn)
            self.release.connect(release_cnxn)
        except FramechainError:
            self._link.close(linger=0)
            self.ready.close()
            self.release.close()
            raise
        self.buffer: SharedBuffer | None = None
        self.shared_buffer_name = shared_buffer_name
        self.releases = releases
        self.outstanding = 0  # zero-copy frames handed to plugins and not yet released
        self.waiting: deque[dict[str, Any]] = deque()  # frame_ready seen before the buffer was mapped
        self.stalled: tuple[Frame | EndOfAcquisition, list] | None = None
        self.stalled_ready: dict[str, Any] | None = None  # copy mode: pool exhausted
        self._last_request = 0.0
        self._warnings = ThrottledLog(log, 5, "status frames/bad")
        self._layout_key: tuple | None = None
        self._layout_value: tuple = ()
        self._layout_bytes: np.ndarray | None = None  # the cached layout's header bytes (batch check)
        self.detector_mask = False  # shared_memory/detector_mask
        self.decoder: FrameDecoder | None = None  # fr_setup/decoder: buffers of an odin-data frameReceiver
        self.headers: dict[str, DetectorHeader] = {}  # detector series headers by acquisition id
        self.batch_releases = False  # the receiver batches (buffer_config notify_batch): so do our releases
        self._releases = PendingBatch("frame_release")  # batched releases not yet sent
        self.generation = 0  # moves on when the receiver's segment is replaced: older releases are not sent
        self.receiver_lost = 0  # times the receiver went away (its subscription to our releases ended)
        self.releases_stale = 0  # zero-copy releases of a replaced segment's buffers, not sent
        self.in_acquisition = False  # frames arrived since the last end of acquisition
        self._remap_due = False  # the receiver came back: hold its frames until its buffer_config arrives
        self._use_masks: dict[tuple[str, str], np.ndarray] = {}
        self.reset_statistics()
        if shared_buffer_name:
            self._map(shared_buffer_name, quiet=True)
        self.request_config()

    def reset_statistics(self) -> None:
        self.frames_received = 0
        self.frames_released = 0
        self.frames_bad = 0
        self.frames_unrouted = 0
        self.frames_discarded = 0
        self.frames_compressed = 0
        self.headers_bad = 0
        self.acquisitions = 0
        self.batches_received = 0
        self.batches_bad = 0
        self.last_bad = ""

    # -- buffer config --------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self.buffer is not None

    def request_config(self) -> None:
        self._last_request = time.monotonic()
        self.release.send(IpcMessage("cmd", "request_buffer_config", {}))

    @property
    def wakeup_fd(self) -> int:
        return self.releases.fd

    def _map(self, name: str, quiet: bool = False) -> None:
        """Map ``name``; remap when the receiver rebuilt it (another segment under the same name)."""
        try:
            new = SharedBuffer.open(name)
        except ShmError as err:
            if not quiet:
                log.warning("%s", err)
            return
        if self.buffer is not None and self.buffer.name == name and self.buffer.identity == new.identity:
            new.close()
            return
        if self.buffer is not None:
            self._layout_key, self._layout_value, self._layout_bytes = None, (), None
            self.buffer.close()  # views plugins still hold keep the old mapping alive until they go
            self.generation += 1
            stale = len(self._unsent) + self._releases.clear()
            self._unsent.clear()  # releases of the old segment's buffers must not free the new one's
            self.releases_stale += stale
        self.buffer = new
        self.shared_buffer_name = name
        log.info("mapped shared buffer %s: %d buffers of %d bytes", name, new.num_buffers, new.buffer_size)

    def _segment_replaced(self) -> bool:
        """Whether the segment under our name is another one now (remapped to it if so); off the hot path."""
        name = self.shared_buffer_name
        if not name or self.buffer is None:
            return False
        old = self.buffer.identity
        self._map(name, quiet=True)
        return self.buffer is not None and self.buffer.identity != old

    def tick(self) -> None:
        """Periodic work: follow the receiver's connection; ask again for the buffer config until we have it
        (PUB/SUB may lose the first)."""
        if self._link.poll(0):  # before the step's frames: see the daemon's _step
            self._link_events()
        if (self.buffer is None or self._remap_due) and time.monotonic() - self._last_request > _CONFIG_RETRY_S:
            self.request_config()

    def _link_events(self) -> None:
        while self._link.poll(0):
            event = recv_monitor_message(self._link)["event"]
            if event == zmq.EVENT_CONNECTED:
                if self.receiver_lost:
                    log.info("the receiver is back on %s: asking for its buffer config", self.ready_cnxn)
                    self._remap_due = True  # asked again until it answers (our SUB may join after its reply)
                    self.request_config()
                self.receiver_connected = True
            elif event == zmq.EVENT_DISCONNECTED and self.receiver_connected:
                self.receiver_connected = False
                self.receiver_lost += 1
                log.warning("the receiver on %s went away; waiting for it (frames we hold of its segment are not "
                            "released to another)", self.ready_cnxn)

    # -- data path -------------------------------------------------------------
    def on_ready(self, limit: int = 256) -> None:
        """Read up to ``limit`` messages from the ready channel (stops early when stalled)."""
        if self.busy:
            return
        for raw in self.ready.pending(limit):
            if is_batch(raw):
                self._on_batch(raw)
                if self.busy:
                    return
                continue
            try:
                msg = IpcMessage.decode(raw)
            except ValueError as err:
                self._warnings.warning("ignored malformed data-path message: %s", err)
                continue
            if msg.msg_val == "frame_ready":
                if self.buffer is None or self._remap_due:
                    self.waiting.append(msg.params)
                    self.request_config()
                else:
                    self._handle_checked(msg.params)
            elif msg.msg_val == "buffer_config":
                name = msg.params.get("shared_buffer_name")
                batch = msg.params.get("notify_batch", 1)
                self.batch_releases = isinstance(batch, int) and not isinstance(batch, bool) and batch > 1
                if isinstance(name, str):
                    self._map(name)
                    self._remap_due = False
                    self.drain_waiting()
            if self.busy:
                return  # leave the rest on the socket until the stalled frame is placed

    def _on_batch(self, raw: bytes) -> None:
        """A framechain batch of frame_ready (ipc/batch.py): each frame as if announced alone, in order."""
        try:
            kind, frames, bids = decode_batch(raw)
        except ProtocolError as err:
            self.batches_bad += 1
            self._warnings.warning("ignored malformed data-path batch: %s", err)
            return
        if kind != "frame_ready":
            self.batches_bad += 1
            self._warnings.warning("ignored a %s batch on the frame_ready channel", kind)
            return
        self.batches_received += 1
        batch = FrameBatch()
        i, n = 0, len(frames)
        while i < n:
            if self.buffer is None or self._remap_due or self.busy:  # the rest waits, in order
                self._dispatch_batch(batch)
                self.waiting.extend({"frame": f, "buffer_id": b} for f, b in zip(frames[i:], bids[i:]))
                if self.buffer is None or self._remap_due:
                    self.request_config()
                return
            room = _BATCH_ITEM_FRAMES - len(batch)
            k = self._checked_run(frames[i:i + room], bids[i:i + room], batch)
            if self.stalled_ready is None and not k:  # this one needs the careful look
                number, bid = frames[i], bids[i]
                try:
                    frame = self._ready_frame(number, bid, None)
                except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
                    self._bad(f"malformed frame_ready in a batch: {type(err).__name__}: {err}", None, number)
                    frame = None
                if frame is not None:
                    batch.append(frame)
                k = 1
            if self.stalled_ready is not None:  # the pool is full: that frame is retried, the rest wait
                self._dispatch_batch(batch)
                self.waiting.extend({"frame": f, "buffer_id": b} for f, b in zip(frames[i + k:], bids[i + k:]))
                return
            i += k
            if len(batch) >= _BATCH_ITEM_FRAMES:
                self._dispatch_batch(batch)
                batch = FrameBatch()
        self._dispatch_batch(batch)

    def _checked_run(self, frames: list[int], bids: list[int], batch: FrameBatch) -> int:
        """Frames of a batch whose headers carry the cached layout, checked as one array, appended to ``batch``:
        how many entries (from the first) were used. 0: the next one needs ``_ready_frame``'s careful look.
        When the pool runs out at entry k, ``stalled_ready`` holds it (retried later) and k + 1 is returned."""
        ref, buf = self._layout_bytes, self.buffer
        if ref is None or self.decoder is not None or self._layout_value[5] is not None or not frames:
            return 0
        ids = np.array(bids, np.int64)
        numbers = np.array(frames, np.int64)
        if ids.min() < 0 or ids.max() >= buf.num_buffers or numbers.min() < 0:
            return 0
        rows = buf.header_table()[ids]
        ok = ((rows.view(np.uint8).reshape(len(ids), -1)[:, _LAYOUT_BYTES] == ref).all(axis=1)
              & (rows["state"] == STATE_READY) & (rows["frame_number"].astype(np.int64) == numbers))
        k = len(ids) if ok.all() else int(np.argmin(ok))
        if not k:
            return 0
        stamps = rows["timestamp"][:k].tolist()
        _dtype, shape, _size, acq, dset, _packed, views = self._layout_value
        wrap, attach = self._wrap, self._attach_header if self.headers else None
        self.in_acquisition = True
        for j in range(k):
            self.frames_received += 1
            bid = bids[j]
            frame = wrap(None, views[bid], frames[j], bid, dset, acq, stamps[j])
            if frame is None:
                return j + 1
            if attach is not None:
                attach(frame, shape)
            batch.append(frame)
        return k

    def _dispatch_batch(self, batch: FrameBatch) -> None:
        """Frames of a batch to the chain as one queue item per plugin (a stall keeps them together)."""
        if batch:
            self._dispatch(batch)

    def _start_of_acquisition(self, p: dict[str, Any]) -> None:
        """A detector series' header: kept for its frames (frame.detector; frame.mask if asked)."""
        acq = p.get("acquisition_id", "")
        layout = p.get("arrays") or {}
        if not isinstance(acq, str) or not isinstance(layout, dict):
            self.headers_bad += 1
            self._warnings.warning("ignored a start of acquisition with a malformed acquisition_id or arrays: %s",
                                   _short(p))
            return
        try:
            arrays = read_arrays(p.get("header_segment"), layout) if layout else {}
        except ShmError as err:
            self.headers_bad += 1
            self._warnings.warning("series %s: detector header arrays not read: %s", acq, err)
            arrays = {}
        det = p.get("detector")
        params = {k: v for k, v in det.items() if isinstance(v, (int, float, str))} if isinstance(det, dict) else {}
        self.headers[acq] = DetectorHeader(acq, params, arrays)
        for key, arr in arrays.items():
            kind, _, dataset = key.partition("/")
            if kind == "pixel_mask" and arr.dtype.kind in "ui":
                use = arr == 0
                use.flags.writeable = False
                self._use_masks[(acq, dataset)] = use
        while len(self.headers) > 4:  # the last few series: frames of the previous one may still be arriving
            old = next(iter(self.headers))
            del self.headers[old]
            for k in [k for k in self._use_masks if k[0] == old]:
                del self._use_masks[k]
        log.info("series %s: detector header with %d parameters, arrays %s", acq, len(params), sorted(arrays))

    def _attach_header(self, frame: Frame, pixels: tuple[int, ...]) -> None:
        hdr = self.headers.get(frame.acquisition_id)
        if hdr is not None:
            frame.detector = hdr
            if self.detector_mask:
                use = self._use_masks.get((frame.acquisition_id, frame.dataset))
                if use is not None and use.shape == pixels:
                    frame.mask = use

    def handle_ready(self, p: dict[str, Any]) -> None:
        if p.get("start_of_acquisition"):
            self._start_of_acquisition(p)
            return
        if p.get("end_of_acquisition"):
            acq, frames = p.get("acquisition_id", ""), p.get("frames", 0)
            if not isinstance(acq, str) or isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
                self._bad(f"malformed end of acquisition {_short(p)}: acquisition_id must be a string and "
                          "frames a count", None, None)
                return
            self.acquisitions += 1
            self.in_acquisition = False
            eoa = EndOfAcquisition(acq, frames)
            self._dispatch(eoa)
            return
        frame = self._ready_frame(p.get("frame"), p.get("buffer_id"), p)
        if frame is not None:
            self._dispatch(frame)

    def _ready_frame(self, number: Any, bid: Any, p: dict[str, Any] | None) -> Frame | None:
        """The Frame of one announced buffer; None when it was bad (counted, released) or the pool is full
        (``stalled_ready`` then holds the notice, made from ``number`` and ``bid`` when ``p`` is None)."""
        self.frames_received += 1
        self.in_acquisition = True
        buf = self.buffer
        if self.decoder is not None:
            return self._handle_foreign(p or {"frame": number, "buffer_id": bid}, number, bid)
        if not self._valid_bid(bid):
            self._bad(f"frame_ready names buffer {bid!r}, outside 0..{buf.num_buffers - 1}", None, number)
            return
        fields = buf.header_fields(bid)
        layout = self._layout(fields, buf)
        if layout.__class__ is str:
            if self._segment_replaced():  # a new receiver rebuilt the segment under our name: read it there
                self.frames_received -= 1
                return self._ready_frame(number, bid, p)
            self._bad(layout, bid, number)
            return
        if number != fields[3]:
            self._bad(f"frame_ready says frame {number} but the header holds frame {fields[3]}", bid, number)
            return
        dtype, shape, size, acq, dset, packed, views = layout
        if packed is not None:  # a compressed chunk travels as bytes (its length varies frame to frame)
            view = buf.data(bid, np.uint8, (size,))
            view.flags.writeable = False
        else:
            view = views[bid]  # receiver memory (read-only views): plugins read it, never write it
        frame = self._wrap(p, view, number, bid, dset, acq, fields[5])
        if frame is None:
            return None
        if packed is not None:
            frame.compressed = packed
            self.frames_compressed += 1
        if self.headers:
            self._attach_header(frame, packed.shape if packed is not None else shape)
        return frame

    def _wrap(self, p: dict[str, Any] | None, view: np.ndarray, number: int, bid: int, dset: str, acq: str,
              ts: float) -> Frame | None:
        """A Frame over ``view``: copied into the pool and the buffer released (copy mode), or the view itself,
        released when the frame dies. None when the pool is full (the frame_ready is retried)."""
        if self.copy:
            try:
                block = self.pool.acquire(view.nbytes)
            except PoolExhausted:
                self.frames_received -= 1  # counted again on retry
                self.stalled_ready = p if p is not None else {"frame": number, "buffer_id": bid}
                return None
            data = block.view(view.dtype, view.shape)
            np.copyto(data, view)
            self._send_release(number, bid)
            pool = self.pool
            return Frame(data, number, dset, acq, ts, on_release=lambda: pool.release(block))
        releases, gen = self.releases, self.generation
        self.outstanding += 1
        return Frame(view, number, dset, acq, ts, on_release=lambda: releases.put(number, bid, gen))

    def _handle_foreign(self, p: dict[str, Any], number: Any, bid: Any) -> Frame | None:
        """A frame in an odin-data receiver's buffer: its decoder's header, then the pixels (``decoders``)."""
        dec, buf = self.decoder, self.buffer
        if not self._valid_bid(bid):
            self._bad(f"frame_ready names buffer {bid!r}, outside 0..{buf.num_buffers - 1}", None, number)
            return
        if dec.header_size + dec.nbytes > buf.buffer_size:
            self._bad(f"a {list(dec.shape)} {dec.dtype.name} frame after the {dec.header_size}-byte {dec.name} "
                      f"header does not fit the {buf.buffer_size}-byte buffers (fr_setup/decoder)", bid, number)
            return
        frame_number, ts, problem = dec.check(buf.unpack_header(bid, dec.header))
        if problem is None and number != frame_number:
            problem = f"frame_ready says frame {number} but the {dec.name} header holds frame {frame_number}"
        if problem is not None:
            self._bad(problem, bid, number)
            return
        view = buf.views(dec.dtype, dec.shape, writeable=False, header_size=dec.header_size)[bid]
        return self._wrap(p, view, frame_number, bid, dec.dataset, "", ts)

    def _valid_bid(self, bid: Any) -> bool:
        """Whether ``bid`` names a buffer of the mapped segment."""
        return (self.buffer is not None and isinstance(bid, int) and not isinstance(bid, bool)
                and 0 <= bid < self.buffer.num_buffers)

    def _layout(self, fields: tuple, buf: SharedBuffer) -> tuple | str:
        """Validate a header's layout, cached: frames of a run share dtype, shape and names.

        Returns (dtype, shape, size, acquisition_id, dataset, compressed, views) or a problem sentence; for a
        compressed frame (``compressed`` not None) dtype and shape are those of the pixels, size the chunk's,
        and views None; otherwise views are the segment's read-only per-buffer pixel views.
        """
        if fields[2] != STATE_READY:
            return f"buffer state is {fields[2]}, not ready ({STATE_READY})"
        key = (fields[0], fields[1], fields[4], fields[6], fields[7], fields[8], fields[9:13], fields[13], fields[14],
               buf.buffer_size)
        if key == self._layout_key:
            return self._layout_value
        hdr = FrameHeader.from_fields(fields)
        problem = hdr.problem(buf.buffer_size)
        if problem is not None:
            return problem
        self._layout_key = key
        self._layout_bytes = np.frombuffer(FRAME_HEADER.pack(*fields), np.uint8)[_LAYOUT_BYTES]
        packed = (Compressed(COMPRESSION_CODES[hdr.compression], np.dtype(hdr.dtype), hdr.shape)
                  if hdr.compression else None)
        views = None if packed else buf.views(hdr.dtype, hdr.shape, writeable=False)
        self._layout_value = (np.dtype(hdr.dtype), hdr.shape, hdr.data_size, hdr.acquisition_id, hdr.dataset, packed,
                              views)
        return self._layout_value

    def _dispatch(self, item: Frame | FrameBatch | EndOfAcquisition) -> None:
        targets = self.chain.sources
        if not targets:
            if item.__class__ is Frame:
                self.frames_unrouted += 1
            elif item.__class__ is FrameBatch:
                self.frames_unrouted += len(item)
            return  # the Frame dies here and releases its buffer
        if item.__class__ is Frame:
            item.fan_out(len(targets))
        elif item.__class__ is FrameBatch and len(targets) > 1:
            for frame in item:
                frame.fan_out(len(targets))
        left = self.chain.offer(item, list(targets))
        if left:
            self.stalled = (item, left)

    def inject(self, item: EndOfAcquisition) -> None:
        """Send a marker down the chain as if the receiver had (odin's inject_eoa); not while a frame stalls."""
        if not self.busy:
            self._dispatch(item)

    def drain_waiting(self) -> None:
        """Handle frames that arrived before the segment was mapped, in order, until one stalls."""
        while self.buffer is not None and self.waiting and not self.busy:
            self._handle_checked(self.waiting.popleft())

    def _handle_checked(self, p: dict[str, Any]) -> None:
        try:
            self.handle_ready(p)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
            # a notice whose fields have the wrong types: counted, never a fault of the loop
            self._bad(f"malformed frame_ready {_short(p)}: {type(err).__name__}: {err}", None, p.get("frame"))

    def retry(self) -> None:
        """Try again to place a stalled frame (blocking connection full, or pool exhausted)."""
        if self.stalled is not None:
            item, targets = self.stalled
            left = self.chain.offer(item, targets)
            self.stalled = (item, left) if left else None
        elif self.stalled_ready is not None:
            p, self.stalled_ready = self.stalled_ready, None
            self.handle_ready(p)
        self.drain_waiting()

    def _bad(self, problem: str, bid: int | None, number: Any) -> None:
        self.frames_bad += 1
        self.last_bad = f"frame {number}: {problem}"
        self._warnings.warning("bad frame dropped: %s", self.last_bad)
        if bid is not None:
            self._send_release(number if isinstance(number, int) else -1, bid)

    # -- releases ----------------------------------------------------------------
    def _send_release(self, frame: int, bid: int) -> None:
        if self.batch_releases:
            self.frames_released += 1
            if self._releases.add(frame, bid) >= MAX_BATCH:
                self.flush_releases()
            return
        raw = frame_notification("frame_release", frame, bid)
        self._send_raw_release(raw)
        self.frames_released += 1

    def flush_releases(self) -> None:
        """Send the releases batched since the last flush (the daemon calls this after every step)."""
        raw = self._releases.take()
        if raw is not None:
            self._send_raw_release(raw)

    def _send_raw_release(self, raw: bytes) -> None:
        if self.release_subscribed:
            self.release.socket.send(raw)
        else:
            self._unsent.append(raw)

    def on_release_channel(self) -> None:
        """Subscription events from the receiver's release SUB: send held releases once it has joined."""
        for joined in self.release.subscription_events():
            self.release_subscribed = joined
        while self.release_subscribed and self._unsent:
            self.release.socket.send(self._unsent.popleft())

    def drain_releases(self) -> None:
        """Send the releases of zero-copy frames that plugin threads have dropped."""
        for frame, bid, gen in self.releases.drain():
            self.outstanding -= 1
            if gen != self.generation:
                self.releases_stale += 1
                continue
            self._send_release(frame, bid)

    def discard_pending(self) -> None:
        """At shutdown: release buffers announced but not yet taken (counted in frames/discarded)."""
        for raw in self.ready.pending():
            if is_batch(raw):
                try:
                    kind, frames, bids = decode_batch(raw)
                except ProtocolError:
                    continue
                if kind == "frame_ready":
                    self.waiting.extend({"frame": f, "buffer_id": b} for f, b in zip(frames, bids))
                continue
            try:
                msg = IpcMessage.decode(raw)
            except ValueError:
                continue
            if msg.msg_val == "frame_ready":
                self.waiting.append(msg.params)
        for p in self.waiting:
            bid = p.get("buffer_id")
            if self._valid_bid(bid):
                self.frames_discarded += 1
                self._send_release(p.get("frame") if isinstance(p.get("frame"), int) else -1, bid)
        self.waiting.clear()
        self.flush_releases()

    @property
    def busy(self) -> bool:
        return self.stalled is not None or self.stalled_ready is not None

    # -- reporting --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        b = self.buffer
        return {
            "shared_memory": {"configured": b is not None and self.release_subscribed,
                              "mapped": b is not None, "release_subscribed": self.release_subscribed,
                              "releases_held": len(self._unsent),
                              "shared_buffer_name": self.shared_buffer_name or "",
                              "receiver_connected": self.receiver_connected, "receiver_lost": self.receiver_lost,
                              "releases_stale": self.releases_stale, "release_batching": self.batch_releases,
                              "num_buffers": b.num_buffers if b else 0, "buffer_size": b.buffer_size if b else 0,
                              "header_size": FRAME_HEADER.size, "copy": self.copy,
                              "fr_ready_cnxn": self.ready_cnxn, "fr_release_cnxn": self.release_cnxn,
                              "detector": self._header_status(),
                              "decoder": self.decoder.describe() if self.decoder is not None else {}},
            "frames": {"received": self.frames_received, "released": self.frames_released,
                       "bad": self.frames_bad, "unrouted": self.frames_unrouted,
                       "discarded": self.frames_discarded, "outstanding": self.outstanding,
                       "waiting": len(self.waiting), "stalled": self.busy,
                       "acquisitions": self.acquisitions, "last_bad": self.last_bad,
                       "compressed": self.frames_compressed},
            "batches": {"received": self.batches_received, "bad": self.batches_bad},
        }

    def _header_status(self) -> dict[str, Any]:
        last = self.headers[next(reversed(self.headers))] if self.headers else None
        return {"series": list(self.headers), "headers_bad": self.headers_bad, "mask": self.detector_mask,
                "parameters": len(last.parameters) if last else 0, "arrays": sorted(last.arrays) if last else []}

    def close(self) -> None:
        """Close the data path (the ReleaseQueue is the processor's and stays open)."""
        self.drain_releases()
        self.flush_releases()
        self._layout_key, self._layout_value, self._layout_bytes = None, (), None  # its views keep the mapping
        if self._unsent:
            log.warning("%d releases never reached the receiver (it never subscribed to %s)",
                        len(self._unsent), self.release_cnxn)
        self._link.close(linger=0)
        self.ready.socket.disable_monitor()
        self.ready.close()
        self.release.socket.close(linger=2000)  # let queued releases reach the receiver
        if self.buffer is not None:
            self.buffer.close()
