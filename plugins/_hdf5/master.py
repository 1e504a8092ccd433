"""The master file: one HDF5 virtual dataset stitching every rank's files into ``(N, H, W)`` in frame order."""

from __future__ import annotations

import os
from collections.abc import Callable

import h5py

from .config import DatasetSpec
from .distribution import Distribution
from .h5file import FRAMES_GROUP

__all__ = ["write_master"]


def write_master(path: str, dist: Distribution, total: int, datasets: dict[str, DatasetSpec],
                 master: str, file_name: Callable[[int], str], layout: str = "nexus") -> str:
    """Create the virtual-dataset file ``path`` for an acquisition of ``total`` frames.

    ``file_name(file_index)`` gives the (final) name of each data file,
    relative to the master file's directory; sources that do not exist yet
    read as the fill value until they do.
    """
    tmp = path + ".tmp"
    group = FRAMES_GROUP[layout].rstrip("/")
    with h5py.File(tmp, "w", libver="latest") as f:
        if layout == "nexus":
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            det = entry.create_group("instrument").create_group("detector")
            det.parent.attrs["NX_class"] = "NXinstrument"
            det.attrs["NX_class"] = "NXdetector"
        else:
            det = f
        for name, spec in datasets.items():
            vlayout = h5py.VirtualLayout(shape=(total,) + spec.dims, dtype=spec.dtype)
            for fi in dist.file_indices(total):
                n = dist.frames_in_file(total, fi)
                src = h5py.VirtualSource(file_name(fi), f"{group}/{name}", shape=(n,) + spec.dims)
                _map(vlayout, src, dist, fi, n)
            det.create_virtual_dataset(name, vlayout, fillvalue=0)
        if layout == "nexus":
            nxdata = entry.create_group("data")
            nxdata.attrs["NX_class"] = "NXdata"
            nxdata.attrs["signal"] = "data"
            if master in det:
                nxdata["data"] = det[master]
    os.replace(tmp, path)
    return path


def _map(layout: h5py.VirtualLayout, src: h5py.VirtualSource, dist: Distribution, fi: int, n: int) -> None:
    """Map file ``fi``'s ``n`` frames onto their frame offsets, one strided slice per block position."""
    fpb, step = dist.frames_per_block, dist.frames_per_block * dist.number
    for j in range(min(fpb, n)):
        first = dist.offset_of(fi, j)
        count = len(range(j, n, fpb))
        # frame j + k*fpb of this file sits at offset first + k*step
        layout[first:first + (count - 1) * step + 1:step] = src[j:n:fpb]
