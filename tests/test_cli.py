"""``framechain ctl`` and ``framechain run`` driven through main(argv), against real daemons."""

import json

import pytest
from harness import Daemon

from client.cli import main
from ipc import free_tcp_endpoint


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path_factory.mktemp("ctl") / "processor.log")
    yield d
    d.stop()


def test_status_prints_the_reply_as_json(processor, capsys):
    assert main(["ctl", "--endpoint", processor.ctrl, "status"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["msg_type"] == "ack" and reply["msg_val"] == "status"
    assert reply["params"]["plugins"]["names"] == []


def test_configure_from_text_and_file_then_execute_and_version(processor, capsys, tmp_path):
    load = {"plugin": {"load": {"index": "s", "name": "SumPlugin", "library": "plugins.sum"}}}
    assert main(["ctl", "--endpoint", processor.ctrl, "configure", json.dumps(load)]) == 0
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"s": {"enabled": False}}))
    assert main(["ctl", "--endpoint", processor.ctrl, "configure", "-f", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["ctl", "--endpoint", processor.ctrl, "request-configuration"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["s"] == {"enabled": False}
    assert main(["ctl", "--endpoint", processor.ctrl, "version"]) == 0
    assert main(["ctl", "--endpoint", processor.ctrl, "reset-statistics"]) == 0
    capsys.readouterr()
    assert main(["ctl", "--endpoint", processor.ctrl, "execute", "s", "explode"]) == 1
    assert "nack: SumPlugin 's' has no command 'explode'" in capsys.readouterr().err


def test_nack_exits_1_with_error_on_stderr(processor, capsys):
    assert main(["ctl", "--endpoint", processor.ctrl, "configure", '{"nosuch": 1}']) == 1
    err = capsys.readouterr().err
    assert "unknown configure key or plugin index 'nosuch'" in err


def test_bad_json_argument_exits_2(processor, capsys):
    assert main(["ctl", "--endpoint", processor.ctrl, "configure", "{oops"]) == 2
    assert "framechain ctl:" in capsys.readouterr().err


def test_timeout_exits_1(capsys):
    dead = free_tcp_endpoint()
    assert main(["ctl", "--endpoint", dead, "--timeout", "0.3", "status"]) == 1
    assert f"no reply from {dead}" in capsys.readouterr().err


def test_run_launcher_end_to_end(tmp_path, capsys):
    cfg = {"receiver": {"source": {"type": "simulated", "pattern": "speckle", "shape": [16, 16],
                                   "frames": 150, "correlation_time": 5.0, "acquisition_id": "scan7"}},
           "processor": [{"plugin": {"load": [{"index": "sum", "name": "SumPlugin", "library": "plugins.sum"},
                                              {"index": "hdf", "name": "FileWriterPlugin",
                                               "library": "plugins.hdf5_writer"}],
                                     "connect": [{"index": "sum", "connection": "frame_receiver"},
                                                 {"index": "hdf", "connection": "sum"}]}},
                         {"hdf": {"file": {"path": str(tmp_path), "prefix": "run"}, "frames": 150,
                                  "dataset": {"data": {"datatype": "uint16", "dims": [16, 16]}}}}],
           "start": [{"hdf": {"command": "start_writing"}}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    assert main(["run", str(path), "--no-progress", "--log-dir", str(tmp_path / "logs"), "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "frames          received 150, released 150, dropped 0" in out
    assert "plugin sum       processed 150" in out
    assert "plugin hdf       processed 150, written 150" in out
    assert "lost frames     0 (none)" in out
    written = tmp_path / "run_scan7_000001.h5"   # the summary names the file the writer closed
    assert f"output          {written}" in out and written.is_file()


def test_run_with_bad_plugin_reports_the_nack(tmp_path, capsys):
    cfg = {"receiver": {"source": {"type": "simulated", "shape": [8, 8], "frames": 5}},
           "processor": [{"plugin": {"load": {"index": "x", "name": "Nope", "library": "plugins.nothere"}}}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    assert main(["run", str(path), "--no-progress", "--log-dir", str(tmp_path / "logs")]) == 1
    assert "no plugin module 'plugins.nothere'" in capsys.readouterr().err


def test_run_rejects_unknown_config_keys(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"receiver": {}, "processr": []}))
    assert main(["run", str(path)]) == 2
    assert "unknown key(s) ['processr']" in capsys.readouterr().err


def test_run_ctrl_c_stops_everything_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    cfg = {"receiver": {"shared_buffer_name": f"fcctrlc_{os.getpid()}",
                        "source": {"type": "simulated", "shape": [8, 8], "frames": 100000, "rate": 200}},
           "processor": [{"plugin": {"load": {"index": "d", "name": "DummyPlugin", "library": "plugins.dummy"},
                                     "connect": {"index": "d", "connection": "frame_receiver"}}}]}
    path = tmp_path / "long.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "client.cli", "run", str(path), "--no-progress",
                             "--log-dir", str(tmp_path / "logs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    shm = f"/dev/shm/fcctrlc_{os.getpid()}"
    deadline = time.monotonic() + 30
    while not os.path.exists(shm) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "(stopped)" in out and "lost frames     0 (none)" in out
    assert not os.path.exists(shm)


def test_run_with_fixed_endpoints(tmp_path, capsys):
    from client.launcher import control_endpoints
    eps = {k: free_tcp_endpoint() for k in ("receiver", "ready", "release", "processor")}
    cfg = {"endpoints": eps,
           "receiver": {"source": {"type": "simulated", "shape": [8, 8], "frames": 20}},
           "processor": [{"plugin": {"load": {"index": "d", "name": "DummyPlugin", "library": "plugins.dummy"},
                                     "connect": {"index": "d", "connection": "frame_receiver"}}}]}
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps(cfg))
    assert control_endpoints(cfg) == {"receiver": eps["receiver"], "processor": eps["processor"]}
    assert main(["run", str(path), "--no-progress", "--log-dir", str(tmp_path / "logs")]) == 0
    captured = capsys.readouterr()
    assert f"fr:{eps['receiver']},fp:{eps['processor']}" in captured.err
    assert "received 20, released 20" in captured.out
    path.write_text(json.dumps({**cfg, "endpoints": {"recever": "tcp://127.0.0.1:1"}}))
    assert main(["run", str(path)]) == 2
    assert "'endpoints' must map some of" in capsys.readouterr().err
