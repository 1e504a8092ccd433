"""``framechain ctl`` and ``framechain run`` driven through main(argv), against real daemons."""

import json
import os
import signal
import subprocess
import sys

import pytest
from harness import Daemon, wait_for
from test_pipeline import CHECKER

from framechain.benchmarks import Figure
from framechain.client.bench import format_table
from framechain.client.cli import main
from framechain.client.launcher import control_endpoints
from framechain.ipc import IpcClient, IpcTimeout, free_tcp_endpoint


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
    load = {"plugin": {"load": {"index": "s", "name": "SumPlugin", "library": "framechain.plugins.sum"}}}
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
           "processor": [{"plugin": {"load": [{"index": "sum", "name": "SumPlugin", "library": "framechain.plugins.sum"},
                                              {"index": "hdf", "name": "FileWriterPlugin",
                                               "library": "framechain.plugins.hdf5_writer"}],
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
           "processor": [{"plugin": {"load": {"index": "x", "name": "Nope", "library": "framechain.plugins.nothere"}}}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    assert main(["run", str(path), "--no-progress", "--log-dir", str(tmp_path / "logs")]) == 1
    assert "no plugin module 'framechain.plugins.nothere'" in capsys.readouterr().err


def test_run_rejects_unknown_config_keys(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"receiver": {}, "processr": []}))
    assert main(["run", str(path)]) == 2
    assert "unknown key(s) ['processr']" in capsys.readouterr().err


def test_run_with_fixed_endpoints(tmp_path, capsys):
    eps = {k: free_tcp_endpoint() for k in ("receiver", "ready", "release", "processor")}
    cfg = {"endpoints": eps,
           "receiver": {"source": {"type": "simulated", "shape": [8, 8], "frames": 20}},
           "processor": [{"plugin": {"load": {"index": "d", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
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


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_long_run(tmp_path, plugin: dict, extra_processor: list | None = None):
    """A `framechain run` subprocess on fixed endpoints; returns (proc, daemon pids, shm path)."""

    name = f"fcsig_{os.getpid()}_{tmp_path.name[-12:]}"
    eps = {k: free_tcp_endpoint() for k in ("receiver", "ready", "release", "processor")}
    cfg = {"endpoints": eps,
           "receiver": {"shared_buffer_name": name,
                        "source": {"type": "simulated", "shape": [8, 8], "frames": 100000, "rate": 200}},
           "processor": [{"plugin": {"load": plugin, "connect": {"index": "d", "connection": "frame_receiver"}}},
                         *(extra_processor or [])]}
    path = tmp_path / "long.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "run", str(path), "--no-progress",
                             "--log-dir", str(tmp_path / "logs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    def status(kind: str) -> dict | None:
        with IpcClient(eps[kind], timeout=1) as c:
            try:
                return c.request("status").params
            except IpcTimeout:  # not up yet
                return None

    pids = {kind: wait_for(lambda kind=kind: (status(kind) or {})["process"]["pid"], timeout=30,
                           what=f"the {kind} to answer") for kind in ("receiver", "processor")}
    wait_for(lambda: (status("receiver") or {})["frames"]["released"] > 10, timeout=30, what="frames to flow")
    return proc, pids, f"/dev/shm/{name}"


def _read_until(stream, text: str) -> bool:
    """Read lines until one contains ``text`` (True) or the stream ends (False)."""
    return any(text in line for line in stream)


def _kill_leftovers(pids: dict) -> None:
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_run_ctrl_c_or_sigterm_stops_everything_cleanly(tmp_path, sig, code, word):
    proc, pids, shm = _start_long_run(tmp_path, {"index": "d", "name": "DummyPlugin", "library": "framechain.plugins.dummy"})
    try:
        assert os.path.exists(shm)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert f"{word}; stopping the source and draining" in err
        assert "(stopped)" in out and "lost frames     0 (none)" in out
        assert not any(_alive(pid) for pid in pids.values())
        assert not os.path.exists(shm)
    finally:
        _kill_leftovers(pids)


def test_run_repeated_ctrl_c_during_shutdown_still_stops_the_daemons(tmp_path):
    (tmp_path / "checker.py").write_text(CHECKER)
    # a slow plugin with a deep queue: draining at shutdown would take minutes
    plugin = {"index": "d", "name": "RampChecker", "library": str(tmp_path / "checker.py"), "queue_size": 1000}
    proc, pids, shm = _start_long_run(tmp_path, plugin, [{"d": {"delay": 0.5}}])
    try:
        proc.send_signal(signal.SIGINT)
        assert _read_until(proc.stderr, "interrupted")  # the launcher is now stopping the daemons
        proc.send_signal(signal.SIGINT)  # terminate them (they still drain: SIGTERM is a clean stop)
        assert _read_until(proc.stderr, "terminating the daemons")
        proc.send_signal(signal.SIGINT)  # kill them
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "killing the daemons" in err and "Traceback" not in err
        assert not any(_alive(pid) for pid in pids.values())
        assert not os.path.exists(shm)  # the killed receiver's segment is unlinked by the launcher
    finally:
        _kill_leftovers(pids)


def test_bench_table_shows_gb_per_s_next_to_frames_per_s():
    f = Figure("pipeline", "zero-copy 1024x1024 uint16", 2000.0, "frames/s", 4000.0, "numpy copy",
               extra="4.19 GB/s")
    header, _, row = format_table([f]).splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [c.strip() for c in header.strip("|").split("|")][-1] == "notes"
    assert cells[2:4] == ["2,000.0", "frames/s"] and cells[-1] == "4.19 GB/s"
    assert json.loads(json.dumps(f.as_dict()))["extra"] == "4.19 GB/s"
