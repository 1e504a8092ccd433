"""SumPlugin: adds per-frame sum, min, max and mean to the frame's parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from framechain.frameprocessor import Frame, FrameProcessorPlugin, Option

__all__ = ["SumPlugin"]


class SumPlugin(FrameProcessorPlugin):
    """Frame statistics into ``frame.parameters`` as ``sum``, ``min``, ``max``, ``mean``.

    NaN pixels (masked by an upstream plugin) are ignored.
    """

    options = {"enabled": Option(bool, True, "compute the statistics (false: pass frames through)")}

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.frames = 0
        self.last: dict[str, float] = {}

    def process_frame(self, frame: Frame) -> None:
        if self.config["enabled"]:
            d = frame.data
            if d.dtype.kind == "f":
                total, lo, hi = float(np.nansum(d)), float(np.nanmin(d)), float(np.nanmax(d))
            else:
                total, lo, hi = int(d.sum(dtype=np.int64 if d.dtype.kind == "i" else np.uint64)), \
                    int(d.min()), int(d.max())
            p = frame.parameters
            p["sum"], p["min"], p["max"], p["mean"] = total, lo, hi, total / d.size
            self.last = {"sum": total, "min": lo, "max": hi}
        self.frames += 1
        self.push(frame)

    def status(self) -> dict[str, Any]:
        return {"frames": self.frames, "last": self.last}

    def reset_statistics(self) -> None:
        self.frames = 0
