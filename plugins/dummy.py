"""DummyPlugin: passes frames on unchanged and counts them."""

from __future__ import annotations

from typing import Any

from framechain.frameprocessor import Frame, FrameProcessorPlugin

__all__ = ["DummyPlugin"]


class DummyPlugin(FrameProcessorPlugin):
    """Pass-through; status reports ``frames`` and ``last_frame``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.frames = 0
        self.last_frame = -1

    def process_frame(self, frame: Frame) -> None:
        self.frames += 1
        self.last_frame = frame.frame_number
        self.push(frame)

    def status(self) -> dict[str, Any]:
        return {"frames": self.frames, "last_frame": self.last_frame}

    def reset_statistics(self) -> None:
        self.frames = 0
        self.last_frame = -1
