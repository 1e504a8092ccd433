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


def _add(family: Metric, labels: list[str], value: Any) -> None:
    """Add a sample when the status holds a number there (a key a daemon does not report is left out)."""
    v = _num(value)
    if v is not None:
        family.add_metric(labels, v)


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
                _add(frames, [name, kind], st.get("frames", {}).get(kind))
            for state in ("total", "empty", "mapped"):
                _add(buffers, [name, state], st.get("buffers", {}).get(state))
            errors.add_metric([name], float(len(st.get("error", []) or [])))
            for plugin in st.get("plugins", {}).get("names", []) if role == "processor" else []:
                ps = st.get(plugin, {})
                for key in _PLUGIN_FRAMES:
                    _add(pframes, [name, plugin, key.removeprefix("frames_")], ps.get(key))
                q = ps.get("queue", {})
                _add(queue, [name, plugin], q.get("size"))
                _add(qmax, [name, plugin], q.get("max"))
                for stat in ("last", "max", "mean"):
                    _add(timing, [name, plugin, stat], ps.get("timing", {}).get(f"{stat}_process"))
                if "frames_written" in ps:
                    for key in _WRITER_FRAMES:
                        _add(writer, [name, plugin, key.removeprefix("frames_")], ps.get(key))
        yield from (up, frames, buffers, errors, pframes, queue, qmax, timing, writer)


def render(daemons: Iterable[tuple[str, str, bool, Mapping[str, Any]]]) -> bytes:
    """The Prometheus text exposition for ``(name, role, connected, status)`` of each daemon."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot({name: (role, up, st) for name, role, up, st in daemons}))
    return generate_latest(registry)
