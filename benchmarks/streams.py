"""Detector stream ingest: DECTRIS stream v2 messages decoded into frame memory, against a bare PULL loop.

A PUSH thread sends the same pre-encoded messages to both loops over tcp on
loopback; the baseline only receives them, the measured loop receives, decodes
(cbor2) and decompresses each image into a reused frame buffer, as the
receiver does into shared memory. 1 Mpix uint16 speckle-like frames
(Poisson, 2 photons/pixel).
"""

from __future__ import annotations

import threading
import time

import cbor2
import numpy as np
import zmq

from framechain.client.simulate import encode_image
from framechain.framereceiver.dectris import decode_v2

from . import Figure

__all__ = ["run"]


def _messages(n_distinct: int, shape: tuple[int, int], compression: str) -> list[bytes]:
    rng = np.random.default_rng(1)
    return [cbor2.dumps({"type": "image", "series_id": 1, "image_id": i,
                         "data": {"threshold_1": encode_image(rng.poisson(2.0, shape).astype(np.uint16), compression)}})
            for i in range(n_distinct)]


def _rate(messages: list[bytes], n: int, decode: str) -> float:
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 64)
    push.connect(f"tcp://127.0.0.1:{port}")

    def send() -> None:
        for i in range(n):
            push.send(messages[i % len(messages)], copy=False)

    out = np.empty((1024, 1024), np.uint16)
    push.send(messages[0])
    pull.recv()  # connected and warm
    sender = threading.Thread(target=send)
    t0 = time.perf_counter()
    sender.start()
    flat = out.reshape(-1).view(np.uint8)
    for _ in range(n):
        raw = pull.recv()
        if decode == "decode":
            decode_v2(raw).channels[0].decode_into(out)
        elif decode == "passthrough":  # what the receiver does with decompress: false
            _code, chunk = decode_v2(raw).channels[0].passthrough()
            flat[:len(chunk)] = np.frombuffer(chunk, np.uint8)
    rate = n / (time.perf_counter() - t0)
    sender.join()
    push.close()
    pull.close()
    return rate


def run(quick: bool = False) -> list[Figure]:
    n = 100 if quick else 2000
    figures = []
    for compression, modes in (("bslz4", ("decode", "passthrough")), ("none", ("decode",))):
        messages = _messages(8, (1024, 1024), compression)
        mbytes = sum(map(len, messages)) / len(messages) / 1e6
        bare = _rate(messages, n, decode="")
        for mode in modes:
            rate = _rate(messages, n, decode=mode)
            what = "passed through compressed" if mode == "passthrough" else "decoded"
            figures.append(Figure("streams", f"DECTRIS v2 1024x1024 uint16 {compression} {what} vs bare PULL",
                                  rate, "frames/s", bare, "bare pyzmq PULL loop, same bytes",
                                  target=0.8 if mode == "passthrough" else None,
                                  extra=f"{mbytes:.2f} MB/message, {rate * 1024 * 1024 * 2 / 1e9:.2f} GB/s of pixels"))
    return figures
