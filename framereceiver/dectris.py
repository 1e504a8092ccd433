"""DECTRIS streams: a detector's series on a ZeroMQ PULL socket, stream v2 (CBOR) and v1 (JSON multipart).

Stream v2 (``dectris_v2``, port 31001):

The receiver connects a PULL socket to the detector's PUSH (SIMPLON
``stream/api/.../config`` with ``format: cbor``; port 31001). Messages are
decoded with ``cbor2``:

- typed arrays (RFC 8746 tags 64-87) and multi-dimensional arrays (tag 40,
  row major: dims ``[image_size_y, image_size_x]``);
- DECTRIS compression (tag 56500 ``[algorithm, elem_size, bytes]``): ``bslz4``
  and ``lz4`` with HDF5 framing, decoded by hdf5plugin's filter libraries
  straight into the shared-memory buffer (``framechain.ipc.compression``).

Each channel (threshold) of an image is one frame in its own buffer, with the
channel name as its dataset name; the series id is the acquisition id. A
``start`` is kept (``StreamV2Source.start_message``: geometry, energy, count
time, flatfield and pixel mask), an ``end`` ends the acquisition downstream.

Stream v1 (``dectris_v1``, port 9999), multipart messages whose first part is
JSON with an ``htype``:

- ``dheader-1.0`` ``{series, header_detail}``, then with ``basic``/``all`` the
  detector configuration (JSON), and with ``all`` flatfield, pixel mask and
  count-rate table, each a ``{htype, shape, type}`` part and its blob; an
  appendix may follow. Kept as ``start_message``.
- ``dimage-1.0`` ``{series, frame, hash}``, ``dimage_d-1.0`` ``{shape: [x, y],
  type, encoding, size}``, the blob, ``dconfig-1.0`` (times), optional appendix.
  Encodings ``<`` (raw little endian), ``lz4<`` (one LZ4 block),
  ``bs16-lz4<`` / ``bs32-lz4<`` (bitshuffle-LZ4 with the 12-byte HDF5 header).
- ``dseries_end-1.0`` ``{series}``.

Logger ``framechain.framereceiver.dectris``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import cbor2
import numpy as np
import zmq

from framechain.framereceiver.cbor_blobs import BLOB_TAG, elide_blobs
from framechain.ipc.compression import (CompressionError, check_chunk, decompress_bslz4, decompress_lz4,
                                         decompress_lz4_block)

__all__ = ["StreamV2Source", "StreamV1Source", "Start", "Image", "End", "Channel", "decode_v2", "decode_v1",
           "StreamError"]

log = logging.getLogger(__name__)

#: RFC 8746 typed-array tags to numpy dtypes (the integer and float ones DECTRIS uses and their kin)
TYPED_ARRAY_TAGS = {64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
                    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
                    81: ">f4", 82: ">f8", 85: "<f4", 86: "<f8"}
COMPRESSION_TAG = 56500
MULTI_DIM_TAG = 40


class StreamError(ValueError):
    """A stream message that cannot be used; the message is counted and dropped."""


@dataclass(frozen=True)
class Compressed:
    algorithm: str
    elem_size: int
    data: bytes | memoryview


@dataclass(frozen=True)
class TypedArray:
    dtype: np.dtype
    payload: bytes | memoryview | Compressed


@dataclass(frozen=True)
class MultiDimArray:
    dims: tuple[int, ...]
    array: TypedArray


@dataclass(frozen=True)
class Channel:
    """One channel of an image: name, dtype, shape and how to write its pixels into a buffer."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    payload: bytes | memoryview | Compressed

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def passthrough(self) -> tuple[int, bytes | memoryview] | None:
        """(header compression code, chunk) when the payload is an HDF5-framed chunk that can travel as it is
        (bslz4, or v2's framed lz4), its header checked to describe this image (the writer walks its blocks
        before storing it); None when it must be decoded."""
        p = self.payload
        if not isinstance(p, Compressed) or p.algorithm not in ("bslz4", "lz4") or \
                p.elem_size not in (0, self.dtype.itemsize):  # a dataset's filter shuffles by its own element size
            return None
        check_chunk(p.data, p.algorithm, self.nbytes, p.elem_size or self.dtype.itemsize, blocks=False)
        return (1 if p.algorithm == "bslz4" else 2), p.data

    def decode_into(self, out: np.ndarray) -> None:
        """Write the pixels into ``out`` (a C-contiguous array of this dtype and shape)."""
        p = self.payload
        if isinstance(p, Compressed):
            if p.algorithm == "bslz4":
                decompress_bslz4(p.data, out, p.elem_size or self.dtype.itemsize)
            elif p.algorithm == "lz4":
                decompress_lz4(p.data, out)
            elif p.algorithm == "lz4-block":  # stream v1 lz4<: one LZ4 block, no framing
                decompress_lz4_block(p.data, out)
            else:
                raise StreamError(f"channel {self.name!r}: unknown compression {p.algorithm!r}")
        else:
            if len(p) != self.nbytes:
                raise StreamError(f"channel {self.name!r}: {len(p)} bytes for a {list(self.shape)} "
                                  f"{self.dtype.str} image of {self.nbytes}")
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(p, np.uint8)


@dataclass(frozen=True)
class Start:
    series_id: int
    channels: tuple[str, ...]
    fields: dict[str, Any]


@dataclass(frozen=True)
class Image:
    series_id: int
    image_id: int
    channels: tuple[Channel, ...]


@dataclass(frozen=True)
class End:
    series_id: int


def _tag_hook(blobs: list[memoryview], *args: Any) -> Any:
    # cbor2 calls (decoder, tag) in its documented form and (tag, immutable) in 6.x: take the tag
    tag = args[0] if isinstance(args[0], cbor2.CBORTag) else args[1]
    if tag.tag == BLOB_TAG:  # an image-sized byte string cut out before decoding (cbor_blobs)
        if not isinstance(tag.value, int) or not 0 <= tag.value < len(blobs):
            raise StreamError(f"tag {BLOB_TAG} is framechain's own and must not appear in a stream")
        return blobs[tag.value]
    if tag.tag == COMPRESSION_TAG:
        v = tag.value
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[0], str)
                and isinstance(v[2], (bytes, memoryview))):
            raise StreamError("tag 56500 must hold [algorithm, elem_size, bytes]")
        return Compressed(v[0], int(v[1] or 0), v[2])
    dtype = TYPED_ARRAY_TAGS.get(tag.tag)
    if dtype is not None:
        if not isinstance(tag.value, (bytes, memoryview, Compressed)):
            raise StreamError(f"typed array tag {tag.tag} must hold a byte string")
        return TypedArray(np.dtype(dtype), tag.value)
    if tag.tag == MULTI_DIM_TAG:
        v = tag.value
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], (list, tuple))
                and isinstance(v[1], TypedArray)):
            raise StreamError("tag 40 must hold [dims, typed array]")
        return MultiDimArray(tuple(int(d) for d in v[0]), v[1])
    return tag


def decode_v2(raw: bytes | memoryview) -> Start | Image | End | None:
    """One stream v2 message; None for a message type framechain does not use. StreamError if malformed.

    Image-sized byte strings are not copied: channel payloads are views of ``raw`` (keep it alive)."""
    try:
        small, blobs = elide_blobs(raw)
    except ValueError as err:
        raise StreamError(f"not a CBOR message: {err}") from err
    try:
        msg = cbor2.loads(small, tag_hook=partial(_tag_hook, blobs))
    except StreamError:
        raise
    except Exception as err:  # cbor2 raises several types for broken input
        raise StreamError(f"not a CBOR message: {type(err).__name__}: {err}") from err
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise StreamError("a stream v2 message is a CBOR map with a 'type'")
    kind = msg["type"]
    series = msg.get("series_id", 0)
    if kind == "start":
        channels = msg.get("channels") or []
        return Start(int(series), tuple(str(c) for c in channels), msg)
    if kind == "image":
        data = msg.get("data")
        if not isinstance(data, dict) or not data:
            raise StreamError("an image message needs 'data': {channel: multi-dimensional array}")
        channels = []
        for name, arr in data.items():
            if not isinstance(arr, MultiDimArray):
                raise StreamError(f"image channel {name!r} is not a multi-dimensional typed array")
            channels.append(Channel(str(name), arr.array.dtype, arr.dims, arr.array.payload))
        return Image(int(series), int(msg.get("image_id", 0)), tuple(channels))
    if kind == "end":
        return End(int(series))
    return None


#: the start message's image-sized arrays (v2 names; v1's dflatfield/dpixelmask/dcountrate_table map onto them)
_HEADER_ARRAYS = ("pixel_mask", "flatfield", "countrate_table")
_MAX_HEADER_ARRAY = 256 << 20

_V1_TYPES = {"uint8": "u1", "uint16": "<u2", "uint32": "<u4", "float32": "<f4"}


def _json_part(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError) as err:
        raise StreamError(f"{what} is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise StreamError(f"{what} must be a JSON object")
    return obj


def _v1_array(meta: dict[str, Any], blob: bytes, what: str) -> np.ndarray:
    dtype = _V1_TYPES.get(meta.get("type"))
    shape = meta.get("shape")
    if dtype is None or not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) for d in shape)):
        raise StreamError(f"{what}: needs 'shape' [x, y] and 'type' one of {sorted(_V1_TYPES)}")
    arr = np.frombuffer(blob, dtype)
    if arr.size != shape[0] * shape[1]:
        raise StreamError(f"{what}: {arr.size} values for shape {shape}")
    return arr.reshape(shape[1], shape[0])


def decode_v1(parts: list[bytes | memoryview]) -> Start | Image | End | None:
    """One stream v1 multipart message (its ZeroMQ frames); StreamError if malformed."""
    if not parts:
        raise StreamError("an empty multipart message")
    head = _json_part(parts[0], "the first part")
    htype = head.get("htype")
    series = head.get("series", 0)
    if not isinstance(series, int) or isinstance(series, bool):
        raise StreamError(f"series must be an integer, not {series!r}")
    if htype == "dheader-1.0":
        fields: dict[str, Any] = {"header_detail": head.get("header_detail", "none")}
        rest = parts[1:]
        if fields["header_detail"] in ("basic", "all") and rest:
            fields["config"] = _json_part(rest[0], "the detector configuration")
            rest = rest[1:]
        while len(rest) >= 2:
            meta = _json_part(rest[0], "a header part")
            name = {"dflatfield-1.0": "flatfield", "dpixelmask-1.0": "pixel_mask",
                    "dcountrate_table-1.0": "countrate_table"}.get(meta.get("htype"))
            if name is None:
                break  # an appendix
            fields[name] = _v1_array(meta, rest[1], meta["htype"])
            rest = rest[2:]
        return Start(series, ("data",), fields)
    if htype == "dimage-1.0":
        if len(parts) < 3:
            raise StreamError(f"a dimage-1.0 message has {len(parts)} parts, at least 3 expected")
        frame = head.get("frame")
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise StreamError(f"dimage-1.0 'frame' must be a non-negative integer, not {frame!r}")
        d = _json_part(parts[1], "dimage_d-1.0")
        shape, encoding = d.get("shape"), d.get("encoding")
        dtype = _V1_TYPES.get(d.get("type"))
        if d.get("htype") != "dimage_d-1.0" or dtype is None or not (
                isinstance(shape, list) and len(shape) == 2 and all(isinstance(x, int) and x > 0 for x in shape)):
            raise StreamError("dimage_d-1.0 needs shape [x, y] and type uint8/uint16/uint32/float32")
        blob = parts[2]
        if encoding == "<":
            payload: bytes | Compressed = blob
        elif encoding == "lz4<":
            payload = Compressed("lz4-block", 0, blob)
        elif encoding in ("bs8-lz4<", "bs16-lz4<", "bs32-lz4<"):
            payload = Compressed("bslz4", int(encoding[2:encoding.index("-")]) // 8, blob)
        else:
            raise StreamError(f"dimage_d-1.0 encoding {encoding!r} is not one of <, lz4<, bs16-lz4<, bs32-lz4<")
        return Image(series, frame, (Channel("data", np.dtype(dtype), (shape[1], shape[0]), payload),))
    if htype == "dseries_end-1.0":
        return End(series)
    raise StreamError(f"unknown htype {htype!r}")


class StreamV2Source:
    """The receiver's side of a DECTRIS stream (v2; v1 below): a PULL socket and the decoded messages.

    Not a ``FrameSource``: frames arrive when the detector sends them, so the receiver reads
    the socket when it has a free buffer (block mode) or always (drop mode).
    """

    kind = "dectris_v2"
    streaming = True

    def __init__(self, endpoint: str, shape: tuple[int, ...], dtype: str, frames: int = 0,
                 rcvhwm: int = 1000, context: zmq.Context | None = None, decompress: bool = True) -> None:
        self.decompress = decompress
        self.endpoint, self.shape, self.dtype, self.frames = endpoint, tuple(shape), np.dtype(dtype), frames
        self.frame_bytes = int(np.prod(self.shape)) * self.dtype.itemsize  # what a buffer must hold
        self.rate, self.acquisition_id = 0.0, ""
        self.rcvhwm = rcvhwm
        self._ctx = context or zmq.Context.instance()
        self.socket: zmq.Socket | None = None
        self.start_message: dict[str, Any] = {}
        self.messages = self.bad_messages = self.series = 0
        self.last_error = ""

    def reset(self) -> None:
        """Connect (at source start); the detector's PUSH sends to whoever is connected."""
        if self.socket is None:
            s = self._ctx.socket(zmq.PULL)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, self.rcvhwm)
            s.connect(self.endpoint)
            self.socket = s
            log.info("%s: PULL connected to %s", self.kind, self.endpoint)

    def receive(self) -> Start | Image | End | None:
        """The next message, or None when none is waiting (or it was malformed: counted, dropped)."""
        if self.socket is None:
            return None
        try:
            raw = self._recv()
        except zmq.Again:
            return None
        self.messages += 1
        try:
            msg = self._decode(raw)
        except StreamError as err:
            self.bad_messages += 1
            self.last_error = str(err)
            if self.bad_messages <= 5:
                log.warning("%s: dropped a malformed message: %s", self.kind, err)
            return None
        if isinstance(msg, Start):
            self.start_message = msg.fields
            self.series += 1
        return msg

    def _recv(self) -> Any:
        return self.socket.recv(zmq.NOBLOCK, copy=False).buffer  # image payloads stay views of it

    @staticmethod
    def _decode(raw: Any) -> Start | Image | End | None:
        return decode_v2(raw)

    def fill(self, index: int, out: np.ndarray) -> None:
        raise NotImplementedError("a stream source is read with receive(), not filled")

    def header(self, start: Start) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A start message's scalar fields and its arrays as ``<kind>/<dataset>`` (StreamError if malformed)."""
        f = start.fields
        params = {k: v for k, v in f.items() if k != "type" and isinstance(v, (int, float, str))
                  and not (isinstance(v, str) and len(v) > 4096)}
        arrays = {}
        for kind in _HEADER_ARRAYS:
            per_channel = f.get(kind)
            if isinstance(per_channel, MultiDimArray):
                per_channel = {start.channels[0] if start.channels else "data": per_channel}
            if not isinstance(per_channel, dict):
                continue
            for name, md in per_channel.items():
                if not isinstance(md, MultiDimArray):
                    raise StreamError(f"start {kind}/{name} is not a multi-dimensional typed array")
                ch = Channel(str(name), md.array.dtype, md.dims, md.array.payload)
                if not 1 <= len(md.dims) <= 3 or ch.nbytes > _MAX_HEADER_ARRAY:
                    raise StreamError(f"start {kind}/{name}: a {list(md.dims)} array is not an image-sized array")
                out = np.empty(md.dims, md.array.dtype)
                try:
                    ch.decode_into(out)
                except CompressionError as err:
                    raise StreamError(f"start {kind}/{name}: {err}") from err
                arrays[f"{kind}/{name}"] = out.astype(out.dtype.newbyteorder("="), copy=False)
        return params, arrays

    def describe(self) -> dict[str, Any]:
        start = self.start_message
        return {"type": self.kind, "endpoint": self.endpoint, "shape": list(self.shape), "dtype": self.dtype.name,
                "decompress": self.decompress,
                "frames": self.frames, "messages": self.messages, "bad_messages": self.bad_messages,
                "series": self.series, "last_error": self.last_error,
                "detector": {k: start[k] for k in ("detector_description", "image_size_x", "image_size_y",
                                                    "incident_energy", "count_time", "frame_time",
                                                    "number_of_images", "channels", "beam_center_x",
                                                    "beam_center_y", "pixel_size_x", "pixel_size_y")
                             if k in start and isinstance(start[k], (int, float, str, list))}}

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None


class StreamV1Source(StreamV2Source):
    """DECTRIS stream v1: the same PULL socket, multipart JSON messages."""

    kind = "dectris_v1"

    def _recv(self) -> Any:
        return [f.buffer for f in self.socket.recv_multipart(zmq.NOBLOCK, copy=False)]

    @staticmethod
    def _decode(raw: Any) -> Start | Image | End | None:
        return decode_v1(raw)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        cfg = self.start_message.get("config", {})
        d["detector"] = {k: cfg[k] for k in ("description", "x_pixels_in_detector", "y_pixels_in_detector",
                                             "photon_energy", "count_time", "frame_time", "nimages",
                                             "beam_center_x", "beam_center_y") if isinstance(cfg.get(k), (int, float, str))}
        d["header_parts"] = sorted(k for k in _HEADER_ARRAYS if k in self.start_message)
        return d

    def header(self, start: Start) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        f = start.fields
        cfg = f.get("config", {})
        params = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str))
                  and not (isinstance(v, str) and len(v) > 4096)}
        params["header_detail"] = f.get("header_detail", "none")
        return params, {f"{k}/data": np.array(f[k]) for k in _HEADER_ARRAYS if k in f}
