"""DummyPlugin: passes frames on and counts them; optionally names their dataset and shape, as odin's
DummyUDPProcessPlugin does (``{"dataset": "dummy", "width": 1024, "height": 1400}``)."""

from __future__ import annotations

from typing import Any

from framechain.frameprocessor import Frame, FrameProcessorPlugin, Option

__all__ = ["DummyPlugin"]


class DummyPlugin(FrameProcessorPlugin):
    """Pass-through; status reports ``frames``, ``last_frame`` and ``frames_wrong_size``."""

    options = {
        "dataset": Option(str, "", "name the frames' dataset (\"\": keep the receiver's)"),
        "width": Option(int, 0, "with height: pass frames on as (height, width) images (0: keep their shape)",
                        low=0),
        "height": Option(int, 0, "see width", low=0),
    }

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.frames = 0
        self.last_frame = -1
        self.frames_wrong_size = 0

    def process_frame(self, frame: Frame) -> None:
        self.frames += 1
        self.last_frame = frame.frame_number
        cfg = self.config
        shape = (cfg["height"], cfg["width"]) if cfg["width"] and cfg["height"] else None
        if shape is None and not cfg["dataset"]:
            self.push(frame)
            return
        if shape is not None and frame.data.size != shape[0] * shape[1]:
            self.frames_wrong_size += 1  # counted and dropped: its pixels cannot be that image
            return
        out = frame.derive(frame.data.reshape(shape) if shape is not None else frame.data)
        if cfg["dataset"]:
            out.dataset = cfg["dataset"]
        self.push(out)

    def status(self) -> dict[str, Any]:
        return {"frames": self.frames, "last_frame": self.last_frame, "frames_wrong_size": self.frames_wrong_size}

    def reset_statistics(self) -> None:
        self.frames = 0
        self.last_frame = -1
        self.frames_wrong_size = 0
