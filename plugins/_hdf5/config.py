"""The file writer's configuration: odin-data's keys, validated as a whole before any is applied.

``merge(current, params)`` returns a new WriterConfig with ``params`` applied
or raises ConfigError naming the key, the value and the problem; the current
configuration is never modified.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from framechain.ipc.options import Option, Section, validate_options
from framechain.ipc.errors import ConfigError

from .codecs import BLOSC_COMPRESSORS, COMPRESSIONS
from .distribution import Distribution

__all__ = ["DATATYPES", "DatasetSpec", "FileSpec", "WriterConfig", "WRITER_OPTIONS", "merge"]

DATATYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
             "float32": np.float32}
#: the seed README's integer enumeration (raw8bit, raw16bit, float32bit)
_DATATYPE_ENUM = {0: "uint8", 1: "uint16", 2: "float32"}
_OWNER = "FileWriterPlugin"


@dataclass(frozen=True)
class FileSpec:
    path: str = ""
    prefix: str = ""
    name: str = ""
    use_numbers: bool = True
    first_number: int = 1
    postfix: str = ""
    extension: str = "h5"
    temp_suffix: str = ".tmp"
    overwrite: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    datatype: str = "uint16"
    dims: tuple[int, ...] = ()
    chunks: tuple[int, ...] = ()
    compression: str = "none"
    blosc_compressor: int = 1
    blosc_level: int = 5
    blosc_shuffle: int = 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DATATYPES[self.datatype])

    def describe(self) -> dict[str, Any]:
        return {"datatype": self.datatype, "dims": list(self.dims), "chunks": list(self.chunks),
                "compression": self.compression, "blosc_compressor": self.blosc_compressor,
                "blosc_level": self.blosc_level, "blosc_shuffle": self.blosc_shuffle}


@dataclass(frozen=True)
class WriterConfig:
    process: Distribution = Distribution()  # the "process" keys: number, rank, frames_per_block, blocks_per_file
    file: FileSpec = FileSpec()
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    frames: int = 0
    master: str = "data"
    acquisition_id: str = ""
    close_file_timeout: float = 5.0
    swmr: bool = True
    flush_frames: int = 1000
    flush_ms: int = 1000
    vds: bool = True
    threads: int = 2
    watchdog_ms: int = 2000
    layout: str = "nexus"

    def describe(self) -> dict[str, Any]:
        return {"process": vars(self.process).copy(), "file": vars(self.file).copy(),
                "dataset": {n: d.describe() for n, d in self.datasets.items()},
                "frames": self.frames, "master": self.master, "acquisition_id": self.acquisition_id,
                "close_file_timeout": self.close_file_timeout, "swmr": self.swmr,
                "flush_frames": self.flush_frames, "flush_ms": self.flush_ms, "vds": self.vds,
                "threads": self.threads, "watchdog_ms": self.watchdog_ms, "layout": self.layout}


# -- declared options -------------------------------------------------------------
def _no_slash(v: str) -> str | None:
    return "must not contain '/'" if "/" in v else None


def _positive_ints(v: list) -> str | None:
    ok = v and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
    return None if ok else "must be a non-empty list of positive integers"


PROCESS_OPTIONS = {
    "number": Option(int, 1, "number of writer processes (ranks)", low=1),
    "rank": Option(int, 0, "this writer's rank, 0 .. number - 1", low=0),
    "frames_per_block": Option(int, 1, "consecutive frames each rank takes in turn", low=1),
    "blocks_per_file": Option(int, 0, "blocks per file (0: one file per acquisition)", low=0),
}
FILE_OPTIONS = {
    "path": Option(str, "", "output directory (must exist and be writable)"),
    "prefix": Option(str, "", "file name prefix", check=_no_slash),
    "name": Option(str, "", "the older odin-data form: the whole file name (no numbering)", check=_no_slash),
    "use_numbers": Option(bool, True, "add _000001 ... to file names"),
    "first_number": Option(int, 1, "number of the first file", low=0),
    "postfix": Option(str, "", "text after the acquisition id", check=_no_slash),
    "extension": Option(str, "h5", "file extension", check=_no_slash),
    "temp_suffix": Option(str, ".tmp", "suffix while a file is being written", check=_no_slash),
    "overwrite": Option(bool, False, "replace existing files instead of refusing"),
}
DATASET_OPTIONS = {
    "datatype": Option((str, int), "uint16", f"one of {list(DATATYPES)} (or odin-data's 0, 1, 2)"),
    "dims": Option(list, [], "frame shape, e.g. [512, 512]", check=_positive_ints),
    "chunks": Option(list, [], "chunk shape: [1, *dims] (one frame per chunk)", check=_positive_ints),
    "compression": Option(str, "none", "filter", choices=tuple(COMPRESSIONS)),
    "blosc_compressor": Option(int, 1, "blosc compressor id", low=0, high=max(BLOSC_COMPRESSORS)),
    "blosc_level": Option(int, 5, "blosc level", low=0, high=9),
    "blosc_shuffle": Option(int, 2, "blosc shuffle: 0 none, 1 byte, 2 bit", low=0, high=2),
    "cmd": Option(str, "create", "the seed README's older form: create or delete", choices=("create", "delete")),
    "name": Option(str, "", "the seed README's older form: the dataset name"),
}
WRITER_OPTIONS: dict[str, Option | Section] = {
    "process": Section(PROCESS_OPTIONS, "number of writer processes, this one's rank, frames per block, "
                                        "blocks per file"),
    "file": Section(FILE_OPTIONS, "output directory and name parts (or the older {path, name})"),
    "dataset": Option((dict, str), {}, "{<name>: {datatype, dims, chunks, compression, blosc_compressor, "
                                       "blosc_level, blosc_shuffle}}"),
    "frames": Option(int, 0, "frames in the acquisition (all ranks); 0 = unlimited", low=0),
    "master": Option(str, "data", "dataset counted as frames written and linked into /entry/data"),
    "acquisition_id": Option(str, "", "acquisition id when frames carry none; part of the file name"),
    "close_file_timeout": Option(float, 5.0, "seconds to wait for missing frames after end of acquisition", low=0),
    "swmr": Option(bool, True, "write files SWMR-readable"),
    "flush_frames": Option(int, 1000, "flush after this many frames (or after flush_ms, whichever comes first)",
                           low=1),
    "flush_ms": Option(int, 1000, "flush at most this many ms after the first unflushed frame", low=1),
    "vds": Option(bool, True, "rank 0 writes <stem>_vds.h5 with a virtual dataset over every file"),
    "threads": Option(int, 2, "compression threads", low=1, high=64),
    "watchdog_ms": Option(int, 2000, "report create/write/flush/close calls slower than this", low=1),
    "write": Option(bool, False, "true = start_writing, false = stop_writing"),
    "timeout_timer_period": Option(int, 5000, "odin-data's name for close_file_timeout, in ms", low=0),
    "layout": Option(str, "nexus", "nexus: frames in /entry/instrument/detector/<dataset> with NXdata; odin: "
                                   "odin-data's FileWriterPlugin layout, /<dataset> at the root",
                     choices=("nexus", "odin")),
}


# -- sections -------------------------------------------------------------------------
def _process(cur: Distribution, v: Mapping[str, Any]) -> Distribution:
    out = replace(cur, **v)
    if out.rank >= out.number:
        raise ConfigError(f"{_OWNER} 'process/rank' {out.rank} must be less than 'process/number' {out.number}",
                          "rank")
    return out


def _file(cur: FileSpec, v: Mapping[str, Any]) -> FileSpec:
    vals = dict(v)
    if "extension" in vals:
        vals["extension"] = vals["extension"].lstrip(".")
    if "name" in vals and vals["name"]:
        stem, dot, ext = vals["name"].rpartition(".")
        vals.setdefault("extension", ext if dot else "h5")
        vals.setdefault("use_numbers", False)
    out = replace(cur, **vals)
    if "path" in vals:
        check_path(out.path)
    return out


def check_path(path: str) -> None:
    """Raise ConfigError unless ``path`` is an existing writable directory."""
    if not path:
        raise ConfigError(f"{_OWNER} 'file/path' must name a directory, got an empty string", "path")
    if not os.path.isdir(path):
        raise ConfigError(f"{_OWNER} 'file/path' {path!r} does not exist or is not a directory", "path")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{_OWNER} 'file/path' {path!r} is not writable by this process", "path")


def _dataset(name: str, cur: DatasetSpec | None, v: Any, declare: bool = False) -> DatasetSpec:
    where = f"dataset/{name}"
    vals = {k: x for k, x in validate_options(_OWNER, DATASET_OPTIONS, v, f"{where}/").items()
            if k not in ("cmd", "name")}
    if "datatype" in vals:
        x = vals["datatype"]
        if isinstance(x, int) and x in _DATATYPE_ENUM:
            x = _DATATYPE_ENUM[x]
        if x not in DATATYPES:
            raise ConfigError(f"{_OWNER} '{where}/datatype' {x!r} is not supported; use one of "
                              f"{list(DATATYPES)}", "datatype")
        vals["datatype"] = x
    for k in ("dims", "chunks"):
        if k in vals:
            vals[k] = tuple(vals[k])
    if "dims" in vals and "chunks" not in vals:
        vals["chunks"] = ()  # new frame shape: its one-frame chunks follow unless given
    out = replace(cur, **vals) if cur is not None else DatasetSpec(name, **vals)
    if not out.dims and declare:  # odin's "dataset": "<name>" names it; its dims follow (checked at start_writing)
        return out
    if not out.dims:
        raise ConfigError(f"{_OWNER} '{where}' needs 'dims' (the frame shape, e.g. [512, 512])", "dims")
    want = (1,) + out.dims
    if not out.chunks:
        out = replace(out, chunks=want)
    elif out.chunks != want:
        raise ConfigError(f"{_OWNER} '{where}': chunks {list(out.chunks)} are inconsistent with dims "
                          f"{list(out.dims)}; frames are written as one chunk each, so chunks must be "
                          f"{list(want)}", "chunks")
    return out


def _datasets(cur: dict[str, DatasetSpec], v: Any) -> dict[str, DatasetSpec]:
    if isinstance(v, str):  # odin-data: "dataset": "data" names a dataset; its definition may follow
        if not v or "/" in v:
            raise ConfigError(f"{_OWNER} dataset name {v!r} must be non-empty without '/'", "dataset")
        return {**cur, v: _dataset(v, cur.get(v), {}, declare=True)}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{_OWNER} 'dataset' must be an object {{<name>: {{datatype, dims, ...}}}}, not {v!r}",
                          "dataset")
    if isinstance(v.get("name"), str) and not isinstance(v.get("name"), Mapping):
        # the seed README's older form {"cmd": "create", "name": "data", "datatype": 1, ...}
        cmd = v.get("cmd", "create")
        name = v["name"]
        out = dict(cur)
        if cmd == "delete":
            out.pop(name, None)
            return out
        if cmd != "create":
            raise ConfigError(f"{_OWNER} 'dataset/cmd' must be 'create' or 'delete', not {cmd!r}", "cmd")
        out[name] = _dataset(name, cur.get(name), {k: x for k, x in v.items() if k not in ("cmd", "name")})
        return out
    out = dict(cur)
    for name, spec in v.items():
        if not name or "/" in name:
            raise ConfigError(f"{_OWNER} dataset name {name!r} must be non-empty without '/'", "dataset")
        if spec is None:
            out.pop(name, None)
            continue
        out[name] = _dataset(name, cur.get(name), spec)
    return out


def merge(cur: WriterConfig, params: Any) -> tuple[WriterConfig, bool | None]:
    """Apply ``params`` to a copy of ``cur``; return it and the ``write`` request (None if absent)."""
    checked = validate_options(_OWNER, WRITER_OPTIONS, params)  # types and ranges, nested sections included
    vals: dict[str, Any] = {}
    write = checked.pop("write", None)
    for k, v in checked.items():
        if k == "process":
            vals[k] = _process(cur.process, v)
        elif k == "file":
            vals[k] = _file(cur.file, v)
        elif k == "dataset":
            vals["datasets"] = _datasets(cur.datasets, v)
        elif k == "timeout_timer_period":
            vals["close_file_timeout"] = v / 1000
        else:
            vals[k] = v
    return replace(copy.copy(cur), **vals), write
