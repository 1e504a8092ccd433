"""Faults found in review, each reproduced for real: reconfiguring under load, rebuilt segments,
frames held before the buffer is mapped, plugins that exit, shutdown mid-acquisition.
(The diamond's end-of-acquisition join is chain mechanics: tests/test_chain.py.)"""

import textwrap

from harness import Daemon, FakeReceiver, Pipeline, wait_for

from framechain.ipc import FrameHeader, buffer_size_for, free_tcp_endpoint

SLOW = textwrap.dedent("""
    import time
    from framechain.frameprocessor import FrameProcessorPlugin, Option
    class Slow(FrameProcessorPlugin):
        options = {"delay": Option(float, 0.01, "seconds per frame")}
        def process_frame(self, frame):
            time.sleep(self.config["delay"])
            self.push(frame)
""")


def _slow_plugin(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(SLOW)
    return str(path)


def test_fr_setup_refused_while_zero_copy_frames_are_held(tmp_path):
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 100})
        p.setup_processor([("slow", "Slow", _slow_plugin(tmp_path), "frame_receiver", {"delay": 0.01})], copy=False)
        p.start()
        wait_for(lambda: p.processor.status()["frames"]["outstanding"] > 0, what="zero-copy frames in flight")
        reply = p.processor.request("configure", {"fr_setup": {"fr_ready_cnxn": p.ready,
                                                               "fr_release_cnxn": p.release}})
        assert reply.msg_type == "nack" and "zero-copy" in reply.error
        rx = p.wait_done()
        assert rx["frames"]["released"] == 100 and p.processor.proc.poll() is None
        wait_for(lambda: p.processor.status()["frames"]["outstanding"] == 0)


def test_fr_setup_with_a_bad_endpoint_changes_nothing(pipeline):
    pipeline.configure_receiver({"type": "simulated", "shape": [8, 8], "frames": 50})
    pipeline.setup_processor([("d", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    before = pipeline.processor.ok("request_configuration")
    reply = pipeline.processor.request("configure", {"fr_setup": {"fr_ready_cnxn": "tcp://no such host:5",
                                                                  "fr_release_cnxn": pipeline.release}})
    assert reply.msg_type == "nack" and "cannot connect" in reply.error
    assert pipeline.processor.ok("request_configuration") == before
    pipeline.start()
    assert pipeline.wait_done()["frames"]["released"] == 50
    wait_for(lambda: pipeline.plugin_status("d")["frames_processed"] == 50)
    assert "internal error" not in pipeline.processor.log()


def test_processor_follows_a_segment_rebuilt_under_the_same_name(pipeline):
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 30})
    pipeline.setup_processor([("d", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    pipeline.start()
    pipeline.wait_done()
    pipeline.configure_receiver({"type": "simulated", "shape": [64, 64], "frames": 30})  # same name, bigger
    wait_for(lambda: pipeline.processor.status()["shared_memory"]["buffer_size"] >= buffer_size_for(64 * 64 * 2),
             what="the processor to remap the rebuilt segment")
    pipeline.start()
    rx = pipeline.wait_done()
    assert rx["frames"]["released"] == rx["frames"]["received"] == 60  # counters span both acquisitions
    st = wait_for(lambda: (s := pipeline.processor.status())["d"]["frames_processed"] == 60 and s)
    assert st["frames"]["bad"] == 0


def test_frames_held_before_mapping_survive_an_exhausted_pool(tmp_path):
    """The test plays the receiver: frame_ready for 10 buffers before the processor knows the segment."""
    fake = FakeReceiver(10, 32 * 32 * 2)
    proc = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "processor.log")
    try:
        proc.ok("configure", {"shared_memory": {"max_pool_memory": 2 * 32 * 32 * 2},  # room for 2 frames
                              "plugin": {"load": {"index": "slow", "name": "Slow", "library": _slow_plugin(tmp_path),
                                                  "queue_size": 1},
                                         "connect": {"index": "slow", "connection": "frame_receiver"}},
                              "slow": {"delay": 0.02}})
        proc.ok("configure", {"fr_setup": {"fr_ready_cnxn": fake.ready, "fr_release_cnxn": fake.release}})
        fake.wait_subscribed()  # what we publish before the processor's SUB joins is lost
        for i in range(10):
            fake.buf.write_header(i, FrameHeader(i, "<u2", (32, 32), 32 * 32 * 2))
            fake.send("frame_ready", {"frame": i, "buffer_id": i})
        wait_for(lambda: proc.status()["frames"]["waiting"] == 10, what="frames held before mapping")
        fake.send("buffer_config", {"shared_buffer_name": fake.name})
        assert fake.released(10) == set(range(10))
        st = wait_for(lambda: (s := proc.status())["slow"]["frames_processed"] == 10 and s)
        assert st["frames"]["received"] == 10 and st["pool"]["exhausted"] > 0
    finally:
        proc.stop()
        fake.close()


def test_plugin_file_calling_sys_exit_is_a_nack(tmp_path):
    bad = tmp_path / "quitter.py"
    bad.write_text("import sys\nsys.exit(3)\n")
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        reply = d.request("configure", {"plugin": {"load": {"index": "q", "name": "Q", "library": str(bad)}}})
        assert reply.msg_type == "nack" and "SystemExit" in reply.error
        assert d.status()["plugins"]["names"] == []
    finally:
        assert d.stop() == 0


def test_shutdown_mid_acquisition_gives_every_buffer_back(tmp_path):
    """Frames still queued in plugins are processed; frames still in the socket are released unprocessed."""
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 0})
        p.processor.ok("configure", {"fr_setup": {"fr_ready_cnxn": p.ready, "fr_release_cnxn": p.release},
                                     "shared_memory": {"copy": False}})
        p.processor.ok("configure", {"plugin": {  # a short queue: most frames wait in the socket
            "load": {"index": "slow", "name": "Slow", "library": _slow_plugin(tmp_path), "queue_size": 2},
            "connect": {"index": "slow", "connection": "frame_receiver"}}, "slow": {"delay": 0.002}})
        wait_for(lambda: p.processor.status()["shared_memory"]["configured"])
        p.start()
        wait_for(lambda: p.processor.status()["slow"]["frames_processed"] > 50)
        p.receiver.ok("execute", {"source": {"command": "stop"}})
        assert p.processor.request("shutdown", timeout=30).msg_type == "ack"
        p.processor.proc.wait(10)
        st = wait_for(lambda: (s := p.receiver.status())["buffers"]["mapped"] == 0 and s,
                      what="every buffer released by the stopped processor")
        assert st["frames"]["released"] == st["frames"]["received"]

