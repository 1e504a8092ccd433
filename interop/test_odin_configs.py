"""odin-data's own example configuration files (``dummyUDP-fr.json``, ``dummyUDP-fp.json``, as odin's build
writes them) run framechain's daemons, with the changes docs/odin-migration.md lists: odin's frameSimulator
sends DummyUDP frames, framechain's receiver and processor take them, and framechain's writer stores them in
odin's layout, every pixel as odin sent it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from harness import wait_for
from odin_tools import frame_simulator, free_udp_port

from framechain.ipc import free_tcp_endpoint


def _config(prefix: Path, name: str) -> list[dict]:
    path = prefix / "test" / "integrationTest" / "config" / name
    if not path.exists():
        pytest.fail(f"{path} does not exist: ODIN_DATA_PREFIX must be odin-data's build folder, which holds "
                    "the configured integration-test files")
    return json.loads(path.read_text())


def migrate_fp(items: list[dict]) -> list[dict]:
    """docs/odin-migration.md's changes to an odin processor config: framechain's plugins for the .so
    libraries (its dummy names the dataset "dummy", as odin's DummyUDPProcessPlugin does) and odin's file
    layout for the writer."""
    out = []
    for item in items:
        load = item.get("plugin", {}).get("load")
        if load is not None:
            library = {"FileWriterPlugin": "hdf5_writer", "DummyUDPProcessPlugin": "dummy"}[load["name"]]
            item = {"plugin": {"load": {"index": load["index"], "library": library}}}
        elif set(item) == {"dummy"}:
            item = {"dummy": {**item["dummy"], "dataset": "dummy"}}
        elif "hdf" in item and isinstance(item["hdf"], dict) and "file" in item["hdf"]:
            item = {"hdf": {**item["hdf"], "layout": "odin"}}
        out.append(item)
    return out


def test_odin_example_configs_run_framechain(pipeline, tmp_path, odin_prefix):
    fr, fp = _config(odin_prefix, "dummyUDP-fr.json"), _config(odin_prefix, "dummyUDP-fp.json")
    n, width, height, packet = 30, 1024, 1400, 8000
    port, meta = free_udp_port(), free_tcp_endpoint()
    # the receiver: odin's file as it is, on this test's ports and segment, plus the frame size odin's
    # receiver does without (in odin it sits in the processor's DummyUDPProcessPlugin config)
    (cfg,) = fr
    cfg = {**cfg, "rx_ports": str(port), "frame_ready_endpoint": pipeline.ready,
           "frame_release_endpoint": pipeline.release, "shared_buffer_name": pipeline.shm_name, "frames": n,
           "decoder_config": {**cfg["decoder_config"], "shape": [height, width]}}
    reply = pipeline.receiver.ok("configure", cfg)
    assert reply["configured"] == {"ipc": True, "decoder": True, "buffer_manager": True, "rx_thread": True}
    # the processor: odin's items in order, on this test's endpoints and folder
    items = migrate_fp(fp)
    items[0] = {**items[0], "fr_setup": {"fr_ready_cnxn": pipeline.ready, "fr_release_cnxn": pipeline.release},
                "meta_endpoint": meta, "frames": n}
    items[-1]["hdf"] = {**items[-1]["hdf"], "file": {**items[-1]["hdf"]["file"], "path": str(tmp_path)},
                        "frames": n}
    for item in items:
        pipeline.processor.ok("configure", item)
    hdf = pipeline.processor.ok("request_configuration")["hdf"]
    assert hdf["acquisition_id"] == "test_1" and hdf["close_file_timeout"] == 3.0
    pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})
    wait_for(lambda: pipeline.processor.status()["shared_memory"]["configured"], what="the segment mapped")
    pipeline.start()
    frame_simulator(odin_prefix, port, n, width, height, packet, 0.02)
    rx = pipeline.wait_done()
    assert rx["frames"]["released"] == n and rx["frames"]["timedout"] == 0
    # odin's "frames": the processor stops by itself once it has its frames, files closed
    assert pipeline.processor.proc.wait(60) == 0
    with h5py.File(tmp_path / "test_1_000001.h5", "r") as f:
        assert "entry" not in f and f["dummy"].shape == (n, height, width)
        want = (np.arange(width * height, dtype=np.uint64) & 0xFFFF).astype(np.uint16).reshape(height, width)
        for i in range(n):
            np.testing.assert_array_equal(f["dummy"][i], want)
