"""odin-data's own meta_writer follows a framechain acquisition: the processor publishes odin's Acquisition
items on its meta_endpoint and odin's MetaListener writes ``<prefix>_meta.h5`` with one entry per frame."""

from __future__ import annotations

import socket
import subprocess
import time

import h5py
import numpy as np
import pytest
from harness import stop_process, wait_for
from odin_python import odin_venv

from framechain.ipc import IpcClient, free_tcp_endpoint

HDF = ("FileWriterPlugin", "framechain.plugins.hdf5_writer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ref", ["1.12.0", "main"])
def test_odin_meta_writer_writes_a_framechain_acquisition(pipeline, tmp_path, ref):
    venv = odin_venv(ref)
    n, acq = 25, "meta_run"
    meta, ctrl_port = free_tcp_endpoint(), _free_port()
    log = open(tmp_path / "meta_writer.log", "w")
    mw = subprocess.Popen([str(venv / "bin" / "meta_writer"), "-c", str(ctrl_port), "-d", meta, "-l", "DEBUG"],
                          stdout=log, stderr=subprocess.STDOUT)
    client = IpcClient(f"tcp://127.0.0.1:{ctrl_port}", timeout=10)
    try:
        reply = client.request("configure", {"acquisition_id": acq, "directory": str(tmp_path),
                                             "file_prefix": acq})
        assert reply.msg_type == "ack", reply.params
        pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": n, "acquisition_id": acq})
        pipeline.processor.ok("configure", {"meta_endpoint": meta})
        (tmp_path / "data").mkdir()
        pipeline.setup_processor([("hdf", *HDF, "frame_receiver",
                                   {"file": {"path": str(tmp_path / "data")}, "frames": n,
                                    "dataset": {"data": {"datatype": "uint16", "dims": [16, 16]}}})])
        pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        time.sleep(1.0)  # the meta_writer's SUB connects to the processor's PUB asynchronously
        pipeline.start()
        pipeline.wait_done()
        st = wait_for(lambda: (s := pipeline.plugin_status("hdf"))["frames_written"] == n and not s["writing"] and s,
                      what="the acquisition written")

        def finished():
            status = client.request("status").params["acquisitions"].get(acq, {})
            return status if status.get("full_file_path") and status.get("writing") is False else None
        status = wait_for(finished, timeout=30, what="odin's meta_writer to finish the acquisition")
        assert status["written"] == n, status
        with h5py.File(tmp_path / f"{acq}_meta.h5", "r") as f:
            assert sorted(f) == sorted(["frame", "offset", "create_duration", "write_duration", "flush_duration",
                                        "close_duration"])
            np.testing.assert_array_equal(np.sort(f["frame"][:n]), np.arange(n))
            np.testing.assert_array_equal(f["offset"][:n], np.arange(n))
            assert (f["write_duration"][:n] >= 0).all() and f["create_duration"].size >= 1
        assert st["frames_written"] == n and pipeline.processor.status()["meta"]["dropped"] == 0
    finally:
        try:
            client.request("shutdown", timeout=5)
        except TimeoutError:
            pass
        client.close()
        stop_process(mw, 10, terminate=True)
        log.close()
