"""Latest-message subscribers for the live view and the XPCS correlator PUB sockets.

:class:`LatestSubscriber` runs one thread with a ZeroMQ SUB socket and keeps
only the newest multipart message (older ones are of no interest to a display).
:class:`LiveViewSubscriber` decodes odin-data's live view pair (JSON header +
raw pixel bytes) into a numpy image; :class:`JsonSubscriber` decodes a JSON
message (the correlator's g2 updates).

Logger: ``framechain.client.subscriber``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
import zmq


__all__ = ["LatestSubscriber", "LiveViewSubscriber", "JsonSubscriber"]

log = logging.getLogger(__name__)


class LatestSubscriber:
    """Subscribe to ``endpoint`` on a thread; keep the newest message and a count.

    Parameters
    ----------
    endpoint
        The PUB socket to connect to (it may come and go; ZeroMQ reconnects).
    context
        ZeroMQ context to share (default: the global instance).
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._latest: Any = None
        self.messages = 0
        self.errors = 0
        self.last_error = ""
        self.updated = 0.0
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    def decode(self, parts: list[bytes]) -> Any:
        """Turn one multipart message into the kept value (override)."""
        return parts

    def _run(self) -> None:
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        self._started.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                # drain: only the newest message matters
                parts = sock.recv_multipart()
                received = 1
                while sock.poll(0):
                    parts = sock.recv_multipart()
                    received += 1
                self.messages += received
                try:
                    value = self.decode(parts)
                except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
                    self.errors += 1
                    self.last_error = f"undecodable message from {self.endpoint}: {err}"
                    log.warning("%s", self.last_error)
                    continue
                with self._lock:
                    self._latest = value
                    self.updated = time.time()
        finally:
            sock.close()

    def latest(self) -> Any:
        """The newest decoded message, or None."""
        with self._lock:
            return self._latest

    def start(self) -> LatestSubscriber:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"sub-{self.endpoint}", daemon=True)
            self._thread.start()
            if not self._started.wait(5):
                raise RuntimeError(f"subscriber thread for {self.endpoint} did not start")
        return self

    def close(self) -> None:
        """Stop the thread and close the socket (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def info(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "messages": self.messages, "errors": self.errors,
                "last_error": self.last_error, "updated": self.updated}

    def __enter__(self) -> LatestSubscriber:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint} messages={self.messages}>"


class LiveViewSubscriber(LatestSubscriber):
    """Keep the newest live view frame as ``(header, image)``.

    The header is odin-data's: ``frame_num, acquisition_id, dtype, dsize,
    dataset, compression, shape`` (shape items may be strings, as odin-data
    sends them). Only uncompressed frames can be shown.
    """

    def decode(self, parts: list[bytes]) -> tuple[dict, np.ndarray]:
        if len(parts) < 2:
            raise ValueError(f"expected a JSON header and a data part, got {len(parts)} part(s)")
        header = json.loads(parts[0])
        if not isinstance(header, dict):
            raise ValueError("live view header is not a JSON object")
        compression = str(header.get("compression", "none")).lower()
        if compression not in ("none", "", "0", "null", "-1"):
            raise ValueError(f"live view compression {compression!r} cannot be displayed; configure it off")
        shape = [int(s) for s in header["shape"]]
        image = np.frombuffer(parts[1], dtype=np.dtype(header["dtype"]))
        if image.size != int(np.prod(shape)):
            raise ValueError(f"live view data holds {image.size} pixels but header shape is {shape}")
        return header, image.reshape(shape)  # read-only view of the message bytes


class JsonSubscriber(LatestSubscriber):
    """Keep the newest JSON message (the last part of each multipart message)."""

    def decode(self, parts: list[bytes]) -> Any:
        return json.loads(parts[-1], parse_constant=lambda _: None)  # NaN/Infinity -> null for browsers
