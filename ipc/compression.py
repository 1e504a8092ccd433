"""The compressed-chunk formats framechain reads and writes, through hdf5plugin's own filter libraries.

Both are the HDF5 filter framings, which is also what DECTRIS streams carry
(``bslz4`` and ``lz4`` in stream v2's tag 56500, ``bs16-lz4<``/``bs32-lz4<`` and
``lz4<`` in stream v1):

- ``bslz4`` (filter 32008): ``>Q`` uncompressed bytes, ``>I`` block size in
  bytes, then ``bshuf_compress_lz4`` output.
- ``lz4`` (filter 32004): ``>Q`` uncompressed bytes, ``>I`` block size, then per
  block ``>I`` compressed size and the LZ4 block (stored raw when it did not shrink).

ctypes releases the GIL during each call.
"""

from __future__ import annotations

import ctypes
import os
import struct

import hdf5plugin
import numpy as np

from .errors import FramechainError

__all__ = ["filter_library", "decompress_bslz4", "decompress_lz4", "decompress_lz4_block", "check_chunk",
           "CompressionError"]

_libs: dict[str, ctypes.CDLL] = {}
_H5_HEADER = struct.Struct(">QI")


class CompressionError(FramechainError, ValueError):
    """Compressed data that does not decode to the expected frame."""


def filter_library(name: str) -> ctypes.CDLL:
    """hdf5plugin's ``libh5<name>.so`` (``bshuf``, ``lz4``, ``blosc``) with the signatures framechain calls."""
    lib = _libs.get(name)
    if lib is None:
        lib = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, f"libh5{name}.so"))
        if name == "bshuf":
            lib.bshuf_compress_lz4.restype = ctypes.c_int64
            lib.bshuf_compress_lz4.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                               ctypes.c_size_t, ctypes.c_size_t]
            lib.bshuf_decompress_lz4.restype = ctypes.c_int64
            lib.bshuf_decompress_lz4.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                                 ctypes.c_size_t, ctypes.c_size_t]
            lib.bshuf_compress_lz4_bound.restype = ctypes.c_size_t
            lib.bshuf_compress_lz4_bound.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
            lib.bshuf_default_block_size.restype = ctypes.c_size_t
            lib.bshuf_default_block_size.argtypes = [ctypes.c_size_t]
        elif name == "lz4":
            lib.LZ4_compress_default.restype = ctypes.c_int
            lib.LZ4_compress_default.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            lib.LZ4_compressBound.restype = ctypes.c_int
            lib.LZ4_compressBound.argtypes = [ctypes.c_int]
            lib.LZ4_decompress_safe.restype = ctypes.c_int
            lib.LZ4_decompress_safe.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        elif name == "blosc":
            lib.blosc_compress_ctx.restype = ctypes.c_int
            lib.blosc_compress_ctx.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                               ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        _libs[name] = lib
    return lib


def _framed(src: bytes | memoryview, out: np.ndarray, what: str) -> tuple[int, int, memoryview]:
    view = memoryview(src).cast("B")
    if len(view) < _H5_HEADER.size:
        raise CompressionError(f"{what} data of {len(view)} bytes is shorter than its 12-byte header")
    total, block = _H5_HEADER.unpack_from(view)
    if total != out.nbytes:
        raise CompressionError(f"{what} data holds {total} bytes, the frame {out.nbytes}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise CompressionError(f"{what}: the output must be a writable C-contiguous array")
    return total, block, view


def _check_bslz4_blocks(view: memoryview, n_elem: int, elem: int, block_elems: int) -> None:
    """Walk the ``>I`` size + LZ4 blocks so no declared size points past the data (a hostile or
    truncated message must not make the C decoder read beyond it)."""
    if block_elems <= 0:
        raise CompressionError("bslz4 block size is zero")
    full, rest = divmod(n_elem, block_elems)
    blocks = full + (1 if rest - rest % 8 else 0)
    pos, end = _H5_HEADER.size, len(view)
    for _ in range(blocks):
        if pos + 4 > end:
            raise CompressionError("bslz4 data ends inside a block header")
        (size,) = struct.unpack_from(">I", view, pos)
        pos += 4 + size
        if pos > end:
            raise CompressionError("bslz4 data ends inside a block")
    if pos + (n_elem % 8) * elem > end:
        raise CompressionError("bslz4 data ends before its last, uncompressed elements")


def decompress_bslz4(src: bytes | memoryview, out: np.ndarray, elem_size: int | None = None) -> None:
    """Decode HDF5-framed bitshuffle-LZ4 ``src`` into ``out`` (its whole size, no allocation)."""
    total, block, view = _framed(src, out, "bslz4")
    elem = elem_size or out.dtype.itemsize
    if block % elem:
        raise CompressionError(f"bslz4 block size {block} is not a multiple of the element size {elem}")
    lib = filter_library("bshuf")
    _check_bslz4_blocks(view, total // elem, elem, block // elem)  # bitshuffle trusts the sizes it reads
    base = np.frombuffer(view, np.uint8)
    n = lib.bshuf_decompress_lz4(base.ctypes.data + _H5_HEADER.size, out.ctypes.data, total // elem, elem,
                                 block // elem)
    if n < 0 or _H5_HEADER.size + n > len(view):
        raise CompressionError(f"bslz4 data does not decode (bitshuffle error {n})")


def decompress_lz4(src: bytes | memoryview, out: np.ndarray) -> None:
    """Decode HDF5-framed LZ4 ``src`` into ``out``."""
    total, block, view = _framed(src, out, "lz4")
    if block <= 0:
        raise CompressionError(f"lz4 block size {block} is not positive")
    lib = filter_library("lz4")
    base = np.frombuffer(view, np.uint8)
    dst = out.reshape(-1).view(np.uint8)
    pos, done = _H5_HEADER.size, 0
    while done < total:
        if pos + 4 > len(view):
            raise CompressionError("lz4 data ends inside a block header")
        (size,) = struct.unpack_from(">I", view, pos)
        pos += 4
        want = min(block, total - done)
        if pos + size > len(view):
            raise CompressionError("lz4 data ends inside a block")
        if size == want:  # stored raw: it did not shrink
            dst[done:done + want] = base[pos:pos + size]
        else:
            n = lib.LZ4_decompress_safe(base.ctypes.data + pos, dst.ctypes.data + done, size, want)
            if n != want:
                raise CompressionError(f"lz4 block at byte {pos} does not decode ({n} of {want} bytes)")
        pos += size
        done += want


def decompress_lz4_block(src: bytes | memoryview, out: np.ndarray) -> None:
    """Decode one bare LZ4 block (DECTRIS stream v1 ``lz4<``) into ``out``, which it must fill exactly."""
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise CompressionError("lz4: the output must be a writable C-contiguous array")
    base = np.frombuffer(memoryview(src).cast("B"), np.uint8)
    n = filter_library("lz4").LZ4_decompress_safe(base.ctypes.data, out.ctypes.data, len(base), out.nbytes)
    if n != out.nbytes:
        raise CompressionError(f"lz4 block does not decode to the frame ({n} of {out.nbytes} bytes)")


def check_chunk(src: bytes | memoryview, algorithm: str, nbytes: int, elem_size: int, blocks: bool = True) -> None:
    """Check that an HDF5-framed ``bslz4``/``lz4`` chunk holds ``nbytes`` and (``blocks``) that its blocks lie
    within it, without decoding (a chunk written to a file as it is must not be truncated or mislabelled).

    The header check is a few struct reads; the block walk is one per 8 KiB block (about 50 us for a 1 Mpix
    uint16 frame), so the receiver checks headers and the writer walks the blocks off the receive path."""
    view = memoryview(src).cast("B")
    if len(view) < _H5_HEADER.size:
        raise CompressionError(f"{algorithm} data of {len(view)} bytes is shorter than its 12-byte header")
    total, block = _H5_HEADER.unpack_from(view)
    if total != nbytes:
        raise CompressionError(f"{algorithm} data holds {total} bytes, the frame {nbytes}")
    if block <= 0 or (algorithm == "bslz4" and block % elem_size):
        raise CompressionError(f"{algorithm} block size {block} is not a positive multiple of the element size "
                               f"{elem_size}")
    if not blocks:
        return
    if algorithm == "bslz4":
        _check_bslz4_blocks(view, total // elem_size, elem_size, block // elem_size)
        return
    pos, done = _H5_HEADER.size, 0
    while done < total:
        if pos + 4 > len(view):
            raise CompressionError("lz4 data ends inside a block header")
        (size,) = struct.unpack_from(">I", view, pos)
        pos += 4 + size
        done += min(block, total - done)
        if pos > len(view):
            raise CompressionError("lz4 data ends inside a block")
