"""MPI scale-out: ``framechain run --mpi`` on 1, 2 and 4 ranks, XPCS merge cost vs bins, constants broadcast.

Scaling: a DECTRIS v2 stream (``framechain simulate dectris``, uncompressed
256x256 uint16 ramp frames) through rank 0's fan (blocks of 1) to N
receiver/processor pairs writing uncompressed HDF5; the figure is every rank's
frames over the time from the first frame to the last rank's end, with the
1-rank run of the same config as baseline. This machine has
``os.cpu_count()`` cores: N ranks run 2N daemons plus the player and the fan,
so the efficiency per core (ratio / min(N, cores)) is what carries over.

Merge: :func:`~framechain.client.mpirun.reduce_partials` on 2 ranks for a
1024x1024 ring qmap of 10, 100 and 1000 bins (10 levels, B=8), against an
in-memory sum of the same vectors. Constants: a 2048x2048 float32 pedestal and
gain to every rank by broadcast and by every rank reading them (page cache
warm, one node: the broadcast pays off when the files sit on a shared file
system that N nodes would otherwise all read).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from framechain.benchmarks import Figure
from framechain.ipc.channel import free_tcp_endpoint

__all__ = ["run"]

SHAPE = (256, 256)
MPIEXEC = Path(sys.executable).with_name("mpiexec")
CLI = [sys.executable, "-m", "framechain.client.cli"]


def _config(folder: Path, upstream: str, frames: int) -> Path:
    out = folder / "out"
    out.mkdir()
    cfg = {"receiver": {"source": {"type": "dectris_v2", "endpoint": upstream, "shape": list(SHAPE)}},
           "processor": [{"plugin": {"load": [{"index": "hdf", "name": "FileWriterPlugin",
                                               "library": "hdf5_writer"}],
                                     "connect": [{"index": "hdf", "connection": "frame_receiver"}]}},
                         {"hdf": {"file": {"path": str(out), "prefix": "scale"}, "frames": frames,
                                  "master": "threshold_1",
                                  "dataset": {"threshold_1": {"datatype": "uint16", "dims": list(SHAPE)}}}}],
           "start": [{"hdf": {"command": "start_writing"}}]}
    path = folder / "scale.json"
    path.write_text(json.dumps(cfg))
    return path


def _scaling_rate(ranks: int, frames: int) -> tuple[float, int]:
    """(frames/s received in all, frames lost) of one --mpi run on ``ranks`` ranks."""
    with tempfile.TemporaryDirectory(prefix="fcbench_mpi_") as d:
        folder = Path(d)
        upstream = free_tcp_endpoint()
        cfg = _config(folder, upstream, frames)
        job = subprocess.Popen([str(MPIEXEC), "-n", str(ranks), *CLI, "run", "--mpi", "--no-progress",
                                "--log-dir", str(folder / "logs"), str(cfg)], cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        player = subprocess.Popen([*CLI, "simulate", "dectris", "--endpoint", upstream, "--frames", str(frames),
                                   "--shape", *map(str, SHAPE), "--compression", "none", "--hwm", "1000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            out, err = job.communicate(timeout=600)
            player.wait(60)
        finally:
            for p in (job, player):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if job.returncode != 0:
            raise RuntimeError(f"--mpi run on {ranks} ranks failed: {err[-2000:]}")
        m = re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\(([\d,]+) frames/s", out, re.M)
        if m is None:
            raise RuntimeError(f"no roll-up in the output of {ranks} ranks:\n{out[-2000:]}")
        return float(m.group(5).replace(",", "")), int(m.group(4))


def _worker(ranks: int, quick: bool) -> dict:
    done = subprocess.run([str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "framechain.benchmarks._mpi_worker",
                           *(["--quick"] if quick else [])], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the MPI cost worker failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Figure]:
    frames = 600 if quick else 6000
    cores = os.cpu_count() or 1
    figures = []
    rates = {n: _scaling_rate(n, frames) for n in (1, 2, 4)}
    base = rates[1][0]
    for n, (rate, lost) in rates.items():
        eff = rate / base / min(n, cores)
        figures.append(Figure("mpi", f"{n} rank(s) stream -> fan -> writers 256x256", rate, "frames/s", base,
                              "1 rank, same run",
                              extra=f"{rate * SHAPE[0] * SHAPE[1] * 2 / 1e9:.2f} GB/s in all; lost {lost}; "
                                    f"efficiency per core {eff:.2f} ({cores} cores)"))
    costs = {n: _worker(n, quick) for n in (1, 2, 4)}
    m = costs[2]["merge"]
    for bins, merge_s, sum_s, nbytes in zip(m["bins"], m["merge_s"], m["sum_s"], m["bytes"]):
        figures.append(Figure("mpi", f"xpcs merge, 2 ranks, {bins} bins 1 Mpix", 1.0 / merge_s, "merges/s",
                              1.0 / sum_s, "numpy sum of the same vectors",
                              extra=f"{merge_s * 1e3:.2f} ms per update; {nbytes / 1e6:.1f} MB per rank"))
    for n, c in costs.items():
        figures.append(Figure("mpi", f"constants to {n} rank(s), 2x16 MB", 1.0 / c["constants"]["broadcast_s"],
                              "loads/s", 1.0 / c["constants"]["read_s"], "every rank reads the files",
                              extra=f"broadcast {c['constants']['broadcast_s'] * 1e3:.1f} ms, read "
                                    f"{c['constants']['read_s'] * 1e3:.1f} ms (one node, page cache warm)"))
    return figures
