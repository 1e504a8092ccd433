"""Daemon monitoring shared by the curses client and the REST adapter.

A :class:`DaemonLink` owns one :class:`~ipc.client.IpcClient` for one control
endpoint and a poller thread that asks for ``status`` (and, less often,
``request_configuration``) every ``interval`` seconds with a short timeout. The
latest answers are kept as a snapshot, so a user interface never waits on a
daemon to draw: a dead endpoint is simply shown as disconnected. Requests sent
on behalf of the user share the link's client under a lock, with a short
timeout while the daemon is known to be down, so they fail fast.

Logger: ``framechain.client.monitor``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from framechain.ipc.channel import endpoint_problem
from framechain.ipc.client import IpcClient
from framechain.ipc.errors import IpcTimeout
from framechain.ipc.message import IpcMessage

from .summary import pair_counts, rollup_totals

__all__ = ["DaemonLink", "Monitor", "EndpointSpec", "parse_endpoints", "lookup", "KINDS", "rollup"]

log = logging.getLogger(__name__)

#: Short kind names (odin's "fr"/"fp") and the long ones users type.
KINDS = {"fr": "receiver", "fp": "processor", "receiver": "receiver", "processor": "processor"}
_PREFIX = {"receiver": "fr", "processor": "fp"}


@dataclass(frozen=True)
class EndpointSpec:
    """One daemon to watch: its name (``fr0``, ``fp1``), kind and control endpoint."""

    name: str
    kind: str
    endpoint: str


def parse_endpoints(items: str | Iterable[str]) -> list[EndpointSpec]:
    """Parse ``kind:endpoint`` items (comma- or whitespace-separated when a string).

    ``kind`` is ``fr``/``receiver`` or ``fp``/``processor``; names are given in
    order of appearance per kind: ``fr0, fr1, ...``, ``fp0, fp1, ...``.

    Examples
    --------
    >>> [s.name for s in parse_endpoints("fr:tcp://127.0.0.1:5000, fp:tcp://127.0.0.1:5004")]
    ['fr0', 'fp0']

    Raises
    ------
    ValueError
        An item without a known kind prefix or endpoint, naming the item.
    """
    if isinstance(items, str):
        items = items.replace(",", " ").split()
    counts: dict[str, int] = {"receiver": 0, "processor": 0}
    specs = []
    for item in items:
        kind, sep, endpoint = item.strip().partition(":")
        if not sep or kind not in KINDS or endpoint_problem(endpoint):
            raise ValueError(f"endpoint item {item!r} must look like 'fr:tcp://127.0.0.1:5000' or "
                             f"'fp:tcp://127.0.0.1:5004' (kind fr/receiver or fp/processor, then the control endpoint)")
        kind = KINDS[kind]
        specs.append(EndpointSpec(f"{_PREFIX[kind]}{counts[kind]}", kind, endpoint))
        counts[kind] += 1
    if not specs:
        raise ValueError("no endpoints given; expected items like 'fr:tcp://127.0.0.1:5000 fp:tcp://127.0.0.1:5004'")
    return specs


def lookup(tree: Any, path: str) -> Any:
    """``tree['a']['b']`` for ``path`` ``'a/b'``; None when any part is missing."""
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def rate_counters(kind: str, status: dict) -> dict[str, float]:
    """The monotonic counters whose rates a user wants to see, by ``path`` in ``status``."""
    paths = ["frames/received", "frames/released", "frames/dropped"]
    if kind == "processor":
        for index in lookup(status, "plugins/names") or []:
            for key in ("frames_processed", "frames_written", "frames_dropped"):
                paths.append(f"{index}/{key}")
    out = {}
    for path in paths:
        value = lookup(status, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


@dataclass
class Snapshot:
    """What a link knows about its daemon, as of ``updated`` (a ``time.time()``)."""

    connected: bool = False
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    rates: dict = field(default_factory=dict)
    error: str = "not polled yet"
    updated: float = 0.0


class DaemonLink:
    """One daemon's control endpoint: a polled status snapshot and a request method.

    Parameters
    ----------
    spec
        Name, kind and endpoint.
    interval
        Seconds between status polls.
    poll_timeout
        Seconds to wait for a status reply; the endpoint is shown as
        disconnected after one missed reply.
    request_timeout
        Seconds to wait for the reply to a user's request while connected
        (``poll_timeout`` is used while disconnected, so requests fail fast).
    context
        ZeroMQ context to share (default: the global instance).

    Examples
    --------
    >>> link = DaemonLink(EndpointSpec("fp0", "processor", "tcp://127.0.0.1:5004"))  # doctest: +SKIP
    >>> link.start(); link.snapshot().connected                                       # doctest: +SKIP
    """

    def __init__(self, spec: EndpointSpec, interval: float = 0.5, poll_timeout: float = 0.5,
                 request_timeout: float = 5.0, context: zmq.Context | None = None,
                 curve_dir: str | None = None) -> None:
        self.spec = spec
        self.interval = interval
        self.poll_timeout = poll_timeout
        self.request_timeout = request_timeout
        self._client = IpcClient(spec.endpoint, timeout=poll_timeout, context=context, curve_dir=curve_dir)
        self._lock = threading.Lock()
        self._snap = Snapshot()
        self._last_counts: tuple[float, dict[str, float]] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._polls = 0
        self._config_due = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def endpoint(self) -> str:
        return self.spec.endpoint

    # -- requests ---------------------------------------------------------
    def request(self, msg_val: str, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> IpcMessage:
        """Send ``cmd/msg_val`` and return the ack or nack.

        Raises
        ------
        IpcTimeout
            No reply in time (``poll_timeout`` while the daemon is down).
        """
        if timeout is None:
            timeout = self.request_timeout if self._snap.connected else self.poll_timeout
        with self._lock:
            if self._closed:
                raise IpcTimeout(f"{self.name} ({self.endpoint}): link is closed")
            try:
                reply = self._client.request(msg_val, params, timeout=timeout)
            except IpcTimeout as err:
                self._mark_down(str(err))
                raise IpcTimeout(f"{self.name} ({self.endpoint}) is not answering: {err}") from err
        if msg_val in ("configure", "execute", "reset_statistics"):
            self._config_due = self._config_due or msg_val == "configure"
            self._wake.set()        # show the effect at once
        return reply

    # -- polling ----------------------------------------------------------
    def poll_once(self) -> Snapshot:
        """Ask for status (and every few polls the configuration) now; return the new snapshot."""
        try:
            with self._lock:
                if self._closed:
                    return self._snap
                status = self._client.request("status", timeout=self.poll_timeout)
                config = None
                if self._polls % 4 == 0 or not self._snap.connected or self._config_due:
                    self._config_due = False
                    config = self._client.request("request_configuration", timeout=self.poll_timeout)
        except IpcTimeout:
            self._mark_down(f"no reply to status within {self.poll_timeout:g} s")
            return self._snap
        self._polls += 1
        now = time.time()
        snap = Snapshot(connected=True, updated=now, error="",
                        config=self._snap.config, rates=self._snap.rates)
        if status.msg_type == "ack":
            snap.status = status.params  # IpcMessage.decode refuses NaN/Infinity
        else:
            snap.status, snap.error = self._snap.status, f"status nacked: {status.error}"
        if config is not None and config.msg_type == "ack":
            snap.config = config.params
        counts = rate_counters(self.kind, snap.status)
        if self._last_counts is not None:
            t0, old = self._last_counts
            dt = time.monotonic() - t0
            if dt > 0:
                snap.rates = {k: max(0.0, (v - old[k]) / dt) for k, v in counts.items() if k in old}
        self._last_counts = (time.monotonic(), counts)
        self._snap = snap
        return snap

    def _mark_down(self, error: str) -> None:
        if self._snap.connected:
            log.warning("%s (%s) disconnected: %s", self.name, self.endpoint, error)
        self._snap = Snapshot(connected=False, status=self._snap.status, config=self._snap.config,
                              rates={}, error=error, updated=time.time())
        self._last_counts = None

    def snapshot(self) -> Snapshot:
        """The latest snapshot (never blocks)."""
        return self._snap

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:   # keep polling whatever a daemon sends; say what happened
                log.exception("%s: status poll failed", self.name)
            self._wake.wait(self.interval)
            self._wake.clear()

    def start(self) -> DaemonLink:
        """Start the poller thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"poll-{self.name}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling and close the socket (safe to call twice)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.poll_timeout * 3 + self.interval + 1)
            self._thread = None
        with self._lock:
            if not self._closed:
                self._closed = True
                self._client.close()

    def __enter__(self) -> DaemonLink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._snap.connected else "disconnected")
        return f"<DaemonLink {self.name} {self.kind} {self.endpoint} {state}>"


def rollup(receivers: list[DaemonLink], processors: list[DaemonLink]) -> dict[str, Any]:
    """Receiver i and processor i as rank i (the order ``framechain run --mpi`` prints them in): each rank's
    frames received, processed (the slowest plugin's count), written and lost, with totals and the slowest
    rank. A rank with a daemon down is listed with ``connected: false`` and left out of the totals."""
    ranks = []
    for i, (fr, fp) in enumerate(zip(receivers, processors)):
        rx, px = fr.snapshot(), fp.snapshot()
        row: dict[str, Any] = {"rank": i, "receiver": fr.name, "processor": fp.name,
                               "connected": rx.connected and px.connected}
        if row["connected"] and rx.status and px.status:
            row.update(pair_counts(rx.status, px.status))
        else:
            row["connected"] = False
        ranks.append(row)
    return {"ranks": ranks, "ranks_down": [r["rank"] for r in ranks if not r["connected"]],
            **rollup_totals([r for r in ranks if r["connected"]])}


class Monitor:
    """A set of :class:`DaemonLink` objects, by name, polled in parallel."""

    def __init__(self, specs: Iterable[EndpointSpec], **link_options: Any) -> None:
        self.links: dict[str, DaemonLink] = {}
        for spec in specs:
            if spec.name in self.links:
                raise ValueError(f"two endpoints are named {spec.name!r}")
            self.links[spec.name] = DaemonLink(spec, **link_options)

    def start(self) -> Monitor:
        for link in self.links.values():
            link.start()
        return self

    def of_kind(self, kind: str) -> list[DaemonLink]:
        return [link for link in self.links.values() if link.kind == kind]

    def rollup(self) -> dict[str, Any]:
        """:func:`rollup` of the latest snapshots."""
        return rollup(self.of_kind("receiver"), self.of_kind("processor"))

    def close(self) -> None:
        for link in self.links.values():
            link.close()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
