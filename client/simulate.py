"""``framechain simulate dectris``: a DECTRIS stream player (v2 CBOR, v1 JSON multipart), for testing
without a detector.

Binds a ZeroMQ PUSH socket where a detector's DCU would (``tcp://*:31001`` for
v2, ``:9999`` for v1) and sends one series. v2: a CBOR ``start``, one
``image`` per frame (every channel as an RFC 8746 multi-dimensional typed
array, compressed with DECTRIS tag 56500 ``bslz4`` or ``lz4`` or raw), then
``end``. v1: ``dheader-1.0`` (with ``--header-detail``), ``dimage-1.0`` +
``dimage_d-1.0`` + blob + ``dconfig-1.0`` per frame (encoding ``bs16-lz4<`` /
``bs32-lz4<``, ``lz4<`` or ``<``), then ``dseries_end-1.0``. Frames come from
an HDF5 stack (``--file``) or the ramp pattern (channel c of frame n: pixel =
n + 1000 c + index, so a test can check every pixel).

``framechain simulate udp`` sends ramp frames as odin-data DummyUDP packets,
dropping (``--drop``) and swapping (``--reorder``) some, and prints as JSON
which frames it left incomplete and how many packets it dropped.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from datetime import datetime, timezone
from typing import Any

import cbor2
import numpy as np
import zmq

from framechain.framereceiver.dectris import COMPRESSION_TAG, MULTI_DIM_TAG, TYPED_ARRAY_TAGS
from framechain.ipc.compression import filter_library
from framechain.plugins._hdf5.codecs import make_codec

__all__ = ["add_parser", "encode_image", "encode_v1_image", "pixel_mask", "ramp_frame", "udp_packets", "main"]

_TAG_FOR = {np.dtype(v): k for k, v in TYPED_ARRAY_TAGS.items() if v.startswith(("<", "i1", "u1"))}
_TAG_FOR[np.dtype("u1")] = 64


def ramp_frame(n: int, shape: tuple[int, ...], dtype: np.dtype, channel: int = 0) -> np.ndarray:
    """Frame ``n`` of the ramp pattern (channel ``c`` is offset by 1000 c)."""
    modulus = 1 << (8 * dtype.itemsize)
    index = np.arange(int(np.prod(shape)), dtype=np.uint64)
    return ((index + n + 1000 * channel) % modulus).astype(dtype).reshape(shape)


def encode_image(frame: np.ndarray, compression: str) -> cbor2.CBORTag:
    """One channel as ``tag 40 [dims, typed array]``, its bytes raw or in DECTRIS tag 56500."""
    dtype = frame.dtype.newbyteorder("<") if frame.dtype.byteorder == "=" else frame.dtype
    data = np.ascontiguousarray(frame, dtype)
    if compression == "none":
        payload: Any = data.tobytes()
    else:
        codec = make_codec({"bslz4": "BSLZ4", "lz4": "LZ4"}[compression], data.dtype, data.shape)
        chunk = bytes(codec.compress(data, codec.alloc()))
        payload = cbor2.CBORTag(COMPRESSION_TAG, [compression, data.dtype.itemsize if compression == "bslz4" else 0,
                                                  chunk])
    return cbor2.CBORTag(MULTI_DIM_TAG, [list(data.shape), cbor2.CBORTag(_TAG_FOR[data.dtype], payload)])


def encode_v1_image(frame: np.ndarray, compression: str, series: int, n: int) -> list[bytes]:
    """The four parts of a stream v1 ``dimage-1.0`` message."""
    data = np.ascontiguousarray(frame, frame.dtype.newbyteorder("<"))
    if compression == "none":
        encoding, blob = "<", data.tobytes()
    elif compression == "lz4":
        lib = filter_library("lz4")
        out = np.empty(lib.LZ4_compressBound(data.nbytes), np.uint8)
        size = lib.LZ4_compress_default(data.ctypes.data, out.ctypes.data, data.nbytes, out.size)
        encoding, blob = "lz4<", out[:size].tobytes()
    else:
        codec = make_codec("BSLZ4", data.dtype, data.shape)
        encoding, blob = f"bs{8 * data.dtype.itemsize}-lz4<", bytes(codec.compress(data, codec.alloc()))
    h, w = data.shape
    return [json.dumps({"htype": "dimage-1.0", "series": series, "frame": n, "hash": ""}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": [w, h], "type": data.dtype.name, "encoding": encoding,
                        "size": len(blob)}).encode(),
            blob,
            json.dumps({"htype": "dconfig-1.0", "start_time": n * 1000000, "stop_time": (n + 1) * 1000000,
                        "real_time": 1000000}).encode()]


def _v1_header(args: argparse.Namespace, shape: tuple[int, ...]) -> list[bytes]:
    parts = [json.dumps({"htype": "dheader-1.0", "series": args.series_id,
                         "header_detail": args.header_detail}).encode()]
    if args.header_detail in ("basic", "all"):
        parts.append(json.dumps({"description": "framechain simulated EIGER", "x_pixels_in_detector": shape[1],
                                 "y_pixels_in_detector": shape[0], "nimages": args.frames,
                                 "photon_energy": 12400.0, "count_time": 0.001}).encode())
    if args.header_detail == "all":
        h, w = shape
        mask = pixel_mask(shape, args.bad_pixels, args.series_id)
        for htype, dtype, value in (("dflatfield-1.0", "float32", 1.0), ("dpixelmask-1.0", "uint32", mask),
                                    ("dcountrate_table-1.0", "float32", 1.0)):
            parts.append(json.dumps({"htype": htype, "shape": [w, h], "type": dtype}).encode())
            parts.append(np.broadcast_to(np.asarray(value, dtype), (h, w)).tobytes())
    return parts


def pixel_mask(shape: tuple[int, ...], bad: int, seed: int) -> np.ndarray:
    """A DECTRIS-style uint32 pixel mask: ``bad`` pixels (chosen with ``seed``) flagged, bits 1 or 2 set."""
    mask = np.zeros(shape, np.uint32)
    rng = np.random.default_rng(seed)
    flat, n = mask.reshape(-1), min(bad, mask.size)
    flat[rng.choice(flat.size, size=n, replace=False)] = rng.choice([1, 2, 4], size=n)
    return mask


def _frames(args: argparse.Namespace, shape: tuple[int, ...], dtype: np.dtype, channel: int):
    if args.file:
        import h5py
        with h5py.File(args.file, "r") as fh:
            stack = fh[args.dataset]
            for n in range(min(args.frames or len(stack), len(stack))):
                yield np.asarray(stack[n], dtype)
        return
    for n in range(args.frames):
        yield ramp_frame(n, shape, dtype, channel)


def run_dectris(args: argparse.Namespace) -> int:
    dtype = np.dtype(args.dtype)
    shape = tuple(args.shape)
    channels = [c for c in args.channels.split(",") if c]
    if args.file:
        import h5py
        with h5py.File(args.file, "r") as fh:
            shape, dtype = tuple(fh[args.dataset].shape[1:]), fh[args.dataset].dtype
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, args.hwm)
    push.setsockopt(zmq.LINGER, -1)  # deliver everything before exiting
    push.bind(args.endpoint)
    series = args.series_id
    if args.version == 1:
        push.send_multipart(_v1_header(args, shape))
        sent = _play(args, (_frames(args, shape, dtype, 0),),
                     lambda n, frames: push.send_multipart(encode_v1_image(frames[0], args.compression, series, n)))
        push.send(json.dumps({"htype": "dseries_end-1.0", "series": series}).encode())
        push.close()
        ctx.term()
        print(f"sent series {series}: {sent} images (stream v1, {args.compression})", file=sys.stderr)
        return 0
    now = datetime.now(timezone.utc)
    start = {"type": "start", "series_id": series, "series_unique_id": f"framechain-{series}",
             "arm_date": cbor2.CBORTag(0, now.isoformat()), "channels": channels,
             "image_size_x": shape[-1], "image_size_y": shape[0], "number_of_images": args.frames,
             "count_time": 1.0 / args.rate if args.rate else 0.001, "frame_time": 1.0 / args.rate if args.rate else 0.001,
             "incident_energy": 12400.0, "detector_description": "framechain simulated EIGER2",
             "beam_center_x": shape[-1] / 2, "beam_center_y": shape[0] / 2, "pixel_size_x": 75e-6,
             "pixel_size_y": 75e-6, "threshold_energy": {c: 6200.0 for c in channels},
             "pixel_mask_enabled": True, "flatfield_enabled": True,
             "pixel_mask": {c: encode_image(pixel_mask(shape, args.bad_pixels, args.series_id + i), "none")
                            for i, c in enumerate(channels)},
             "flatfield": {c: encode_image(np.ones(shape, np.float32), "none") for c in channels}}
    push.send(cbor2.dumps(start))
    def send(n: int, frames: tuple[np.ndarray, ...]) -> None:
        push.send(cbor2.dumps({"type": "image", "series_id": series, "series_unique_id": f"framechain-{series}",
                               "image_id": n, "real_time": [1, 1000], "start_time": [n, 1000],
                               "stop_time": [n + 1, 1000],
                               "data": {c: encode_image(f, args.compression) for c, f in zip(channels, frames)}}))

    sent = _play(args, [_frames(args, shape, dtype, c) for c in range(len(channels))], send)
    push.send(cbor2.dumps({"type": "end", "series_id": series, "series_unique_id": f"framechain-{series}"}))
    push.close()
    ctx.term()  # LINGER -1: returns once a receiver has taken every message
    print(f"sent series {series}: {sent} images x {len(channels)} channels ({args.compression})", file=sys.stderr)
    return 0


def _play(args: argparse.Namespace, sources, send) -> int:
    """Send frame after frame (of every channel together) at ``--rate``; how many were sent."""
    t0, sent = time.monotonic(), 0
    for n, frames in enumerate(zip(*sources)):
        if args.rate:
            delay = t0 + n / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send(n, frames)
        sent += 1
    return sent


def udp_packets(frame: np.ndarray, number: int, payload: int) -> list[bytes]:
    """One frame as odin-data DummyUDP packets: ``<II`` frame number, packet number | SOF/EOF flags, payload."""
    raw = np.ascontiguousarray(frame).tobytes()
    count = -(-len(raw) // payload)
    packets = []
    for p in range(count):
        flags = (1 << 30) if p == count - 1 else (1 << 31) if p == 0 else 0
        packets.append(struct.pack("<II", number, p | flags) + raw[p * payload:(p + 1) * payload])
    return packets


def run_udp(args: argparse.Namespace) -> int:
    """Send ramp frames as DummyUDP packets, dropping and reordering some; print what was dropped (JSON)."""
    rng = np.random.default_rng(args.seed)
    dtype, shape = np.dtype(args.dtype), tuple(args.shape)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in args.ports]
    incomplete: list[int] = []
    dropped_packets = 0
    t0 = time.monotonic()
    for n in range(args.frames):
        if args.rate:
            delay = t0 + n / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        packets = udp_packets(ramp_frame(n, shape, dtype), n, args.packet_size)
        keep = rng.random(len(packets)) >= args.drop
        if not keep.any():
            keep[rng.integers(len(packets))] = True  # a frame is never lost whole: the receiver must see it
        if not keep.all():
            incomplete.append(n)
            dropped_packets += int((~keep).sum())
        order = [p for p, k in zip(packets, keep) if k]
        for i in range(len(order) - 1):
            if rng.random() < args.reorder:
                order[i], order[i + 1] = order[i + 1], order[i]
        sock = socks[n % len(socks)]
        port = args.ports[n % len(socks)]
        for p in order:
            sock.sendto(p, (args.address, port))
    for s in socks:
        s.close()
    print(json.dumps({"frames": args.frames, "incomplete": incomplete, "dropped_packets": dropped_packets,
                      "packets_per_frame": -(-int(np.prod(shape)) * dtype.itemsize // args.packet_size)}))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="play a detector stream (DECTRIS stream v1/v2, DummyUDP) for testing")
    kinds = p.add_subparsers(dest="kind", required=True)
    d = kinds.add_parser("dectris", help="a DECTRIS stream (v2 or v1) series on a PUSH socket")
    d.add_argument("--version", type=int, default=2, choices=(1, 2), help="stream version (2: CBOR)")
    d.add_argument("--endpoint", default="tcp://127.0.0.1:31001", help="PUSH endpoint to bind (default %(default)s)")
    d.add_argument("--frames", type=int, default=100, help="images in the series (default %(default)s)")
    d.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    d.add_argument("--dtype", default="uint16", choices=("uint8", "uint16", "uint32"))
    d.add_argument("--file", help="HDF5 stack to replay instead of the ramp pattern")
    d.add_argument("--dataset", default="/entry/data/data", help="dataset in --file (default %(default)s)")
    d.add_argument("--compression", default="bslz4", choices=("bslz4", "lz4", "none"))
    d.add_argument("--channels", default="threshold_1", help="comma-separated channel names (default %(default)s)")
    d.add_argument("--rate", type=float, default=0.0, help="images per second (0: as fast as taken)")
    d.add_argument("--series-id", type=int, default=1)
    d.add_argument("--header-detail", default="basic", choices=("none", "basic", "all"),
                   help="stream v1: what the dheader-1.0 message carries")
    d.add_argument("--bad-pixels", type=int, default=0,
                   help="pixels flagged in the start's pixel mask (seeded by the series id; default %(default)s)")
    d.add_argument("--hwm", type=int, default=100, help="messages queued before sending blocks")
    d.set_defaults(func=run_dectris)
    u = kinds.add_parser("udp", help="odin-data DummyUDP packets, with packet loss and reordering")
    u.add_argument("--address", default="127.0.0.1")
    u.add_argument("--ports", type=int, nargs="+", default=[61649], help="frames go round-robin over the ports")
    u.add_argument("--frames", type=int, default=100)
    u.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    u.add_argument("--dtype", default="uint16", choices=("uint8", "uint16", "uint32"))
    u.add_argument("--packet-size", type=int, default=8000, help="payload bytes per packet (default %(default)s)")
    u.add_argument("--drop", type=float, default=0.0, help="fraction of packets not sent")
    u.add_argument("--reorder", type=float, default=0.0, help="chance each packet swaps with the next")
    u.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as possible)")
    u.add_argument("--seed", type=int, default=0)
    u.set_defaults(func=run_udp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framechain")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
