"""Chunk compressors that produce exactly what the registered HDF5 filters decode.

The compressors are the C functions inside hdf5plugin's own filter libraries
(bitshuffle, LZ4, c-blosc), called through ctypes. ctypes releases the GIL for
the call, so a thread pool compresses frames in parallel; the bytes are then
written with ``write_direct_chunk`` and read back by any HDF5 reader that
loads hdf5plugin.

Chunk formats
-------------
- ``LZ4`` (filter 32004): ``>Q`` uncompressed size, ``>I`` block size, then per
  block ``>I`` compressed size and the LZ4 block (one block per frame here).
- ``BSLZ4`` (filter 32008, cd ``(0, 2)``): ``>Q`` uncompressed size, ``>I``
  block size in bytes, then ``bshuf_compress_lz4`` output.
- ``blosc`` (filter 32001): one c-blosc 1 buffer.
"""

from __future__ import annotations

import struct
from typing import Any

import hdf5plugin
import numpy as np

from framechain.ipc.compression import filter_library

__all__ = ["COMPRESSIONS", "BLOSC_COMPRESSORS", "Codec", "make_codec"]

COMPRESSIONS = ("none", "LZ4", "BSLZ4", "blosc")
#: c-blosc compressor codes (odin-data's ``blosc_compressor`` values).
BLOSC_COMPRESSORS = {0: b"blosclz", 1: b"lz4", 2: b"lz4hc", 3: b"snappy", 4: b"zlib", 5: b"zstd"}

_lib = filter_library


class Codec:
    """Compress one contiguous frame into one chunk's bytes.

    ``compress(data)`` returns a buffer (a numpy uint8 array or the frame
    itself for ``none``) valid until the next call on the same output buffer;
    callers pass their own ``out`` from ``alloc()`` to reuse memory.
    """

    name = "none"

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def compressed(self) -> bool:
        return self.name != "none"

    def filter_args(self) -> dict[str, Any]:
        """Keyword arguments for ``h5py.Group.create_dataset`` registering the filter."""
        return {}

    def bound(self) -> int:
        return self.nbytes

    def alloc(self) -> np.ndarray:
        """An output buffer, touched now so its pages do not fault on the hot path."""
        buf = np.empty(self.bound(), np.uint8)
        buf.fill(0)
        return buf

    def compress(self, data: np.ndarray, out: np.ndarray) -> np.ndarray:
        return data


class Lz4Codec(Codec):
    name = "LZ4"

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        super().__init__(dtype, shape)
        self._lib = _lib("lz4")
        self._bound = self._lib.LZ4_compressBound(self.nbytes)
        self._header = struct.pack(">QI", self.nbytes, self.nbytes)

    def filter_args(self) -> dict[str, Any]:
        return dict(hdf5plugin.LZ4(nbytes=0))

    def bound(self) -> int:
        return 16 + self._bound

    def compress(self, data: np.ndarray, out: np.ndarray) -> np.ndarray:
        n = self._lib.LZ4_compress_default(data.ctypes.data, out.ctypes.data + 16, self.nbytes, self._bound)
        if n <= 0:
            raise RuntimeError(f"LZ4_compress_default failed ({n})")
        if n >= self.nbytes:  # the filter stores incompressible blocks raw
            out[16:16 + self.nbytes] = data.reshape(-1).view(np.uint8)
            n = self.nbytes
        out[:12] = np.frombuffer(self._header, np.uint8)
        out[12:16] = np.frombuffer(struct.pack(">I", n), np.uint8)
        return out[:16 + n]


class BitshuffleLz4Codec(Codec):
    name = "BSLZ4"

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        super().__init__(dtype, shape)
        self._lib = _lib("bshuf")
        es = self.dtype.itemsize
        self._elems = self.nbytes // es
        block = self._lib.bshuf_default_block_size(es)
        self._bound = self._lib.bshuf_compress_lz4_bound(self._elems, es, 0)
        self._header = np.frombuffer(struct.pack(">QI", self.nbytes, block * es), np.uint8)

    def filter_args(self) -> dict[str, Any]:
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))

    def bound(self) -> int:
        return 12 + self._bound

    def compress(self, data: np.ndarray, out: np.ndarray) -> np.ndarray:
        n = self._lib.bshuf_compress_lz4(data.ctypes.data, out.ctypes.data + 12, self._elems,
                                         self.dtype.itemsize, 0)
        if n < 0:
            raise RuntimeError(f"bshuf_compress_lz4 failed ({n})")
        out[:12] = self._header
        return out[:12 + n]


class BloscCodec(Codec):
    name = "blosc"

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], compressor: int = 1, level: int = 5,
                 shuffle: int = 2) -> None:
        super().__init__(dtype, shape)
        self._lib = _lib("blosc")
        self.compressor, self.level, self.shuffle = compressor, level, shuffle
        self._cname = BLOSC_COMPRESSORS[compressor]

    def filter_args(self) -> dict[str, Any]:
        return dict(hdf5plugin.Blosc(cname=self._cname.decode(), clevel=self.level, shuffle=self.shuffle))

    def bound(self) -> int:
        return self.nbytes + 16  # BLOSC_MAX_OVERHEAD

    def compress(self, data: np.ndarray, out: np.ndarray) -> np.ndarray:
        n = self._lib.blosc_compress_ctx(self.level, self.shuffle, self.dtype.itemsize, self.nbytes,
                                         data.ctypes.data, out.ctypes.data, out.nbytes, self._cname, 0, 1)
        if n <= 0:
            raise RuntimeError(f"blosc_compress_ctx failed ({n})")
        return out[:n]


def make_codec(compression: str, dtype: np.dtype, shape: tuple[int, ...], blosc_compressor: int = 1,
               blosc_level: int = 5, blosc_shuffle: int = 2) -> Codec:
    """The codec for an odin-data ``compression`` name (``none | LZ4 | BSLZ4 | blosc``)."""
    if compression == "none":
        return Codec(dtype, shape)
    if compression == "LZ4":
        return Lz4Codec(dtype, shape)
    if compression == "BSLZ4":
        return BitshuffleLz4Codec(dtype, shape)
    if compression == "blosc":
        return BloscCodec(dtype, shape, blosc_compressor, blosc_level, blosc_shuffle)
    raise ValueError(f"unknown compression {compression!r}; one of {list(COMPRESSIONS)}")
