"""Helpers for plugin authors' unit tests: run a plugin on frames without a daemon.

Example::

    from framechain.frameprocessor.testing import FrameCollector, run_plugin

    out = run_plugin(MyPlugin("mine"), [np.ones((4, 4), "u2")] * 3, {"threshold": 2})
    assert len(out.frames) == 3 and out.end_of_acquisition is not None

``run_plugin`` calls ``prepare``/``commit`` as the processor does, then
``process_frame`` for each frame and ``process_end_of_acquisition`` once, on
the calling thread; ``FrameCollector`` is a FrameSink that keeps what the
plugin pushes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .frame import EndOfAcquisition, Frame
from .plugin import FrameProcessorPlugin

__all__ = ["FrameCollector", "attach_collector", "run_plugin"]


class FrameCollector:
    """A FrameSink that keeps every frame pushed to it, and the end-of-acquisition marker."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.end_of_acquisition: EndOfAcquisition | None = None

    def submit(self, item: Frame | EndOfAcquisition, blocking: bool) -> None:
        if isinstance(item, EndOfAcquisition):
            self.end_of_acquisition = item
        else:
            self.frames.append(item)

    def clear(self) -> None:
        self.frames.clear()
        self.end_of_acquisition = None


def attach_collector(plugin: FrameProcessorPlugin) -> FrameCollector:
    """Make a new FrameCollector the plugin's only (blocking) output and return it."""
    collector = FrameCollector()
    plugin.set_outputs(((collector, True),))
    return collector


def run_plugin(plugin: FrameProcessorPlugin, frames: Iterable[Frame | np.ndarray],
               config: Mapping[str, Any] | None = None, acquisition_id: str = "") -> FrameCollector:
    """Configure ``plugin`` (two-phase), feed it ``frames`` (arrays are numbered 0, 1, ...) and the end
    of acquisition; return what it pushed."""
    collector = attach_collector(plugin)
    if config is not None:
        change = plugin.prepare(config)
        plugin.commit(change)
    n = 0
    for n, item in enumerate(frames, 1):
        frame = item if isinstance(item, Frame) else Frame(np.asarray(item), n - 1, acquisition_id=acquisition_id)
        plugin.process_frame(frame)
    eoa = EndOfAcquisition(acquisition_id, n)
    plugin.process_end_of_acquisition(eoa)
    collector.submit(eoa, True)  # the worker forwards the marker after the plugin's end-of-acquisition work
    return collector
