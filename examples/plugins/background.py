"""A framechain plugin with a two-phase configure: subtracts a background frame read from a file."""
import numpy as np

from framechain.frameprocessor import Frame, FrameProcessorPlugin, Option
from framechain.ipc import ConfigError


class BackgroundPlugin(FrameProcessorPlugin):
    """Subtracts ``background`` (a .npy frame) from every frame of its shape, into a new float32 frame."""

    options = {"background": Option(str, "", "background frame as a .npy file ('' = none)")}

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.background: np.ndarray | None = None
        self.subtracted = 0

    def prepare(self, params):  # control thread: may fail; changes nothing the plugin thread sees
        values = super().prepare(params)
        path = values.get("background", self.config["background"])
        try:
            background = np.load(path).astype(np.float32) if path else None
        except (OSError, ValueError) as err:
            raise ConfigError(f"{self.owner}: cannot read background {path!r}: {err}", "background") from err
        return values, background

    def commit(self, change):  # control thread: must not fail; swaps references
        values, background = change
        super().commit(values)
        self.background = background

    def process_frame(self, frame: Frame) -> None:  # plugin thread
        background = self.background  # read once: the old or the new one, never half of each
        if background is not None and background.shape == frame.shape:
            frame = frame.derive(frame.data - background)
            self.subtracted += 1
        self.push(frame)

    def status(self) -> dict:
        return {"frames_subtracted": self.subtracted}
