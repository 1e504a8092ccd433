"""The processor loads plugin code only from where it was told at start (--plugin-path): built-in and installed
plugins always, files and modules elsewhere never, and a refused file's code never runs."""

import os
import subprocess
import sys

import pytest
from harness import Daemon, stop_process, wait_for

from framechain.ipc import IpcClient, free_tcp_endpoint

PLUGIN = """
open({marker!r}, "a").write("imported\\n")
from framechain.frameprocessor import FrameProcessorPlugin

class Mine(FrameProcessorPlugin):
    def process_frame(self, frame):
        self.push(frame)
"""


@pytest.fixture
def dirs(tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "elsewhere"
    for d in (allowed, other, allowed / "pkg"):
        d.mkdir()
    for d in (allowed, other):
        (d / "mine.py").write_text(PLUGIN.format(marker=str(d / "IMPORTED")))
    (allowed / "pkg" / "__init__.py").write_text("")
    (allowed / "pkg" / "deep.py").write_text(PLUGIN.format(marker=str(allowed / "IMPORTED_DEEP")))
    os.symlink(other / "mine.py", allowed / "escape.py")  # inside by name, outside in fact
    return allowed, other


@pytest.fixture
def processor(tmp_path, dirs):
    d = Daemon("processor", ["--plugin-path", str(dirs[0])], free_tcp_endpoint(), tmp_path / "fp.log")
    yield d
    d.stop()


def _load(processor, index, library, name="Mine"):
    return processor.request("configure", {"plugin": {"load": {"index": index, "name": name, "library": library}}})


def test_files_and_modules_on_the_plugin_path_load(processor, dirs):
    allowed, _ = dirs
    assert _load(processor, "a", str(allowed / "mine.py")).msg_type == "ack"
    assert _load(processor, "b", "pkg.deep").msg_type == "ack"       # a dotted module found in the directory
    assert _load(processor, "c", "pkg.deep:Mine", None).msg_type == "ack"
    assert _load(processor, "d", "sum", None).msg_type == "ack"      # built-ins need no path
    assert _load(processor, "e", "framechain.plugins.dummy", "DummyPlugin").msg_type == "ack"
    assert processor.status()["plugins"]["names"] == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("library", ["elsewhere", "escape", "dotted", "stdlib", "traversal"])
def test_anything_else_is_refused_before_its_code_runs(processor, dirs, library):
    allowed, other = dirs
    lib = {"elsewhere": str(other / "mine.py"), "escape": str(allowed / "escape.py"), "dotted": "hypothesis.strategies",
           "stdlib": "json", "traversal": str(allowed / ".." / "elsewhere" / "mine.py")}[library]
    r = _load(processor, "x", lib)
    assert r.msg_type == "nack" and "not on this processor's plugin path" in r.error and str(allowed) in r.error
    assert "--plugin-path" in r.error
    assert not (other / "IMPORTED").exists()  # the refused file never ran
    assert processor.status()["plugins"]["names"] == []


def test_without_a_plugin_path_only_built_in_and_installed_plugins_load(tmp_path, dirs):
    # a processor started without --plugin-path at all (the harness adds one, so start it directly)
    ctrl = free_tcp_endpoint()
    proc = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "processor", "--ctrl", ctrl],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = IpcClient(ctrl, timeout=10)
    try:
        def up():
            try:
                return client.request("status", timeout=0.5).msg_type == "ack"
            except TimeoutError:
                return False
        wait_for(up, what="the processor")
        r = client.request("configure", {"plugin": {"load": {"index": "a", "name": "Mine",
                                                              "library": str(dirs[0] / "mine.py")}}})
        assert r.msg_type == "nack" and "(none given)" in r.error
        assert not (dirs[0] / "IMPORTED").exists()
        r = client.request("configure", {"plugin": {"load": {"index": "s", "library": "sum"}}})
        assert r.msg_type == "ack"
        client.request("shutdown")
    finally:
        client.close()
        stop_process(proc, 10)


def test_a_plugin_path_that_is_not_a_directory_stops_the_start(tmp_path):
    r = subprocess.run([sys.executable, "-m", "framechain.client.cli", "processor", "--ctrl", free_tcp_endpoint(),
                        "--plugin-path", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is not a directory" in r.stderr


def test_writers_stay_under_the_data_roots(tmp_path):
    """--data-root confines where plugins write: the HDF5 writer's file/path and the XPCS result file."""
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    d = Daemon("processor", ["--data-root", str(root)], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        d.ok("configure", {"plugin": {"load": [{"index": "hdf", "library": "hdf5_writer"},
                                               {"index": "xpcs", "library": "xpcs"}]}})
        d.ok("configure", {"hdf": {"file": {"path": str(root)}}})
        for path in (str(outside), str(root / ".." / "elsewhere")):
            r = d.request("configure", {"hdf": {"file": {"path": path}}})
            assert r.msg_type == "nack" and "outside this processor's data roots" in r.error, r.error
        assert d.ok("request_configuration")["hdf"]["file"]["path"] == str(root)
        d.ok("configure", {"xpcs": {"output": str(root / "{acquisition_id}_results.hdf")}})
        r = d.request("configure", {"xpcs": {"output": str(outside / "r.hdf")}})
        assert r.msg_type == "nack" and "outside this processor's data roots" in r.error
    finally:
        d.stop()
