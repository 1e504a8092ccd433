"""``framechain fan``: one DECTRIS stream shared by N receivers, by blocks of frames (odin's EigerFan).

A detector's stream is a ZeroMQ PUSH: every message goes to one consumer, so a
viewer and a writer (or N receivers of an MPI run) cannot simply all connect.
The fan connects one PULL to the detector and binds one PUSH per consumer:

- ``start`` / ``end`` (v2) and ``dheader-1.0`` / ``dseries_end-1.0`` (v1) go to
  every consumer, so each one opens and closes the acquisition;
- image ``n`` goes to consumer ``(n // block) % N``, which is what a writer
  with ``process {number: N, rank: r, frames_per_block: block}`` expects;
  with ``--broadcast`` every image goes to every consumer (pixel-partitioned
  XPCS: each rank correlates its pixels of every frame).

It waits until every consumer has connected before it connects upstream (no
frame can go to a consumer that is not there), forwards the messages
unchanged, and prints one JSON line per series with each consumer's count. A
slow consumer holds the fan (PUSH high-water mark), and the fan holds the
detector: nothing is dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from framechain.framereceiver.dectris import End, Image, Start, StreamError, decode_v1, decode_v2

__all__ = ["add_parser", "run_fan"]


def _wait_for_consumers(pushes: list[zmq.Socket], endpoints: list[str], timeout: float) -> None:
    monitors = [p.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) for p in pushes]
    waiting = set(range(len(pushes)))
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                raise TimeoutError(f"consumers {[endpoints[i] for i in sorted(waiting)]} did not connect")
            for i in list(waiting):
                if monitors[i].poll(50 if left is None else min(50, int(left * 1000) + 1)):
                    recv_monitor_message(monitors[i])
                    waiting.discard(i)
                    print(f"fan: consumer {i} connected on {endpoints[i]}", file=sys.stderr, flush=True)
    finally:
        for p, m in zip(pushes, monitors):
            p.disable_monitor()
            m.close(0)


def run_fan(args: argparse.Namespace) -> int:
    ctx = zmq.Context.instance()
    n = len(args.consumers)
    pushes = []
    for ep in args.consumers:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, args.hwm)
        s.setsockopt(zmq.LINGER, -1)
        s.bind(ep)
        pushes.append(s)
    try:
        _wait_for_consumers(pushes, args.consumers, args.connect_timeout)
    except TimeoutError as err:
        print(f"fan: {err}", file=sys.stderr)
        return 1
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, args.hwm)
    pull.connect(args.upstream)
    print(f"fan: all {n} consumers connected; PULL from {args.upstream}", file=sys.stderr, flush=True)
    decode = decode_v2 if args.version == 2 else decode_v1
    counts, bad, series_done = [0] * n, 0, 0
    try:
        while args.series == 0 or series_done < args.series:
            parts = pull.recv_multipart(copy=False) if args.version == 1 else [pull.recv(copy=False)]
            try:
                msg = decode([p.bytes for p in parts] if args.version == 1 else parts[0].bytes)
            except StreamError as err:
                bad += 1
                print(f"fan: dropped a malformed message: {err}", file=sys.stderr)
                continue
            if isinstance(msg, Image) and args.broadcast:
                for k, p in enumerate(pushes):
                    p.send_multipart(parts, copy=False)
                    counts[k] += 1
            elif isinstance(msg, Image):
                k = (msg.image_id // args.block) % n
                pushes[k].send_multipart(parts, copy=False)
                counts[k] += 1
            elif isinstance(msg, (Start, End)):
                for p in pushes:
                    p.send_multipart(parts, copy=False)
                if isinstance(msg, End):
                    series_done += 1
                    print(json.dumps({"series": msg.series_id, "images": counts, "bad_messages": bad}), flush=True)
                    counts = [0] * n
    except KeyboardInterrupt:
        return 130
    finally:
        pull.close(0)
        for p in pushes:
            p.close()
        ctx.term()  # LINGER -1: every forwarded message reaches its consumer first
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fan", help="share one DECTRIS stream between N receivers by blocks of frames")
    p.add_argument("--upstream", required=True, help="the detector's stream endpoint, e.g. tcp://dcu:31001")
    p.add_argument("--consumers", nargs="+", required=True, help="one PUSH endpoint to bind per receiver")
    p.add_argument("--version", type=int, default=2, choices=(1, 2), help="stream version (default 2)")
    p.add_argument("--block", type=int, default=1, help="consecutive images per consumer (default 1)")
    p.add_argument("--broadcast", action="store_true", help="every image to every consumer (pixel-partitioned "
                                                            "processing: each rank needs every frame)")
    p.add_argument("--series", type=int, default=0, help="exit after this many series (0: never)")
    p.add_argument("--hwm", type=int, default=100, help="messages queued per socket (default %(default)s)")
    p.add_argument("--connect-timeout", type=float, default=0, help="give up waiting for consumers (0: never)")
    p.set_defaults(func=run_fan)
