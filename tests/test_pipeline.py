"""End to end: real receiver and processor subprocesses, real shared memory and ZeroMQ on loopback."""

import json
import textwrap

import h5py
import numpy as np
import pytest
from harness import Pipeline, wait_for

from framechain.ipc import FrameHeader, buffer_size_for, free_tcp_endpoint

CHECKER = textwrap.dedent("""
    import json, time
    import numpy as np
    from framechain.frameprocessor import FrameProcessorPlugin, Option

    class RampChecker(FrameProcessorPlugin):
        \"\"\"Checks every pixel of every frame against the ramp formula (frame + index) mod 2**16.\"\"\"
        options = {"delay": Option(float, 0.0, "seconds to sleep per frame"),
                   "report": Option(str, "", "file to write the counts to at close")}

        def __init__(self, name):
            super().__init__(name)
            self.good = self.bad = self.eoa = self.writable = 0
            self.seen = set()
            self.index = None

        def process_frame(self, frame):
            if self.config["delay"]:
                time.sleep(self.config["delay"])
            d = frame.data
            self.writable += bool(d.flags.writeable)
            if self.index is None or self.index.shape != d.shape:
                self.index = (np.arange(d.size, dtype=np.uint64) % 65536).astype(np.uint16).reshape(d.shape)
            expected = self.index + np.uint16(frame.frame_number % 65536)
            if d.dtype == np.uint16 and np.array_equal(d, expected):
                self.good += 1
            else:
                self.bad += 1
            self.seen.add(frame.frame_number)
            self.push(frame)

        def process_end_of_acquisition(self, eoa):
            self.eoa += 1

        def status(self):
            return {"good": self.good, "bad": self.bad, "unique": len(self.seen), "eoa": self.eoa,
                    "writable": self.writable,
                    "first": min(self.seen, default=-1), "last": max(self.seen, default=-1)}

        def close(self):
            if self.config["report"]:
                with open(self.config["report"], "w") as fh:
                    json.dump(self.status(), fh)
""")


@pytest.fixture
def checker(tmp_path):
    path = tmp_path / "ramp_checker.py"
    path.write_text(CHECKER)
    return str(path)


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "zero-copy"])
def test_every_pixel_of_1000_ramp_frames_reaches_a_plugin_loaded_by_path(pipeline, checker, copy):
    n = 1000
    pipeline.configure_receiver({"type": "simulated", "pattern": "ramp", "shape": [96, 80], "dtype": "uint16",
                                 "frames": n}, max_buffer_mem=16 * buffer_size_for(96 * 80 * 2))
    pipeline.setup_processor([("check", "RampChecker", checker, "frame_receiver"),
                              ("sum", "SumPlugin", "framechain.plugins.sum", "check")], copy=copy)
    pipeline.start()
    rx = pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.processor.status())["sum"]["acquisitions"] == 1 and s)
    chk = st["check"]
    assert (chk["good"], chk["bad"], chk["unique"], chk["first"], chk["last"]) == (n, 0, n, 0, n - 1)
    assert chk["eoa"] == 1 and st["sum"]["frames_processed"] == n
    assert rx["frames"]["received"] == rx["frames"]["released"] == n
    assert rx["frames"]["dropped"] == 0 and rx["buffers"]["consistent"]
    assert st["frames"]["received"] == st["frames"]["released"] == n
    assert st["frames"]["bad"] == st["frames"]["unrouted"] == 0
    if copy:  # a private copy for the one chain: writable
        assert st["pool"]["blocks_in_use"] == 0 and st["pool"]["blocks_reused"] > 0
        assert chk["writable"] == n
    else:     # the receiver's own memory: read-only
        assert chk["writable"] == 0


def test_drop_mode_with_slow_plugin_accounts_for_every_frame(pipeline, checker):
    n = 300
    pipeline.configure_receiver({"type": "simulated", "shape": [32, 32], "frames": n, "rate": 2000},
                                mode="drop", max_buffer_mem=4 * buffer_size_for(32 * 32 * 2))
    pipeline.processor.ok("configure", {"fr_setup": {"fr_ready_cnxn": pipeline.ready,
                                                     "fr_release_cnxn": pipeline.release}})
    pipeline.processor.ok("configure", {"plugin": {
        "load": {"index": "slow", "name": "RampChecker", "library": checker, "queue_size": 2},
        "connect": {"index": "slow", "connection": "frame_receiver"}}, "slow": {"delay": 0.004}})
    wait_for(lambda: pipeline.processor.status()["shared_memory"]["configured"])
    pipeline.start()
    rx = pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.processor.status())["slow"]["acquisitions"] == 1 and s)
    processed, dropped = st["slow"]["frames_processed"], rx["frames"]["dropped"]
    assert dropped > 0, "the slow plugin should have forced drops"
    assert rx["frames"]["received"] == n == processed + dropped
    assert st["slow"]["bad"] == 0 and st["slow"]["good"] == processed


def test_non_blocking_connection_counts_its_drops(pipeline, checker):
    n = 200
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": n})
    pipeline.processor.ok("configure", {"fr_setup": {"fr_ready_cnxn": pipeline.ready,
                                                     "fr_release_cnxn": pipeline.release}})
    pipeline.processor.ok("configure", {"plugin": {
        "load": [{"index": "fast", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
                 {"index": "slow", "name": "RampChecker", "library": checker, "queue_size": 2}],
        "connect": [{"index": "fast", "connection": "frame_receiver"},
                    {"index": "slow", "connection": "fast", "blocking": False}]}, "slow": {"delay": 0.003}})
    wait_for(lambda: pipeline.processor.status()["shared_memory"]["configured"])
    pipeline.start()
    pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.processor.status())["slow"]["acquisitions"] == 1 and s)
    assert st["fast"]["frames_processed"] == n
    assert st["slow"]["frames_dropped"] > 0
    assert st["slow"]["frames_processed"] + st["slow"]["frames_dropped"] == n
    assert st["slow"]["bad"] == 0


def test_shutdown_drains_queued_frames(tmp_path, checker):
    report = tmp_path / "report.json"
    n = 60
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": n})
        p.setup_processor([("slow", "RampChecker", checker, "frame_receiver",
                            {"delay": 0.01, "report": str(report)})])
        p.start()
        wait_for(lambda: p.processor.status()["frames"]["received"] == n, what="all frames queued")
        assert p.processor.status()["slow"]["frames_processed"] < n  # still queued when we ask to stop
        assert p.processor.request("shutdown", timeout=30).msg_type == "ack"
        assert p.processor.proc.wait(10) == 0
        assert json.loads(report.read_text())["good"] == n
        wait_for(lambda: p.receiver.status()["buffers"]["mapped"] == 0, what="every buffer released")


def test_hdf5_source_replays_a_file(pipeline, tmp_path):
    frames = np.random.default_rng(3).integers(0, 4000, size=(25, 12, 10), dtype=np.uint16)
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["entry/data"] = frames
    pipeline.configure_receiver({"type": "hdf5", "file": str(path), "dataset": "entry/data"})
    pipeline.setup_processor([("sum", "SumPlugin", "framechain.plugins.sum", "frame_receiver")])
    pipeline.start()
    rx = pipeline.wait_done()
    assert rx["frames"]["received"] == 25
    st = wait_for(lambda: (s := pipeline.processor.status())["sum"]["acquisitions"] == 1 and s)
    assert st["sum"]["last"] == {"sum": int(frames[24].sum()), "min": int(frames[24].min()),
                                 "max": int(frames[24].max())}


def test_inconsistent_frame_headers_are_counted_bad_and_released(tmp_path):
    """The test plays the receiver: real shm, real PUB/SUB, hand-made bad headers."""
    from harness import Daemon, FakeReceiver
    fake = FakeReceiver(4, 8 * 8 * 2)
    proc = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "processor.log")
    try:
        proc.ok("configure", {"fr_setup": {"fr_ready_cnxn": fake.ready, "fr_release_cnxn": fake.release,
                                           "fr_shared_mem": fake.name},
                              "plugin": {"load": {"index": "d", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
                                         "connect": {"index": "d", "connection": "frame_receiver"}}})
        fake.wait_subscribed()  # what we publish before the processor's SUB joins is lost
        while fake.sub.poll(10):
            fake.sub.recv()  # its request_buffer_config
        headers = [FrameHeader(0, "<u2", (8, 8), 128),             # good
                   FrameHeader(1, "<u2", (8, 8), 100),             # size does not match shape
                   FrameHeader(2, "<c8", (8, 8), 512),             # complex: unsupported dtype
                   FrameHeader(3, "<u2", (8, 8), 128, state=1)]    # still filling
        for bid, hdr in enumerate(headers):
            fake.buf.write_header(bid, hdr)
            fake.send("frame_ready", {"frame": hdr.frame_number, "buffer_id": bid})
        fake.send("frame_ready", {"frame": 9, "buffer_id": 99})  # no such buffer
        assert fake.released(4, timeout=10) == {0, 1, 2, 3}
        st = wait_for(lambda: (s := proc.status())["frames"]["bad"] == 4 and s["d"]["frames_processed"] == 1 and s)
        assert st["frames"]["received"] == 5 and st["frames"]["released"] == 4
        # each bad frame was dropped for its own reason (the first five are logged)
        causes = {1: "data size 100 does not match shape", 2: "unsupported dtype", 3: "buffer state is 1",
                  9: "frame_ready names buffer 99"}
        log = proc.log()
        for number, cause in causes.items():
            assert sum(f"bad frame dropped: frame {number}: {cause}" in line for line in log.splitlines()) == 1, cause
        assert log.count("bad frame dropped") == 4
        assert any(st["frames"]["last_bad"].startswith(f"frame {n}: {c}") for n, c in causes.items())
    finally:
        proc.stop()
        fake.close()
