"""LivePublisher: current g2 as one JSON message per update on a ZeroMQ PUB socket.

Message (UTF-8 JSON, single frame)::

    {"msg_type": "xpcs_g2", "plugin": "xpcs", "acquisition_id": "...", "final": false,
     "frames": 1200, "frames_used": 1198, "frame_time": 0.001,
     "bins": [1, 2, ...], "delays": [1, 2, ...], "delays_s": [...],
     "g2": [[g2 of bin 1 at each delay], [bin 2], ...]}

Delays in frames, lag 0 left out, only lags with at least one pair; NaN is sent as null.
The socket is only used from the thread holding the plugin's lock.
"""

from __future__ import annotations

import warnings
from typing import Any

import zmq

from framechain.ipc.message import dumps_finite

__all__ = ["LivePublisher"]


class LivePublisher:
    """A bound PUB socket. ``close()`` is safe to call twice.

    Parameters
    ----------
    endpoint : str
        Where to bind, e.g. ``tcp://127.0.0.1:5021``.
    context : zmq.Context, optional
        Defaults to the shared instance.
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._socket: zmq.Socket | None = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 16)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError:
            self._socket.close()
            self._socket = None
            raise

    @property
    def closed(self) -> bool:
        return self._socket is None

    def publish(self, message: dict[str, Any]) -> None:
        """Send without blocking (a slow subscriber loses messages, never stalls the correlator)."""
        if self._socket is None:
            return
        data = dumps_finite(message)  # a NaN g2 (an empty bin) travels as null
        try:
            self._socket.send(data, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    def __del__(self) -> None:
        if getattr(self, "_socket", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()

    def __enter__(self) -> LivePublisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LivePublisher {self.endpoint} {'closed' if self.closed else 'open'}>"
