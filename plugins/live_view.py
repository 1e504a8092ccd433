"""LiveViewPlugin: publishes a throttled sample of frames on a ZeroMQ PUB socket, odin-data style.

Each published frame is a two-part message: a JSON header
``{"frame_num", "acquisition_id", "dtype", "dsize", "dataset", "compression", "shape", "tags"}``
and the raw pixel bytes (C order). A viewer connects a SUB socket to
``live_view_socket_addr`` (default ``tcp://127.0.0.1:5020``) and subscribes to
everything. Sends never block the chain: the socket has a small high-water
mark and a frame that cannot be queued is counted in ``frames_dropped``.

A new address is bound in ``prepare`` (on the control thread, so a busy port
is a nack and nothing changes) and handed to the plugin thread through a
queue at ``commit``; if another part of the message fails, ``abort`` closes
it. The plugin thread adopts the newest socket before its next frame and
closes the one it replaces: only the plugin thread sends or closes a socket in
use, and no lock is needed. Without a configured address the default is bound
by the first frame.

Logger ``framechain.frameprocessor.plugin.<index>``.
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass
from typing import Any

import zmq

from framechain.frameprocessor import Frame, FrameProcessorPlugin, Option
from framechain.ipc.channel import IpcChannel, endpoint_problem
from framechain.ipc.errors import ConfigError, FramechainError

__all__ = ["LiveViewPlugin", "DEFAULT_ADDRESS"]

DEFAULT_ADDRESS = "tcp://127.0.0.1:5020"


@dataclass(frozen=True)
class _Socket:
    """A socket handed from the control thread to the plugin thread: ``chan`` bound to ``requested``.

    ``chan`` None means "the socket already bound to ``requested``" (a configure back to the address in use).
    """

    chan: IpcChannel | None
    requested: str
    endpoint: str


def _non_negative(v: float) -> str | None:
    return "must be >= 0" if v < 0 else None


def _endpoint(v: str) -> str | None:
    """Syntax only (binding is left to ``prepare``)."""
    return endpoint_problem(v, DEFAULT_ADDRESS)


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
        self._chan: IpcChannel | None = None  # plugin thread's socket
        self._bound = ""                      # its endpoint as bound (port 0 resolved)
        self._bound_req = ""                  # its address as requested
        self._handoff: queue.SimpleQueue[_Socket] = queue.SimpleQueue()  # control thread -> plugin thread
        self._requested = ""                  # control thread: the address of the newest committed socket
        self._endpoint = ""                   # control thread: its bound endpoint
        self._last_sent = 0.0
        self._closed = False
        self.reset_statistics()

    # -- configuration (control thread) --------------------------------------------------
    def prepare(self, params: Any) -> tuple[dict[str, Any], _Socket | None]:
        """Check values and bind a changed address; a busy one is a ConfigError with nothing changed."""
        values = super().prepare(params)
        addr = values.get("live_view_socket_addr")
        if addr is None or addr == self._requested:
            return values, None
        if addr == self._bound_req:  # back to the socket the plugin thread still uses
            return values, _Socket(None, addr, self._bound)
        chan = self._bind(addr, values.get("send_hwm", self.config["send_hwm"]))
        return values, _Socket(chan, addr, chan.endpoint or "")

    def commit(self, change: tuple[dict[str, Any], _Socket | None]) -> None:
        values, sock = change
        super().commit(values)
        if sock is not None:
            self._requested, self._endpoint = sock.requested, sock.endpoint
            self._drop_pending()
            self._handoff.put(sock)

    def _drop_pending(self) -> None:
        """Close the sockets handed over but not yet taken: whichever thread dequeues one owns it."""
        while True:
            try:
                old = self._handoff.get_nowait()
            except queue.Empty:
                return
            if old.chan is not None:
                old.chan.close()

    def abort(self, change: tuple[dict[str, Any], _Socket | None]) -> None:
        sock = change[1]
        if sock is not None and sock.chan is not None:
            sock.chan.close()  # never handed over: this thread made it and is its only user

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
        """The endpoint of the newest socket (a port 0 request resolved), adopted or about to be."""
        return self._endpoint or self._bound

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
        if not self._handoff.empty():
            self._adopt()
        if self._chan is None and not self._closed:
            addr = self.config["live_view_socket_addr"]
            try:
                self._chan = self._bind(addr, self.config["send_hwm"])
            except ConfigError as err:
                self.error = str(err)
                self.frames_dropped += 1
                return None
            self._bound, self._bound_req = self._chan.endpoint or "", addr
        return self._chan

    def _adopt(self) -> None:
        """Plugin thread: take the newest handed-over socket, close the ones it supersedes."""
        newest: _Socket | None = None
        while True:
            try:
                sock = self._handoff.get_nowait()
            except queue.Empty:
                break
            if newest is not None and newest.chan is not None:
                newest.chan.close()  # superseded before this thread used it
            newest = sock
        if newest is None or (newest.chan is None and newest.requested == self._bound_req):
            return  # back to the socket in use
        if self._chan is not None:
            self._chan.close()
        self._chan = newest.chan  # None: bind the requested address on the next frame
        self._bound, self._bound_req = (newest.endpoint, newest.requested) if newest.chan else ("", "")

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
        """Close the socket(s), once the plugin thread has ended; safe to call twice."""
        self._closed = True
        self._drop_pending()
        if self._chan is not None:
            self._chan.close()
        self._chan = None
