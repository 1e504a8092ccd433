"""The frame processor: Frames over pooled memory, threaded plugin chains, control."""

from framechain.ipc.options import Option, Section

from .frame import DetectorHeader, EndOfAcquisition, Frame
from .plugin import FrameProcessorPlugin, FrameSink
from .pool import DataBlock, DataBlockPool, PoolExhausted

__all__ = ["Frame", "EndOfAcquisition", "DetectorHeader", "FrameProcessorPlugin", "FrameSink", "Option", "Section", "DataBlock",
           "DataBlockPool", "PoolExhausted"]
