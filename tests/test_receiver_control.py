"""The receiver's control channel and shared-memory life cycle, on a real receiver subprocess."""

import json
import os
import signal

import pytest
from harness import Daemon, Pipeline, unique_shm_name, wait_for

from framechain.ipc import IpcMessage, free_tcp_endpoint


def _receiver(tmp_path, name="receiver"):
    return Daemon("receiver", ["--ready", free_tcp_endpoint(), "--release", free_tcp_endpoint()],
                  free_tcp_endpoint(), tmp_path / f"{name}.log")


@pytest.fixture
def receiver(tmp_path):
    d = _receiver(tmp_path)
    yield d
    d.stop()


SOURCE = {"type": "simulated", "shape": [16, 16], "frames": 10}


@pytest.mark.parametrize("params, reason", [
    ({"max_buffer_mem": -5}, "'max_buffer_mem' option of the frame receiver must be >= 1"),
    ({"max_buffer_mem": 1 << 60}, "more than half this machine's memory"),
    ({"max_buffer_mem": 100}, "cannot hold one buffer"),
    ({"mode": "sometimes"}, "'mode' option of the frame receiver must be one of ['block', 'drop']"),
    ({"source": {"type": "camera"}}, "source type must be one of ['dectris_v1', 'dectris_v2', 'hdf5', 'simulated', 'udp']"),
    ({"source": {**SOURCE, "shape": [0, 4]}}, "'source/shape' option of a simulated source: must be a list"),
    ({"source": {**SOURCE, "dtype": "complex64"}}, "'source/dtype' option"),
    ({"source": {**SOURCE, "pattern": "stars"}}, "'source/pattern' option of a simulated source must be one of ['ramp', 'speckle']"),
    ({"source": {**SOURCE, "colour": "red"}}, "unknown key 'source/colour' for a simulated source"),
    ({"source": {**SOURCE, "rate": -1}}, "'source/rate' option of a simulated source must be in [0, 1e+07]"),
    ({"source": {"type": "hdf5", "file": "/no/such.h5", "dataset": "data"}}, "does not exist"),
    ({"shared_buffer_name": "a/b"}, "'shared_buffer_name' option of the frame receiver: must be a short name"),
    ({"bogus": 1}, "unknown key 'bogus' for the frame receiver"),
])
def test_bad_configure_is_nacked_and_changes_nothing(receiver, params, reason):
    receiver.ok("configure", {"shared_buffer_name": unique_shm_name(), "source": SOURCE})
    before = receiver.ok("request_configuration")
    reply = receiver.request("configure", {"source": SOURCE, **params})
    assert reply.msg_type == "nack", reply
    assert reason in reply.error
    assert receiver.ok("request_configuration") == before


def test_execute_without_source_and_bad_execute(receiver):
    assert "no source configured" in receiver.request("execute", {"source": {"command": "start"}}).error
    assert "receiver execute takes" in receiver.request("execute", {"source": {"command": "fly"}}).error


def test_name_used_by_live_receiver_is_refused(tmp_path):
    name = unique_shm_name()
    a, b = _receiver(tmp_path, "a"), _receiver(tmp_path, "b")
    try:
        a.ok("configure", {"shared_buffer_name": name, "source": SOURCE})
        reply = b.request("configure", {"shared_buffer_name": name, "source": SOURCE})
        assert reply.msg_type == "nack"
        assert f"in use by a live receiver (pid {a.proc.pid})" in reply.error
        assert b.ok("request_configuration")["source"] == {}
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unlinks_segment(tmp_path, sig):
    name = unique_shm_name()
    d = _receiver(tmp_path)
    d.ok("configure", {"shared_buffer_name": name, "source": SOURCE})
    assert os.path.exists(f"/dev/shm/{name}")
    os.kill(d.proc.pid, sig)
    assert d.proc.wait(10) == 0
    assert not os.path.exists(f"/dev/shm/{name}")
    assert "unlinked shared buffer" in d.log()
    d.stop()


def test_stale_segment_of_crashed_receiver_is_replaced(tmp_path):
    name = unique_shm_name()
    d = _receiver(tmp_path, "crashed")
    d.ok("configure", {"shared_buffer_name": name, "source": SOURCE})
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    d.stop()
    assert os.path.exists(f"/dev/shm/{name}")  # left behind by the crash
    e = _receiver(tmp_path, "next")
    try:
        e.ok("configure", {"shared_buffer_name": name, "source": SOURCE})
        wait_for(lambda: "replaced stale shared buffer" in e.log(), timeout=5)
        assert e.status()["buffers"]["total"] == 64
    finally:
        e.stop()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_default_pool_is_64_buffers_and_buffer_config(receiver):
    receiver.ok("configure", {"shared_buffer_name": unique_shm_name(), "source": SOURCE})
    st = receiver.status()
    assert st["buffers"] == {"total": 64, "empty": 64, "mapped": 0, "consistent": True}
    cfg = receiver.ok("request_buffer_config")
    assert cfg["num_buffers"] == 64 and cfg["buffer_size"] >= 128 + 16 * 16 * 2
    assert "default: 64 buffers" in receiver.log()


def _budget() -> int:
    """What the receiver may spend on buffers here: half the memory, and no more than /dev/shm has free."""
    st = os.statvfs("/dev/shm")
    return min(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2, st.f_bavail * st.f_frsize)


def test_default_pool_too_big_for_memory_is_nacked_naming_the_frame(receiver):
    # a 2 TiB frame: a configured source allocates nothing, so this touches no memory at all
    shape = [1 << 20, 1 << 20]
    reply = receiver.request("configure", {"shared_buffer_name": unique_shm_name(),
                                           "source": {**SOURCE, "shape": shape}})
    assert reply.msg_type == "nack", reply
    assert f"a {shape} uint16 frame ({2 << 40} bytes" in reply.error
    assert "the default pool of 64 buffers needs" in reply.error and "use a smaller frame" in reply.error
    assert receiver.status()["shared_memory"]["num_buffers"] == 0
    assert receiver.ok("request_configuration")["source"] == {}


def test_default_pool_shrinks_to_fit_memory(receiver):
    # frames of a tenth of the budget: 64 of them cannot fit, about 10 can. The segment is created but
    # only its headers are written (tmpfs is sparse), and the source is never started.
    rows = _budget() // 10 // 2048
    name = unique_shm_name()
    receiver.ok("configure", {"shared_buffer_name": name, "source": {**SOURCE, "shape": [rows, 1024]}})
    shm = receiver.status()["shared_memory"]
    assert 4 <= shm["num_buffers"] < 64
    assert shm["num_buffers"] * shm["buffer_size"] <= _budget() * 11 // 10  # /dev/shm's free space moves a little
    log = receiver.log()
    assert "the default pool of 64 buffers" in log and f"using {shm['num_buffers']} buffers" in log
    assert f"default: {shm['num_buffers']} buffers for this frame size" in log


def test_buffers_orphaned_by_a_killed_processor_are_reclaimed(tmp_path):
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 0, "rate": 2000})
        p.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")], copy=False)
        p.start()
        wait_for(lambda: p.plugin_status("dummy")["frames_processed"] > 20, what="frames to flow")
        os.kill(p.processor.proc.pid, signal.SIGKILL)  # dies holding buffers it mapped (zero-copy)
        p.processor.proc.wait(10)
        rx = p.receiver
        wait_for(lambda: rx.status()["ready_subscribers"] == 0, timeout=10, what="the unsubscription")
        wait_for(lambda: rx.status()["buffers"]["mapped"] == 64, timeout=10, what="block mode to fill every buffer")
        assert "source is running" in rx.request("reset").error
        rx.ok("execute", {"source": {"command": "stop"}})
        assert rx.status()["buffers"]["mapped"] == 64  # nobody will ever release them

        # configure with no processor subscribed takes them back (it used to nack "64 buffers are still held")
        rx.ok("configure", {"source": {"type": "simulated", "shape": [32, 32], "frames": 0, "rate": 2000}})
        st = rx.status()
        assert st["buffers"] == {"total": 64, "empty": 64, "mapped": 0, "consistent": True}
        assert st["frames"]["reclaimed"] == 64
        assert "configure with no processor subscribed: reclaimed 64 buffers" in rx.log()

        # so does a source start
        rx.ok("execute", {"source": {"command": "start"}})
        wait_for(lambda: rx.status()["buffers"]["mapped"] == 64, timeout=10, what="every buffer to be mapped")
        rx.ok("execute", {"source": {"command": "stop"}})
        rx.ok("execute", {"source": {"command": "start"}})
        assert rx.status()["frames"]["reclaimed"] == 128
        assert "source start with no processor subscribed: reclaimed 64 buffers" in rx.log()

        # and reset, explicitly
        wait_for(lambda: rx.status()["buffers"]["mapped"] == 64, timeout=10, what="every buffer to be mapped")
        rx.ok("execute", {"source": {"command": "stop"}})
        assert rx.ok("reset") == {"reclaimed": 64}
        st = rx.status()
        assert st["buffers"]["mapped"] == 0 and st["frames"]["reclaimed"] == 192
        assert rx.ok("reset") == {"reclaimed": 0}
        assert "takes no params" in rx.request("reset", {"x": 1}).error


def test_buffers_held_by_a_live_processor_are_not_reclaimed(tmp_path):
    from test_pipeline import CHECKER
    (tmp_path / "checker.py").write_text(CHECKER)
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 10})
        p.setup_processor([("slow", "RampChecker", str(tmp_path / "checker.py"), "frame_receiver",
                            {"delay": 0.2})], copy=False)
        p.start()
        wait_for(lambda: p.receiver.status()["source"]["state"] == "done", what="the source to finish")
        assert p.receiver.status()["buffers"]["mapped"] > 0  # the slow plugin still holds most of the frames
        reply = p.receiver.request("configure", {"source": {"type": "simulated", "shape": [128, 128], "frames": 10}})
        assert "buffers are still held by the processor" in reply.error
        st = p.wait_done()
        assert st["frames"]["reclaimed"] == 0 and st["frames"]["bad_releases"] == 0
        assert st["frames"]["released"] == 10
        assert p.plugin_status("slow")["good"] == 10


def test_a_source_that_breaks_mid_run_ends_the_acquisition_and_the_receiver_stays_up(tmp_path):
    import h5py
    import numpy as np
    data = tmp_path / "frames.h5"
    with h5py.File(data, "w") as fh:
        fh.create_dataset("data", data=np.random.default_rng(0).integers(0, 1000, (50, 64, 64), np.uint16),
                          chunks=(1, 64, 64), compression="gzip")
    cfg = tmp_path / "rx.json"
    cfg.write_text(json.dumps({"shared_buffer_name": unique_shm_name(),
                               "source": {"type": "hdf5", "file": str(data), "dataset": "data"}}))
    d = Daemon("receiver", ["--ready", free_tcp_endpoint(), "--release", free_tcp_endpoint(), "--config", str(cfg)],
               free_tcp_endpoint(), tmp_path / "receiver.log")
    try:
        assert d.status()["source"]["state"] == "idle"  # the config file was fine
        os.truncate(data, 20000)  # the file loses most chunks under the daemon: decompressing fails (OSError)
        d.ok("execute", {"source": {"command": "start"}})
        st = wait_for(lambda: (s := d.status())["source"]["state"] == "failed" and s, what="the source to fail")
        assert st["source"]["error"].startswith(f"frame {st['source']['frame']}: ")
        assert st["buffers"]["consistent"] and st["buffers"]["mapped"] == st["frames"]["received"] - \
            st["frames"]["released"] - st["frames"]["reclaimed"]
        assert st["process"]["internal_errors"] == 0 and d.proc.poll() is None
        log = d.log()
        assert "bad --config" not in log and "source failed at frame" in log and "Traceback" in log
        d.ok("execute", {"source": {"command": "start"}})  # still driven: the same broken file fails again
        wait_for(lambda: d.status()["source"]["state"] == "failed", what="the source to fail again")
    finally:
        d.stop()


_TS = "2026-01-01T00:00:00"
MALFORMED = [
    (b"{not json", "not valid JSON", 0),
    (b"\xff\xfe", "not UTF-8", 0),
    (b"[1,2,3]", "must be a JSON object, not list", 0),
    (b'"hello"', "must be a JSON object, not str", 0),
    (json.dumps({"msg_type": "cmd", "msg_val": "status", "timestamp": _TS}).encode(), "missing field 'id'", 0),
    (json.dumps({"msg_type": "cmd", "msg_val": "frobnicate", "id": 5, "timestamp": _TS}).encode(),
     "unknown msg_val 'frobnicate'", 5),
    (json.dumps({"msg_type": "cmd", "msg_val": "request_buffer_precharge", "id": 6, "timestamp": _TS}).encode(),
     "the receiver does not handle 'request_buffer_precharge'", 6),
    (json.dumps({"msg_type": "notify", "msg_val": "status", "id": 7, "timestamp": _TS}).encode(),
     "takes 'cmd' messages, not 'notify'", 7),
    (json.dumps({"msg_type": "cmd", "msg_val": "status", "id": 8, "timestamp": "noon"}).encode(), "bad timestamp", 8),
    (json.dumps({"msg_type": "cmd", "msg_val": "configure", "id": 9, "timestamp": _TS,
                 "params": 3}).encode(), "bad params", 9),
    (b'{"msg_type": "cmd", "msg_val": "configure", "id": 10, "timestamp": "' + _TS.encode()
     + b'", "params": {"source": {"type": "simulated", "rate": NaN}}}', "contains NaN", 10),
    (json.dumps({"msg_type": "cmd", "msg_val": "execute", "id": 11, "timestamp": _TS,
                 "params": {"source": "start"}}).encode(), "receiver execute takes", 11),
]


def test_malformed_control_messages_get_one_nack_each_and_change_nothing(receiver):
    import zmq
    receiver.ok("configure", {"shared_buffer_name": unique_shm_name(), "source": SOURCE})
    before = receiver.ok("request_configuration")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(receiver.ctrl)
    try:
        for payload, reason, msg_id in MALFORMED:
            sock.send(payload)
            assert sock.poll(10000), f"no reply to {payload!r}"
            reply = IpcMessage.decode(sock.recv())
            assert (reply.msg_type, reply.id) == ("nack", msg_id), payload
            assert reason in reply.error, (payload, reply.error)
            assert not sock.poll(100), f"more than one reply to {payload!r}"
    finally:
        sock.close()
    assert receiver.ok("request_configuration") == before
    assert receiver.status()["source"]["state"] == "idle"
