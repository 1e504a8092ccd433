"""Process faults with real subprocesses: a processor SIGKILLed mid-acquisition is replaced and the stream goes
on without a lost frame; a SIGKILLed receiver leaves the processor up, reporting it, until a new one comes; a
plugin that hangs shows as stuck (which, since when) and shutdown still ends in bounded time; SIGTERM mid-run
closes the file with every acknowledged frame in it."""

from __future__ import annotations

import os
import signal
import time

import h5py
from harness import Daemon, unique_shm_name, wait_for

from framechain.ipc import free_tcp_endpoint

RECORDER = """
import os, time
from framechain.frameprocessor import FrameProcessorPlugin, Option

class Recorder(FrameProcessorPlugin):
    \"\"\"Appends each frame number to <dir>/frames_<pid>.txt as it is processed.\"\"\"
    options = {"delay": Option(float, 0.0, "seconds per frame"), "hang_at": Option(int, -1, "sleep forever here")}

    def __init__(self, name):
        super().__init__(name)
        self.out = open(os.path.join(os.path.dirname(__file__), f"frames_{os.getpid()}.txt"), "a", buffering=1)

    def process_frame(self, frame):
        if frame.frame_number == self.config["hang_at"]:
            while True:
                time.sleep(1)
        time.sleep(self.config["delay"])
        self.out.write(f"{frame.frame_number}\\n")
        self.push(frame)
"""


def _processor(tmp_path, name, ready, release, copy, cfg, extra=()):
    fp = Daemon("processor", list(extra), free_tcp_endpoint(), tmp_path / f"{name}.log")
    fp.ok("configure", {"fr_setup": {"fr_ready_cnxn": ready, "fr_release_cnxn": release},
                        "shared_memory": {"copy": copy},
                        "plugin": {"load": {"index": "rec", "name": "Recorder", "library": str(tmp_path / "rec.py")},
                                   "connect": {"index": "rec", "connection": "frame_receiver"}},
                        "rec": cfg})
    return fp


def _recorded(tmp_path) -> list[list[int]]:
    return [[int(x) for x in p.read_text().split()] for p in sorted(tmp_path.glob("frames_*.txt"))]


def test_killed_processor_is_replaced_and_no_frame_is_lost(tmp_path):
    (tmp_path / "rec.py").write_text(RECORDER)
    n = 400
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    rx = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / "rx.log")
    try:
        rx.ok("configure", {"shared_buffer_name": unique_shm_name(), "max_buffer_mem": 16 * 4096,
                            "source": {"type": "simulated", "shape": [16, 16], "frames": n, "rate": 2000}})
        first = _processor(tmp_path, "fp1", ready, release, False, {"delay": 0.005})  # zero-copy: it holds frames
        wait_for(lambda: rx.status()["ready_subscribers"] == 1, what="the first processor")
        time.sleep(0.3)
        rx.ok("execute", {"source": {"command": "start"}})
        wait_for(lambda: sum(map(len, _recorded(tmp_path))) > 60, what="frames to flow")
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        first.stop()
        wait_for(lambda: rx.status()["ready_subscribers"] == 0, what="the receiver to see it gone")
        held = rx.status()["buffers"]["mapped"]
        assert held > 0  # frames the dead processor held, and frames announced to nobody since
        second = _processor(tmp_path, "fp2", ready, release, True, {})
        try:
            st = wait_for(lambda: (s := rx.status())["source"]["state"] == "done" and s["buffers"]["mapped"] == 0
                          and s, timeout=60, what="the stream to finish through the second processor")
            assert st["frames"]["reannounced"] >= held and st["frames"]["held_unheard"] == 0
            assert st["frames"]["released"] + st["frames"]["bad_releases"] >= n
            assert "announced again to the next processor" in rx.log()
            wait_for(lambda: second.status()["rec"]["queue"]["size"] == 0, what="its queue empty")
            got = set().union(*map(set, _recorded(tmp_path)))
            missing = sorted(set(range(n)) - got)
            assert not missing, (missing[:20], len(missing), [len(r) for r in _recorded(tmp_path)], st["frames"])
        finally:
            second.stop()
    finally:
        rx.stop()


def test_killed_receiver_leaves_the_processor_up_and_it_resumes_with_the_next(tmp_path):
    (tmp_path / "rec.py").write_text(RECORDER)
    ready, release, name = free_tcp_endpoint(), free_tcp_endpoint(), unique_shm_name()
    source = {"type": "simulated", "shape": [8, 8], "frames": 20}

    def receiver(tag):
        d = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / f"{tag}.log")
        d.ok("configure", {"shared_buffer_name": name, "source": source})
        return d

    rx = receiver("rx1")
    fp = _processor(tmp_path, "fp", ready, release, True, {})
    try:
        wait_for(lambda: fp.status()["shared_memory"]["configured"], what="the first segment mapped")
        wait_for(lambda: rx.status()["ready_subscribers"] == 1, what="the subscription")
        rx.ok("execute", {"source": {"command": "start"}})
        wait_for(lambda: fp.status()["rec"]["frames_processed"] == 20, what="the first acquisition")
        os.kill(rx.proc.pid, signal.SIGKILL)
        rx.proc.wait(10)
        rx.stop()
        st = wait_for(lambda: (s := fp.status())["shared_memory"]["receiver_lost"] == 1 and s, what="the loss seen")
        assert st["shared_memory"]["receiver_connected"] is False
        assert "went away" in fp.log()
        rx = receiver("rx2")  # the stale segment of the killed one is replaced under the same name
        wait_for(lambda: fp.status()["shared_memory"]["receiver_connected"], what="the new receiver")
        wait_for(lambda: rx.status()["ready_subscribers"] == 1, what="the processor to subscribe again")
        rx.ok("execute", {"source": {"command": "start"}})
        wait_for(lambda: fp.status()["rec"]["frames_processed"] == 40, what="the next acquisition")
        assert fp.proc.poll() is None
        st = rx.status()
        wait_for(lambda: rx.status()["frames"]["released"] == 20, what="releases to the new receiver")
        assert st["frames"]["bad_releases"] == 0
    finally:
        fp.stop()
        rx.stop()


def test_hung_plugin_is_reported_stuck_and_shutdown_is_bounded(tmp_path):
    (tmp_path / "rec.py").write_text(RECORDER)
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    rx = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / "rx.log")
    fp = _processor(tmp_path, "fp", ready, release, True, {"hang_at": 3},
                    ["--stuck-after", "1", "--shutdown-timeout", "2"])
    try:
        rx.ok("configure", {"shared_buffer_name": unique_shm_name(),
                            "source": {"type": "simulated", "shape": [8, 8], "frames": 10}})
        wait_for(lambda: rx.status()["ready_subscribers"] == 1, what="the subscription")
        wait_for(lambda: fp.status()["shared_memory"]["configured"], what="the segment mapped")
        rx.ok("execute", {"source": {"command": "start"}})
        st = wait_for(lambda: (s := fp.status())["rec"].get("stuck") and s, what="the plugin shown stuck")
        assert st["rec"]["stuck"]["frame"] == 3 and st["rec"]["stuck"]["seconds"] >= 1
        assert any("rec: stuck on frame 3" in w for w in st["warning"])
        t0 = time.monotonic()
        reply = fp.request("shutdown", timeout=20)
        assert reply.msg_type == "ack"
        assert fp.proc.wait(20) == 0 and time.monotonic() - t0 < 15
        assert "abandoning" in fp.log()
    finally:
        fp.stop()
        rx.stop()


def test_sigterm_mid_run_closes_the_file_with_every_acknowledged_frame_and_writes_xpcs_results(tmp_path):
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    rx = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / "rx.log")
    fp = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        rx.ok("configure", {"shared_buffer_name": unique_shm_name(),
                            "source": {"type": "simulated", "shape": [32, 32], "frames": 0, "rate": 500}})
        fp.ok("configure", {"fr_setup": {"fr_ready_cnxn": ready, "fr_release_cnxn": release},
                            "plugin": {"load": [{"index": "hdf", "library": "hdf5_writer"},
                                                {"index": "xpcs", "library": "xpcs"}],
                                       "connect": [{"index": "hdf", "connection": "frame_receiver"},
                                                   {"index": "xpcs", "connection": "frame_receiver"}]},
                            "xpcs": {"num_bufs": 8, "output": str(tmp_path / "{acquisition_id}_results.hdf")},
                            "hdf": {"file": {"path": str(tmp_path), "prefix": "term"}, "frames": 0,
                                    "dataset": {"data": {"datatype": "uint16", "dims": [32, 32]}}}})
        fp.ok("execute", {"hdf": {"command": "start_writing"}})
        wait_for(lambda: rx.status()["ready_subscribers"] == 1, what="the subscription")
        wait_for(lambda: fp.status()["shared_memory"]["configured"], what="the segment mapped")
        rx.ok("execute", {"source": {"command": "start"}})
        wait_for(lambda: fp.status()["hdf"]["frames_written"] > 100, what="frames written")
        fp.proc.send_signal(signal.SIGTERM)
        assert fp.proc.wait(30) == 0
        rx.ok("execute", {"source": {"command": "stop"}})
        released = rx.status()["frames"]["released"]
        # frames announced while it stopped are released unprocessed and counted (frames/discarded, logged)
        log = fp.log()
        discarded = int(log.split("frames discarded at shutdown: ", 1)[1].split()[0])
        released -= discarded
        (path,) = tmp_path.glob("term*.h5")  # renamed: closed cleanly, no .tmp left
        assert not list(tmp_path.glob("*.tmp"))
        with h5py.File(path, "r") as f:
            assert f["/entry/instrument/detector/data"].shape[0] == released
        (result,) = tmp_path.glob("*_results.hdf")  # the correlator finished the interrupted acquisition
        with h5py.File(result, "r") as f:
            assert len(f) > 0
        assert "stopping mid-acquisition" in fp.log()
    finally:
        fp.stop()
        rx.stop()
