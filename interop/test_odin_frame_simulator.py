"""odin-data's own C++ frameSimulator (DummyUDP plugin) feeds framechain's udp source: every frame complete,
every pixel as odin generates it (pixel = index & 0xFFFF), nothing lost at a modest rate."""

import textwrap

from harness import wait_for
from odin_tools import frame_simulator, free_udp_port

CHECKER = textwrap.dedent("""
    import numpy as np
    from framechain.frameprocessor import FrameProcessorPlugin

    class OdinPattern(FrameProcessorPlugin):
        def __init__(self, name):
            super().__init__(name)
            self.good = self.bad = 0

        def process_frame(self, frame):
            want = (np.arange(frame.data.size, dtype=np.uint64) & 0xFFFF).astype(np.uint16)
            ok = np.array_equal(frame.data.reshape(-1), want)
            self.good += ok
            self.bad += not ok

        def status(self):
            return {"good": self.good, "bad": self.bad}
""")


def test_odin_frame_simulator_feeds_the_udp_source(pipeline, tmp_path, odin_prefix):
    n, width, height, packet = 200, 1400, 1024, 8000
    port = free_udp_port()
    plugin = tmp_path / "odin_pattern.py"
    plugin.write_text(CHECKER)
    pipeline.configure_receiver({"type": "udp", "rx_ports": [port], "shape": [height, width], "packet_size": packet,
                                 "frame_timeout_ms": 500, "rcvbuf": 32 << 20})
    pipeline.setup_processor([("odin", "OdinPattern", str(plugin), "frame_receiver")])
    pipeline.start()
    frame_simulator(odin_prefix, port, n, width, height, packet, 0.02)
    wait_for(lambda: (f := pipeline.receiver.status()["frames"])["received"] + f["timedout"] == n, timeout=30,
             what="every frame odin sent")
    rx = pipeline.receiver.status()
    assert rx["frames"]["timedout"] == 0 and rx["frames"]["dropped"] == 0 and rx["source"]["packets"]["bad"] == 0
    wait_for(lambda: pipeline.plugin_status("odin")["frames_processed"] == n, what="frames to reach the checker")
    st = pipeline.plugin_status("odin")
    assert st["good"] == n and st["bad"] == 0
