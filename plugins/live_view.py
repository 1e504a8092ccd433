"""LiveViewPlugin: publishes a throttled sample of frames on a ZeroMQ PUB socket, odin-data style.

Each published frame is a two-part message: a JSON header
``{"frame_num", "acquisition_id", "dtype", "dsize", "dataset", "compression", "shape", "tags"}``
and the raw pixel bytes (C order). A viewer connects a SUB socket to
``live_view_socket_addr`` (default ``tcp://127.0.0.1:5020``) and subscribes to
everything. Sends never block the chain: the socket has a small high-water
mark and a frame that cannot be queued is counted in ``frames_dropped``.

The socket is bound when a configuration is applied, never while it is only
validated (the processor validates every plugin of a message before applying
any, and a message nacked for another plugin must leave no port bound): a
malformed endpoint is a nack at validation, a busy one a nack when applied
(the plugin keeps its previous socket and configuration). Without a configured
address the default is bound by the first frame. Only the plugin thread sends.

Logger ``frameprocessor.plugin.<index>``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import zmq

from frameprocessor import Frame, FrameProcessorPlugin, Option
from ipc.channel import IpcChannel
from ipc.errors import ConfigError, FramechainError

__all__ = ["LiveViewPlugin", "DEFAULT_ADDRESS"]

DEFAULT_ADDRESS = "tcp://127.0.0.1:5020"


def _non_negative(v: float) -> str | None:
    return "must be >= 0" if v < 0 else None


def _endpoint(v: str) -> str | None:
    """Syntax only (binding is left to ``apply``): ``tcp://<host>:<port|*>``, ``ipc://<path>``, ``inproc://<name>``."""
    example = "must be a ZeroMQ endpoint like tcp://127.0.0.1:5020"
    transport, sep, rest = v.partition("://")
    if not sep or not rest or transport not in ("tcp", "ipc", "inproc"):
        return example
    if transport == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
            return f"{example} (tcp needs <host>:<port 0..65535 or *>)"
    return None


class LiveViewPlugin(FrameProcessorPlugin):
    """Publish every ``frame_frequency``-th frame, at most ``per_second`` per second, to a live viewer.

    Examples
    --------
    >>> import numpy as np
    >>> live = LiveViewPlugin("live")
    >>> live.configure({"live_view_socket_addr": "tcp://127.0.0.1:0", "frame_frequency": 2})
    >>> for n in range(4):
    ...     live.process_frame(Frame(np.zeros((4, 4), "u2"), n))
    >>> live.status()["frames_shown"], live.status()["frames_skipped"]
    (2, 2)
    >>> live.close()
    """

    options = {
        "live_view_socket_addr": Option(str, DEFAULT_ADDRESS, "ZeroMQ endpoint the PUB socket binds",
                                        check=_endpoint),
        "frame_frequency": Option(int, 1, "publish frames whose number is a multiple of this (0 = no limit)",
                                  check=_non_negative),
        "per_second": Option(float, 0.0, "publish at most this many frames per second (0 = no limit)",
                             check=_non_negative),
        "dataset_name": Option(str, "", "publish only frames of this dataset (empty = all)"),
        "send_hwm": Option(int, 8, "frames ZeroMQ may queue per viewer before dropping",
                           check=lambda v: None if v >= 1 else "must be >= 1"),
    }

    def __init__(self, name: str, context: zmq.Context | None = None) -> None:
        super().__init__(name)
        self._ctx = context or zmq.Context.instance()
        self._chan: IpcChannel | None = None
        self._bound = ""
        self._bound_req = ""  # the address as requested (the bound one may differ: port 0, host names)
        self._next: IpcChannel | None = None  # applied on the control thread, adopted by the plugin thread
        self._next_addr = ""
        self._next_req = ""
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._closed = False
        self.reset_statistics()

    # -- configuration ---------------------------------------------------------------
    def apply(self, values: dict[str, Any]) -> None:
        """Bind a changed address first; if that fails, raise ConfigError with nothing changed."""
        addr = values.get("live_view_socket_addr")
        old: IpcChannel | None = None
        with self._lock:  # the plugin thread adopts a pending socket under this lock
            pending = self._next is not None
            back = pending and addr == self._bound_req  # back to the socket in use: drop the pending one
            new: IpcChannel | None = None
            if addr is not None and not back and addr != (self._next_req if pending else self._bound_req):
                new = self._bind(addr, values.get("send_hwm", self.config["send_hwm"]))  # ConfigError: no change
            super().apply(values)
            if new is not None or back:
                old, self._next = self._next, new
                self._next_req = addr if new is not None else ""
                self._next_addr = (new.endpoint or "") if new is not None else ""
        if old is not None:
            old.close()

    def _bind(self, addr: str, hwm: int) -> IpcChannel:
        chan = IpcChannel(zmq.PUB, self._ctx, hwm=hwm)  # linger 0, SNDHWM = hwm
        chan.socket.setsockopt(zmq.XPUB_NODROP, 1)  # a full viewer queue raises Again (counted), no silent drop
        try:
            chan.bind(addr)
        except FramechainError as err:
            chan.close()
            raise ConfigError(f"The 'live_view_socket_addr' option of {self.owner}: cannot bind {addr!r}: "
                              f"{err.__cause__ or err}", "live_view_socket_addr") from err
        return chan

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (a port 0 request resolved), or the pending one."""
        return self._next_addr or self._bound

    # -- data path ----------------------------------------------------------------------
    def process_frame(self, frame: Frame) -> None:
        if self._wanted(frame):
            chan = self._channel()
            if chan is not None:
                self._send(chan.socket, frame)
        self.push(frame)

    def _wanted(self, frame: Frame) -> bool:
        cfg = self.config
        if cfg["dataset_name"] and frame.dataset != cfg["dataset_name"]:
            return False
        freq = cfg["frame_frequency"]
        if freq > 1 and frame.frame_number % freq:
            self.frames_skipped += 1
            return False
        per_second = cfg["per_second"]
        if per_second > 0:
            now = time.monotonic()
            if now - self._last_sent < 1.0 / per_second:
                self.frames_skipped += 1
                return False
            self._last_sent = now
        return True

    def _channel(self) -> IpcChannel | None:
        if self._next is not None:
            with self._lock:
                new, addr, req = self._next, self._next_addr, self._next_req
                self._next, self._next_addr, self._next_req = None, "", ""
                old = self._chan
                if new is not None:
                    self._chan, self._bound, self._bound_req = new, addr, req
            if new is not None and old is not None:
                old.close()
        if self._chan is None and not self._closed:
            try:
                self._chan = self._bind(self.config["live_view_socket_addr"], self.config["send_hwm"])
                self._bound = self._chan.endpoint or ""
                self._bound_req = self.config["live_view_socket_addr"]
            except ConfigError as err:
                self.error = str(err)
                self.frames_dropped += 1
                return None
        return self._chan

    def _send(self, sock: zmq.Socket, frame: Frame) -> None:
        data = frame.data
        header = {"frame_num": frame.frame_number, "acquisition_id": frame.acquisition_id,
                  "dtype": data.dtype.name, "dsize": data.nbytes, "dataset": frame.dataset,
                  "compression": "none", "shape": [str(d) for d in data.shape],
                  "tags": sorted(frame.parameters)}
        body = data if data.flags.c_contiguous else data.copy()
        try:
            # copy=True: the frame's memory goes back to its pool as soon as we return
            sock.send_multipart([json.dumps(header).encode(), body], flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.frames_dropped += 1
            return
        self.frames_shown += 1
        self.last_frame = frame.frame_number

    # -- reporting ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"frames_shown": self.frames_shown, "frames_skipped": self.frames_skipped,
                "frames_dropped": self.frames_dropped, "last_frame": self.last_frame,
                "live_view_socket_addr": self.endpoint or self.config["live_view_socket_addr"],
                "error": self.error}

    def reset_statistics(self) -> None:
        self.frames_shown = 0
        self.frames_skipped = 0
        self.frames_dropped = 0
        self.last_frame = -1
        self.error = ""

    def close(self) -> None:
        """Close the socket(s); safe to call twice."""
        self._closed = True
        with self._lock:
            nxt, self._next = self._next, None
        for c in (nxt, self._chan):
            if c is not None:
                c.close()
        self._chan = None
