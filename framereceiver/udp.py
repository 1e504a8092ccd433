"""UDP packet frames: a receive thread assembles frames from packets straight into shared-memory buffers.

The packet layout is a small decoder class (``PacketDecoder``): odin-data's
DummyUDP format is ``DummyUdpDecoder`` (``<II`` header: frame number, packet
number with start-of-frame bit 31 and end-of-frame bit 30, then a fixed-size
payload, the last packet of a frame shorter), so odin's own frameSimulator can
feed framechain. A Jungfrau or Excalibur layout is another class with its own
``header`` and ``parse``.

Threads: the receive thread owns the UDP sockets and writes pixels into the
buffers the control thread lends it (``lend``); it hands back every buffer as a
finished frame (complete, or incomplete after ``frame_timeout_ms``) through a
queue and wakes the control thread with an eventfd. The control thread writes
the frame header, announces complete frames, and returns incomplete ones to
the empty pool, counting them ``frames/timedout`` with their lost packets.

Logger ``framechain.framereceiver.udp``.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PacketDecoder", "DummyUdpDecoder", "UdpSource", "Finished", "DECODERS"]

log = logging.getLogger(__name__)


class PacketDecoder:
    """One packet layout: a fixed header, then a payload placed at ``packet * payload_size`` in the frame."""

    header = struct.Struct("<II")

    def parse(self, packet: memoryview) -> tuple[int, int, bool, bool]:
        """(frame number, packet number, start of frame, end of frame) of one packet."""
        raise NotImplementedError


class DummyUdpDecoder(PacketDecoder):
    """odin-data's DummyUDP packets (``DummyUDPDefinitions.h``)."""

    SOF, EOF, PACKET = 1 << 31, 1 << 30, 0x3FFFFFFF

    def parse(self, packet: memoryview) -> tuple[int, int, bool, bool]:
        frame, flags = self.header.unpack_from(packet)
        return frame, flags & self.PACKET, bool(flags & self.SOF), bool(flags & self.EOF)


DECODERS: dict[str, type[PacketDecoder]] = {"dummy_udp": DummyUdpDecoder}


@dataclass
class Finished:
    """A buffer handed back by the receive thread."""

    frame: int
    buffer_id: int
    packets_received: int
    packets_expected: int

    @property
    def complete(self) -> bool:
        return self.packets_received == self.packets_expected


class _Assembly:
    __slots__ = ("frame", "bid", "view", "seen", "received", "started")

    def __init__(self, frame: int, bid: int, view: np.ndarray, packets: int, now: float) -> None:
        self.frame, self.bid, self.view = frame, bid, view
        self.seen = bytearray(packets)
        self.received = 0
        self.started = now


class UdpSource:
    """Frames assembled from UDP packets on one or more ports (a ``streaming`` receiver source)."""

    kind = "udp"
    streaming = True

    def __init__(self, ports: list[int], address: str, shape: tuple[int, ...], dtype: str, payload_size: int,
                 frame_timeout_ms: int, rcvbuf: int, decoder: str = "dummy_udp", frames: int = 0) -> None:
        self.ports, self.address, self.shape, self.dtype = list(ports), address, tuple(shape), np.dtype(dtype)
        self.frame_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.payload_size, self.timeout = payload_size, frame_timeout_ms / 1000
        self.rcvbuf_requested, self.rcvbuf = rcvbuf, 0
        self.decoder_name, self.decoder = decoder, DECODERS[decoder]()
        self.frames, self.rate, self.acquisition_id = frames, 0.0, ""
        self.packets_per_frame = -(-self.frame_bytes // payload_size)
        self.socket: int | None = None  # the eventfd the control thread polls (the daemon registers it)
        self.finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[tuple[int, np.ndarray]] = queue.SimpleQueue()
        self.lent = 0  # buffers with the thread (control thread's count)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self.packets_received = self.packets_bad = self.packets_duplicate = self.packets_late = 0
        self.frames_no_buffer = 0

    # -- control thread ------------------------------------------------------------
    def reset(self) -> None:
        """Bind the ports and start the receive thread (at source start)."""
        if self._thread is not None:
            return
        self._socks = []
        try:
            for port in self.ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf_requested)
                s.bind((self.address, port))
                s.setblocking(False)
                self._socks.append(s)
        except OSError:
            for s in self._socks:
                s.close()
            self._socks = []
            raise
        self.rcvbuf = self._socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports 2x
        if self.rcvbuf < self.rcvbuf_requested:
            log.warning("udp: the kernel capped the socket receive buffer at %d bytes (%d asked); raise "
                        "net.core.rmem_max to avoid packet loss at high rates", self.rcvbuf, self.rcvbuf_requested)
        self.socket = os.eventfd(0, os.EFD_NONBLOCK)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="udp-rx", daemon=True)
        self._thread.start()
        log.info("udp: receiving %s frames of %d packets on %s:%s", list(self.shape), self.packets_per_frame,
                 self.address, self.ports)

    def lend(self, bid: int, view: np.ndarray) -> None:
        """Give the receive thread an empty buffer (its pixel memory as a flat uint8 view)."""
        self.lent += 1
        self._free.put((bid, view))

    def take_finished(self) -> list[Finished]:
        """Buffers the thread has finished with (clears the wake-up eventfd)."""
        if self.socket is not None:
            try:
                os.eventfd_read(self.socket)
            except BlockingIOError:
                pass
        out = []
        while True:
            try:
                out.append(self.finished.get_nowait())
            except queue.Empty:
                self.lent -= len(out)
                return out

    def close(self) -> list[int]:
        """Stop the thread and close the sockets; the ids of buffers it still held (still lent)."""
        held: list[int] = []
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
        for s in self._socks:
            s.close()
        self._socks = []
        while True:
            try:
                held.append(self._free.get_nowait()[0])
            except queue.Empty:
                break
        if self.socket is not None:
            os.close(self.socket)
            self.socket = None
        return held

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "rx_ports": self.ports, "rx_address": self.address, "shape": list(self.shape),
                "dtype": self.dtype.name, "packet_size": self.payload_size, "decoder": self.decoder_name,
                "frame_timeout_ms": round(self.timeout * 1000), "rcvbuf": self.rcvbuf,
                "packets_per_frame": self.packets_per_frame, "frames": self.frames,
                "packets": {"received": self.packets_received, "bad": self.packets_bad,
                            "duplicate": self.packets_duplicate, "late": self.packets_late},
                "frames_no_buffer": self.frames_no_buffer}

    # -- receive thread --------------------------------------------------------------
    def _run(self) -> None:
        dec, hsize, payload = self.decoder, self.decoder.header.size, self.payload_size
        expected, frame_bytes = self.packets_per_frame, self.frame_bytes
        scratch = bytearray(hsize + payload + 64)
        mv = memoryview(scratch)
        data = np.frombuffer(scratch, np.uint8)
        open_frames: dict[int, _Assembly] = {}
        abandoned: dict[int, None] = {}  # recent frames seen without a buffer or already finished
        spare: list[tuple[int, np.ndarray]] = []
        socks = self._socks
        wait = min(self.timeout, 0.05)

        def finish(a: _Assembly) -> None:
            del open_frames[a.frame]
            abandoned[a.frame] = None
            if len(abandoned) > 4096:
                abandoned.pop(next(iter(abandoned)))
            self.finished.put(Finished(a.frame, a.bid, a.received, expected))
            os.eventfd_write(self.socket, 1)

        while not self._stop.is_set():
            readable, _, _ = select.select(socks, [], [], wait)
            now = time.monotonic()
            for s in readable:
                for _ in range(256):
                    try:
                        n = s.recv_into(scratch)
                    except BlockingIOError:
                        break
                    self.packets_received += 1
                    if n < hsize:
                        self.packets_bad += 1
                        continue
                    frame, pkt, _sof, _eof = dec.parse(mv)
                    offset, length = pkt * payload, n - hsize
                    if pkt >= expected or offset + length > frame_bytes or (length != payload and
                                                                           offset + length != frame_bytes):
                        self.packets_bad += 1
                        continue
                    a = open_frames.get(frame)
                    if a is None:
                        if frame in abandoned:
                            self.packets_late += 1
                            continue
                        if not spare:
                            try:
                                spare.append(self._free.get_nowait())
                            except queue.Empty:
                                self.frames_no_buffer += 1
                                abandoned[frame] = None
                                continue
                        bid, view = spare.pop()
                        a = open_frames[frame] = _Assembly(frame, bid, view, expected, now)
                    if a.seen[pkt]:
                        self.packets_duplicate += 1
                        continue
                    a.seen[pkt] = 1
                    a.view[offset:offset + length] = data[hsize:n]
                    a.received += 1
                    if a.received == expected:
                        finish(a)
            for a in [a for a in open_frames.values() if now - a.started > self.timeout]:
                finish(a)
        for a in list(open_frames.values()):  # stopping: hand back what is open, as incomplete
            finish(a)
        for bid, view in spare:
            self._free.put((bid, view))
