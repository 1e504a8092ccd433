"""odin-data's reply shapes and configuration keys on framechain's daemons (real subprocesses, real sockets).

odin-data's own adapters and meta_writer drive the same daemons in ``interop/``; these tests pin the shapes
those tools read, so a change that would break them fails here first."""

import json
import time

import pytest
import zmq
from harness import Daemon, unique_shm_name, wait_for

from framechain.ipc import free_tcp_endpoint

HDF = {"index": "hdf", "name": "FileWriterPlugin", "library": "framechain.plugins.hdf5_writer"}
SUM = {"index": "sum", "name": "SumPlugin", "library": "framechain.plugins.sum"}
VERSION_KEYS = {"major", "minor", "patch", "short", "full"}


@pytest.fixture
def processor(tmp_path):
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "processor.log")
    yield d
    d.stop()


def test_processor_replies_in_odins_shapes(processor, tmp_path):
    st0, cfg0 = processor.status(), processor.ok("request_configuration")
    assert st0["plugins"]["names"] == [] and st0["error"] == [] and st0["warning"] == []
    processor.ok("configure", {"plugin": {"load": [SUM, HDF], "connect": {"index": "hdf", "connection": "sum"}}})
    st, cfg = processor.status(), processor.ok("request_configuration")
    assert st["plugins"]["names"] == ["sum", "hdf"] and cfg["plugins"]["names"] == ["sum", "hdf"]
    assert st["status_ts"] > st0["status_ts"] and cfg["config_ts"] > cfg0["config_ts"]
    assert st["hdf"]["current_acquisition_id"] == ""
    assert cfg["ctrl_endpoint"] == processor.ctrl and cfg["meta_endpoint"] == ""
    processor.ok("configure", {"hdf": {"frames": 7}})
    cfg2 = processor.ok("request_configuration")
    assert cfg2["config_ts"] > cfg["config_ts"] and cfg2["hdf"]["frames"] == 7
    assert processor.status()["status_ts"] == st["status_ts"]  # same parts: the status layout did not change
    assert "metadata" not in cfg2
    meta = processor.ok("request_configuration", {"metadata": True})["metadata"]
    assert meta["hdf"]["frames"]["access_mode"] == "rw" and meta["hdf"]["frames"]["type"] == "uint"
    assert meta["hdf"]["file"]["path"] == {**meta["hdf"]["file"]["path"], "type": "string", "access_mode": "rw"}
    assert "description" in meta["hdf"]["frames"]
    smeta = processor.ok("status", {"metadata": True})["metadata"]
    assert smeta["hdf"]["frames_written"] == {"type": "uint", "access_mode": "r"}
    assert processor.ok("request_commands") == {"hdf": {"supported": ["start_writing", "stop_writing"]}}
    v = processor.ok("request_version")["version"]
    assert set(v["framechain"]) == VERSION_KEYS and VERSION_KEYS <= set(v["hdf"])


def test_processor_takes_odins_controller_keys(processor, tmp_path):
    processor.ok("configure", {"plugin": {"load": SUM, "connect": {"index": "sum", "connection": "frame_receiver"}}})
    # ctrl_endpoint: the value it listens on is taken, another is refused with where it listens
    processor.ok("configure", {"ctrl_endpoint": processor.ctrl})
    r = processor.request("configure", {"ctrl_endpoint": "tcp://127.0.0.1:1"})
    assert r.msg_type == "nack" and "chosen when it starts (--ctrl)" in r.error and processor.ctrl in r.error
    # store / execute: a stored configuration applies later, item by item
    processor.ok("configure", {"store": {"index": "fast", "value": [{"plugin": {"load": HDF}},
                                                                    {"hdf": {"frames": 3}}]}})
    assert "hdf" not in processor.status()["plugins"]["names"]
    assert processor.ok("request_configuration")["stored"] == ["fast"]
    processor.ok("configure", {"execute": {"index": "fast"}})
    assert processor.ok("request_configuration")["hdf"]["frames"] == 3
    r = processor.request("configure", {"execute": {"index": "slow"}})
    assert r.msg_type == "nack" and "no stored configuration 'slow'" in r.error and "fast" in r.error
    r = processor.request("configure", {"store": {"index": "x"}})
    assert r.msg_type == "nack" and "store needs" in r.error
    # a bad meta_endpoint changes nothing
    before = processor.ok("request_configuration")
    r = processor.request("configure", {"meta_endpoint": "nowhere", "hdf": {"frames": 9}})
    assert r.msg_type == "nack" and "meta_endpoint" in r.error
    after = processor.ok("request_configuration")
    assert {k: v for k, v in after.items() if k != "config_ts"} == {k: v for k, v in before.items() if k != "config_ts"}
    processor.ok("configure", {"clear_errors": True, "debug_level": 0})
    r = processor.request("configure", {"rx_endpoint": "inproc://rx"})
    assert r.msg_type == "nack" and "unknown configure key" in r.error


def test_inject_eoa_ends_the_writers_acquisition(processor, tmp_path):
    processor.ok("configure", {"plugin": {"load": HDF, "connect": {"index": "hdf", "connection": "frame_receiver"}},
                               "hdf": {"file": {"path": str(tmp_path)}, "frames": 0,
                                       "dataset": {"data": {"datatype": "uint16", "dims": [4, 4]}}}})
    processor.ok("execute", {"hdf": {"command": "start_writing"}})
    assert processor.status()["hdf"]["writing"] is True
    processor.ok("configure", {"inject_eoa": True})
    wait_for(lambda: processor.status()["hdf"]["writing"] is False, what="the injected end of acquisition")


def test_meta_endpoint_publishes_odins_acquisition_items(pipeline, tmp_path):
    meta = free_tcp_endpoint()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    n = 12
    try:
        pipeline.configure_receiver({"type": "simulated", "shape": [8, 8], "frames": n, "acquisition_id": "run7"})
        pipeline.processor.ok("configure", {"meta_endpoint": meta})
        assert pipeline.processor.status()["meta"]["endpoint"] == meta
        pipeline.setup_processor([("hdf", HDF["name"], HDF["library"], "frame_receiver",
                                   {"file": {"path": str(tmp_path)}, "frames": n,
                                    "dataset": {"data": {"datatype": "uint16", "dims": [8, 8]}}})])
        sub.connect(meta)
        time.sleep(0.3)  # PUB/SUB joins asynchronously
        pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        pipeline.start()
        pipeline.wait_done()
        wait_for(lambda: not pipeline.plugin_status("hdf")["writing"], what="the writer to close")
        got = []
        while sub.poll(500):
            head, body = sub.recv_multipart()
            got.append((json.loads(head), json.loads(body) if body else None))
    finally:
        sub.close()
    items = [h["parameter"] for h, _ in got]
    assert items == ["startacquisition", "createfile"] + ["writeframe"] * n + ["closefile", "stopacquisition"], items
    assert all(h["plugin"] == "Acquisition" and h["header"]["acqID"] == "run7" and h["header"]["rank"] == 0
               for h, _ in got)
    assert got[0][0]["header"]["totalFrames"] == n
    frames = [b for h, b in got if h["parameter"] == "writeframe"]
    assert [b["frame"] for b in frames] == list(range(n)) and {b["proc"] for b in frames} == {1}
    assert all(b["write_duration"] >= 0 for b in frames)
    created, closed = got[1][1], got[-2][1]
    assert created["filePath"] == closed["filePath"] and closed["filePath"].endswith(".h5")
    assert pipeline.processor.status()["meta"]["published"] == n + 4


# -- receiver ------------------------------------------------------------------------------------------------
ODIN_FR = {"decoder_type": "DummyUDP", "decoder_path": "/opt/odin/lib", "rx_ports": "0", "max_buffer_mem": 8 << 20,
           "decoder_config": {"enable_packet_logging": False, "frame_timeout_ms": 1000,
                              "udp_packets_per_frame": 5, "udp_packet_size": 8000}, "frames": 10}


@pytest.fixture
def receiver(tmp_path):
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    d = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / "rx.log")
    d.endpoints = (ready, release)
    yield d
    d.stop()


def test_receiver_takes_odins_dummy_udp_config(receiver):
    cfg = {**ODIN_FR, "shared_buffer_name": unique_shm_name(), "rx_ports": "61999,62001",
           "frame_ready_endpoint": receiver.endpoints[0], "frame_release_endpoint": receiver.endpoints[1]}
    before = receiver.ok("request_configuration")
    r = receiver.request("configure", cfg)
    assert r.msg_type == "nack" and "add \"shape\": [height, width]" in r.error and "5 packets x 8000" in r.error
    assert receiver.ok("request_configuration")["config_ts"] == before["config_ts"]
    r = receiver.request("configure", {**cfg, "decoder_config": {**cfg["decoder_config"], "shape": [100, 100]}})
    assert r.msg_type == "nack" and "is 3 packets of 8000 bytes, not udp_packets_per_frame 5" in r.error
    shape = [200, 100]  # 40,000 bytes: 5 packets
    reply = receiver.ok("configure", {**cfg, "decoder_config": {**cfg["decoder_config"], "shape": shape}})
    assert reply == {"configured": {"ipc": True, "decoder": True, "buffer_manager": True, "rx_thread": True}}
    c = receiver.ok("request_configuration")
    assert c["source"]["type"] == "udp" and c["source"]["rx_ports"] == [61999, 62001]
    assert c["source"]["shape"] == shape and c["source"]["frames"] == 10 and c["source"]["packet_size"] == 8000
    assert (c["decoder_type"], c["rx_ports"], c["decoder_path"]) == ("DummyUDP", "61999,62001", "/opt/odin/lib")
    assert c["frame_ready_endpoint"] == receiver.endpoints[0] and c["config_ts"] > before["config_ts"]
    st = receiver.status()
    assert st["status"] == {"ipc_configured": True, "decoder_configured": True, "buffer_manager_configured": True,
                            "rx_thread_configured": True, "configuration_complete": True}
    assert st["decoder"]["type"] == "udp" and st["plugins"] == {"names": ["receiver"]} and st["error"] == []
    assert st["receiver"]["source"]["type"] == "udp" and c["receiver"]["source"] == c["source"]
    # a later message changes one key of the udp source, as odin's reconfig messages do
    receiver.ok("configure", {"rx_ports": [62003]})
    assert receiver.ok("request_configuration")["source"]["shape"] == shape
    receiver.ok("configure", {"receiver": {"mode": "drop"}})  # a PUT to the part odin's adapters show
    assert receiver.ok("request_configuration")["mode"] == "drop"
    assert receiver.ok("request_commands") == {"source": {"supported": ["start", "stop"]}}
    assert receiver.ok("execute", {"decoder": {"command": "start"}})["state"] == "running"
    assert receiver.ok("execute", {"decoder": {"command": "stop"}})["state"] == "stopped"
    assert set(receiver.ok("request_version")["version"]["framechain"]) == VERSION_KEYS


@pytest.mark.parametrize("bad, words", [
    ({"rx_endpoint": "inproc://rx_channel"}, ["inproc channel between odin's receive and control threads"]),
    ({"decoder_type": "Excalibur", "rx_ports": "61649"}, ["no framechain decoder for 'Excalibur'"]),
    ({"rx_type": "zmq"}, ["rx_type 'zmq'", "dectris_v2"]),
    ({"decoder_type": "DummyUDP", "rx_ports": "61649,http"}, ["'http' is not a UDP port"]),
    ({"decoder_type": "DummyUDP", "decoder_config": {"udp_packet_size": 8000, "colour": 1}},
     ["unknown decoder_config key(s) ['colour']"]),
    ({"ctrl_endpoint": "tcp://127.0.0.1:1"}, ["chosen when it starts (--ctrl)"]),
    ({"rx_ports": "61649"}, ["need decoder_type"]),
    ({"decoder_type": "DummyUDP", "source": {"type": "simulated"}}, ["not both"]),
])
def test_receiver_refuses_odin_keys_it_cannot_honour(receiver, bad, words):
    before = receiver.ok("request_configuration")
    r = receiver.request("configure", bad)
    assert r.msg_type == "nack" and all(w in r.error for w in words), r.error
    assert receiver.ok("request_configuration") == before


def test_receiver_rebinds_frame_ready_and_release(receiver, tmp_path):
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    name = unique_shm_name()
    receiver.ok("configure", {"frame_ready_endpoint": ready, "frame_release_endpoint": release,
                              "shared_buffer_name": name, "source": {"type": "simulated", "shape": [8, 8], "frames": 6}})
    c = receiver.ok("request_configuration")
    assert (c["frame_ready_endpoint"], c["frame_release_endpoint"]) == (ready, release)
    fp = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        fp.ok("configure", {"fr_setup": {"fr_ready_cnxn": ready, "fr_release_cnxn": release},
                            "plugin": {"load": SUM, "connect": {"index": "sum", "connection": "frame_receiver"}}})
        wait_for(lambda: receiver.status()["ready_subscribers"] >= 1, what="the processor on the new endpoint")
        wait_for(lambda: fp.status()["shared_memory"]["configured"], what="the segment mapped")
        receiver.ok("execute", {"source": {"command": "start"}})
        wait_for(lambda: fp.status()["sum"]["frames_processed"] == 6, what="frames over the rebound endpoints")
        wait_for(lambda: receiver.status()["frames"]["released"] == 6, what="releases on the rebound endpoint")
    finally:
        fp.stop()
    r = receiver.request("configure", {"frame_ready_endpoint": "tcp://127.0.0.1:notaport"})
    assert r.msg_type == "nack"
    assert receiver.ok("request_configuration")["frame_ready_endpoint"] == ready


def test_writer_odin_layout_and_naming(tmp_path):
    """layout: odin puts frames at /<dataset> (odin's FileWriterPlugin), names files by acquisition id when no
    name is set, and the VDS master stitches the same paths."""
    import h5py
    import numpy as np
    from harness import Pipeline

    n = 6
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [8, 8], "frames": n, "acquisition_id": "odin_run"})
        p.setup_processor([("hdf", HDF["name"], HDF["library"], "frame_receiver",
                            {"layout": "odin", "file": {"path": str(tmp_path)}, "frames": n,
                             "process": {"blocks_per_file": 3},
                             "dataset": {"data": {"datatype": "uint16", "dims": [8, 8]}}})])
        p.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        p.start()
        p.wait_done()
        wait_for(lambda: (s := p.plugin_status("hdf"))["frames_written"] == n and not s["writing"], what="written")
    with h5py.File(tmp_path / "odin_run_000001.h5", "r") as f:
        assert "entry" not in f and f["data"].shape == (3, 8, 8) and list(f["parameters/frame_number"]) == [0, 1, 2]
    with h5py.File(tmp_path / "odin_run_vds.h5", "r") as f:
        got = f["data"][...]
    want = np.array([(np.arange(64) + i).astype(np.uint16).reshape(8, 8) for i in range(n)])
    np.testing.assert_array_equal(got, want)
