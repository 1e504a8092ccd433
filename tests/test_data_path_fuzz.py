"""Hostile data-path messages (hypothesis): frame_ready to a real processor from a fake receiver, frame_release
and request_buffer_config to a real receiver from a raw PUB. Every bad one is counted, neither daemon dies,
and the receiver's books hold throughout (``empty + mapped == total``).

``FRAMECHAIN_FUZZ_EXAMPLES`` sets the number of generated messages (as for the control fuzz)."""

from __future__ import annotations

import json
import os
import time

import pytest
import zmq
from harness import Daemon, FakeReceiver, unique_shm_name, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framechain.ipc import IpcMessage, free_tcp_endpoint
from framechain.ipc.batch import BATCH_MAGIC, encode_batch
from framechain.ipc.shm import FrameHeader, STATE_READY

EXAMPLES = int(os.environ.get("FRAMECHAIN_FUZZ_EXAMPLES", "500"))
TS = "2026-12-03T00:00:00.000000"
NUM_BUFFERS = 8

_value = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=3))


def _message(msg_val: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    params = st.fixed_dictionaries({}, optional={"frame": _value, "buffer_id": st.one_of(
        st.integers(-3, NUM_BUFFERS + 3), _value), "end_of_acquisition": _value, "start_of_acquisition": _value,
        "acquisition_id": _value, "frames": _value, "shared_buffer_name": _value})
    good = st.builds(lambda v, p: json.dumps({"msg_type": "notify", "msg_val": v, "id": 1, "timestamp": TS,
                                              "params": p}).encode(), msg_val, params)
    return st.one_of(good, st.binary(max_size=200), good.map(lambda b: b[: len(b) // 2]),
                     st.builds(lambda b: b"[" * 3000 + b, st.binary(max_size=5)))


def _batch() -> st.SearchStrategy[bytes]:
    """framechain batches (ipc/batch.py): well-formed ones with any frame numbers and buffer ids, truncated ones,
    and garbage behind the magic."""
    items = st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(-2**31, 2**31 - 1)), min_size=1,
                     max_size=12)
    good = st.builds(lambda kind, it: encode_batch(kind, [f for f, _ in it], [b for _, b in it]),
                     st.sampled_from(["frame_ready", "frame_release"]), items)
    near = st.builds(lambda kind, it: encode_batch(kind, [f for f, _ in it], [b % (NUM_BUFFERS + 3) - 1 for _, b in it]),
                     st.sampled_from(["frame_ready", "frame_release"]), items)
    return st.one_of(good, near, good.map(lambda b: b[:-1]), st.builds(lambda t: BATCH_MAGIC + t, st.binary(max_size=40)))


@pytest.fixture(scope="module")
def processor_and_fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpf")
    fake = FakeReceiver(NUM_BUFFERS, 64)
    for bid in range(NUM_BUFFERS):
        fake.buf.write_header(bid, FrameHeader(bid, "<u1", (8, 8), 64, 0.0, "", "data", STATE_READY))
    fp = Daemon("processor", [], free_tcp_endpoint(), tmp / "fp.log")
    fp.ok("configure", {"fr_setup": {"fr_ready_cnxn": fake.ready, "fr_release_cnxn": fake.release,
                                     "fr_shared_mem": fake.name},
                        "plugin": {"load": {"index": "d", "library": "dummy"},
                                   "connect": {"index": "d", "connection": "frame_receiver"}}})
    fake.wait_subscribed()
    yield fp, fake
    fp.stop()
    fake.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_processor_counts_every_hostile_frame_ready(processor_and_fake, data):
    fp, fake = processor_and_fake
    raw = data.draw(st.one_of(_message(st.sampled_from(["frame_ready", "buffer_config", "frame_release", "status"])),
                              _batch()))
    fake.pub.socket.send(raw)


def test_processor_survived_the_data_path_fuzz(processor_and_fake):
    fp, fake = processor_and_fake
    time.sleep(0.5)
    st_ = fp.status()  # still answering
    assert fp.proc.poll() is None
    assert st_["frames"]["bad"] > 0 and st_["process"]["internal_errors"] == 0, st_["frames"]
    assert st_["batches"]["bad"] > 0 and st_["batches"]["received"] > 0, st_["batches"]
    # and still processes a good frame afterwards
    before = st_["d"]["frames_processed"]
    fake.send("frame_ready", {"frame": 0, "buffer_id": 0})
    wait_for(lambda: fp.status()["d"]["frames_processed"] > before, what="a good frame after the fuzz")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpr")
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    rx = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp / "rx.log")
    rx.ok("configure", {"shared_buffer_name": unique_shm_name(), "max_buffer_mem": NUM_BUFFERS * 4096,
                        "source": {"type": "simulated", "shape": [8, 8], "frames": 0, "rate": 200}})
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(release)
    time.sleep(0.3)
    rx.ok("execute", {"source": {"command": "start"}})  # frames fill buffers nobody releases but us
    yield rx, pub
    pub.close()
    rx.stop()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_receiver_counts_every_hostile_release(receiver, data):
    rx, pub = receiver
    pub.send(data.draw(st.one_of(_message(st.sampled_from(["frame_release", "request_buffer_config", "frame_ready"])),
                                 _batch())))
    if data.draw(st.integers(0, 50)) == 0:  # now and then, the books must balance
        b = rx.status()["buffers"]
        assert b["empty"] + b["mapped"] == b["total"] and b["consistent"], b


def test_receiver_survived_the_release_fuzz(receiver):
    rx, pub = receiver
    time.sleep(0.5)
    st_ = rx.status()
    assert rx.proc.poll() is None and st_["process"]["internal_errors"] == 0
    b = st_["buffers"]
    assert b["empty"] + b["mapped"] == b["total"] and b["consistent"]
    assert st_["frames"]["bad_releases"] > 0
    # a well-formed release is still accounted after it all: it frees a mapped buffer or counts as a bad release
    before = st_["frames"]["released"] + st_["frames"]["bad_releases"]
    pub.send(IpcMessage("notify", "frame_release", {"frame": 0, "buffer_id": 0}).encode())
    wait_for(lambda: (f := rx.status()["frames"])["released"] + f["bad_releases"] > before,
             what="the release after the fuzz to be accounted")


def test_names_that_crash_posix_ipc_are_refused_on_every_path(tmp_path):
    """posix_ipc segfaults on a segment name holding NUL or an unpaired surrogate (JSON can carry both): a
    receiver configure, a processor fr_setup and a data-path buffer_config with one are refused, nobody dies."""
    fake = FakeReceiver(2, 64)
    ready, release = free_tcp_endpoint(), free_tcp_endpoint()
    rx = Daemon("receiver", ["--ready", ready, "--release", release], free_tcp_endpoint(), tmp_path / "rx.log")
    fp = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        for bad in ("a\x00b", "ab\ud800"):
            r = rx.request("configure", {"shared_buffer_name": bad, "source": {"type": "simulated"}})
            assert r.msg_type == "nack" and "shared_buffer_name" in r.error, r.error
            r = fp.request("configure", {"fr_setup": {"fr_ready_cnxn": fake.ready, "fr_release_cnxn": fake.release,
                                                      "fr_shared_mem": bad}})
            assert r.msg_type == "nack" and "fr_shared_mem" in r.error, r.error
        fp.ok("configure", {"fr_setup": {"fr_ready_cnxn": fake.ready, "fr_release_cnxn": fake.release,
                                         "fr_shared_mem": fake.name}})
        fake.wait_subscribed()
        for bad in ("a\x00b", "ab\ud800"):
            fake.send("buffer_config", {"shared_buffer_name": bad})
            fake.send("frame_ready", {"start_of_acquisition": True, "acquisition_id": "x",
                                      "header_segment": bad, "arrays": {"pixel_mask/data": {}}})
        time.sleep(0.5)
        assert fp.proc.poll() is None and rx.proc.poll() is None
        st = fp.status()
        # the bad buffer_config left the mapping as it was; the bad header segments are counted
        assert st["shared_memory"]["shared_buffer_name"] == fake.name and st["shared_memory"]["mapped"]
        assert st["shared_memory"]["detector"]["headers_bad"] == 2
        assert "printable" in fp.log()
    finally:
        fp.stop()
        rx.stop()
        fake.close()
