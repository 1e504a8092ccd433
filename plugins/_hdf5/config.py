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

from framechain.ipc.errors import ConfigError

from .codecs import BLOSC_COMPRESSORS, COMPRESSIONS
from .distribution import Distribution

__all__ = ["DATATYPES", "DatasetSpec", "FileSpec", "WriterConfig", "merge"]

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

    def describe(self) -> dict[str, Any]:
        return {"process": vars(self.process).copy(), "file": vars(self.file).copy(),
                "dataset": {n: d.describe() for n, d in self.datasets.items()},
                "frames": self.frames, "master": self.master, "acquisition_id": self.acquisition_id,
                "close_file_timeout": self.close_file_timeout, "swmr": self.swmr,
                "flush_frames": self.flush_frames, "flush_ms": self.flush_ms, "vds": self.vds,
                "threads": self.threads, "watchdog_ms": self.watchdog_ms}


# -- small checkers -------------------------------------------------------------
def _int(where: str, v: Any, lo: int = 0, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{_OWNER} '{where}' must be an integer {rng}, not {v!r}", where)
    return v


def _num(where: str, v: Any, lo: float = 0.0) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"{_OWNER} '{where}' must be a number >= {lo:g}, not {v!r}", where)
    return float(v)


def _str(where: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{_OWNER} '{where}' must be a string, not {v!r}", where)
    return v


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{_OWNER} '{where}' must be true or false, not {v!r}", where)
    return v


def _obj(where: str, v: Any, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{_OWNER} '{where}' must be an object with keys {sorted(known)}, not {v!r}", where)
    unknown = set(v) - known
    if unknown:
        raise ConfigError(f"{_OWNER} '{where}' has unknown key(s) {sorted(unknown)}; known: {sorted(known)}", where)
    return v


def _dims(where: str, v: Any) -> tuple[int, ...]:
    if (not isinstance(v, list) or not v
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
        raise ConfigError(f"{_OWNER} '{where}' must be a list of positive integers, not {v!r}", where)
    return tuple(v)


# -- sections -------------------------------------------------------------------------
def _process(cur: Distribution, v: Any) -> Distribution:
    v = _obj("process", v, {"number", "rank", "frames_per_block", "blocks_per_file"})
    out = replace(cur, **{
        k: _int(f"process/{k}", x, 1 if k in ("number", "frames_per_block") else 0) for k, x in v.items()})
    if out.rank >= out.number:
        raise ConfigError(f"{_OWNER} 'process/rank' {out.rank} must be less than 'process/number' {out.number}",
                          "rank")
    return out


def _file(cur: FileSpec, v: Any) -> FileSpec:
    v = _obj("file", v, {"path", "prefix", "name", "use_numbers", "first_number", "postfix", "extension",
                         "temp_suffix", "overwrite"})
    vals: dict[str, Any] = {}
    for k, x in v.items():
        if k in ("use_numbers", "overwrite"):
            vals[k] = _bool(f"file/{k}", x)
        elif k == "first_number":
            vals[k] = _int("file/first_number", x, 0)
        else:
            vals[k] = _str(f"file/{k}", x)
            if k in ("prefix", "name", "postfix", "extension", "temp_suffix") and "/" in x:
                raise ConfigError(f"{_OWNER} 'file/{k}' must not contain '/', got {x!r}", k)
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


def _dataset(name: str, cur: DatasetSpec | None, v: Any) -> DatasetSpec:
    where = f"dataset/{name}"
    v = _obj(where, v, {"datatype", "dims", "chunks", "compression", "blosc_compressor", "blosc_level",
                        "blosc_shuffle", "cmd", "name"})
    vals: dict[str, Any] = {}
    for k, x in v.items():
        if k in ("cmd", "name"):
            continue
        if k == "datatype":
            if isinstance(x, int) and not isinstance(x, bool) and x in _DATATYPE_ENUM:
                x = _DATATYPE_ENUM[x]
            if x not in DATATYPES:
                raise ConfigError(f"{_OWNER} '{where}/datatype' {x!r} is not supported; use one of "
                                  f"{list(DATATYPES)}", "datatype")
            vals[k] = x
        elif k in ("dims", "chunks"):
            vals[k] = _dims(f"{where}/{k}", x)
        elif k == "compression":
            if x not in COMPRESSIONS:
                raise ConfigError(f"{_OWNER} '{where}/compression' {x!r} is not supported; use one of "
                                  f"{list(COMPRESSIONS)}", "compression")
            vals[k] = x
        elif k == "blosc_compressor":
            vals[k] = _int(f"{where}/{k}", x, 0, max(BLOSC_COMPRESSORS))
        elif k == "blosc_level":
            vals[k] = _int(f"{where}/{k}", x, 0, 9)
        elif k == "blosc_shuffle":
            vals[k] = _int(f"{where}/{k}", x, 0, 2)
    if "dims" in vals and "chunks" not in vals:
        vals["chunks"] = ()  # new frame shape: its one-frame chunks follow unless given
    out = replace(cur, **vals) if cur is not None else DatasetSpec(name, **vals)
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
    if isinstance(v, str):  # odin-data: "dataset": "data" selects/creates a name
        v = {v: {}}
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


_TOP = {"process", "file", "dataset", "frames", "master", "acquisition_id", "close_file_timeout", "swmr",
        "flush_frames", "flush_ms", "vds", "threads", "watchdog_ms", "write"}


def merge(cur: WriterConfig, params: Any) -> tuple[WriterConfig, bool | None]:
    """Apply ``params`` to a copy of ``cur``; return it and the ``write`` request (None if absent)."""
    params = _obj("configuration", params, _TOP)
    vals: dict[str, Any] = {}
    write = None
    for k, v in params.items():
        if k == "process":
            vals[k] = _process(cur.process, v)
        elif k == "file":
            vals[k] = _file(cur.file, v)
        elif k == "dataset":
            vals["datasets"] = _datasets(cur.datasets, v)
        elif k in ("frames", "flush_frames"):
            vals[k] = _int(k, v, 0 if k == "frames" else 1)
        elif k in ("flush_ms", "watchdog_ms"):
            vals[k] = _int(k, v, 1)
        elif k == "threads":
            vals[k] = _int(k, v, 1, 64)
        elif k in ("master", "acquisition_id"):
            vals[k] = _str(k, v)
        elif k == "close_file_timeout":
            vals[k] = _num(k, v)
        elif k in ("swmr", "vds"):
            vals[k] = _bool(k, v)
        elif k == "write":
            write = _bool(k, v)
    return replace(copy.copy(cur), **vals), write
