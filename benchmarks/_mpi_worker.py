"""Run under ``mpiexec -n N python -m framechain.benchmarks._mpi_worker``: the MPI costs of ``--mpi``.

Prints one JSON object on rank 0: seconds per XPCS merge (:func:`reduce_partials`, the real one: partial
file read, placed, reduced, merged file written) and per in-memory sum of the same vectors, for each bin
count; and seconds to get the constants to every rank by broadcast and by every rank reading the files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

from framechain.client.mpirun import broadcast_constants, reduce_partials
from framechain.plugins._xpcs import partition as part
from framechain.plugins._xpcs.layout import PixelLayout
from framechain.plugins._xpcs.multitau import multitau_lags

SHAPE = (1024, 1024)
LEVELS, BUFS = 10, 8


def _rings(bins: int) -> np.ndarray:
    y, x = np.indices(SHAPE)
    r = np.hypot(y - SHAPE[0] / 2, x - SHAPE[1] / 2)
    return np.minimum(bins, (r / r.max() * bins).astype(np.int64) + 1)


def merge_costs(comm: MPI.Comm, spool: str, bins_list: list[int], repeats: int) -> dict[str, list[float]]:
    rank, size = comm.Get_rank(), comm.Get_size()
    delays = multitau_lags(LEVELS, BUFS)
    out: dict[str, list[float]] = {"bins": bins_list, "merge_s": [], "sum_s": [], "bytes": []}
    rng = np.random.default_rng(rank)
    for bins in bins_list:
        full = PixelLayout(_rings(bins))
        c0, c1 = part.shard_range(full.num_chunks, size, rank)
        G, P, F = (rng.random((delays.size, c1 - c0)) for _ in range(3))
        pairs = np.full(delays.size, 1000, np.int64)
        times, sums = [], []
        for k in range(repeats):
            key = f"r1_u{k + 1}"
            part.write_partial(part.Partition(size, rank, spool), key, c0, c1, full.num_chunks, delays, pairs,
                               G, P, F, 1000, 1000, 0)
            comm.Barrier()
            times.append(reduce_partials(comm, spool, key, rank))
        if rank == 0:  # the in-memory floor: sum as many vectors of the placed size as there are ranks
            vec = rng.random(3 * delays.size * full.num_chunks + delays.size + 3)
            acc = np.zeros_like(vec)
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(size):
                    np.add(acc, vec, out=acc)
                sums.append(time.perf_counter() - t0)
        comm.Barrier()
        if rank == 0:
            out["merge_s"].append(float(np.median(times)))
            out["sum_s"].append(float(np.median(sums)))
            out["bytes"].append(int(vec.nbytes))
    return out


def constants_costs(comm: MPI.Comm, folder: str, repeats: int) -> dict[str, float]:
    """A 4M-pixel pedestal and gain (float32): to every rank by broadcast, and by each rank reading them."""
    if comm.Get_rank() == 0:
        for name in ("pedestal", "gain"):
            np.save(os.path.join(folder, f"{name}.npy"), np.random.default_rng(0).random((2048, 2048), np.float32))
    comm.Barrier()
    cfg = {"processor": [{"calib": {"pedestal": os.path.join(folder, "pedestal.npy"),
                                    "gain": os.path.join(folder, "gain.npy")}}]}
    bcast, read = [], []
    for k in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        _, mine, _ = broadcast_constants(comm, cfg, f"bench{os.getpid()}_{k}")
        comm.Barrier()
        bcast.append(time.perf_counter() - t0)
        if mine:
            shutil.rmtree(mine, ignore_errors=True)
        comm.Barrier()
        t0 = time.perf_counter()
        for name in ("pedestal", "gain"):
            np.load(os.path.join(folder, f"{name}.npy"))
        comm.Barrier()
        read.append(time.perf_counter() - t0)
    return {"broadcast_s": float(np.median(bcast)), "read_s": float(np.median(read))}


def main() -> None:
    comm = MPI.COMM_WORLD
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix=f"fcbench_r{comm.Get_rank()}_") as spool:
        merges = merge_costs(comm, spool, [10, 100, 1000] if not quick else [10, 100], 3 if quick else 7)
    folder = comm.bcast(tempfile.mkdtemp(prefix="fcbench_const_") if comm.Get_rank() == 0 else None, root=0)
    consts = constants_costs(comm, folder, 2 if quick else 5)
    if comm.Get_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)
        print(json.dumps({"ranks": comm.Get_size(), "merge": merges, "constants": consts}))


if __name__ == "__main__":
    main()
