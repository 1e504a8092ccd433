"""Both daemons share one main(): the same exit codes for a bad --config, and declared command parameters."""

import subprocess
import sys

import pytest

from framechain.ipc import free_tcp_endpoint


def _daemon_args(kind: str) -> list[str]:
    args = ["--ctrl", free_tcp_endpoint()]
    if kind == "receiver":
        args += ["--ready", free_tcp_endpoint(), "--release", free_tcp_endpoint()]
    return args


@pytest.mark.parametrize("kind", ["receiver", "processor"])
@pytest.mark.parametrize("text, why", [
    ("{not json", "is not valid JSON"),
    ("[1]", "item 0 must be a JSON object"),
    ('{"no_such_key": 1}', "item 0: unknown"),
])
def test_bad_config_file_exits_2_for_both_daemons(tmp_path, kind, text, why):
    cfg = tmp_path / "bad.json"
    cfg.write_text(text)
    out = subprocess.run([sys.executable, "-m", "framechain.client.cli", kind, *_daemon_args(kind),
                          "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "bad --config" in out.stderr and why in out.stderr


def test_declared_command_parameters_are_checked_before_any_command_runs(tmp_path):
    from harness import Daemon
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        d.ok("configure", {"plugin": {"load": [{"index": "calib", "library": "calibration"},
                                               {"index": "hdf", "library": "hdf5_writer"}]},
                           "hdf": {"file": {"path": str(tmp_path)},
                                   "dataset": {"data": {"datatype": "uint16", "dims": [4, 4]}}}})
        for bad, words in (({"frames": "ten"}, ["'frames'", "expected an integer"]),
                           ({"frames": 0}, ["'frames'", "in [1, 1e+06]"]),
                           ({}, ["needs 'frames'"]),
                           ({"frames": 5, "speed": 2}, ["unknown key 'speed'"])):
            r = d.request("execute", {"hdf": {"command": "start_writing"},
                                      "calib": {"command": "collect_dark", **bad}})
            assert r.msg_type == "nack" and all(w in r.params["error"] for w in words), r.params
            st = d.status()
            assert st["hdf"]["writing"] is False and st["calib"]["dark"]["state"] == "idle"
        r = d.request("execute", {"hdf": {"command": "stop_writing", "now": True}})
        assert r.msg_type == "nack" and "unknown key 'now'" in r.params["error"]
        cmds = d.ok("request_commands")
        assert cmds["calib"] == {"supported": ["collect_dark", "cancel_dark", "reload"]}
        assert cmds["hdf"]["supported"] == ["start_writing", "stop_writing"]
    finally:
        d.stop()
