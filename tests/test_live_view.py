"""LiveViewPlugin: two-part odin-data messages on a real PUB socket, throttles, never blocking."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import zmq
from harness import wait_for

from framechain.framereceiver.sources import SimulatedSource
from framechain.frameprocessor.frame import Frame
from framechain.ipc import free_tcp_endpoint
from framechain.ipc.channel import IpcChannel
from framechain.ipc.errors import ConfigError
from framechain.plugins.live_view import LiveViewPlugin


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def live():
    p = LiveViewPlugin("live")
    yield p
    p.close()


def subscriber(ctx, endpoint, hwm=None):
    """A viewer's SUB socket (subscribed to everything, linger 0), closed with ``ctx``."""
    chan = IpcChannel(zmq.SUB, ctx, hwm=hwm)
    chan.connect(endpoint)
    return chan.socket


def join(live, sub, shape=(4, 4)):
    """Send throwaway frames until the SUB is connected (PUB/SUB joins asynchronously); drain them."""
    def joined():
        live.process_frame(Frame(np.zeros(shape, "u2"), 0, dataset="join"))
        return sub.poll(50)
    wait_for(joined, what="the subscriber to join")
    while sub.poll(100):
        sub.recv_multipart()
    live.reset_statistics()


def test_two_part_message_matches_frame(live, ctx):
    live.configure({"live_view_socket_addr": free_tcp_endpoint()})
    sub = subscriber(ctx, live.endpoint)
    join(live, sub)
    data = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20)
    f = Frame(data, 7, dataset="data", acquisition_id="scan1", parameters={"sum": 3})
    live.process_frame(f)
    assert sub.poll(5000)
    header, body = sub.recv_multipart()
    h = json.loads(header)
    assert h == {"frame_num": 7, "acquisition_id": "scan1", "dtype": "uint16", "dsize": data.nbytes,
                 "dataset": "data", "compression": "none", "shape": ["12", "20"], "tags": ["sum"]}
    np.testing.assert_array_equal(np.frombuffer(body, h["dtype"]).reshape([int(s) for s in h["shape"]]), data)
    assert live.status()["frames_shown"] == 1


def test_non_contiguous_frames_are_sent_in_c_order(live, ctx):
    live.configure({"live_view_socket_addr": free_tcp_endpoint()})
    sub = subscriber(ctx, live.endpoint)
    join(live, sub)
    data = np.arange(64, dtype=np.float32).reshape(8, 8).T
    live.process_frame(Frame(data, 1))
    assert sub.poll(5000)
    header, body = sub.recv_multipart()
    np.testing.assert_array_equal(np.frombuffer(body, np.float32).reshape(8, 8), data)


def test_frame_frequency(live, ctx):
    live.configure({"live_view_socket_addr": free_tcp_endpoint(), "frame_frequency": 5, "send_hwm": 100})
    sub = subscriber(ctx, live.endpoint)
    join(live, sub)
    for n in range(1, 51):
        live.process_frame(Frame(np.full((4, 4), n, "u2"), n))
    got = []
    while sub.poll(300):
        got.append(json.loads(sub.recv_multipart()[0])["frame_num"])
    assert got == list(range(5, 51, 5))
    st = live.status()
    assert st["frames_shown"] == 10 and st["frames_skipped"] == 40


def test_per_second_throttle(live):
    live.configure({"live_view_socket_addr": free_tcp_endpoint(), "per_second": 2.0})
    t0 = time.monotonic()
    for n in range(200):
        live.process_frame(Frame(np.zeros((4, 4), "u2"), n))
    elapsed = time.monotonic() - t0
    st = live.status()
    # at most one frame per 0.5 s of the loop, plus the first
    assert 1 <= st["frames_shown"] <= 1 + int(elapsed * 2) and st["frames_shown"] < 200
    assert st["frames_shown"] + st["frames_skipped"] == 200


def test_slow_viewer_never_blocks(live, ctx):
    live.configure({"live_view_socket_addr": free_tcp_endpoint(), "send_hwm": 2})
    sub = subscriber(ctx, live.endpoint, hwm=2)  # RCVHWM 2, set before connecting
    join(live, sub)
    big = np.zeros((512, 512), "u2")
    for n in range(500):  # the viewer reads nothing; every call must return
        live.process_frame(Frame(big, n))
    st = live.status()
    assert st["frames_shown"] + st["frames_dropped"] == 500 and st["frames_dropped"] > 0


@pytest.mark.parametrize("params,key", [
    ({"frame_frequency": -1}, "frame_frequency"),
    ({"per_second": -0.5}, "per_second"),
    ({"live_view_socket_addr": "localhost:5020"}, "live_view_socket_addr"),
    ({"live_view_socket_addr": "tcp://127.0.0.1"}, "live_view_socket_addr"),
    ({"live_view_socket_addr": "tcp://127.0.0.1:70000"}, "live_view_socket_addr"),
    ({"live_view_socket_addr": "udp://127.0.0.1:5020"}, "live_view_socket_addr"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_config_nacks(live, params, key):
    before = live.request_configuration()
    with pytest.raises(ConfigError, match=key):
        live.configure(params)
    assert live.request_configuration() == before


def test_busy_address_nacks(live, ctx):
    addr = free_tcp_endpoint()
    other = ctx.socket(zmq.PUB)
    other.bind(addr)
    with pytest.raises(ConfigError, match="cannot bind"):
        live.configure({"live_view_socket_addr": addr})
    other.close(linger=0)


def test_busy_address_keeps_the_previous_socket_and_config(live, ctx):
    first, busy = free_tcp_endpoint(), free_tcp_endpoint()
    live.configure({"live_view_socket_addr": first, "frame_frequency": 1})
    other = ctx.socket(zmq.PUB)
    other.bind(busy)
    try:
        before = live.request_configuration()
        with pytest.raises(ConfigError, match="cannot bind"):
            live.configure({"live_view_socket_addr": busy, "frame_frequency": 2})
        assert live.request_configuration() == before
    finally:
        other.close(linger=0)
    sub = subscriber(ctx, first)
    join(live, sub)
    live.process_frame(Frame(np.ones((4, 4), "u2"), 7))  # odd: published only if frame_frequency stayed 1
    assert sub.poll(5000) and json.loads(sub.recv_multipart()[0])["frame_num"] == 7


def endpoint_free(addr) -> bool:
    """Whether a tcp endpoint can be bound, probed with a plain socket (released at once, unlike ZeroMQ's)."""
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return True
        except OSError:
            return False


def test_prepare_binds_and_abort_releases(live):
    """prepare binds the new address (a busy one is refused there); abort gives it back, nothing changed."""
    addr = free_tcp_endpoint()
    change = live.prepare({"live_view_socket_addr": addr})
    assert not endpoint_free(addr)
    live.abort(change)
    wait_for(lambda: endpoint_free(addr), what="the aborted socket to release its port")
    assert live.config["live_view_socket_addr"] != addr


def test_configure_nacked_for_another_plugin_leaves_the_endpoint_free(pipeline):
    """The processor prepares every plugin before committing any: a nack caused by the sum plugin's bad key
    aborts the live view's prepared socket, so its new endpoint is not left bound (nor its configuration
    changed)."""
    proc = pipeline.processor
    proc.ok("configure", {"plugin": {"load": [
        {"index": "live", "name": "LiveViewPlugin", "library": "framechain.plugins.live_view"},
        {"index": "sum", "name": "SumPlugin", "library": "framechain.plugins.sum"}]}})
    before = proc.ok("request_configuration")["live"]
    addr = free_tcp_endpoint()
    r = proc.request("configure", {"live": {"live_view_socket_addr": addr}, "sum": {"bogus": 1}})
    assert r.msg_type == "nack" and "bogus" in r.error
    assert proc.ok("request_configuration")["live"] == before
    assert endpoint_free(addr)
    proc.ok("configure", {"live": {"live_view_socket_addr": addr}})  # the same change alone is applied
    assert not endpoint_free(addr)
    assert proc.ok("request_configuration")["live"]["live_view_socket_addr"] == addr


def test_live_view_through_the_daemons(pipeline, ctx):
    shape, n = [24, 40], 60
    addr = free_tcp_endpoint()
    pipeline.configure_receiver({"type": "simulated", "shape": shape, "frames": n, "pattern": "ramp", "rate": 200})
    pipeline.setup_processor([("live", "LiveViewPlugin", "framechain.plugins.live_view", "frame_receiver",
                               {"live_view_socket_addr": addr, "frame_frequency": 3})])
    sub = subscriber(ctx, addr)
    time.sleep(0.3)  # let the SUB join before the source starts (frames are not repeated)
    pipeline.start()
    pipeline.wait_done()
    src = SimulatedSource(tuple(shape), "uint16", n, 0, "ramp")
    expect = np.empty(shape, np.uint16)
    got = []
    while sub.poll(1000):
        header, body = sub.recv_multipart()
        h = json.loads(header)
        src.fill(h["frame_num"], expect)
        np.testing.assert_array_equal(np.frombuffer(body, np.uint16).reshape(shape), expect)
        got.append(h["frame_num"])
    assert got and all(g % 3 == 0 for g in got)
    st = pipeline.plugin_status("live")
    assert st["frames_shown"] == len(got) and st["live_view_socket_addr"] == addr


def test_prepare_then_commit_binds_once(live, ctx):
    """The socket prepare binds is the one commit hands over: a host name address binds once."""
    port = free_tcp_endpoint().rsplit(":", 1)[1]
    params = {"live_view_socket_addr": f"tcp://localhost:{port}"}
    live.commit(live.prepare(params))
    sub = subscriber(ctx, f"tcp://127.0.0.1:{port}")
    join(live, sub)
    live.process_frame(Frame(np.ones((4, 4), "u2"), 3))
    assert sub.poll(5000) and json.loads(sub.recv_multipart()[0])["frame_num"] == 3


def test_rebind_to_a_new_address(live, ctx):
    first, second = free_tcp_endpoint(), free_tcp_endpoint()
    live.configure({"live_view_socket_addr": first})
    live.process_frame(Frame(np.ones((4, 4), "u2"), 0))
    live.configure({"live_view_socket_addr": second})
    sub = subscriber(ctx, second)
    join(live, sub)
    live.process_frame(Frame(np.ones((4, 4), "u2"), 5))
    assert sub.poll(5000) and json.loads(sub.recv_multipart()[0])["frame_num"] == 5
    assert live.status()["live_view_socket_addr"] == second


def test_back_to_the_address_in_use_before_the_change_took_effect(live, ctx):
    """A change not yet adopted by the plugin thread can be undone: no bind against our own socket."""
    first, second = free_tcp_endpoint(), free_tcp_endpoint()
    live.configure({"live_view_socket_addr": first})
    live.process_frame(Frame(np.ones((4, 4), "u2"), 0))  # the plugin thread now sends on `first`
    live.configure({"live_view_socket_addr": second})  # bound, pending until the next frame
    live.configure({"live_view_socket_addr": first})
    wait_for(lambda: endpoint_free(second), what="the dropped socket to release its port")
    sub = subscriber(ctx, first)
    join(live, sub)
    live.process_frame(Frame(np.ones((4, 4), "u2"), 9))
    assert sub.poll(5000) and json.loads(sub.recv_multipart()[0])["frame_num"] == 9
    assert live.status()["live_view_socket_addr"] == first
