"""HDF5 writer throughput: FileWriterPlugin against plain h5py loops writing the same frames.

Frames are 1024x1024 uint16 Poisson counts (mean 3, like a photon-counting
detector at XPCS rates), handed to ``FileWriterPlugin.process_frame`` from
this thread as the processor's plugin thread would. Baselines, measured in
the same run on the same files system:

- ``none``: a loop of ``write_direct_chunk`` into a fixed-size dataset (the
  least any writer must do);
- ``BSLZ4``: the same loop of the raw compressed chunks (compression done
  beforehand, not timed) and, separately, the same bitshuffle/LZ4 compressor
  called serially before each write (what a writer without a pool does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from framechain.frameprocessor.frame import Frame
from framechain.plugins._hdf5.codecs import make_codec
from framechain.plugins.hdf5_writer import FileWriterPlugin

from . import Figure

SHAPE = (1024, 1024)
DISTINCT = 16


def _frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(3.0, (DISTINCT, *SHAPE)).astype(np.uint16)


def _plain_loop(path: Path, frames: np.ndarray, n: int, compression: str, serial_compress: bool) -> float:
    """Seconds for a plain h5py loop of direct chunk writes (optionally compressing each frame first)."""
    codec = make_codec(compression, frames.dtype, SHAPE)
    out = codec.alloc()
    chunks = [bytes(codec.compress(f, out)) for f in frames] if codec.compressed and not serial_compress else None
    t0 = time.perf_counter()
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset("data", (n, *SHAPE), np.uint16, chunks=(1, *SHAPE), **codec.filter_args())
        for i in range(n):
            frame = frames[i % DISTINCT]
            if chunks is not None:
                data = chunks[i % DISTINCT]
            elif codec.compressed:
                data = codec.compress(frame, out)
            else:
                data = frame
            ds.id.write_direct_chunk((i, 0, 0), data)
    return time.perf_counter() - t0


def _plugin(path: Path, frames: np.ndarray, n: int, compression: str) -> float:
    """Seconds for FileWriterPlugin to write ``n`` frames, file create to close."""
    hdf = FileWriterPlugin("hdf")
    try:
        hdf.configure({"file": {"path": str(path), "prefix": f"bench_{compression}"}, "frames": n,
                       "dataset": {"data": {"datatype": "uint16", "dims": list(SHAPE),
                                            "compression": compression}}})
        hdf.execute("start_writing", {})
        t0 = time.perf_counter()
        for i in range(n):
            hdf.process_frame(Frame(frames[i % DISTINCT], i))
        if not hdf.sync(300):
            raise RuntimeError("writer did not finish")
        seconds = time.perf_counter() - t0
        st = hdf.status()
        if st["frames_written"] != n or st["writing"]:
            raise RuntimeError(f"writer wrote {st['frames_written']} of {n}: {st['error']}")
        return seconds
    finally:
        hdf.close()


def run(quick: bool = False) -> list[Figure]:
    n = 100 if quick else 250
    reps = 3 if quick else 8
    frames = _frames()
    figures = []
    tmp = Path(tempfile.mkdtemp(prefix="fc_bench_writer_"))
    try:
        for compression in ("none", "BSLZ4"):
            times = {}
            runs = {"plugin": lambda d: _plugin(d, frames, n, compression),
                    "loop": lambda d: _plain_loop(d / "loop.h5", frames, n, compression, False)}
            if compression == "BSLZ4":
                runs["serial"] = lambda d: _plain_loop(d / "serial.h5", frames, n, compression, True)
            for rep in range(reps):  # best of several, order alternating, dirty pages synced before each
                order = list(runs) if rep % 2 == 0 else list(reversed(runs))
                for what in order:
                    d = tmp / f"{compression}_{what}_{rep}"
                    d.mkdir()
                    os.sync()
                    times.setdefault(what, []).append(runs[what](d))
                    shutil.rmtree(d)
            fps = n / min(times["plugin"])
            per_run = sorted(lp / pl for lp, pl in zip(times["loop"], times["plugin"]))  # ratio in each run
            spread = f"ratio per run min {per_run[0]:.3f} median {per_run[len(per_run) // 2]:.3f} max {per_run[-1]:.3f}"
            extra = (f"{fps * frames[0].nbytes / 1e9:.2f} GB/s raw, best of {reps} ({spread}), "
                     f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            figures.append(Figure("writer", f"1024x1024 uint16 {compression} vs direct-chunk loop", fps,
                                  "frames/s", n / min(times["loop"]),
                                  "h5py write_direct_chunk loop" + (" (pre-compressed)" if compression != "none"
                                                                    else ""),
                                  0.9 if compression == "none" else None, extra=extra))
            if compression == "BSLZ4":
                figures.append(Figure("writer", "1024x1024 uint16 BSLZ4 vs serial compress+write", fps,
                                      "frames/s", n / min(times["serial"]), "serial bslz4 + write loop", 1.5,
                                      extra=extra))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures
