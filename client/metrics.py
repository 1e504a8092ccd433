"""Prometheus metrics from the REST adapter's polled daemon status (``GET /api/<adapter>/metrics``).

Every daemon the adapter polls is one ``daemon`` label (``fr0``, ``fp0`` ...). Facility monitoring can
alarm on loss: ``framechain_frames_total{kind="dropped"}``, ``framechain_plugin_frames_total{kind="dropped"}``,
``framechain_writer_frames_total{kind="lost"}`` moving, ``framechain_up`` 0, a queue filling up.
Built with prometheus-client's metric families from the snapshot: no extra request to any daemon.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["render", "CONTENT_TYPE_LATEST"]

_RECEIVER_FRAMES = ("received", "released", "dropped", "timedout", "bad_images", "reclaimed", "packets_lost")
_PROCESSOR_FRAMES = ("received", "released", "bad", "unrouted", "discarded")
_PLUGIN_FRAMES = ("frames_received", "frames_processed", "frames_dropped")
_WRITER_FRAMES = ("frames_written", "frames_flushed", "frames_lost", "frames_rejected")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Snapshot:
    """A prometheus-client collector over one set of ``{name: (kind, connected, status)}``."""

    def __init__(self, daemons: Mapping[str, tuple[str, bool, Mapping[str, Any]]]) -> None:
        self.daemons = daemons

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("framechain_up", "1 while the daemon answers status polls", labels=["daemon", "role"])
        frames = CounterMetricFamily("framechain_frames", "frames through a daemon's data path, by kind",
                                     labels=["daemon", "kind"])
        buffers = GaugeMetricFamily("framechain_buffers", "receiver shared-memory buffers, by state",
                                    labels=["daemon", "state"])
        pframes = CounterMetricFamily("framechain_plugin_frames", "frames through a plugin, by kind",
                                      labels=["daemon", "plugin", "kind"])
        queue = GaugeMetricFamily("framechain_plugin_queue_fill", "frames waiting in a plugin's input queue",
                                  labels=["daemon", "plugin"])
        qmax = GaugeMetricFamily("framechain_plugin_queue_size", "a plugin's input queue capacity",
                                 labels=["daemon", "plugin"])
        timing = GaugeMetricFamily("framechain_plugin_process_microseconds", "time per frame in a plugin",
                                   labels=["daemon", "plugin", "stat"])
        writer = CounterMetricFamily("framechain_writer_frames", "HDF5 writer frames, by kind",
                                     labels=["daemon", "plugin", "kind"])
        errors = GaugeMetricFamily("framechain_errors", "errors a daemon's status reports now",
                                   labels=["daemon"])
        for name, (role, connected, st) in self.daemons.items():
            up.add_metric([name, role], 1.0 if connected else 0.0)
            if not connected or not st:
                continue
            kinds = _RECEIVER_FRAMES if role == "receiver" else _PROCESSOR_FRAMES
            for kind in kinds:
                v = _num(st.get("frames", {}).get(kind))
                if v is not None:
                    frames.add_metric([name, kind], v)
            for state in ("total", "empty", "mapped"):
                v = _num(st.get("buffers", {}).get(state))
                if v is not None:
                    buffers.add_metric([name, state], v)
            errors.add_metric([name], float(len(st.get("error", []) or [])))
            for plugin in st.get("plugins", {}).get("names", []) if role == "processor" else []:
                ps = st.get(plugin, {})
                for key in _PLUGIN_FRAMES:
                    v = _num(ps.get(key))
                    if v is not None:
                        pframes.add_metric([name, plugin, key.removeprefix("frames_")], v)
                q = ps.get("queue", {})
                if _num(q.get("size")) is not None:
                    queue.add_metric([name, plugin], float(q["size"]))
                    qmax.add_metric([name, plugin], float(q.get("max", 0)))
                for stat in ("last", "max", "mean"):
                    v = _num(ps.get("timing", {}).get(f"{stat}_process"))
                    if v is not None:
                        timing.add_metric([name, plugin, stat], v)
                if "frames_written" in ps:
                    for key in _WRITER_FRAMES:
                        v = _num(ps.get(key))
                        if v is not None:
                            writer.add_metric([name, plugin, key.removeprefix("frames_")], v)
        yield from (up, frames, buffers, errors, pframes, queue, qmax, timing, writer)


def render(daemons: Iterable[tuple[str, str, bool, Mapping[str, Any]]]) -> bytes:
    """The Prometheus text exposition for ``(name, role, connected, status)`` of each daemon."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot({name: (role, up, st) for name, role, up, st in daemons}))
    return generate_latest(registry)
