"""Large byte strings out of a CBOR message without copying them, so cbor2 decodes only the small rest.

cbor2 copies every byte string it decodes. A DECTRIS image message is a few
hundred bytes of maps and tags around one image-sized byte string per
channel; copying that string to a ``bytes`` and then again into shared memory
costs a third of the ingest rate. ``elide_blobs`` walks the item structure
(RFC 8949 heads only, no values decoded), cuts every definite-length byte
string of at least ``min_size`` bytes out of the message and puts in its place
a tag ``BLOB_TAG`` holding the string's index; ``blobs`` are memoryviews of the
original buffer. cbor2 then decodes the short message and a tag hook maps the
indices back to the views. The walk checks every length against the buffer:
a truncated or hostile message raises ``ValueError``.
"""

from __future__ import annotations

import struct

__all__ = ["elide_blobs", "BLOB_TAG"]

#: an unassigned CBOR tag number standing for "byte string number <n> of this message"
BLOB_TAG = 0x66636230  # 'fcb0'
_MAX_DEPTH = 64
_ARG = {24: struct.Struct(">B"), 25: struct.Struct(">H"), 26: struct.Struct(">I"), 27: struct.Struct(">Q")}
_BLOB_HEAD = b"\xda" + BLOB_TAG.to_bytes(4, "big")  # major type 6, 4-byte tag number


def _head(buf: memoryview, pos: int, end: int) -> tuple[int, int, int, int]:
    """(major type, additional info, argument, position after the head)."""
    if pos >= end:
        raise ValueError("CBOR message ends inside an item")
    b = buf[pos]
    major, info = b >> 5, b & 31
    if info < 24:
        return major, info, info, pos + 1
    if info == 31:
        if major in (0, 1, 6):
            raise ValueError(f"CBOR major type {major} cannot have indefinite length")
        return major, info, -1, pos + 1
    arg = _ARG.get(info)
    if arg is None:
        raise ValueError(f"CBOR additional information {info} is reserved")
    if pos + 1 + arg.size > end:
        raise ValueError("CBOR message ends inside an item head")
    return major, info, arg.unpack_from(buf, pos + 1)[0], pos + 1 + arg.size


def elide_blobs(raw: bytes | memoryview, min_size: int = 4096) -> tuple[bytes, list[memoryview]]:
    """(message with large byte strings replaced by ``BLOB_TAG`` n, the byte strings as views of ``raw``)."""
    buf = memoryview(raw).cast("B")
    end = len(buf)
    pieces: list[bytes] = []
    blobs: list[memoryview] = []
    copied = pos = 0
    stack = [1]  # items still to read at each open level (-1: until a break)
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        major, info, arg, after = _head(buf, pos, end)
        if major == 7 and info == 31:  # break: closes an indefinite container
            if stack[-1] != -1:
                raise ValueError("CBOR break outside an indefinite-length item")
            stack.pop()
            pos = after
            continue
        if stack[-1] > 0:
            stack[-1] -= 1
        if major in (2, 3):
            if arg == -1:  # indefinite string: its chunks are definite strings, then a break
                stack.append(-1)
                pos = after
            else:
                if after + arg > end:
                    raise ValueError(f"a CBOR string of {arg} bytes runs past the message's end")
                if major == 2 and arg >= min_size:
                    pieces.append(bytes(buf[copied:pos]))
                    pieces.append(_BLOB_HEAD)
                    n = len(blobs)
                    if n >= 1 << 16:
                        raise ValueError("more than 65536 large byte strings in one CBOR message")
                    pieces.append(bytes([n]) if n < 24 else b"\x19" + n.to_bytes(2, "big"))
                    blobs.append(buf[after:after + arg])
                    copied = after + arg
                pos = after + arg
        elif major in (4, 5):
            count = -1 if arg == -1 else arg * (2 if major == 5 else 1)
            if count > end - after:
                raise ValueError(f"a CBOR container of {arg} items is longer than the message")
            pos = after
            if count != 0:
                if len(stack) >= _MAX_DEPTH:
                    raise ValueError(f"CBOR nesting deeper than {_MAX_DEPTH}")
                stack.append(count)
        elif major == 6:
            pos = after
            if len(stack) >= _MAX_DEPTH:
                raise ValueError(f"CBOR nesting deeper than {_MAX_DEPTH}")
            stack.append(1)
        else:  # integers, simple values and floats: the head is the whole item
            pos = after
    if pos != end:
        raise ValueError(f"{end - pos} bytes after the CBOR message")
    if not blobs:
        return bytes(buf), blobs
    pieces.append(bytes(buf[copied:]))
    return b"".join(pieces), blobs
