"""odin-data's multi-writer frame arithmetic: which rank writes a frame, into which file, at which index.

With ``number`` writer processes, frames are dealt out in blocks of
``frames_per_block`` (fpb) round-robin over the ranks; each rank puts
``blocks_per_file`` (bpf, 0 = unlimited) of its blocks into one file before
starting the next. Files are numbered globally so that file ``k`` of rank
``r`` has index ``k * number + r``.

Examples
--------
>>> d = Distribution(number=4, rank=0, frames_per_block=1)
>>> d.frames_mine(1141)
286
>>> [frames_for_rank(1141, 4, r, 1) for r in range(4)]
[286, 285, 285, 285]
>>> [frames_for_rank(1141, 4, r, 1000) for r in range(4)]
[1000, 141, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Distribution", "frames_for_rank"]


def frames_for_rank(total: int, number: int, rank: int, frames_per_block: int) -> int:
    """How many of frames ``0 .. total-1`` rank ``rank`` of ``number`` writes."""
    cycle = frames_per_block * number
    full, rem = divmod(total, cycle)
    return full * frames_per_block + min(max(rem - rank * frames_per_block, 0), frames_per_block)


@dataclass(frozen=True)
class Distribution:
    """Frame placement for one rank (odin-data's formulas)."""

    number: int = 1
    rank: int = 0
    frames_per_block: int = 1
    blocks_per_file: int = 0

    def owns(self, offset: int) -> bool:
        """True when frame ``offset`` belongs to this rank: ``(offset // fpb) % number == rank``."""
        return (offset // self.frames_per_block) % self.number == self.rank

    def frames_mine(self, total: int) -> int:
        """How many of frames ``0 .. total-1`` this rank writes (0 when ``total`` is 0)."""
        return frames_for_rank(total, self.number, self.rank, self.frames_per_block)

    def index_in_file(self, offset: int) -> int:
        """``((offset // (fpb*N)) * fpb) % (bpf*fpb) + offset % fpb`` (no modulo when bpf is 0)."""
        fpb = self.frames_per_block
        i = (offset // (fpb * self.number)) * fpb
        if self.blocks_per_file:
            i %= self.blocks_per_file * fpb
        return i + offset % fpb

    def file_index(self, offset: int) -> int:
        """``((offset // fpb // N) // bpf) * N + rank`` (``rank`` when bpf is 0)."""
        if not self.blocks_per_file:
            return self.rank
        return ((offset // self.frames_per_block // self.number) // self.blocks_per_file) * self.number + self.rank

    def frames_in_file(self, total: int, file_index: int) -> int:
        """Frames of an acquisition of ``total`` frames (0 = unknown) held by global file ``file_index``."""
        if total <= 0:
            return 0
        rank = file_index % self.number
        mine = frames_for_rank(total, self.number, rank, self.frames_per_block)
        if not self.blocks_per_file:
            return mine if file_index == rank else 0
        per_file = self.blocks_per_file * self.frames_per_block
        k = file_index // self.number
        return min(max(mine - k * per_file, 0), per_file)

    def file_indices(self, total: int) -> list[int]:
        """Every global file index (all ranks) an acquisition of ``total`` frames fills."""
        out = []
        for rank in range(self.number):
            mine = frames_for_rank(total, self.number, rank, self.frames_per_block)
            if not self.blocks_per_file:
                if mine:
                    out.append(rank)
                continue
            per_file = self.blocks_per_file * self.frames_per_block
            out.extend(k * self.number + rank for k in range(-(-mine // per_file)))
        return sorted(out)

    def offset_of(self, file_index: int, index: int) -> int:
        """The acquisition frame offset stored at ``index`` of global file ``file_index``."""
        rank, k = file_index % self.number, file_index // self.number
        fpb = self.frames_per_block
        local = index + (k * self.blocks_per_file * fpb if self.blocks_per_file else 0)
        block, within = divmod(local, fpb)
        return (block * self.number + rank) * fpb + within
