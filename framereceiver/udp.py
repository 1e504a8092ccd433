"""UDP packet frames: a receive thread assembles frames from packets straight into shared-memory buffers.

The packet layout is a ``PacketLayout`` (``udp_assembler``): odin-data's
DummyUDP format is ``DUMMY_UDP`` (``<II`` header: frame number, packet number
with start-of-frame bit 31 and end-of-frame bit 30, then a fixed-size payload,
the last packet of a frame shorter), so odin's own frameSimulator can feed
framechain. A Jungfrau or Excalibur layout is another ``PacketLayout`` in
``DECODERS``.

Threads: the receive thread owns the UDP sockets; its ``PacketAssembler``
receives packets in ``recvmmsg`` batches and writes pixels into the buffers the
control thread lends it (``lend``), in compiled code without the GIL. It hands
back every buffer as a finished frame (complete, or incomplete after
``frame_timeout_ms``) through a queue and wakes the control thread with an
eventfd. The control thread writes the frame header, announces complete
frames, and returns incomplete ones to the empty pool, counting them
``frames/timedout`` with their lost packets.

Logger ``framechain.framereceiver.udp``.
"""

from __future__ import annotations

import logging
import mmap
import socket
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .udp_assembler import PacketAssembler, PacketLayout

__all__ = ["DUMMY_UDP", "DECODERS", "UdpSource", "Finished"]

log = logging.getLogger(__name__)

#: odin-data's DummyUDP packets (``DummyUDPDefinitions.h``)
DUMMY_UDP = PacketLayout(header_size=8, frame_field=(0, 4), packet_field=(4, 4), packet_mask=0x3FFFFFFF,
                         sof_bit=31, eof_bit=30)

DECODERS: dict[str, PacketLayout] = {"dummy_udp": DUMMY_UDP}


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


class UdpSource:
    """Frames assembled from UDP packets on one or more ports (a ``streaming`` receiver source)."""

    kind = "udp"
    streaming = True

    def __init__(self, ports: list[int], address: str, shape: tuple[int, ...], dtype: str, payload_size: int,
                 frame_timeout_ms: int, rcvbuf: int, decoder: str = "dummy_udp", frames: int = 0,
                 batched: bool = True) -> None:
        self.ports, self.address, self.shape, self.dtype = list(ports), address, tuple(shape), np.dtype(dtype)
        self.frame_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.payload_size, self.timeout = payload_size, frame_timeout_ms / 1000
        self.rcvbuf_requested, self.rcvbuf = rcvbuf, 0
        self.decoder_name, self.layout = decoder, DECODERS[decoder]
        self.batched = batched
        self.frames, self.rate, self.acquisition_id = frames, 0.0, ""
        self.packets_per_frame = -(-self.frame_bytes // payload_size)
        self.socket: int | None = None  # readable when frames are finished: the daemon polls it
        self.lent = 0  # buffers with the thread (control thread's count)
        self._thread: threading.Thread | None = None
        self._socks: list[socket.socket] = []
        self._pool: tuple[np.ndarray, np.ndarray] | None = None
        self._asm: PacketAssembler | None = None
        self._counted = dict.fromkeys(("received", "bad", "duplicate", "late", "no_buffer"), 0)  # earlier runs

    # -- counters (read by the control thread; written by the receive thread) --------
    def _count(self, key: str) -> int:
        return self._counted[key] + (self._asm.counters()[key] if self._asm is not None else 0)

    @property
    def frames_no_buffer(self) -> int:
        """Frames whose first packet found no free buffer (dropped, their packets counted late)."""
        return self._count("no_buffer")

    # -- control thread ------------------------------------------------------------
    def attach(self, mem: np.ndarray, bases: np.ndarray) -> None:
        """The shared buffer the frames go to: its bytes (1-D uint8) and each buffer's pixel offset in them.

        Every page is touched once here (the same byte written back), so that the receive loop takes no page
        faults on a new segment: shared memory is allocated on first write."""
        page = mmap.PAGESIZE
        mem[::page] = mem[::page]
        self._pool = (mem, bases)

    def reset(self) -> None:
        """Bind the ports and start the receive thread (at source start)."""
        if self._thread is not None:
            return
        if self._pool is None:
            raise RuntimeError("udp source: attach() the shared buffer before reset()")
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
        if self._asm is not None:
            self._counted = {k: v + self._asm.counters()[k] for k, v in self._counted.items()}
        self._asm = PacketAssembler(self.layout, self.payload_size, self.frame_bytes, *self._pool, self._socks,
                                    self.timeout, batched=self.batched)
        self.socket = self._asm.fileno()
        self._thread = threading.Thread(target=self._asm.run, name="udp-rx", daemon=True)
        self._thread.start()
        log.info("udp: receiving %s frames of %d packets on %s:%s (%s)", list(self.shape), self.packets_per_frame,
                 self.address, self.ports, "recvmmsg batches" if self.batched else "one recv per packet")

    def lend(self, bid: int) -> None:
        """Give the receive thread an empty buffer."""
        self.lent += 1
        self._asm.lend(bid)

    def take_finished(self) -> list[Finished]:
        """Buffers the thread has finished with."""
        if self._asm is None:
            return []
        out = [Finished(frame, bid, received, self.packets_per_frame)
               for frame, bid, received in self._asm.take_finished()]
        self.lent -= len(out)
        return out

    def close(self) -> list[int]:
        """Stop the thread (it hands back its open frames, incomplete; ``take_finished`` has them) and close the
        sockets; the ids of buffers it held unused (still lent)."""
        held: list[int] = []
        if self._thread is not None:
            self._asm.stop()
            self._thread.join(5)
            self._thread = None
            held = self._asm.unused()
        for s in self._socks:
            s.close()
        self._socks = []
        self.socket = None
        return held

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "rx_ports": self.ports, "rx_address": self.address, "shape": list(self.shape),
                "dtype": self.dtype.name, "packet_size": self.payload_size, "decoder": self.decoder_name,
                "frame_timeout_ms": round(self.timeout * 1000), "rcvbuf": self.rcvbuf,
                "packets_per_frame": self.packets_per_frame, "frames": self.frames,
                "receive": "recvmmsg" if self.batched else "recv",
                "packets": {k: self._count(k) for k in ("received", "bad", "duplicate", "late")},
                "frames_no_buffer": self.frames_no_buffer}
