"""A complete framechain plugin: tags each frame with its number of bright pixels."""
import numpy as np

from framechain.frameprocessor import Frame, FrameProcessorPlugin, Option


class BrightPixelPlugin(FrameProcessorPlugin):
    """Adds ``bright_pixels`` (pixels above ``threshold``) to every frame's parameters."""

    options = {"threshold": Option(int, 1000, "ADU above which a pixel counts as bright")}

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.total = 0

    def process_frame(self, frame: Frame) -> None:
        n = int(np.count_nonzero(frame.data > self.config["threshold"]))
        frame.parameters["bright_pixels"] = n
        self.total += n
        self.push(frame)

    def status(self) -> dict:
        return {"total_bright_pixels": self.total}
