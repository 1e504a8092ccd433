"""Pixel-partitioned XPCS: each rank correlates whole chunks of the full layout; the partial sums merge exactly.

The full dynamic layout (every used pixel, bin-sorted, cut into chunks) is split
into ``number`` contiguous runs of chunks, one per rank. A bin that spans two
shards is cut at a chunk edge, so every chunk lives on exactly one rank: the
rank's per-chunk G, P, F are the single process's, bit for bit, and the merged
sums (zeros elsewhere, summed over ranks) give the same g2 and g2_err
(:func:`result_from_sums` over the full layout).

Files in the rank's spool directory (written atomically: a temporary name, then
``os.replace``), all ``.npz``:

- ``r{run}_u{k}.rank{rank}.npz``: the rank's partial sums at live update ``k``
  (``r{run}_final.rank{rank}.npz`` at the end of the acquisition);
- ``r{run}_u{k}.merged.npz`` / ``r{run}_final.merged.npz``: the merged sums,
  written on rank 0 by whoever reduces (``framechain run --mpi``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .layout import PixelLayout

__all__ = ["ABORT", "abort", "Partition", "shard_range", "shard_layout", "write_partial", "read_npz", "merged_name",
           "partial_name", "place", "write_npz", "PARTIAL_RE"]

ABORT = "ABORT"  # a file in the spool: the merge will not come (its text says why)
PARTIAL_RE = re.compile(r"^(r\d+_(?:u\d+|final))\.rank(\d+)\.npz$")


@dataclass(frozen=True)
class Partition:
    """This rank's share: ``rank`` of ``number``; partial and merged sums meet in ``spool``."""

    number: int = 1
    rank: int = 0
    spool: str = ""
    timeout: float = 300.0

    @classmethod
    def from_config(cls, v: dict[str, Any]) -> Partition | None:
        return None if not v else cls(int(v["number"]), int(v.get("rank", 0)), str(v["spool"]),
                                      float(v.get("timeout", 300.0)))


def check_partition(v: Any) -> str | None:
    """Why ``v`` is not a valid ``partition`` option (None when it is)."""
    if not v:
        return None
    if not isinstance(v, dict) or set(v) - {"number", "rank", "spool", "timeout"}:
        return "must be {} or {number, rank, spool[, timeout]}"
    n, r = v.get("number"), v.get("rank", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return "number must be an integer >= 1"
    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < n:
        return f"rank must be an integer from 0 to number - 1 ({n - 1})"
    if not isinstance(v.get("spool"), str) or not v["spool"]:
        return "spool must name a directory (where the partial and merged sums meet)"
    t = v.get("timeout", 300.0)
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
        return "timeout must be a number of seconds > 0"
    return None


def shard_range(num_chunks: int, number: int, rank: int) -> tuple[int, int]:
    """Chunks ``[c0, c1)`` of rank ``rank``: contiguous, sizes differing by at most one."""
    base, extra = divmod(num_chunks, number)
    c0 = rank * base + min(rank, extra)
    return c0, c0 + base + (rank < extra)


def shard_layout(full: PixelLayout, c0: int, c1: int) -> PixelLayout:
    """The layout of chunks ``[c0, c1)`` of ``full``: the same chunks, in the same order, nothing else."""
    lo, hi = c0 * full.chunk, c1 * full.chunk
    sel = (full.positions >= lo) & (full.positions < hi)
    labels = np.zeros(int(np.prod(full.shape)), np.int64)
    labels[full.pixels[sel]] = full.pixel_bins[sel] + 1
    lay = PixelLayout(labels.reshape(full.shape), num_bins=full.num_bins, chunk=full.chunk)
    if lay.num_chunks != c1 - c0 or not np.array_equal(lay.chunk_npix, full.chunk_npix[c0:c1]):
        raise RuntimeError(f"shard chunks {c0}..{c1} do not line up with the full layout")  # a bug, not input
    return lay


def abort(spool: str, why: str) -> None:
    """Tell a plugin waiting in ``spool`` that no merge will come, and why."""
    try:
        with open(os.path.join(spool, ABORT), "w") as fh:
            fh.write(why)
    except OSError:
        pass


def partial_name(key: str, rank: int) -> str:
    return f"{key}.rank{rank}.npz"


def merged_name(key: str) -> str:
    return f"{key}.merged.npz"


def write_npz(path: str, **arrays: Any) -> None:
    """``np.savez`` under a temporary name, then renamed: a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_partial(p: Partition, key: str, c0: int, c1: int, num_chunks: int, delays: np.ndarray,
                  pairs: np.ndarray, G: np.ndarray, P: np.ndarray, F: np.ndarray, frames: int, frames_used: int,
                  frames_bad: int, twotime: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """This rank's per-chunk sums (chunks ``c0..c1`` of ``num_chunks``) as ``key``, and at the end its
    two-time sums ``(G, S)`` per bin (:meth:`TwoTimeAccumulator.partial`); returns the path."""
    path = os.path.join(p.spool, partial_name(key, p.rank))
    tt = twotime or (np.zeros((0, 0, 0)), np.zeros((0, 0)))
    write_npz(path, c0=c0, c1=c1, num_chunks=num_chunks, delays=delays, pairs=pairs, G=G, P=P, F=F,
              frames=frames, frames_used=frames_used, frames_bad=frames_bad, tt_G=tt[0], tt_S=tt[1])
    return path


def place(partial: dict[str, np.ndarray]) -> np.ndarray:
    """One rank's partial as a flat float64 vector over the full layout (zeros outside its chunks):
    ``[G, P, F]`` each ``(lags, num_chunks)``, the two-time sums (per bin, already over the full bins), then
    pairs, frames, frames_used, frames_bad. Summing these vectors over the ranks merges them (pairs and frame
    counts, equal on every rank, are divided back)."""
    n_t, nc = partial["G"].shape[0], int(partial["num_chunks"])
    c0, c1 = int(partial["c0"]), int(partial["c1"])
    tt_G, tt_S = partial.get("tt_G", np.zeros(0)), partial.get("tt_S", np.zeros(0))
    mt = 3 * n_t * nc
    out = np.zeros(mt + tt_G.size + tt_S.size + n_t + 3)
    for k, name in enumerate("GPF"):
        out[k * n_t * nc:(k + 1) * n_t * nc].reshape(n_t, nc)[:, c0:c1] = partial[name]
    out[mt:mt + tt_G.size] = tt_G.reshape(-1)
    out[mt + tt_G.size:mt + tt_G.size + tt_S.size] = tt_S.reshape(-1)
    tail = out[-(n_t + 3):]
    tail[:n_t] = partial["pairs"]
    tail[n_t:] = [partial["frames"], partial["frames_used"], partial["frames_bad"]]
    return out


def unplace(total: np.ndarray, ranks: int, delays: np.ndarray, num_chunks: int,
            twotime_shape: tuple[int, ...] = (0, 0, 0)) -> dict[str, np.ndarray]:
    """The merged sums from the sum of :func:`place` vectors over ``ranks`` ranks (``twotime_shape``: the
    partials' ``tt_G`` shape, ``(num_bins, n, n)``)."""
    n_t, nc = delays.size, num_chunks
    G, P, F = (total[k * n_t * nc:(k + 1) * n_t * nc].reshape(n_t, nc) for k in range(3))
    nb, n = twotime_shape[0], twotime_shape[1] if len(twotime_shape) > 1 else 0
    mt = 3 * n_t * nc
    tt_G = total[mt:mt + nb * n * n].reshape(nb, n, n)
    tt_S = total[mt + nb * n * n:mt + nb * n * n + nb * n].reshape(nb, n)
    tail = total[-(n_t + 3):] / ranks
    return {"delays": delays, "G": G, "P": P, "F": F, "tt_G": tt_G, "tt_S": tt_S,
            "pairs": np.rint(tail[:n_t]).astype(np.int64),
            "frames": int(round(tail[n_t])), "frames_used": int(round(tail[n_t + 1])),
            "frames_bad": int(round(tail[n_t + 2])), "ranks": ranks}
