"""Frame assembly from UDP packets in one compiled loop that never takes the GIL.

``PacketAssembler.run`` is the receive thread's whole body: a numba function
that polls the sockets, receives packets in ``recvmmsg`` batches into a ring of
packet slots, copies each payload into its frame's shared-memory buffer,
finishes frames (complete, or incomplete after the timeout) and hands them to
the control thread, until told to stop. It talks to the control thread only
through two pipes: lent buffer ids in (``lend``; -1 stops it), finished
``(frame, buffer, packets)`` rows out (``take_finished``; ``fileno`` is
readable when rows wait). A Python receive loop needed the GIL for every
packet, so the control thread's work delayed it and the socket buffer
overflowed; this loop keeps up with the kernel.

``batched=False`` receives one packet per ``recv`` call, with the same code.
Linux only (``recvmmsg``, ``poll``, ``clock_gettime`` are called directly).

A packet layout is a ``PacketLayout``: the header size and where the frame
number and packet number sit in it (little-endian unsigned fields, the packet
number masked). odin-data's DummyUDP is one; a Jungfrau or Excalibur layout is
another instance.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass

import numba
import numpy as np
from numba import types

__all__ = ["PacketLayout", "PacketAssembler", "HAVE_RECVMMSG", "parse_header"]

_MSG_DONTWAIT = 0x40
_OPTS = dict(nogil=True, cache=True, boundscheck=False)
# struct mmsghdr on LP64 Linux: msghdr (56 bytes) then msg_len; the received length is its 15th uint32
_MMSGHDR = np.dtype([("name", "u8"), ("namelen", "u4"), ("pad0", "u4"), ("iov", "u8"), ("iovlen", "u8"),
                     ("control", "u8"), ("controllen", "u8"), ("flags", "i4"), ("pad1", "u4"), ("len", "u4"),
                     ("pad2", "u4")])
_LEN_WORD = 14
HAVE_RECVMMSG = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "recvmmsg") \
    and ctypes.sizeof(ctypes.c_void_p) == 8
_memcpy = types.ExternalFunction("memcpy", types.intp(types.intp, types.intp, types.uintp))
_read = types.ExternalFunction("read", types.intp(types.intc, types.intp, types.uintp))
_write = types.ExternalFunction("write", types.intp(types.intc, types.intp, types.uintp))
_recv = types.ExternalFunction("recv", types.intp(types.intc, types.intp, types.uintp, types.intc))
_poll = types.ExternalFunction("poll", types.intc(types.intp, types.uintp, types.intc))
_clock_gettime = types.ExternalFunction("clock_gettime", types.intc(types.intc, types.intp))
_POLLIN = 1
_POLLFD = np.dtype([("fd", "i4"), ("events", "i2"), ("revents", "i2")])
_ROW_BYTES = 24                 # a finished row: frame, buffer id, packets received (int64 each)
_ROWS_PER_WRITE = 4096 // 24    # a pipe write of at most PIPE_BUF bytes is atomic: whole rows only
_recvmmsg = types.ExternalFunction("recvmmsg", types.intc(types.intc, types.intp, types.uintc, types.intc,
                                                          types.intp))

# layout vector (int64): where the fields are and what a frame needs
(_HSIZE, _F_OFF, _F_LEN, _P_OFF, _P_LEN, _P_MASK, _PAYLOAD, _EXPECTED, _FRAME_BYTES, _VLEN,
 _LAYOUT_LEN) = range(11)
# state vector (int64): counters, then the assembler's own bookkeeping
(RECEIVED, BAD, DUPLICATE, LATE, NO_BUFFER, _FREE_N, _N_OPEN, _N_FIN, _N_SPARE, _LAST, _STATE_LEN) = range(11)


@dataclass(frozen=True)
class PacketLayout:
    """Where a packet's header keeps the frame number and the packet number (little-endian unsigned fields)."""

    header_size: int = 8
    frame_field: tuple[int, int] = (0, 4)     # (byte offset, bytes)
    packet_field: tuple[int, int] = (4, 4)
    packet_mask: int = 0xFFFFFFFF             # bits of the packet field that are the packet number
    sof_bit: int = -1                         # flag bits in the packet field (-1: none)
    eof_bit: int = -1

    def parse(self, packet: bytes | memoryview) -> tuple[int, int, bool, bool]:
        """(frame number, packet number, start of frame, end of frame) of one packet."""
        (fo, fl), (po, pl) = self.frame_field, self.packet_field
        frame = int.from_bytes(packet[fo:fo + fl], "little")
        field = int.from_bytes(packet[po:po + pl], "little")
        sof = self.sof_bit >= 0 and bool(field >> self.sof_bit & 1)
        eof = self.eof_bit >= 0 and bool(field >> self.eof_bit & 1)
        return frame, field & self.packet_mask, sof, eof


@numba.njit(inline="always", **_OPTS)
def _field(row, offset, length):  # pragma: no cover - compiled
    v = np.int64(0)
    for k in range(length - 1, -1, -1):
        v = (v << 8) | np.int64(row[offset + k])
    return v


@numba.njit(**_OPTS)
def parse_header(row, lay):  # pragma: no cover - compiled
    """(frame, packet) of the packet at the start of ``row``: the compiled twin of ``PacketLayout.parse``."""
    return _field(row, lay[_F_OFF], lay[_F_LEN]), _field(row, lay[_P_OFF], lay[_P_LEN]) & lay[_P_MASK]


@numba.njit(**_OPTS)
def _finish(slot, pos, st, o_frame, o_bid, o_recv, active, spare, abandoned, fin):  # pragma: no cover
    """Hand frame ``slot`` (at ``active[pos]``) back: a finished row, its slot free, its packets late from now."""
    k = st[_N_FIN]
    fin[k, 0], fin[k, 1], fin[k, 2] = o_frame[slot], o_bid[slot], o_recv[slot]
    st[_N_FIN] = k + 1
    abandoned[o_frame[slot] & (abandoned.size - 1)] = o_frame[slot]
    last = st[_N_OPEN] - 1
    active[pos] = active[last]
    st[_N_OPEN] = last
    spare[st[_N_SPARE]] = slot
    st[_N_SPARE] += 1
    st[_LAST] = -1


@numba.njit(**_OPTS)
def _place(count, now, lay, st, ring, lens, mem, bases, free, o_frame, o_bid, o_recv, o_start, seen, active,
           spare, abandoned, fin):  # pragma: no cover - compiled
    """Place the first ``count`` packets of the ring into their frames' buffers; the frames they completed go
    to ``fin``."""
    hsize, payload, expected, frame_bytes = lay[_HSIZE], lay[_PAYLOAD], lay[_EXPECTED], lay[_FRAME_BYTES]
    for i in range(count):
        n = np.int64(lens[i, _LEN_WORD])
        st[RECEIVED] += 1
        if n < hsize:
            st[BAD] += 1
            continue
        row = ring[i]
        frame, pkt = parse_header(row, lay)
        length = n - hsize
        offset = pkt * payload
        if pkt >= expected or offset + length > frame_bytes or (length != payload and offset + length != frame_bytes):
            st[BAD] += 1
            continue
        slot = st[_LAST]
        if slot < 0 or o_frame[slot] != frame:
            slot = -1
            for p in range(st[_N_OPEN]):
                if o_frame[active[p]] == frame:
                    slot = active[p]
                    break
            if slot < 0:
                if abandoned[frame & (abandoned.size - 1)] == frame:
                    st[LATE] += 1
                    continue
                if st[_FREE_N] == 0 or st[_N_SPARE] == 0:
                    st[NO_BUFFER] += 1
                    abandoned[frame & (abandoned.size - 1)] = frame
                    continue
                st[_FREE_N] -= 1
                st[_N_SPARE] -= 1
                slot = spare[st[_N_SPARE]]
                o_frame[slot], o_bid[slot], o_recv[slot], o_start[slot] = frame, free[st[_FREE_N]], 0, now
                seen[slot, :] = 0
                active[st[_N_OPEN]] = slot
                st[_N_OPEN] += 1
            st[_LAST] = slot
        if seen[slot, pkt]:
            st[DUPLICATE] += 1
            continue
        seen[slot, pkt] = 1
        _memcpy(mem.ctypes.data + bases[o_bid[slot]] + offset, row.ctypes.data + hsize, length)  # checked above
        o_recv[slot] += 1
        if o_recv[slot] == expected:
            for p in range(st[_N_OPEN]):
                if active[p] == slot:
                    _finish(slot, p, st, o_frame, o_bid, o_recv, active, spare, abandoned, fin)
                    break


@numba.njit(**_OPTS)
def _expire(now, timeout, st, o_frame, o_bid, o_recv, o_start, active, spare, abandoned, fin):  # pragma: no cover
    """Finish (incomplete) every frame open longer than ``timeout`` seconds, as far as ``fin`` has room."""
    p = 0
    while p < st[_N_OPEN] and st[_N_FIN] < fin.shape[0]:
        slot = active[p]
        if now - o_start[slot] > timeout:
            _finish(slot, p, st, o_frame, o_bid, o_recv, active, spare, abandoned, fin)
        else:
            p += 1


@numba.njit(**_OPTS)
def _now(clock, ts):  # pragma: no cover - compiled
    _clock_gettime(clock, ts.ctypes.data)
    return ts[0] + ts[1] * 1e-9


@numba.njit(**_OPTS)
def _hand_back(fin_w, st, fin):  # pragma: no cover - compiled
    """Write the finished rows to the control thread's pipe (whole rows, atomically); keep what does not fit."""
    n = st[_N_FIN]
    done = 0
    while done < n:
        rows = min(n - done, _ROWS_PER_WRITE)
        if _write(fin_w, fin.ctypes.data + done * _ROW_BYTES, rows * _ROW_BYTES) != rows * _ROW_BYTES:
            break  # the pipe is full: the control thread is behind; try again on the next round
        done += rows
    if done:
        for k in range(n - done):
            fin[k, 0], fin[k, 1], fin[k, 2] = fin[done + k, 0], fin[done + k, 1], fin[done + k, 2]
        st[_N_FIN] = n - done


@numba.njit(**_OPTS)
def _refill(free_r, inbox, st, free):  # pragma: no cover - compiled
    """Take the buffers the control thread lent (int64 ids through a pipe); False once it asked to stop."""
    running = True
    while True:
        got = _read(free_r, inbox.ctypes.data, inbox.size * 8)
        if got <= 0:
            return running
        for k in range(got // 8):
            if inbox[k] < 0:
                running = False
            else:
                free[st[_FREE_N]] = inbox[k]
                st[_FREE_N] += 1


@numba.njit(**_OPTS)
def _serve(batched, pollfds, sockfds, free_r, fin_w, clock, timeout, max_batches, ts, inbox, msgs, lay, st, ring,
           lens, mem, bases, free, o_frame, o_bid, o_recv, o_start, seen, active, spare, abandoned,
           fin):  # pragma: no cover - compiled
    """The receive loop, start to stop, without the GIL: wait (poll) on the sockets and the lending pipe, receive
    and place packets, expire frames, write finished rows to the control thread's pipe."""
    vlen = lay[_VLEN]
    slot_bytes = ring.shape[1]
    wait_ms = max(1, min(50, int(timeout * 1000)))
    fds = pollfds.ctypes.data
    nsocks = sockfds.size
    running = True
    busy = False
    while running:
        ready = _poll(fds, nsocks + 1, 0 if busy else 1 if st[_N_FIN] else wait_ms)
        busy = False
        if pollfds[nsocks, 3] != 0 or st[_FREE_N] == 0:
            running = _refill(free_r, inbox, st, free)
        now = _now(clock, ts)
        if ready > 0:
            for k in range(nsocks):
                if pollfds[k, 3] == 0:
                    continue
                fd = sockfds[k]
                for _ in range(max_batches):
                    if st[_N_FIN] + vlen > fin.shape[0]:
                        _hand_back(fin_w, st, fin)
                        if st[_N_FIN] + vlen > fin.shape[0]:
                            break
                    if st[_FREE_N] == 0:
                        running = _refill(free_r, inbox, st, free) and running
                    if batched:
                        count = _recvmmsg(fd, msgs, vlen, _MSG_DONTWAIT, 0)
                    else:
                        got = _recv(fd, ring.ctypes.data, slot_bytes, _MSG_DONTWAIT)
                        count = 1 if got >= 0 else -1
                        if count == 1:
                            lens[0, _LEN_WORD] = got
                    if count <= 0:
                        break
                    busy = True
                    _place(count, now, lay, st, ring, lens, mem, bases, free, o_frame, o_bid, o_recv, o_start,
                           seen, active, spare, abandoned, fin)
        if st[_N_OPEN]:
            _expire(now, timeout, st, o_frame, o_bid, o_recv, o_start, active, spare, abandoned, fin)
        if st[_N_FIN]:
            _hand_back(fin_w, st, fin)
    _expire(np.inf, 0.0, st, o_frame, o_bid, o_recv, o_start, active, spare, abandoned, fin)  # stopping: the rest
    _hand_back(fin_w, st, fin)


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


class PacketAssembler:
    """Frames assembled from packets on some sockets by a GIL-free loop (``run``, the receive thread's body).

    The control thread lends buffers (``lend``), reads finished ``(frame, buffer, packets)`` rows
    (``take_finished``; ``fileno`` is readable when there are some) and stops it (``stop``)."""

    def __init__(self, layout: PacketLayout, payload_size: int, frame_bytes: int, mem: np.ndarray,
                 bases: np.ndarray, socks: list[socket.socket], timeout: float, batched: bool = True,
                 vlen: int = 32, max_batches: int = 64, recent: int = 8192) -> None:
        self.layout, self.socks, self.timeout = layout, list(socks), timeout
        self.batched, self.max_batches = batched, max_batches
        self.expected = -(-frame_bytes // payload_size)
        vlen = vlen if self.batched else 1
        slots = len(bases)
        self.lay = np.zeros(_LAYOUT_LEN, np.int64)
        self.lay[[_HSIZE, _F_OFF, _F_LEN, _P_OFF, _P_LEN, _P_MASK, _PAYLOAD, _EXPECTED, _FRAME_BYTES, _VLEN]] = (
            layout.header_size, *layout.frame_field, *layout.packet_field, layout.packet_mask, payload_size,
            self.expected, frame_bytes, vlen)
        self.st = np.zeros(_STATE_LEN, np.int64)
        self.slot_bytes = layout.header_size + payload_size + 64  # larger packets arrive cut: counted bad
        self.ring = np.zeros((vlen, self.slot_bytes), np.uint8)
        self.mmsg = np.zeros(vlen, _MMSGHDR)
        iov = np.zeros((vlen, 2), np.uint64)
        iov[:, 0] = self.ring.ctypes.data + np.arange(vlen, dtype=np.uint64) * self.slot_bytes
        iov[:, 1] = self.slot_bytes
        self._iov = iov  # kept alive: mmsg points into it
        self.mmsg["iov"] = iov.ctypes.data + np.arange(vlen, dtype=np.uint64) * iov.strides[0]
        self.mmsg["iovlen"] = 1
        self.lens = self.mmsg.view(np.uint32).reshape(vlen, _MMSGHDR.itemsize // 4)
        self.mem, self.bases = mem, np.ascontiguousarray(bases, np.int64)
        self.free = np.zeros(slots, np.int64)
        self.o_frame = np.full(slots, -1, np.int64)
        self.o_bid = np.zeros(slots, np.int64)
        self.o_recv = np.zeros(slots, np.int64)
        self.o_start = np.zeros(slots, np.float64)
        self.seen = np.zeros((slots, self.expected), np.uint8)
        self.active = np.zeros(slots, np.int64)
        self.spare = np.arange(slots, dtype=np.int64)
        self.st[_N_SPARE] = slots
        self.st[_LAST] = -1
        self.abandoned = np.full(1 << max(1, int(recent - 1).bit_length()), -1, np.int64)
        self.fin = np.zeros((max(4 * vlen, 64), 3), np.int64)
        self.ts = np.zeros(2, np.int64)
        self.inbox = np.zeros(max(64, slots), np.int64)
        self._free_r, self._free_w = os.pipe()   # lent buffer ids (int64), -1: stop
        self._fin_r, self._fin_w = os.pipe()     # finished rows, 3 x int64
        for fd in (self._free_r, self._fin_r, self._fin_w):
            os.set_blocking(fd, False)
        self.pollfds = np.zeros(len(self.socks) + 1, _POLLFD)
        self.pollfds["fd"] = [s.fileno() for s in self.socks] + [self._free_r]
        self.pollfds["events"] = _POLLIN
        self.sockfds = np.array([s.fileno() for s in self.socks], np.int64)
        self._poll16 = self.pollfds.view(np.int16).reshape(-1, 4)  # fd (2 words), events, revents
        self._pending = b""
        self._stopped = False
        weakref.finalize(self, _close_fds, (self._free_r, self._free_w, self._fin_r, self._fin_w))
        self._compile()

    def _kernel_args(self) -> tuple:
        return (self.lay, self.st, self.ring, self.lens, self.mem, self.bases, self.free, self.o_frame,
                self.o_bid, self.o_recv, self.o_start, self.seen, self.active, self.spare, self.abandoned, self.fin)

    def _compile(self) -> None:
        """Compile (or load from numba's cache) the kernels now, not on the first packet."""
        os.write(self._free_w, np.array([-1], np.int64).tobytes())  # a loop that stops at once
        _serve(self.batched, self._poll16, self.sockfds, self._free_r, self._fin_w, time.CLOCK_MONOTONIC,
               self.timeout, self.max_batches, self.ts, self.inbox, self.mmsg.ctypes.data, *self._kernel_args())

    # -- control thread ----------------------------------------------------------------
    def fileno(self) -> int:
        """Readable when finished frames are waiting (poll it)."""
        return self._fin_r

    def lend(self, bid: int) -> None:
        """A free buffer the assembler may fill."""
        os.write(self._free_w, int(bid).to_bytes(8, "little", signed=True))

    def stop(self) -> None:
        """Ask ``run`` to finish every open frame (incomplete) and return."""
        os.write(self._free_w, (-1).to_bytes(8, "little", signed=True))

    def take_finished(self) -> list[tuple[int, int, int]]:
        """The frames finished since the last call: (frame number, buffer id, packets received). After ``run``
        has returned, also what it could not hand back and every frame still open (incomplete)."""
        rows = self._take_rows()
        if self._stopped:
            st = self.st
            rows += [tuple(r) for r in self.fin[:st[_N_FIN]].tolist()]
            rows += [(int(self.o_frame[k]), int(self.o_bid[k]), int(self.o_recv[k]))
                     for k in self.active[:st[_N_OPEN]].tolist()]
            st[_N_FIN] = st[_N_OPEN] = 0
        return rows

    def _take_rows(self) -> list[tuple[int, int, int]]:
        chunks = [self._pending]
        while True:
            try:
                chunk = os.read(self._fin_r, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        whole = len(data) - len(data) % _ROW_BYTES
        self._pending = data[whole:]
        return [tuple(r) for r in np.frombuffer(data[:whole], np.int64).reshape(-1, 3).tolist()]

    def unused(self) -> list[int]:
        """Buffers lent and not used (after ``run`` returned): still in the pipe or taken and not filled."""
        _refill(self._free_r, self.inbox, self.st, self.free)
        return self.free[:self.st[_FREE_N]].tolist()

    def counters(self) -> dict[str, int]:
        st = self.st.copy()
        return {"received": int(st[RECEIVED]), "bad": int(st[BAD]), "duplicate": int(st[DUPLICATE]),
                "late": int(st[LATE]), "no_buffer": int(st[NO_BUFFER])}

    # -- receive thread ----------------------------------------------------------------
    def run(self) -> None:
        """Receive until ``stop``: the receive thread's body (releases the GIL throughout)."""
        self._stopped = False
        _serve(self.batched, self._poll16, self.sockfds, self._free_r, self._fin_w, time.CLOCK_MONOTONIC,
               self.timeout, self.max_batches, self.ts, self.inbox, self.mmsg.ctypes.data, *self._kernel_args())
        self._stopped = True
