"""odin-data's own C++ frameReceiver (DummyUDP decoder), fed by odin's frameSimulator, hands its buffers to
framechain's processor (fr_setup/decoder dummy_udp): every frame bit-exact into framechain's HDF5 writer,
odin's counters and framechain's agreeing."""

import json
import os
import subprocess
import textwrap

import h5py
import numpy as np

from harness import Daemon, free_tcp_endpoint, unique_shm_name, wait_for
from odin_tools import frame_simulator, free_udp_port

from framechain.ipc import IpcClient

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
            self.push(frame)

        def status(self):
            return {"good": self.good, "bad": self.bad}
""")


def test_odin_frame_receiver_feeds_the_framechain_processor(tmp_path, odin_prefix):
    n, width, height, packet = 100, 1400, 1024, 8000
    port, ready, release, fr_ctrl = free_udp_port(), free_tcp_endpoint(), free_tcp_endpoint(), free_tcp_endpoint()
    packets = -(-width * height * 2 // packet)
    (tmp_path / "fr.json").write_text(json.dumps([{
        "frame_ready_endpoint": ready, "frame_release_endpoint": release, "decoder_type": "DummyUDP",
        "decoder_path": str(odin_prefix / "lib"), "rx_ports": str(port), "rx_recv_buffer_size": 4 << 20,
        "shared_buffer_name": unique_shm_name(), "max_buffer_mem": 100_000_000,
        "decoder_config": {"frame_timeout_ms": 1000, "udp_packets_per_frame": packets, "udp_packet_size": packet}}]))
    plugin = tmp_path / "odin_pattern.py"
    plugin.write_text(CHECKER)
    (tmp_path / "out").mkdir()
    log = open(tmp_path / "odin-fr.log", "w")
    fr = subprocess.Popen([str(odin_prefix / "bin" / "frameReceiver"), "--ctrl", fr_ctrl,
                           "-c", str(tmp_path / "fr.json")],
                          env=dict(os.environ, LD_LIBRARY_PATH=str(odin_prefix / "lib")), stdout=log,
                          stderr=subprocess.STDOUT)
    odin = IpcClient(fr_ctrl, timeout=5)
    proc = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "processor.log")
    try:
        wait_for(lambda: odin.request("status").params.get("frames") is not None, what="odin's frameReceiver")
        proc.ok("configure", {"fr_setup": {"fr_ready_cnxn": ready, "fr_release_cnxn": release,
                                           "decoder": {"type": "dummy_udp", "shape": [height, width]}}})
        for index, name, library, upstream, cfg in (
                ("odin", "OdinPattern", str(plugin), "frame_receiver", None),
                ("hdf", "FileWriterPlugin", "hdf5_writer", "odin",
                 {"file": {"path": str(tmp_path / "out"), "prefix": "odin"}, "frames": n,
                  "acquisition_id": "fromodin",
                  "dataset": {"data": {"datatype": "uint16", "dims": [height, width]}}})):
            proc.ok("configure", {"plugin": {"load": {"index": index, "name": name, "library": library}}})
            if cfg:
                proc.ok("configure", {index: cfg})
            proc.ok("configure", {"plugin": {"connect": {"index": index, "connection": upstream}}})
        wait_for(lambda: proc.status()["shared_memory"]["configured"], what="the processor to map odin's segment")
        proc.ok("execute", {"hdf": {"command": "start_writing"}})
        frame_simulator(odin_prefix, port, n, width, height, packet, 0.03)
        wait_for(lambda: proc.status()["hdf"]["frames_written"] == n, timeout=60, what="every frame written")
        wait_for(lambda: odin.request("status").params["frames"]["released"] == n, what="odin to get every buffer back")
        st, fr_st = proc.status(), odin.request("status").params
        assert fr_st["frames"]["received"] == n and fr_st["frames"]["timedout"] == 0
        assert st["frames"]["received"] == n and st["frames"]["bad"] == 0 and st["frames"]["released"] == n
        assert st["odin"]["good"] == n and st["odin"]["bad"] == 0
        assert st["shared_memory"]["decoder"]["type"] == "dummy_udp"
        wait_for(lambda: not proc.status()["hdf"]["writing"], what="the writer to close its file")
        (path,) = (tmp_path / "out").glob("odin_fromodin*.h5")
        want = (np.arange(width * height, dtype=np.uint64) & 0xFFFF).astype(np.uint16).reshape(height, width)
        with h5py.File(path, "r") as f:
            data = f["/entry/instrument/detector/data"]
            assert data.shape == (n, height, width)
            for i in range(n):
                np.testing.assert_array_equal(data[i], want)
            np.testing.assert_array_equal(f["/entry/instrument/detector/parameters/frame_number"][...], np.arange(n))
    finally:
        proc.stop()
        odin.close()
        fr.terminate()
        fr.wait(10)
