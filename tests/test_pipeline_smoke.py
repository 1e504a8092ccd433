from harness import wait_for


def test_ramp_frames_reach_dummy(pipeline):
    pipeline.configure_receiver({"type": "simulated", "shape": [32, 32], "frames": 200})
    pipeline.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    pipeline.start()
    rx = pipeline.wait_done()
    assert rx["frames"]["received"] == rx["frames"]["released"] == 200
    wait_for(lambda: pipeline.plugin_status("dummy")["frames_processed"] == 200)
