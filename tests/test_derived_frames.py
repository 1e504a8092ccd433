"""A Frame derived from a view of another keeps the memory under it alive: pool block or shm buffer."""

import textwrap

import numpy as np
import pytest
from harness import wait_for

from framechain.frameprocessor import DataBlockPool, Frame
from framechain.ipc import buffer_size_for


def test_a_crop_outlives_its_parent_in_the_pool():
    pool = DataBlockPool(1 << 20)
    parent = pool.frame((4, 4), "u2", frame_number=0)
    parent.data[:] = 7
    crop = parent.derive(parent.data[1:3, 1:3])
    del parent
    other = pool.frame((4, 4), "u2", frame_number=1)  # would reuse the parent's block if it had been released
    other.data[:] = 9
    assert (crop.data == 7).all() and crop.frame_number == 0
    assert pool.stats()["blocks_in_use"] == 2
    del crop
    assert pool.stats()["blocks_in_use"] == 1
    del other
    assert pool.stats()["blocks_in_use"] == 0


def test_new_data_does_not_hold_the_parent():
    released = []
    parent = Frame(np.zeros((4, 4), "u2"), 3, on_release=lambda: released.append(3))
    copy = parent.derive(parent.data.astype(np.float32))  # fresh memory: the parent may go
    del parent
    assert released == [3] and copy.frame_number == 3


def test_derived_of_derived_keeps_the_root():
    released = []
    root = Frame(np.arange(16, dtype="u2").reshape(4, 4), 0, on_release=lambda: released.append("root"))
    view = root.derive(root.data.reshape(16))
    crop = view.derive(view.data[4:8])
    del root, view
    assert released == [] and crop.data.tolist() == [4, 5, 6, 7]
    del crop
    assert released == ["root"]


KEEPER = textwrap.dedent("""
    from collections import deque
    import numpy as np
    from framechain.frameprocessor import FrameProcessorPlugin

    class CropKeeper(FrameProcessorPlugin):
        \"\"\"Keeps a crop of the last two frames (their parents dropped) and checks them on every frame.\"\"\"
        def __init__(self, name):
            super().__init__(name)
            self.kept = deque(maxlen=2)
            self.checked = self.wrong = 0

        def process_frame(self, frame):
            self.kept.append(frame.derive(frame.data[1:3, 1:3]))
            for crop in self.kept:  # ramp of an 8x8 frame: pixel (r, c) = frame + 8 r + c
                expected = (crop.frame_number + np.array([[9, 10], [17, 18]])) % 65536
                self.checked += 1
                self.wrong += not np.array_equal(crop.data, expected)

        def process_end_of_acquisition(self, eoa):
            self.kept.clear()

        def status(self):
            return {"checked": self.checked, "wrong": self.wrong}
""")


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "zero-copy"])
def test_crops_kept_by_a_plugin_read_their_own_frame(pipeline, tmp_path, copy):
    """Through real daemons: 6 shm buffers, frames recycled as fast as they are released."""
    n = 60
    plugin = tmp_path / "keeper.py"
    plugin.write_text(KEEPER)
    pipeline.configure_receiver({"type": "simulated", "pattern": "ramp", "shape": [8, 8], "frames": n},
                                max_buffer_mem=6 * buffer_size_for(8 * 8 * 2))
    pipeline.setup_processor([("keep", "CropKeeper", str(plugin), "frame_receiver")], copy=copy)
    if copy:  # a pool of a few blocks, so a released block is reused by the next frame
        pipeline.processor.ok("configure", {"shared_memory": {"max_pool_memory": 4 * 8 * 8 * 2}})
    pipeline.start()
    pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.plugin_status("keep"))["acquisitions"] == 1 and s)
    assert st["checked"] == 2 * n - 1 and st["wrong"] == 0
