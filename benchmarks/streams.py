"""Detector stream ingest: the receiver's own DECTRIS and UDP sources against bare socket loops, same bytes.

DECTRIS v2 and v1: a PUSH thread sends the same pre-encoded messages over tcp
on loopback to a bare pyzmq PULL loop (``recv()``: the bytes land in Python
memory, one copy) and to the receiver's source (``StreamV2Source`` /
``StreamV1Source``), whose loop does what the receiver does per image: decode
the message and either copy the detector's chunk into a frame buffer
(pass-through, ``decompress: false``) or decompress it there. 1 Mpix uint16
speckle-like frames (Poisson, 2 photons/pixel).

UDP: a sender subprocess floods loopback with DummyUDP packets (1024x1024
uint16 frames, 8000-byte payloads) as fast as it can; the bare loop counts
``recv_into`` packets, the ``UdpSource`` receive thread assembles frames into
buffers. Both run for the same packets; the figure is complete frames per
second, the baseline the bare loop's packets per second in frames.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time

import cbor2
import numpy as np
import zmq

from framechain.client.simulate import encode_image, encode_v1_image
from framechain.framereceiver.dectris import Image, StreamV1Source, StreamV2Source
from framechain.framereceiver.udp import UdpSource

from . import Figure

__all__ = ["run"]

SHAPE = (1024, 1024)


def _messages(version: int, n_distinct: int, compression: str) -> list[bytes | list[bytes]]:
    rng = np.random.default_rng(1)
    frames = [rng.poisson(2.0, SHAPE).astype(np.uint16) for _ in range(n_distinct)]
    if version == 1:
        return [encode_v1_image(f, compression, 1, i) for i, f in enumerate(frames)]
    return [cbor2.dumps({"type": "image", "series_id": 1, "image_id": i,
                         "data": {"threshold_1": encode_image(f, compression)}}) for i, f in enumerate(frames)]


def _stream_rate(messages: list, n: int, version: int, mode: str) -> float:
    """Messages/s through a bare PULL loop (mode '') or the receiver's source (decode | passthrough)."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 64)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    multipart = version == 1
    send = push.send_multipart if multipart else push.send
    src = None
    if mode:
        src = (StreamV1Source if multipart else StreamV2Source)(f"tcp://127.0.0.1:{port}", SHAPE, "uint16",
                                                                   decompress=mode == "decode")
        src.reset()
        pull = src.socket
    else:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.connect(f"tcp://127.0.0.1:{port}")
    recv = pull.recv_multipart if multipart else pull.recv
    out = np.empty(SHAPE, np.uint16)
    flat = out.reshape(-1).view(np.uint8)
    send(messages[0])
    pull.poll(5000)
    recv()  # connected and warm

    def sender() -> None:
        for i in range(n):
            send(messages[i % len(messages)], copy=False)

    thread = threading.Thread(target=sender)
    t0 = time.perf_counter()
    thread.start()
    got = 0
    while got < n:
        if src is None:
            recv()
            got += 1
            continue
        msg = src.receive()
        if msg is None:
            pull.poll(1000)
            continue
        got += 1
        if isinstance(msg, Image):  # what the receiver's _fill_channel does with each channel
            for ch in msg.channels:
                packed = ch.passthrough() if mode == "passthrough" else None
                if packed is not None:
                    flat[:len(packed[1])] = np.frombuffer(packed[1], np.uint8)
                else:
                    ch.decode_into(out)
    rate = n / (time.perf_counter() - t0)
    thread.join()
    if src is not None and src.bad_messages:
        raise RuntimeError(f"the source refused {src.bad_messages} messages: {src.last_error}")
    (src.close() if src is not None else pull.close())
    push.close()
    return rate


_SENDER = """
import socket, sys, time
import numpy as np
from framechain.client.simulate import udp_packets
port, frames, payload = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
frame = np.arange(1024 * 1024, dtype=np.uint16).reshape(1024, 1024)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", port))
packets = [udp_packets(frame, n, payload) for n in range(8)]
sys.stdin.readline()
for n in range(frames):
    for p in packets[n % 8]:
        p = p if n < 8 else (n).to_bytes(4, "little") + p[4:]
        s.send(p)
"""


def _udp_rate(frames: int, payload: int, assemble: bool) -> tuple[float, int]:
    """(complete frames/s, frames complete) receiving a flood of ``frames`` frames of DummyUDP packets."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    per_frame = -(-frame_bytes // payload)
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(port), str(frames), str(payload)],
                              stdin=subprocess.PIPE, text=True)
    try:
        if assemble:
            src = UdpSource([port], "127.0.0.1", SHAPE, "uint16", payload, 200, 8 << 20)
            src.attach(np.zeros(16 * frame_bytes, np.uint8), frame_bytes * np.arange(16))
            src.reset()
            for bid in range(16):
                src.lend(bid)
            complete = 0
            time.sleep(1.0)  # the sender builds its packets
            sender.stdin.write("go\n")
            sender.stdin.flush()
            t0 = last = time.perf_counter()
            while time.perf_counter() - last < 0.5:
                for f in src.take_finished():
                    complete += f.complete
                    last = time.perf_counter()
                    src.lend(f.buffer_id)
                time.sleep(0.001)
            src.close()
            return complete / max(last - t0, 1e-9), complete
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind(("127.0.0.1", port))
        s.setblocking(False)  # as the receive thread: select, then drain
        scratch = bytearray(payload + 64)
        time.sleep(1.0)
        sender.stdin.write("go\n")
        sender.stdin.flush()
        packets = 0
        select.select([s], [], [], 5)
        t0 = last = time.perf_counter()
        while select.select([s], [], [], 0.5)[0]:
            while True:
                try:
                    s.recv_into(scratch)
                except BlockingIOError:
                    break
                packets += 1
            last = time.perf_counter()
        s.close()
        return packets / per_frame / max(last - t0, 1e-9), packets // per_frame
    finally:
        sender.wait(60)


def run(quick: bool = False) -> list[Figure]:
    n = 100 if quick else 2000
    figures = []
    for version in (2, 1):
        for compression, modes in (("bslz4", ("decode", "passthrough")), ("none", ("decode",))):
            messages = _messages(version, 8, compression)
            blob = [len(m) if version == 2 else len(m[2]) for m in messages]
            bare = _stream_rate(messages, n, version, "")
            for mode in modes:
                rate = _stream_rate(messages, n, version, mode)
                what = "passed through compressed" if mode == "passthrough" else "decoded"
                figures.append(Figure(
                    "streams", f"DECTRIS v{version} 1024x1024 uint16 {compression} {what} vs bare PULL", rate,
                    "frames/s", bare, "bare pyzmq PULL loop, same bytes",
                    target=0.8 if mode == "passthrough" else None,
                    extra=f"{sum(blob) / len(blob) / 1e6:.2f} MB/message, "
                          f"{rate * sum(blob) / len(blob) / 1e9:.2f} GB/s on the wire, "
                          f"{rate * SHAPE[0] * SHAPE[1] * 2 / 1e9:.2f} GB/s of pixels"))
    frames, payload = (50 if quick else 400), 8000
    bare, _ = _udp_rate(frames, payload, assemble=False)
    rate, complete = _udp_rate(frames, payload, assemble=True)
    figures.append(Figure("streams", "UDP DummyUDP 1024x1024 uint16, 8000 B packets, flood: frames assembled",
                          rate, "frames/s", bare, "bare recv_into loop, same packets (frames' worth)",
                          extra=f"{complete}/{frames} frames complete, "
                                f"{rate * SHAPE[0] * SHAPE[1] * 2 / 1e9:.2f} GB/s"))
    return figures
