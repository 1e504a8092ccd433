"""Receiver -> shared memory -> processor -> dummy plugin throughput, against a numpy copy baseline.

The daemons are started and wired by ``client.launcher.Launcher`` (as
``framechain run`` does); the clock runs from ``start_source``. Baseline: ``np.copyto`` of the same frames cycling over the same number of
buffers, in this process, in the same run (one copy per frame is what copy
mode must do at least).

Small frames also run batched (receiver ``notify_batch`` 64, 4096 buffers: ipc/batch.py), with a second
baseline: a bare pyzmq PUSH/PULL loop over TCP loopback moving the same bytes, one message per frame,
sender in another process (what any ZeroMQ frame transport pays at least).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from framechain.client.launcher import Launcher
from framechain.ipc import buffer_size_for

from . import Figure

DUMMY = {"plugin": {"load": {"index": "dummy", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
                    "connect": {"index": "dummy", "connection": "frame_receiver"}}}
CASES = [((64, 64), 40000), ((512, 512), 4000), ((1024, 1024), 1500)]
NUM_BUFFERS = 64
BATCH, BATCH_BUFFERS, BATCH_FRAMES = 64, 4096, 300000


def _push(endpoint: str, nbytes: int, frames: int) -> None:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(endpoint)
    payload = np.zeros(nbytes, np.uint8).tobytes()
    for _ in range(frames):
        sock.send(payload, copy=False) if nbytes > 65536 else sock.send(payload)
    sock.close(linger=-1)
    zmq.Context.instance().term()  # waits until every message is sent


def pushpull_baseline(nbytes: int, frames: int) -> float:
    """Frames/s of a bare PUSH (another process) -> PULL (here) loop of ``nbytes`` messages on loopback TCP."""
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-c", "from framechain.benchmarks.pipeline import _push; "
                             f"_push('tcp://127.0.0.1:{port}', {nbytes}, {frames})"])
    try:
        if not sock.poll(30000):
            raise RuntimeError("the PUSH baseline's sender sent nothing in 30 s")
        sock.recv()
        t0 = time.perf_counter()
        for _ in range(frames - 1):
            if not sock.poll(10000):
                raise RuntimeError("the PUSH baseline's sender stopped")
            sock.recv(copy=False)
        return (frames - 1) / (time.perf_counter() - t0)
    finally:
        proc.wait(30)
        sock.close(linger=0)


def copy_baseline(shape: tuple[int, int], frames: int, num_buffers: int) -> float:
    """Frames/s of np.copyto over ``num_buffers`` ramp frames (the same data the source makes)."""
    src = np.empty((num_buffers,) + shape, np.uint16)
    index = (np.arange(shape[0] * shape[1], dtype=np.uint64) % 65536).astype(np.uint16).reshape(shape)
    for i in range(num_buffers):
        np.add(index, np.uint16(i), out=src[i])
    dst = np.empty_like(src)
    t0 = time.perf_counter()
    for i in range(frames):
        np.copyto(dst[i % num_buffers], src[i % num_buffers])
    return frames / (time.perf_counter() - t0)


def _pipeline_seconds(source: dict[str, Any], copy: bool, frames: int, max_buffer_mem: int,
                      notify_batch: int = 1) -> float:
    """Seconds from starting the source until the dummy plugin has processed ``frames`` (daemons via Launcher)."""
    cfg = {"receiver": {"source": source, "max_buffer_mem": max_buffer_mem, "notify_batch": notify_batch,
                        "shared_buffer_name": f"fcbench_{os.getpid()}_{uuid.uuid4().hex[:6]}"},
           "processor": [{"shared_memory": {"copy": copy}}, DUMMY]}
    launcher = Launcher(cfg, Path(tempfile.mkdtemp(prefix="framechain_bench_")))
    try:
        launcher.setup()
        t0 = time.perf_counter()
        launcher.start_source()
        while launcher.request("processor", "status")["dummy"]["frames_processed"] < frames:
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        rx = launcher.request("receiver", "status")["frames"]
        if rx["dropped"] or rx["received"] != frames:
            raise RuntimeError(f"the pipeline lost frames: receiver counts {rx}")
        return dt
    finally:
        launcher.shutdown()


def run(quick: bool = False) -> list[Figure]:
    figures = []
    for shape, frames in CASES:
        if quick:
            frames = max(200, frames // 20)
        nbytes = shape[0] * shape[1] * 2
        base = copy_baseline(shape, frames, NUM_BUFFERS)
        source = {"type": "simulated", "pattern": "ramp", "shape": list(shape), "dtype": "uint16", "frames": frames}
        for copy in (True, False):
            fps = frames / _pipeline_seconds(source, copy, frames, NUM_BUFFERS * buffer_size_for(nbytes))
            name = f"{shape[0]}x{shape[1]} uint16 {'copy' if copy else 'zero-copy'}"
            target, on = None, "ratio"
            if shape == (1024, 1024) and copy:
                target = 0.5
            if shape == (64, 64) and copy:
                target, on = 15000, "value"
            figures.append(Figure("pipeline", name, fps, "frames/s", base, "numpy copy", target, on,
                                  extra=f"{fps * nbytes / 1e9:.2f} GB/s"))
        if shape == (64, 64):
            figures += _batched(shape, nbytes, base, quick)
    return figures


def _batched(shape: tuple[int, int], nbytes: int, copy_base: float, quick: bool) -> list[Figure]:
    frames = BATCH_FRAMES // 10 if quick else BATCH_FRAMES
    source = {"type": "simulated", "pattern": "ramp", "shape": list(shape), "dtype": "uint16", "frames": frames}
    zmq_base = pushpull_baseline(nbytes, frames // 3)
    out = []
    for copy in (True, False):
        fps = frames / _pipeline_seconds(source, copy, frames, BATCH_BUFFERS * buffer_size_for(nbytes), BATCH)
        mode = "copy" if copy else "zero-copy"
        extra = (f"{fps * nbytes / 1e9:.2f} GB/s, lossless; notify_batch {BATCH}, {BATCH_BUFFERS} buffers; "
                 f"{fps / copy_base:.3f} of numpy copy")
        out.append(Figure("pipeline", f"{shape[0]}x{shape[1]} uint16 {mode} batched", fps, "frames/s", zmq_base,
                          "bare pyzmq PUSH/PULL, same bytes", 100000 if not copy else None, "value", extra=extra))
    return out
