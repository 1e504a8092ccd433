"""framechain's wire protocol: IpcMessage, ZeroMQ channels, the request client, the shm layout."""

from .channel import IpcChannel, free_tcp_endpoint
from .client import IpcClient
from .errors import ConfigError, FramechainError, IpcTimeout, PluginError, ProtocolError, ShmError
from .message import MSG_TYPES, MSG_VALS, IpcMessage
from .shm import FRAME_HEADER, SEGMENT_HEADER, FrameHeader, SharedBuffer, buffer_size_for

__all__ = ["IpcChannel", "IpcClient", "IpcMessage", "MSG_TYPES", "MSG_VALS", "FrameHeader", "SharedBuffer",
           "FRAME_HEADER", "SEGMENT_HEADER", "buffer_size_for", "free_tcp_endpoint", "FramechainError",
           "ProtocolError", "ConfigError", "ShmError", "PluginError", "IpcTimeout", "__version__"]
from framechain import __version__
