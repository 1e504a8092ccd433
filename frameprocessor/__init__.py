"""The frame processor: Frames over pooled memory, threaded plugin chains, control."""

from .frame import EndOfAcquisition, Frame
from .options import Option
from .plugin import FrameProcessorPlugin
from .pool import DataBlock, DataBlockPool, PoolExhausted

__all__ = ["Frame", "EndOfAcquisition", "FrameProcessorPlugin", "Option", "DataBlock", "DataBlockPool",
           "PoolExhausted"]
