"""odin-data's own odin-control adapters (FrameProcessorAdapter, FrameReceiverAdapter) drive framechain's
daemons through a real odin-control 1.x server: odin-data 1.12.0 and odin-data main, each in a venv of its own
(``odin_python.py``), talking HTTP to the server and IpcMessages to framechain."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import pytest
from harness import wait_for
from odin_python import odin_venv

HDF = ("FileWriterPlugin", "framechain.plugins.hdf5_writer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OdinServer:
    """odin-control serving odin-data's adapters for one framechain processor and one receiver."""

    def __init__(self, venv: Path, fp_ctrl: str, fr_ctrl: str, log: Path, framechain: bool = False) -> None:
        self.port = _free_port()
        cfg = log.with_suffix(".cfg")
        ep = lambda e: e.removeprefix("tcp://")  # noqa: E731  odin's adapters take host:port
        cfg.write_text(textwrap.dedent(f"""
            [server]
            debug_mode = 0
            http_port = {self.port}
            http_addr = 127.0.0.1
            adapters = fp, fr{", framechain" if framechain else ""}

            [tornado]
            logging = debug

            [adapter.fp]
            module = odin_data.control.frame_processor_adapter.FrameProcessorAdapter
            endpoints = {ep(fp_ctrl)}
            update_interval = 0.2

            [adapter.fr]
            module = odin_data.control.frame_receiver_adapter.FrameReceiverAdapter
            endpoints = {ep(fr_ctrl)}
            update_interval = 0.2

            [adapter.framechain]
            module = framechain.client.rest_adapter.FramechainAdapter
            endpoints = fr:{fr_ctrl}, fp:{fp_ctrl}
            live_endpoint = none
            xpcs_endpoint = none
        """))
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([str(venv / "bin" / "odin_control"), "--config", str(cfg)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._up(), timeout=30, what="odin-control to serve")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"odin-control exited:\n{self.log_path.read_text()}")
        try:
            self.get("fp/count")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/0.1/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                return err.code, json.loads(text or b"{}")
            except ValueError:  # tornado's own HTML page for a 500
                return err.code, {"body": text.decode(errors="replace")}

    def get(self, path: str) -> dict:
        code, body = self._call("GET", path)
        assert code == 200, (path, code, body)
        return body

    def value(self, path: str) -> object:
        """The value at ``path``, or None while the adapter's tree does not have it yet."""
        code, body = self._call("GET", path)
        return body.get(path.rsplit("/", 1)[-1]) if code == 200 else None

    def put(self, path: str, body: object) -> tuple[int, dict]:
        return self._call("PUT", path, body)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.mark.parametrize("ref", ["1.12.0", "main"])
def test_odin_adapters_drive_framechain(pipeline, tmp_path, ref):
    venv = odin_venv(ref)
    n = 20
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": n, "acquisition_id": "adapter"})
    pipeline.setup_processor([("hdf", *HDF, "frame_receiver",
                               {"file": {"path": str(tmp_path)}, "frames": n,
                                "dataset": {"data": {"datatype": "uint16", "dims": [16, 16]}}})])
    server = OdinServer(venv, pipeline.processor.ctrl, pipeline.receiver.ctrl, tmp_path / f"odin-{ref}.log")
    try:
        # GET status and config, as the adapters read them from framechain
        wait_for(lambda: server.value("fp/0/status/hdf/frames_max") == n, what="the processor's status")
        wait_for(lambda: server.value("fp/0/config/hdf/frames") == n, what="the processor's config")
        assert server.value("fp/0/command/hdf/allowed") == ["start_writing", "stop_writing"]
        fr = "fr/0/status/receiver/" if ref == "main" else "fr/0/status/"  # main shows only the listed parts
        wait_for(lambda: server.value(fr + "source/state") == "idle", what="the receiver's status")
        assert server.value("fr/0/command/source/allowed") == ["start", "stop"]
        if ref == "main":
            # odin-data main builds a setter from framechain's metadata (access_mode rw) for every writable
            # parameter, but its setter_func sends a Python set, {path[-1], value}, to send_configuration, which
            # calls .items() on it: every config PUT is a 500 before any message leaves the adapter, whatever
            # daemon is behind it (odin_data/control/odin_data_controller.py, setter_func)
            code, _ = server.put("fp/0/config/hdf", {"acquisition_id": "via_odin"})
            assert code == 500
            assert pipeline.processor.ok("request_configuration")["hdf"]["acquisition_id"] == ""
            assert server.value("fp/0/config/hdf/acquisition_id") == ""
            pipeline.processor.ok("configure", {"hdf": {"acquisition_id": "via_odin"}})
        else:
            # PUT a plugin parameter: it reaches framechain's writer as a configure
            code, body = server.put("fp/0/config/hdf", {"acquisition_id": "via_odin"})
            assert code == 200, body
            wait_for(lambda: pipeline.processor.ok("request_configuration")["hdf"]["acquisition_id"] == "via_odin",
                     what="the PUT to reach the processor")
        wait_for(lambda: server.value("fp/0/config/hdf/acquisition_id") == "via_odin",
                 what="the adapter to read the new value back")
        # start writing, start the receiver's source, all through the adapters
        code, body = server.put("fp/0/command/hdf/execute", "start_writing")
        assert code == 200, body
        wait_for(lambda: pipeline.plugin_status("hdf")["writing"], what="start_writing through the adapter")
        code, body = server.put("fr/0/command/source/execute", "start")
        assert code == 200, body
        pipeline.wait_done()
        st = wait_for(lambda: (s := pipeline.plugin_status("hdf"))["frames_written"] == n and not s["writing"] and s,
                      what="the acquisition written")
        wait_for(lambda: server.value("fp/0/status/hdf/frames_written") == n,
                 what="the adapter to report the frames written")
        wait_for(lambda: server.value(fr + "frames/released") == n, what="the receiver's releases")
        with h5py.File(st["last_file_path"], "r") as f:
            assert f["/entry/instrument/detector/data"].shape == (n, 16, 16)
        # stop_writing is taken too (a no-op now the acquisition is complete)
        code, body = server.put("fp/0/command/hdf/execute", "stop_writing")
        assert code == 200, body
    finally:
        server.close()


def test_framechain_adapter_beside_odins_in_one_odin_control_1x(pipeline, tmp_path):
    """One odin-control 1.x server hosts odin-data's adapters and framechain's own (its import shim)."""
    venv = odin_venv("1.12.0")
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 10})
    pipeline.setup_processor([("sum", "SumPlugin", "framechain.plugins.sum", "frame_receiver")])
    server = OdinServer(venv, pipeline.processor.ctrl, pipeline.receiver.ctrl, tmp_path / "both.log",
                        framechain=True)
    try:
        wait_for(lambda: server.value("fp/0/status/sum/frames_processed") == 0, what="odin's processor adapter")
        wait_for(lambda: server.value("framechain/status/fp0/connected") is True, what="framechain's adapter")
        code, body = server.put("framechain/execute/fr0/source", {"command": "start"})
        assert code == 200, body
        wait_for(lambda: pipeline.plugin_status("sum")["frames_processed"] == 10, what="frames through the chain")
        wait_for(lambda: server.value("fp/0/status/sum/frames_processed") == 10, what="odin's adapter to see them")
    finally:
        server.close()


def test_main_adapters_config_put_fails_against_odins_own_frame_processor(tmp_path, odin_prefix):
    """The config PUT that odin-data main's adapters cannot make work for framechain fails the same way against
    odin's own C++ frameProcessor: the fault is in the adapter, not in the daemon behind it."""
    import os

    from framechain.ipc import IpcClient, free_tcp_endpoint

    venv = odin_venv("main")
    ctrl = free_tcp_endpoint()
    env = {**os.environ, "LD_LIBRARY_PATH": str(odin_prefix / "lib")}
    log = open(tmp_path / "odin-fp.log", "w")
    fp = subprocess.Popen([str(odin_prefix / "bin" / "frameProcessor"), "--ctrl", ctrl], stdout=log,
                          stderr=subprocess.STDOUT, env=env)
    client = IpcClient(ctrl, timeout=10)
    server = None
    try:
        def answers() -> bool:
            try:
                return client.request("status", timeout=0.5).msg_type == "ack"
            except TimeoutError:
                return False
        wait_for(answers, what="odin's frameProcessor")
        reply = client.request("configure", {"plugin": {"load": {
            "index": "hdf", "name": "FileWriterPlugin", "library": str(odin_prefix / "lib" / "libHdf5Plugin.so")}}})
        assert reply.msg_type == "ack", reply.params
        server = OdinServer(venv, ctrl, free_tcp_endpoint(), tmp_path / "odin-main-cpp.log")
        wait_for(lambda: server.value("fp/0/config/hdf/acquisition_id") == "", what="odin's processor config")
        code, _ = server.put("fp/0/config/hdf", {"acquisition_id": "via_odin"})
        assert code == 500
        assert "'set' object has no attribute 'items'" in (tmp_path / "odin-main-cpp.log").read_text()
        assert client.request("request_configuration").params["hdf"]["acquisition_id"] == ""
    finally:
        if server is not None:
            server.close()
        client.close()
        fp.terminate()
        fp.wait(10)
        log.close()
