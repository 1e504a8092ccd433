"""A framechain receiver with an odin-data C++ frameProcessor as its peer: odin's processor subscribes to
frame_ready with one plain subscription and treats every frame_ready as a frame, so the receiver sends it
no start/end-of-acquisition notices (which have no buffer_id); with a framechain processor beside it, it does."""

import json
import time

import zmq
from harness import Daemon, Pipeline, unique_shm_name, wait_for

from framechain.ipc import free_tcp_endpoint


def _odin_like_peer(ready: str, release: str) -> tuple[zmq.Socket, zmq.Socket]:
    """What odin's SharedMemoryController opens: a SUB on frame_ready (subscribed to everything) and a PUB
    on frame_release."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ready)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(release)
    return sub, pub


def _serve(sub, pub, seconds: float) -> list[dict]:
    """Release every frame as odin's processor would; every frame_ready received."""
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        if sub.poll(100):
            msg = json.loads(sub.recv())
            got.append(msg)
            p = msg["params"]
            if "buffer_id" in p:
                pub.send_string(json.dumps({"msg_type": "notify", "msg_val": "frame_release", "id": 0,
                                            "timestamp": "2026-12-02T00:00:00.000000",
                                            "params": {"frame": p["frame"], "buffer_id": p["buffer_id"]}}))
    return got


def test_only_odin_peers_get_no_acquisition_notices(tmp_path):
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    rx = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / "rx.log")
    sub, pub = _odin_like_peer(ready, release)
    try:
        rx.ok("configure", {"shared_buffer_name": unique_shm_name(),
                            "source": {"type": "simulated", "shape": [16, 16], "frames": 5}})
        wait_for(lambda: rx.status()["ready_subscribers"] == 1, what="the odin-like peer to subscribe")
        assert rx.status()["ready_subscribers_framechain"] == 0
        time.sleep(0.3)  # the release PUB joins asynchronously
        rx.ok("execute", {"source": {"command": "start"}})
        got = _serve(sub, pub, 2.0)
        assert [m["msg_val"] for m in got if m["msg_val"] != "buffer_config"] == ["frame_ready"] * 5
        assert all("buffer_id" in m["params"] for m in got if m["msg_val"] == "frame_ready")
        st = wait_for(lambda: (s := rx.status())["buffers"]["mapped"] == 0 and s, what="every buffer back")
        assert st["acquisition_notices_skipped"] == 1 and st["frames"]["released"] == 5
    finally:
        sub.close()
        pub.close()
        rx.stop()


def test_a_framechain_peer_beside_odin_still_gets_the_end(tmp_path):
    with Pipeline(tmp_path) as pipe:
        sub, pub = _odin_like_peer(pipe.ready, pipe.release)
        try:
            pipe.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 5})
            pipe.setup_processor([("sum", "SumPlugin", "sum", "frame_receiver")])
            wait_for(lambda: pipe.receiver.status()["ready_subscribers"] == 2, what="both peers to subscribe")
            assert pipe.receiver.status()["ready_subscribers_framechain"] == 1
            pipe.start()
            _serve(sub, pub, 1.0)
            wait_for(lambda: pipe.plugin_status("sum")["acquisitions"] == 1, what="the end of acquisition")
            assert pipe.receiver.status()["acquisition_notices_skipped"] == 0
        finally:
            sub.close()
            pub.close()
