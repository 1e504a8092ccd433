"""IpcChannel: a thin owner of one ZeroMQ socket speaking IpcMessages.

Control channels are ROUTER (daemon, bound) / DEALER (client, connected); the
data path is PUB/SUB. A channel belongs to one thread; hand messages to it
from other threads through a queue the owning thread drains.
"""

from __future__ import annotations

import logging
import socket as _socket
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import zmq

from .errors import FramechainError, ProtocolError
from .message import IpcMessage, nack_for_garbage

__all__ = ["IpcChannel", "free_tcp_endpoint", "endpoint_problem", "PEER_TOPIC", "is_loopback", "same_endpoint"]

log = logging.getLogger(__name__)

#: a framechain SUB's second subscription; messages are JSON objects, so none ever starts with it
PEER_TOPIC = b"\x00framechain-peer"


def endpoint_problem(endpoint: object, example: str = "tcp://127.0.0.1:5000") -> str | None:
    """Why ``endpoint`` is not a ZeroMQ endpoint this project can bind or connect, or None when it is.

    Syntax only: ``tcp://<host>:<port 0..65535 | *>``, ``ipc://<path>`` or ``inproc://<name>``.
    """
    want = f"must be a ZeroMQ endpoint like {example}"
    if not isinstance(endpoint, str):
        return f"{want}, not {type(endpoint).__name__}"
    transport, sep, rest = endpoint.partition("://")
    if not sep or not rest or transport not in ("tcp", "ipc", "inproc"):
        return want
    if transport == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
            return f"{want} (tcp needs <host>:<port 0..65535 or *>)"
    return None


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine reaches: tcp on 127.x / localhost / ::1, ipc and inproc."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def same_endpoint(a: str, b: str) -> bool:
    """Whether two endpoints name the same socket (``tcp://*:5000`` and ``tcp://0.0.0.0:5000`` do)."""
    def norm(e: str) -> str:
        return e.replace("://*:", "://0.0.0.0:").replace("://localhost:", "://127.0.0.1:")
    return norm(a) == norm(b)


class IpcChannel:
    """One ZeroMQ socket plus IpcMessage encoding.

    Parameters
    ----------
    kind : int
        A zmq socket type (``zmq.ROUTER``, ``zmq.DEALER``, ``zmq.PUB``, ``zmq.SUB``).
    context : zmq.Context, optional
        Defaults to the process-wide ``zmq.Context.instance()``.
    """

    def __init__(self, kind: int, context: zmq.Context | None = None, hwm: int | None = None) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(kind)
        self.socket.setsockopt(zmq.LINGER, 0)
        if hwm is not None:
            self.socket.setsockopt(zmq.SNDHWM, hwm)
            self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.peers = 0  # XPUB: framechain subscribers (see subscription_events)
        if kind == zmq.SUB:
            self.socket.setsockopt(zmq.SUBSCRIBE, b"")
            self.socket.setsockopt(zmq.SUBSCRIBE, PEER_TOPIC)  # "a framechain peer": matches no message
        self.endpoint: str | None = None

    def bind(self, endpoint: str) -> None:
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as err:
            raise FramechainError(f"cannot bind {endpoint}: {err} (is another daemon using it?)") from err
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if not is_loopback(endpoint):
            log.warning("%s listens beyond this machine: anyone who reaches it can use it (see 'Security' in "
                        "docs/operations.md; CURVE keys and firewalls close it)", endpoint)

    def connect(self, endpoint: str) -> None:
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as err:
            raise FramechainError(f"cannot connect to {endpoint}: {err}") from err
        self.endpoint = endpoint

    # -- messages -------------------------------------------------------
    def send(self, msg: IpcMessage, identity: bytes | None = None, flags: int = 0) -> None:
        """Send a message; ``identity`` addresses a ROUTER peer."""
        if identity is not None:
            self.socket.send_multipart([identity, msg.encode()], flags=flags)
        else:
            self.socket.send(msg.encode(), flags=flags)

    def recv_raw(self, flags: int = 0) -> tuple[bytes | None, bytes]:
        """Receive (identity or None, payload) without parsing."""
        if self.socket.type == zmq.ROUTER:
            parts = self.socket.recv_multipart(flags=flags)
            return parts[0], parts[-1]
        return None, self.socket.recv(flags=flags)

    def recv(self, flags: int = 0) -> IpcMessage:
        """Receive and parse one message (raises ProtocolError when malformed)."""
        return IpcMessage.decode(self.recv_raw(flags)[1])

    def serve(self, handle: Callable[[IpcMessage], IpcMessage], limit: int = 64) -> int:
        """Answer up to ``limit`` waiting requests on a ROUTER: exactly one reply each.

        A request that does not parse gets a nack saying why (echoing its id and
        msg_val when readable); the others get ``handle(msg)``. Returns how many
        requests were refused as malformed.
        """
        malformed = 0
        for _ in range(limit):
            try:
                identity, raw = self.recv_raw(zmq.NOBLOCK)
            except zmq.Again:
                return malformed
            try:
                msg = IpcMessage.decode(raw)
            except ProtocolError as err:
                malformed += 1
                reply = nack_for_garbage(raw, str(err))
            else:
                reply = handle(msg)
            self.send(reply, identity)
        return malformed

    def pending(self, limit: int | None = None) -> Iterator[bytes]:
        """Yield the messages waiting on a one-part socket (SUB, XPUB, DEALER) without blocking.

        Stops when none is left or after ``limit``. Each is read only when the loop asks for it,
        so breaking out of the loop leaves the rest on the socket.
        """
        recv = self.socket.recv
        for _ in (count() if limit is None else range(limit)):
            try:
                yield recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def subscription_events(self, limit: int | None = None) -> Iterator[bool]:
        """On an XPUB: yield True for each subscribe and False for each unsubscribe waiting (see ``pending``).

        Subscriptions to ``PEER_TOPIC`` (a framechain processor's second subscription, which no message
        matches) are not yielded: they count framechain peers in ``self.peers``, so a receiver can tell
        odin-data's C++ processors (which subscribe only to everything) from its own."""
        for event in self.pending(limit):
            topic = event[1:]
            if topic == PEER_TOPIC:
                self.peers = self.peers + 1 if event[:1] == b"\x01" else max(0, self.peers - 1)
            elif event[:1] == b"\x01":
                yield True
            elif event[:1] == b"\x00":
                yield False

    def poll(self, timeout_ms: int) -> bool:
        return bool(self.socket.poll(timeout_ms))

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close(linger=0)

    def __enter__(self) -> IpcChannel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.socket.closed else "open"
        return f"<IpcChannel {self.socket.type} {self.endpoint} {state}>"


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A tcp endpoint on a port that is free right now (for tests and launchers)."""
    with _socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


