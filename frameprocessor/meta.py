"""MetaPublisher: odin-data's ``meta_endpoint``, so odin's ``meta_writer`` can follow an acquisition.

Each message is two ZeroMQ frames on a PUB socket the processor binds:

1. JSON ``{"plugin": <source>, "parameter": <item>, "type": "string" | "raw" | ..., "header": {...}}``
   (the header carries ``acqID`` and ``rank``, and ``totalFrames`` where odin sends it);
2. the body: a JSON document for ``type: "string"``, bytes for ``"raw"``.

Plugins call ``FrameProcessorPlugin.publish_meta``; with no ``meta_endpoint`` configured
that is one attribute test. Sends never block: a subscriber that cannot keep up loses
messages at the high-water mark, counted in ``status/meta/dropped``.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import zmq

from framechain.ipc.channel import IpcChannel, endpoint_problem
from framechain.ipc.errors import ConfigError, FramechainError

__all__ = ["MetaPublisher", "META_HWM"]

log = logging.getLogger(__name__)
META_HWM = 10000  #: odin's FrameProcessorController::META_TX_HWM


class MetaPublisher:
    """The processor's one meta PUB socket, shared by every plugin thread (sends are serialised)."""

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        self.endpoint = ""
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self.published = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def prepare(self, endpoint: str) -> zmq.Socket | None:
        """A bound PUB socket for ``endpoint`` ("" turns publishing off); ConfigError if it cannot bind."""
        if endpoint == "":
            return None
        problem = endpoint_problem(endpoint, "tcp://*:5008")
        if problem:
            raise ConfigError(f"meta_endpoint: {problem}", "meta_endpoint")
        channel = IpcChannel(zmq.PUB, self.context, hwm=META_HWM)
        try:
            channel.bind(endpoint)  # logs a warning for a bind beyond loopback, as every daemon socket does
        except FramechainError as err:
            channel.close()
            raise ConfigError(f"meta_endpoint: {err}", "meta_endpoint") from err
        return channel.socket

    def commit(self, sock: zmq.Socket | None, endpoint: str) -> None:
        with self._lock:
            old, self._socket, self.endpoint = self._socket, sock, endpoint
        if old is not None:
            old.close()
        if sock is not None:
            log.info("publishing metadata on %s", endpoint)

    def publish(self, plugin: str, item: str, body: Any, header: dict[str, Any], kind: str = "string") -> None:
        """Send one meta message; ``body`` is JSON-encoded unless it is bytes (then ``kind`` should be raw)."""
        sock = self._socket
        if sock is None:
            return
        head = json.dumps({"plugin": plugin, "parameter": item, "type": kind, "header": header}).encode()
        data = body if isinstance(body, (bytes, bytearray, memoryview)) else (
            b"" if body is None else json.dumps(body).encode())
        with self._lock:
            if self._socket is not sock:
                return
            try:
                sock.send_multipart((head, data), zmq.NOBLOCK)
                self.published += 1
            except zmq.Again:
                self.dropped += 1

    def status(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "published": self.published, "dropped": self.dropped}

    def close(self) -> None:
        self.commit(None, "")
