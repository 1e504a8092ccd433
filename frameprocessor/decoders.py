"""Foreign frame layouts: reading buffers filled by odin-data's C++ frameReceiver.

framechain's own receiver writes a self-describing 128-byte header
(``framechain.ipc.shm``). odin-data's frameReceiver instead puts its
decoder's own header at the start of each buffer and the pixels after it, and
says nothing about their type or shape: the processor must be told
(``fr_setup {"decoder": {"type": "dummy_udp", "shape": [H, W], "dtype": "uint16"}}``,
as odin's own processor plugins are configured with the detector's width and
height).

A ``FrameDecoder`` is one small class per odin decoder: ``header`` (the
fields it reads, at offset 0 of the buffer), ``header_size`` (where the pixels
start) and ``check`` (frame number, timestamp, and why the frame is not
usable, or None). Adding Excalibur, Eiger or Jungfrau means copying the
C ``FrameHeader`` struct of that odin decoder (``<Detector>Definitions.h``)
into a ``struct.Struct`` and its ``sizeof`` into ``header_size``.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import numpy as np

from framechain.ipc.errors import ConfigError
from framechain.ipc.options import Option, validate_options

__all__ = ["FrameDecoder", "DummyUdpFrameDecoder", "DECODERS", "DECODER_OPTIONS", "make_decoder"]


class FrameDecoder:
    """How one odin decoder lays out a frame in a buffer: its header, then ``shape`` pixels of ``dtype``."""

    name: ClassVar[str]
    header: ClassVar[struct.Struct]
    header_size: ClassVar[int]

    def __init__(self, shape: tuple[int, ...], dtype: str, dataset: str = "data") -> None:
        self.shape, self.dtype, self.dataset = tuple(shape), np.dtype(dtype), dataset
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def check(self, fields: tuple) -> tuple[int, float, str | None]:
        """(frame number, timestamp, problem) of an unpacked ``header``; problem None for a usable frame."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "shape": list(self.shape), "dtype": self.dtype.name, "dataset": self.dataset,
                "header_size": self.header_size}


class DummyUdpFrameDecoder(FrameDecoder):
    """odin-data's ``DummyUDPFrameDecoder`` (``DummyUDPDefinitions.h``, x86-64 layout): frame number, frame
    state, ``timespec`` frame start time, packets expected and received, packet size, then a packet-state byte
    per packet for ``max_packets`` (4195) packets; ``sizeof`` is 4240 bytes."""

    name = "dummy_udp"
    header = struct.Struct("<IIqqIIQ")
    header_size = 4240

    def check(self, fields: tuple) -> tuple[int, float, str | None]:
        frame, _state, sec, nsec, expected, received, _packet_size = fields
        ts = sec + nsec * 1e-9
        if received != expected or expected == 0:
            return frame, ts, f"incomplete: {received} of {expected} packets (odin's receiver timed it out)"
        return frame, ts, None


DECODERS: dict[str, type[FrameDecoder]] = {"dummy_udp": DummyUdpFrameDecoder}

DECODER_OPTIONS = {
    "type": Option(str, "", "the odin decoder that filled the buffers", choices=tuple(DECODERS), required=True),
    "shape": Option(list, [], "frame shape [H, W] (odin's buffers do not say)", required=True),
    "dtype": Option(str, "uint16", "pixel type", choices=("uint8", "uint16", "uint32", "float32")),
    "dataset": Option(str, "data", "dataset name given to the frames"),
}


def make_decoder(value: Any, buffer_size: int | None = None) -> FrameDecoder | None:
    """The decoder ``fr_setup/decoder`` names (``{}`` or ``""``: None, framechain's own header)."""
    if value in ({}, "", None):
        return None
    cfg = validate_options("fr_setup/decoder", DECODER_OPTIONS, value, "fr_setup/decoder/", complete=True)
    shape = cfg["shape"]
    if not (1 <= len(shape) <= 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ConfigError(f"fr_setup/decoder/shape must be 1 to 3 positive integers, not {shape!r}",
                          "fr_setup/decoder/shape")
    dec = DECODERS[cfg["type"]](tuple(shape), cfg["dtype"], cfg["dataset"])
    if buffer_size is not None and dec.header_size + dec.nbytes > buffer_size:
        raise ConfigError(f"a {shape} {cfg['dtype']} frame after the {dec.header_size}-byte {cfg['type']} header "
                          f"does not fit the receiver's {buffer_size}-byte buffers", "fr_setup/decoder")
    return dec
