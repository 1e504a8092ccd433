"""IpcClient: blocking request/reply over a DEALER socket.

Replies are matched to requests by ``id``; stale replies to earlier timed-out
requests are discarded. A request that gets no reply raises IpcTimeout.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from .channel import IpcChannel
from .errors import IpcTimeout, ProtocolError
from .message import IpcMessage

__all__ = ["IpcClient"]


class IpcClient:
    """Send ``cmd`` messages to a daemon's control endpoint and wait for replies.

    Examples
    --------
    >>> with IpcClient("tcp://127.0.0.1:5004") as c:   # doctest: +SKIP
    ...     reply = c.request("status")
    """

    def __init__(self, endpoint: str, timeout: float = 5.0, context: zmq.Context | None = None,
                 curve_dir: str | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._context = context
        self.curve_dir = curve_dir  # a CURVE key directory (ipc/curve.py): talk to daemons started with one
        self._open()

    def _open(self) -> None:
        self.channel = IpcChannel(zmq.DEALER, self._context)
        if self.curve_dir:
            from .curve import secure_client
            secure_client(self.channel.socket, self.curve_dir)
        self.channel.connect(self.endpoint)

    def request(self, msg_val: str, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> IpcMessage:
        """Send ``cmd/msg_val`` and return the matching ack or nack."""
        return self.send(IpcMessage("cmd", msg_val, params), timeout)

    def send(self, msg: IpcMessage, timeout: float | None = None) -> IpcMessage:
        """Send a prepared message and wait for the reply with the same id."""
        timeout = self.timeout if timeout is None else timeout
        self.channel.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.channel.poll(int(remaining * 1000) + 1):
                # Reset the socket so a late reply cannot be mistaken for the next one.
                self.channel.close()
                self._open()
                raise IpcTimeout(f"no reply from {self.endpoint} to '{msg.msg_val}' (id {msg.id}) "
                                 f"within {timeout:g} s; is the daemon running?")
            try:
                reply = self.channel.recv()
            except ProtocolError:
                continue
            if reply.id == msg.id:
                return reply

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> IpcClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<IpcClient {self.endpoint}>"
