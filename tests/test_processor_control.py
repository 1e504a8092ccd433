"""The processor's control channel: every request gets one reply; bad input gets a precise nack
and leaves the daemon's state unchanged. Uses a real processor subprocess."""

import json
import subprocess
import sys
import textwrap

import pytest
import zmq
from harness import Daemon, wait_for

from framechain.ipc import IpcMessage, free_tcp_endpoint


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    # plugin files of this module's tests live in their own tmp_path folders, all under the session's base
    d = Daemon("processor", ["--plugin-path", str(tmp_path_factory.getbasetemp())], free_tcp_endpoint(),
               tmp_path_factory.mktemp("fp") / "processor.log")
    d.ok("configure", {"plugin": {"load": [{"index": "a", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
                                           {"index": "b", "name": "SumPlugin", "library": "framechain.plugins.sum"}],
                                  "connect": [{"index": "b", "connection": "a"}]}})
    yield d
    assert d.stop() == 0


@pytest.fixture
def raw_socket(processor):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(processor.ctrl)
    yield s
    s.close()


def _raw_request(sock, payload: bytes) -> IpcMessage:
    sock.send(payload)
    assert sock.poll(10000), "no reply to a malformed message"
    return IpcMessage.decode(sock.recv())


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "not valid JSON"),
    (b"[1,2,3]", "must be a JSON object, not list"),
    (b'"hello"', "must be a JSON object, not str"),
    (json.dumps({"msg_type": "cmd", "msg_val": "status", "timestamp": "2026-01-01T00:00:00"}).encode(),
     "missing field 'id'"),
    (json.dumps({"msg_type": "cmd", "msg_val": "frobnicate", "id": 5,
                 "timestamp": "2026-01-01T00:00:00"}).encode(), "unknown msg_val 'frobnicate'"),
    (json.dumps({"msg_type": "cmd", "msg_val": "status", "id": 5, "timestamp": "noon"}).encode(), "bad timestamp"),
    (json.dumps({"msg_type": "cmd", "msg_val": "status", "id": 5, "timestamp": "2026-01-01T00:00:00",
                 "params": 3}).encode(), "bad params"),
])
def test_malformed_messages_get_a_nack(raw_socket, payload, reason):
    reply = _raw_request(raw_socket, payload)
    assert reply.msg_type == "nack"
    assert reason in reply.error


def test_malformed_nack_echoes_id(raw_socket):
    reply = _raw_request(raw_socket, json.dumps({"msg_type": "cmd", "msg_val": "bogus", "id": 4242,
                                                 "timestamp": "2026-01-01T00:00:00"}).encode())
    assert (reply.id, reply.msg_val, reply.msg_type) == (4242, "bogus", "nack")


def _config(processor):
    return processor.ok("request_configuration")


def _bad_plugin_file(tmp_path):
    p = tmp_path / "broken_plugin.py"
    p.write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    return str(p)


@pytest.mark.parametrize("params, reason", [
    ({"nosuch": {"x": 1}}, "unknown configure key or plugin index 'nosuch'"),
    ({"plugin": {"load": {"index": "c", "name": "Nope", "library": "framechain.plugins.nosuchmodule"}}},
     "no plugin module 'framechain.plugins.nosuchmodule'"),
    ({"plugin": {"load": {"index": "c", "name": "NoSuchClass", "library": "framechain.plugins.dummy"}}},
     "has no class 'NoSuchClass'"),
    ({"plugin": {"load": {"index": "c", "name": "X", "library": "/does/not/exist.py"}}},
     "not on this processor's plugin path"),
    ({"plugin": {"load": {"index": "a", "name": "DummyPlugin", "library": "framechain.plugins.dummy"}}},
     "index 'a' is already loaded"),
    ({"plugin": {"connect": {"index": "zz", "connection": "a"}}}, "no plugin with index 'zz'"),
    ({"plugin": {"connect": {"index": "a", "connection": "b"}}}, "would make a cycle"),
    ({"plugin": {"connect": {"index": "a", "connection": "a"}}}, "would make a cycle"),
    ({"plugin": {"disconnect": {"index": "a", "connection": "b"}}}, "not connected"),
    ({"plugin": {"explode": {}}}, "unknown plugin action"),
    ({"b": {"enabled": "yes"}}, "The 'enabled' option of SumPlugin 'b' expected true or false"),
    ({"b": {"bogus": 1}}, "unknown key 'bogus' for SumPlugin 'b'"),
    ({"fr_setup": {"fr_ready_cnxn": "nowhere"}}, "fr_ready_cnxn"),
    ({"shared_memory": {"copy": "maybe"}}, "'shared_memory/copy' option of the frame processor expected true or false"),
    # a good load followed by a bad connect: the whole message is rolled back
    ({"plugin": {"load": {"index": "c", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
                 "connect": [{"index": "c", "connection": "a"}, {"index": "c", "connection": "missing"}]}},
     "no plugin with index 'missing'"),
    ({"plugin": {"load": {"index": "hdf", "name": "FileWriterPlugin",
                          "library": "/opt/odin/lib/libHdf5Plugin.so"}}},
     "is a compiled (odin-data C++) plugin library; framechain loads Python plugins: a built-in name, a module "
     "path or a .py file. framechain's own 'hdf5_writer' plugin does this job ({'library': 'hdf5_writer'})"),
    ({"plugin": {"load": {"index": "g", "name": "GapFillPlugin", "library": "libGapFillPlugin.so.1"}}},
     "(docs/writing-plugins.md)"),
])
def test_bad_configure_is_nacked_and_changes_nothing(processor, params, reason):
    before = _config(processor)
    reply = processor.request("configure", params)
    assert reply.msg_type == "nack", reply
    assert reason in reply.error
    assert _config(processor) == before


def test_py_file_raising_on_import_is_nacked(processor, tmp_path):
    before = _config(processor)
    reply = processor.request("configure", {"plugin": {"load": {"index": "c", "name": "X",
                                                                 "library": _bad_plugin_file(tmp_path)}}})
    assert reply.msg_type == "nack"
    assert "raised RuntimeError on import: this plugin is broken on purpose" in reply.error
    assert _config(processor) == before


def test_unknown_execute_and_commands(processor):
    assert "no plugin with index 'zz'" in processor.request("execute", {"zz": {"command": "go"}}).error
    assert "has no command 'go'" in processor.request("execute", {"a": {"command": "go"}}).error
    assert "needs {\"command\"" in processor.request("execute", {"a": {"cmd": "go"}}).error
    assert processor.ok("request_commands") == {}  # odin's shape: only plugins that have commands


def test_status_version_reset(processor):
    st = processor.status()
    assert st["plugins"]["names"] == ["a", "b"]
    for index in ("a", "b"):
        assert set(st[index]["timing"]) == {"last_process", "max_process", "mean_process"}
    assert st["shared_memory"]["configured"] is False
    v = processor.ok("request_version")
    assert set(v["version"]["framechain"]) == {"major", "minor", "patch", "short", "full"}
    assert v["version"]["b"]["name"] == "SumPlugin" and v["libraries"]["numpy"]
    assert processor.ok("reset_statistics") == {}


def test_data_path_messages_on_control_channel_are_nacked(processor):
    reply = processor.request("frame_release", {"frame": 1, "buffer_id": 0})
    assert reply.msg_type == "nack" and "does not handle 'frame_release'" in reply.error


def test_load_connect_disconnect_at_run_time(processor, tmp_path):
    plugin = tmp_path / "tagger.py"
    plugin.write_text(textwrap.dedent("""
        from framechain.frameprocessor import FrameProcessorPlugin
        class Tagger(FrameProcessorPlugin):
            def process_frame(self, frame):
                self.push(frame)
    """))
    processor.ok("configure", {"plugin": {"load": {"index": "t", "name": "Tagger", "library": str(plugin)}}})
    processor.ok("configure", {"plugin": {"connect": {"index": "t", "connection": "b", "blocking": False}}})
    cfg = _config(processor)
    assert {"index": "t", "connection": "b", "blocking": False} in cfg["plugin"]["connect"]
    processor.ok("configure", {"plugin": {"disconnect": {"index": "t", "connection": "b"}}})
    assert {"index": "t", "connection": "b", "blocking": False} not in _config(processor)["plugin"]["connect"]
    wait_for(lambda: "t" in processor.status()["plugins"]["names"])


def test_config_file_at_start(tmp_path):
    cfg = tmp_path / "fp.json"
    cfg.write_text(json.dumps([
        {"plugin": {"load": {"index": "s", "name": "SumPlugin", "library": "framechain.plugins.sum"}}},
        {"s": {"enabled": False}},
        {"plugin": {"connect": {"index": "s", "connection": "frame_receiver"}}},
    ]))
    d = Daemon("processor", ["--config", str(cfg)], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        conf = d.ok("request_configuration")
        assert conf["s"] == {"enabled": False}
        assert conf["plugin"]["connect"] == [{"index": "s", "connection": "frame_receiver", "blocking": True}]
    finally:
        d.stop()


def test_bad_config_file_at_start_exits_2_naming_the_item(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps([{"plugin": {"load": {"index": "s", "name": "SumPlugin", "library": "framechain.plugins.sum"}}},
                               {"s": {"enabled": 3}}]))
    out = subprocess.run([sys.executable, "-m", "framechain.client.cli", "processor", "--ctrl", free_tcp_endpoint(),
                          "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "item 1: The 'enabled' option of SumPlugin 's' expected true or false" in out.stderr


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                   max_size=3), max_leaves=8)
_keys = st.sampled_from(["plugin", "fr_setup", "shared_memory", "a", "b", "load", "connect", "index", "x"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg_val=st.sampled_from(["configure", "execute", "status", "request_configuration", "reset_statistics",
                                "request_commands", "frame_ready", "identity"]),
       params=st.dictionaries(_keys, _values, max_size=3))
def test_fuzzed_commands_always_get_exactly_one_reply(processor, raw_socket, msg_val, params):
    """Random params for real commands: one reply with the same id, never a crash; the chain stays as it was."""
    msg = IpcMessage("cmd", msg_val, params)
    reply = _raw_request(raw_socket, msg.encode())
    assert reply.id == msg.id and reply.msg_type in ("ack", "nack")
    if reply.msg_type == "nack":
        assert reply.error and "internal error" not in reply.error
    assert not raw_socket.poll(0), "more than one reply"


def test_execute_checks_every_command_before_running_any(tmp_path):
    plugin = tmp_path / "counter.py"
    plugin.write_text(textwrap.dedent("""
        from framechain.frameprocessor import FrameProcessorPlugin
        class Counter(FrameProcessorPlugin):
            commands = ("bump",)
            def __init__(self, name):
                super().__init__(name)
                self.bumps = 0
            def execute(self, command, params):
                self.bumps += 1
            def process_frame(self, frame):
                self.push(frame)
            def status(self):
                return {"bumps": self.bumps}
    """))
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        d.ok("configure", {"plugin": {"load": [{"index": "c", "name": "Counter", "library": str(plugin)},
                                               {"index": "s", "name": "SumPlugin", "library": "framechain.plugins.sum"}]}})
        reply = d.request("execute", {"c": {"command": "bump"}, "s": {"command": "bump"}})
        assert reply.msg_type == "nack" and "SumPlugin 's' has no command 'bump'" in reply.error
        assert d.status()["c"]["bumps"] == 0  # nothing ran
        d.ok("execute", {"c": {"command": "bump"}})
        assert d.status()["c"]["bumps"] == 1
    finally:
        d.stop()


def test_switch_interval_is_applied_in_the_daemon_and_reported(tmp_path, processor):
    """The daemon runs with a short GIL switch interval (default 0.5 ms, settable); status shows the live value."""
    assert processor.status()["process"]["switch_interval_ms"] == 0.5
    d = Daemon("processor", ["--switch-interval-ms", "0.03"], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        assert d.status()["process"]["switch_interval_ms"] == 0.03   # not 0.029: CPython keeps whole µs
    finally:
        d.stop()


@pytest.mark.parametrize("value, why", [("0", "0 ms is outside 0.01..100 ms"), ("fast", "'fast' is not a number")])
def test_bad_switch_interval_exits_2_saying_why(value, why):
    out = subprocess.run([sys.executable, "-m", "framechain.client.cli", "processor", "--ctrl", free_tcp_endpoint(),
                          "--switch-interval-ms", value], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert why in out.stderr


def test_configure_prepares_each_plugin_once_then_commits_what_prepare_returned(tmp_path):
    """The controller prepares every plugin before changing any and then commits those prepared changes:
    a plugin's (possibly costly: files, sessions) prepare runs once per configure, not twice."""
    plugin = tmp_path / "counting.py"
    plugin.write_text(textwrap.dedent("""
        from framechain.frameprocessor import FrameProcessorPlugin, Option
        class Counting(FrameProcessorPlugin):
            options = {"level": Option(int, 0, "a number")}
            def __init__(self, name):
                super().__init__(name)
                self.prepared = 0
                self.committed = []
                self.aborted = []
            def prepare(self, params):
                self.prepared += 1
                return {k: v * 10 for k, v in super().prepare(params).items()}
            def commit(self, change):
                self.committed.append(change)
                super().commit(change)
            def abort(self, change):
                self.aborted.append(change)
            def process_frame(self, frame):
                self.push(frame)
            def status(self):
                return {"prepared": self.prepared, "committed": self.committed, "aborted": self.aborted}
    """))
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        d.ok("configure", {"plugin": {"load": {"index": "v", "name": "Counting", "library": str(plugin)}}})
        d.ok("configure", {"v": {"level": 4}})
        st = d.status()["v"]
        assert st["prepared"] == 1 and st["committed"] == [{"level": 40}] and st["aborted"] == []
        # a later part of the message fails to prepare: this plugin's prepared change is aborted, not committed
        reply = d.request("configure", {"v": {"level": 5}, "fr_setup": {"fr_ready_cnxn": "tcp://127.0.0.1:1",
                                                                        "fr_release_cnxn": "nonsense"}})
        assert reply.msg_type == "nack" and "fr_release_cnxn" in reply.params["error"]
        reply = d.request("configure", {"v": {"level": 6}, "plugin": {"connect": {"index": "v",
                                                                                   "connection": "nothere"}}})
        assert reply.msg_type == "nack" and "nothere" in reply.params["error"]
        st = d.status()["v"]
        assert st["committed"] == [{"level": 40}] and st["aborted"] == [{"level": 60}]
        assert d.ok("request_configuration")["v"] == {"level": 40}
    finally:
        d.stop()


def test_nacked_configure_changes_no_plugin(tmp_path):
    """{"sum": {"enabled": false}, "live": {<a port in use>}} is nacked and leaves sum enabled
    (a nacked configure used to leave the parts before the failing one applied)."""
    busy = zmq.Context.instance().socket(zmq.PUB)
    busy.setsockopt(zmq.LINGER, 0)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    d = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        d.ok("configure", {"plugin": {"load": [{"index": "sum", "name": "SumPlugin", "library": "sum"},
                                               {"index": "live", "name": "LiveViewPlugin", "library": "live_view"}]},
                           "live": {"live_view_socket_addr": "tcp://127.0.0.1:0"}})
        before = d.ok("request_configuration")
        reply = d.request("configure", {"sum": {"enabled": False},
                                        "live": {"live_view_socket_addr": f"tcp://127.0.0.1:{port}"}})
        assert reply.msg_type == "nack" and f"127.0.0.1:{port}" in reply.params["error"]
        after = d.ok("request_configuration")
        assert after == before and after["sum"]["enabled"] is True
    finally:
        d.stop()
        busy.close()
