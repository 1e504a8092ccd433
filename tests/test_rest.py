"""The odin-control REST adapter, served by the real ``framechain rest`` against real daemons."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from _clients import REPO, RestServer, http, speckle_stack
from harness import Daemon, Pipeline, wait_for
from framechain.client import rest
from framechain.client._monitor import parse_endpoints
from framechain.client._png import colorize, downsample
from framechain.client.rest_adapter import FramechainController
from framechain.ipc import free_tcp_endpoint

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Receiver + processor (dummy), a processor endpoint where nothing ever ran, and the REST server."""
    tmp = tmp_path_factory.mktemp("rest")
    pipe = Pipeline(tmp)
    dead = free_tcp_endpoint()
    server = None
    try:
        pipe.configure_receiver({"type": "simulated", "shape": [32, 32], "frames": 400, "rate": 200})
        pipe.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
        endpoints = f"fr:{pipe.receiver.ctrl}, fp:{pipe.processor.ctrl}, fp:{dead}"
        server = RestServer(tmp, endpoints, "none", "none")
        yield pipe, server
    finally:
        if server is not None:
            server.close()
        pipe.close()


@pytest.fixture
def publishing(tmp_path):
    """Speckle frames through the real XpcsCorrelatorPlugin and LiveViewPlugin, and the REST server on their PUBs."""
    with speckle_stack(tmp_path, [48, 64], live_per_second=10) as (pipe, server):
        pipe.start()
        yield pipe, server


def connected(server, name):
    return server.get(f"status/{name}/connected")[1]["value"]


def test_status_shows_live_counters_and_a_dead_endpoint(stack):
    pipe, server = stack
    wait_for(lambda: connected(server, "fp0") and connected(server, "fr0"), timeout=10, what="daemons connected")
    code, status = server.get("status")
    assert code == 200
    assert set(status) == {"fr0", "fp0", "fp1"}
    assert status["fp1"]["connected"] is False
    wait_for(lambda: "no reply" in server.get("status/fp1/error")[1]["value"], timeout=2,
             what="the dead endpoint to be reported within 2 s")
    assert status["fp0"]["status"]["plugins"]["names"] == ["dummy"]
    code, rx = server.put("execute/fr0/source", {"command": "start"})
    assert code == 200, rx
    assert rx["replies"]["fr0"]["msg_type"] == "ack"
    first = server.get("status/fp0/status/dummy/frames_processed")[1]["value"]
    wait_for(lambda: server.get("status/fp0/status/dummy/frames_processed")[1]["value"] > first + 20,
             timeout=20, what="frames_processed to grow through the REST status")
    wait_for(lambda: server.get("status/fr0/rates")[1].get("frames/received", 0) > 0, timeout=10,
             what="a receive rate")
    pipe.wait_done()


def test_whole_tree_and_sub_paths(stack):
    _, server = stack
    code, tree = server.get("")
    assert code == 200
    assert set(tree) == {"adapter", "status", "config", "live", "xpcs", "rollup"}
    assert tree["adapter"]["endpoints"]["fr0"]["kind"] == "receiver"
    assert "viridis" in tree["adapter"]["colormaps"]
    code, leaf = server.get("adapter/update_interval")
    assert (code, leaf) == (200, {"value": 0.2})
    wait_for(lambda: server.get("config/fp0/plugin")[1].get("load"), timeout=10, what="processor config")
    assert server.get("config/fp0/plugin/load/0/index")[1] == {"value": "dummy"}
    code, ctype, body = http("GET", server.api("status/fp0/kind"), headers={"Accept": "application/json"})
    assert (code, json.loads(body)) == (200, {"value": "processor"}) and ctype.startswith("application/json")


@pytest.mark.parametrize("path", ["bogus", "status/fp9", "status/fp0/status/nope", "live/nothing.png"])
def test_unknown_get_paths_are_404_json(stack, path):
    _, server = stack
    code, body = server.get(path)
    assert code == 404
    assert "Invalid path" in body["error"]
    assert "top-level paths are adapter, status, config, live, xpcs" in body["error"]


def test_configure_load_connect_and_configure_a_plugin(stack):
    pipe, server = stack
    # to every processor: fp0 acks, the dead fp1 times out fast -> 503 with both replies
    code, r = server.put("config/plugin/load", {"index": "sum", "name": "SumPlugin", "library": "framechain.plugins.sum"})
    assert code == 503, r
    assert r["replies"]["fp0"]["msg_type"] == "ack" and r["replies"]["fp1"]["msg_type"] == "timeout"
    assert "fp0" not in r["error"] and "fp1" in r["error"]
    assert r["params"] == {"plugin": {"load": {"index": "sum", "name": "SumPlugin", "library": "framechain.plugins.sum"}}}
    # rank 0 only (rank 1 is the dead endpoint)
    code, r = server.put("config/plugin/connect?rank=0", {"index": "sum", "connection": "dummy"})
    assert code == 200 and list(r["replies"]) == ["fp0"], r
    code, r = server.put("config/fp0/sum/enabled", False)
    assert code == 200, r
    assert r["params"] == {"sum": {"enabled": False}}
    assert pipe.processor.ok("request_configuration")["sum"]["enabled"] is False
    wait_for(lambda: server.get("config/fp0/sum/enabled")[1] == {"value": False}, timeout=10,
             what="the configure to show in GET config")
    wait_for(lambda: "sum" in server.get("status/fp0/status/plugins/names")[1]["value"], timeout=10,
             what="sum in the plugin list")


def test_nack_is_400_with_the_daemons_text(stack):
    pipe, server = stack
    code, r = server.put("config/fp0/dummy/no_such_key", 3)
    assert code == 400
    assert "no_such_key" in r["error"] and r["replies"]["fp0"]["msg_type"] == "nack"
    code, r = server.put("execute/fp0/dummy", {"command": "bogus"})
    assert code == 400
    assert "bogus" in r["error"] and r["replies"]["fp0"]["msg_type"] == "nack"


def test_dead_daemon_fails_fast_with_503(stack):
    _, server = stack
    t0 = time.monotonic()
    code, r = server.put("execute/fp1/hdf", "start_writing")
    assert code == 503
    assert "fp1" in r["error"] and "not answering" in r["error"]
    assert time.monotonic() - t0 < 3
    # the server still answers GETs at once
    assert server.get("status/fp0/connected")[0] == 200


@pytest.mark.parametrize("path,body,raw,match", [
    ("config", None, b"{not json", "not valid JSON"),
    ("config", [1, 2], None, "JSON object"),
    ("config", {}, None, "non-empty"),
    ("config?rank=x", {"a": 1}, None, "not an integer"),
    ("config?rank=5", {"a": 1}, None, "out of range"),
    ("execute/fp0/dummy", {"command": 5}, None, "command"),
    ("execute/fp0", {"command": "x"}, None, "exactly one"),
])
def test_bad_bodies_are_400_with_the_reason(stack, path, body, raw, match):
    _, server = stack
    code, r = server.put(path, body, raw=raw)
    assert code == 400, r
    assert match in r["error"]


def test_unknown_put_paths_and_methods(stack):
    _, server = stack
    assert server.put("nothing", {"a": 1})[0] == 404
    assert server.put("execute/fp0/dummy/extra", {"command": "x"})[0] == 404
    assert server.put("reset_statistics/fp7")[0] == 404
    # a daemon-shaped name that is not configured: 404, not sent on as a plugin index
    code, r = server.put("config/fp7/dummy/enabled", False)
    assert code == 404 and "unknown daemon 'fp7'" in r["error"] and "fp0" in r["error"], r
    code, r = server.put("execute/fr3/source", "start")
    assert code == 404 and "unknown daemon 'fr3'" in r["error"], r
    # ... unless a plugin of that index is loaded: then it is the plugin
    code, r = server.put("config/plugin/load?rank=0", {"index": "fp5", "name": "DummyPlugin",
                                                        "library": "framechain.plugins.dummy"})
    assert code == 200, r
    wait_for(lambda: "fp5" in server.get("status/fp0/status/plugins/names")[1]["value"], timeout=10,
             what="plugin fp5 in the status")
    code, r = server.put("config/fp5/no_such_key?rank=0", 1)
    assert code == 400 and r["params"] == {"fp5": {"no_such_key": 1}} and "no_such_key" in r["error"], r
    code, ctype, body = http("POST", server.api("config"), {"a": 1})
    assert code == 405 and "GET and PUT" in json.loads(body)["error"]
    code, ctype, body = http("PUT", server.api("config"), raw=b"a=1", content_type="text/plain")
    assert code == 415


def test_reset_statistics(stack):
    pipe, server = stack
    code, r = server.put("reset_statistics/fp0")
    assert code == 200 and r["replies"]["fp0"]["msg_type"] == "ack"
    assert pipe.processor.status()["dummy"]["frames_processed"] == 0


def test_live_image_png_and_xpcs_from_the_real_plugins(publishing):
    _, server = publishing
    wait_for(lambda: server.get("live/frame")[1].get("frame_num") is not None, timeout=15,
             what="a live view frame from the LiveViewPlugin at the adapter")
    code, info = server.get("live")
    assert info["frame"]["shape"] == [48, 64] and info["frame"]["dtype"] == "uint16" and info["messages"] > 0
    assert info["errors"] == 0, info["last_error"]
    code, ctype, png = http("GET", server.api("live/image.png?colormap=inferno&log=1"))
    assert code == 200 and ctype == "image/png"
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (64, 48)
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == 48 * (1 + 64 * 3)
    code, ctype, body = http("GET", server.api("live/image.png?colormap=rainbowz"))
    assert code == 400 and "rainbowz" in json.loads(body)["error"]
    code, ctype, png = http("GET", server.api("live/image.png?colormap=gray&max_size=16"))
    assert code == 200 and int.from_bytes(png[16:20], "big") == 16      # 64x48 block-averaged by 4
    # the correlator's own message (plugins/xpcs.py _message), served as the plugin sent it
    latest = wait_for(lambda: server.get("xpcs/latest")[1].get("g2"), timeout=20, what="a g2 message") and \
        server.get("xpcs")[1]["latest"]
    assert set(latest) == {"msg_type", "plugin", "acquisition_id", "final", "frames", "frames_used", "frame_time",
                           "bins", "delays", "delays_s", "g2", "fit"}
    assert latest["msg_type"] == "xpcs_g2" and latest["plugin"] == "xpcs" and latest["final"] is False
    assert latest["delays"][0] == 1 and latest["frames_used"] >= 20
    assert latest["delays_s"] == [d * latest["frame_time"] for d in latest["delays"]]
    assert len(latest["g2"]) == len(latest["bins"]) >= 1
    assert all(len(row) == len(latest["delays"]) for row in latest["g2"])
    values = [v for row in latest["g2"] for v in row if v is not None]
    assert values and all(0.5 < v < 2.0 for v in values)       # g2 of speckle with contrast 0.3 is near 1..1.3
    assert server.get("xpcs/errors")[1] == {"value": 0}


def test_killed_daemon_is_disconnected_within_2s_and_requests_fail_fast(tmp_path):
    proc = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "processor.log")
    server = None
    try:
        server = RestServer(tmp_path, f"fp:{proc.ctrl}", "none", "none")
        wait_for(lambda: connected(server, "fp0"), timeout=10, what="fp0 connected")
        code, r = server.put("config/fp0/plugin/load", {"index": "dummy", "name": "DummyPlugin",
                                                         "library": "framechain.plugins.dummy"})
        assert code == 200, r
        wait_for(lambda: server.get("status/fp0/status/plugins/names")[1] == {"value": ["dummy"]}, timeout=10,
                 what="the plugin in the polled status")
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        wait_for(lambda: not connected(server, "fp0"), timeout=2, what="the killed daemon shown disconnected")
        assert "no reply to status" in server.get("status/fp0/error")[1]["value"]
        assert server.get("status/fp0/status/plugins/names")[1] == {"value": ["dummy"]}   # last known status kept
        code, r = server.put("execute/fp0/dummy", "start_writing", timeout=3)   # fails fast, not after 5 s
        assert code == 503
        assert r["error"].startswith(f"fp0 ({proc.ctrl}) is not answering")
        assert r["replies"]["fp0"]["msg_type"] == "timeout"
    finally:
        if server is not None:
            server.close()
        proc.stop()


def test_example_config_serves_the_web_page(tmp_path, stack):
    pipe, _ = stack
    tmpdir = tmp_path / "tmp"           # where --endpoints writes its copy of the INI
    tmpdir.mkdir()
    server = RestServer(tmp_path, f"fr:{pipe.receiver.ctrl},fp:{pipe.processor.ctrl}", "none", "none",
                        config=REPO / "examples" / "rest.cfg", env={"TMPDIR": str(tmpdir)})
    try:
        code, ctype, body = http("GET", server.base + "/")
        assert code == 200 and b"framechain" in body
        wait_for(lambda: connected(server, "fp0"), timeout=10, what="fp0 connected via examples/rest.cfg")
        assert not list(tmpdir.iterdir())   # the --endpoints copy is deleted once odin-control has read it
    finally:
        server.close()
    assert not list(tmpdir.iterdir())


def test_rest_command_config_errors_exit_2(tmp_path, capsys):
    args = argparse.Namespace(config=str(tmp_path / "missing.cfg"), port=None, addr=None, endpoints=None)
    assert rest.main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = tmp_path / "noadapters.cfg"
    cfg.write_text("[server]\nhttp_port = 1\n")
    assert rest.main(argparse.Namespace(config=str(cfg), port=None, addr=None, endpoints=None)) == 2
    assert "adapters" in capsys.readouterr().err
    bad = tmp_path / "bad.cfg"
    bad.write_text("[server]\nadapters = framechain\n[adapter.framechain]\n"
                   "module = framechain.client.rest_adapter.FramechainAdapter\nendpoints = nonsense\n")
    proc = subprocess.run([sys.executable, "-m", "framechain.client.rest", "--config", str(bad), "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "nonsense" in proc.stderr


def test_endpoint_parsing_and_png_rendering():
    specs = parse_endpoints("fp:tcp://127.0.0.1:5004 receiver:tcp://127.0.0.1:5000, fp:tcp://h:1")
    assert [(s.name, s.kind) for s in specs] == [("fp0", "processor"), ("fr0", "receiver"), ("fp1", "processor")]
    with pytest.raises(ValueError, match="'tcp://127.0.0.1:5004'"):
        parse_endpoints("tcp://127.0.0.1:5004")
    with pytest.raises(ValueError, match="unknown framechain adapter option"):
        FramechainController({"endpoint": "fp:tcp://127.0.0.1:1"})
    img = np.array([[0, 1], [2, np.nan]])
    rgb = colorize(img, "gray")
    assert rgb.shape == (2, 2, 3) and rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 2)))
    big = np.arange(100 * 60, dtype=np.uint16).reshape(100, 60)
    small = downsample(big, 25)
    assert small.shape == (25, 15) and small[0, 0] == big[:4, :4].mean()


def test_token_guards_every_put_and_a_wide_bind_needs_one(tmp_path, capsys):
    """With a token_file, a PUT without 'Authorization: Bearer <token>' (or with another token) is a 401 and
    reaches no daemon; GETs stay open. Listening beyond loopback without a token is refused at start."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with Pipeline(tmp_path) as pipe:
        pipe.configure_receiver({"type": "simulated", "shape": [8, 8], "frames": 5})
        server = RestServer(tmp_path, f"fr:{pipe.receiver.ctrl}", "none", "none",
                            adapter_options={"token_file": token})
        try:
            wait_for(lambda: connected(server, "fr0"), what="the receiver connected")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
                code, body = server.put("execute/fr0/source", {"command": "start"}, headers=headers)
                assert code == 401 and "Authorization: Bearer" in body["error"], (headers, body)
            assert pipe.receiver.status()["source"]["state"] == "idle"  # nothing reached the daemon
            code, body = server.put("execute/fr0/source", {"command": "start"},
                                    headers={"Authorization": "Bearer s3cret-token"})
            assert code == 200, body
            wait_for(lambda: pipe.receiver.status()["source"]["state"] == "done", what="the run the PUT started")
        finally:
            server.close()
    wide = tmp_path / "wide.cfg"
    wide.write_text("[server]\nadapters = framechain\nhttp_addr = 0.0.0.0\n"
                    "[adapter.framechain]\nmodule = framechain.client.rest_adapter.FramechainAdapter\n")
    assert rest.main(argparse.Namespace(config=str(wide), port=None, addr=None, endpoints=None)) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without a token" in err and "token_file" in err


def test_prometheus_metrics_follow_the_daemons(stack):
    """GET metrics: Prometheus text (prometheus-client's own parser reads it) with each daemon's frames, its
    plugins' queues and timings, and up = 0 for the daemon that never answered."""
    from prometheus_client.parser import text_string_to_metric_families
    pipe, server = stack
    wait_for(lambda: connected(server, "fp0"), what="the processor polled")
    code, ctype, body = http("GET", server.api("metrics"))
    assert code == 200 and ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert samples[("framechain_up", (("daemon", "fp0"), ("role", "processor")))] == 1
    assert samples[("framechain_up", (("daemon", "fp1"), ("role", "processor")))] == 0
    assert samples[("framechain_up", (("daemon", "fr0"), ("role", "receiver")))] == 1
    assert ("framechain_buffers", (("daemon", "fr0"), ("state", "total"))) in samples
    assert ("framechain_plugin_queue_size", (("daemon", "fp0"), ("plugin", "dummy"))) in samples
    received = samples[("framechain_frames_total", (("daemon", "fr0"), ("kind", "received")))]
    st = pipe.receiver.status()["frames"]["received"]
    assert received <= st  # the snapshot is at most one poll old


def test_hostile_requests_get_a_clear_answer_and_change_nothing(stack):
    """Hypothesis against the REST server: random paths, bodies, content types and methods. Every request gets
    an answer (4xx, or 503 for the dead daemon, never 500), the server stays up, and a refused PUT leaves the processor's configuration as it
    was."""
    import os
    import urllib.parse

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pipe, server = stack
    before = pipe.processor.ok("request_configuration")
    segment = st.one_of(st.sampled_from(["config", "execute", "status", "fp0", "fr0", "dummy", "plugin", "load",
                                         "live", "xpcs", "metrics", "..", "%00", "reset_statistics", "fp9"]),
                        st.text(max_size=6))
    junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                        lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=5), k, max_size=3),
                        max_leaves=8)

    @settings(max_examples=int(os.environ.get("FRAMECHAIN_FUZZ_EXAMPLES", "500")), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["PUT", "PUT", "GET", "POST", "DELETE"]),
           path=st.lists(segment, min_size=1, max_size=4).map(lambda p: "/".join(urllib.parse.quote(s) for s in p)),
           body=st.one_of(junk.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)),
           ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]))
    def hostile(method, path, body, ctype):
        if "shutdown" in path:
            return
        code, got_type, data = http(method, server.api(path), raw=body if method in ("PUT", "POST") else None,
                                    content_type=ctype or "application/json", timeout=10)
        # a clear answer: any 4xx, or 503 for the stack's dead daemon; never a 500 (a fault in the server)
        assert code < 500 or code == 503, (method, path, body, code, data[:200])
        if "json" in got_type:
            json.loads(data)

    hostile()
    assert server.proc.poll() is None
    after = pipe.processor.ok("request_configuration")
    assert {k: v for k, v in after.items() if k != "config_ts"} == {k: v for k, v in before.items() if k != "config_ts"}


def test_rollup_of_several_pairs_totals_names_the_slowest_and_a_rank_down(tmp_path):
    """Two receiver/processor pairs (two --mpi ranks): /rollup sums them per rank; a killed one is down."""
    for r in range(2):
        (tmp_path / f"r{r}").mkdir()
    pipes = [Pipeline(tmp_path / f"r{r}") for r in range(2)]
    server = None
    try:
        for r, p in enumerate(pipes):
            p.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 40 + 20 * r})
            p.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
        eps = ",".join(f"fr:{p.receiver.ctrl},fp:{p.processor.ctrl}" for p in pipes)
        server = RestServer(tmp_path, eps, "none", "none")
        for p in pipes:
            p.start()
        for r, p in enumerate(pipes):
            wait_for(lambda p=p, n=40 + 20 * r: p.plugin_status("dummy")["frames_processed"] == n, what=f"rank {r}")

        def settled():
            roll = server.get("rollup")[1]
            return roll if roll.get("processed") == 100 else None
        roll = wait_for(settled, timeout=15, what="the roll-up to count both ranks")
        assert roll["received"] == 100 and roll["lost"] == 0 and roll["ranks_down"] == []
        assert [(x["rank"], x["received"], x["processed"]) for x in roll["ranks"]] == [(0, 40, 40), (1, 60, 60)]
        assert roll["slowest_rank"] == 0
        from framechain.client._monitor import Monitor
        from framechain.client._tui.view import status_lines
        with Monitor(parse_endpoints(eps), interval=0.1) as mon:   # the TUI's first line: every rank at once
            wait_for(lambda: mon.rollup()["processed"] == 100, timeout=10, what="the TUI's monitor")
            first = "".join(text for text, _ in status_lines(list(mon.links.values()))[0])
        assert first.startswith("all ranks received 100  processed 100  written 0  lost 0  slowest rank 0"), first
        pipes[1].processor.proc.kill()
        roll = wait_for(lambda: (lambda x: x if x["ranks_down"] == [1] else None)(server.get("rollup")[1]),
                        timeout=15, what="rank 1 reported down")
        assert roll["received"] == 40 and roll["ranks"][1]["connected"] is False
    finally:
        if server is not None:
            server.close()
        for p in pipes:
            p.close()
