"""Batched data-path notifications: the wire format, and batched = unbatched frame by frame and in every counter."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest
import zmq
from harness import FakeReceiver, Daemon, wait_for
from test_pipeline import CHECKER

from framechain.ipc import IpcMessage, buffer_size_for, free_tcp_endpoint
from framechain.ipc.batch import BATCH_MAGIC, MAX_BATCH, PendingBatch, decode_batch, encode_batch, is_batch
from framechain.ipc.errors import ProtocolError
from framechain.ipc.shm import STATE_READY, FrameHeader


def test_batch_round_trip_and_layout():
    raw = encode_batch("frame_release", [7, 2**40, -1], [3, 0, 2**31 - 1])
    assert is_batch(raw) and raw[:5] == BATCH_MAGIC + b"L" and len(raw) == 9 + 3 * 12
    assert int.from_bytes(raw[5:9], "little") == 3 and int.from_bytes(raw[9:17], "little") == 7
    assert decode_batch(raw) == ("frame_release", [7, 2**40, -1], [3, 0, 2**31 - 1])
    assert decode_batch(encode_batch("frame_ready", [1], [2])) == ("frame_ready", [1], [2])
    assert not is_batch(IpcMessage("notify", "frame_ready", {"frame": 1, "buffer_id": 2}).encode())
    pending = PendingBatch("frame_ready")
    assert pending.take() is None and pending.add(4, 1) == 1 and pending.extend([5, 6], [2, 3]) == 3
    assert decode_batch(pending.take()) == ("frame_ready", [4, 5, 6], [1, 2, 3]) and len(pending) == 0
    pending.add(9, 9)
    assert pending.clear() == 1 and pending.take() is None


@pytest.mark.parametrize("raw,why", [
    (b"FCB", "shorter than"), (b"FCB2R\x01\x00\x00\x00" + bytes(12), "not a batch"),
    (BATCH_MAGIC + b"X\x01\x00\x00\x00" + bytes(12), "neither"),
    (BATCH_MAGIC + b"R\x00\x00\x00\x00", "outside 1.."), (BATCH_MAGIC + b"R\xff\xff\x00\x00", "outside 1.."),
    (BATCH_MAGIC + b"R\x02\x00\x00\x00" + bytes(12), "must be 33 bytes"),
])
def test_malformed_batches_say_what_is_wrong(raw, why):
    with pytest.raises(ProtocolError, match=why):
        decode_batch(raw)


def test_encode_refuses_what_it_cannot_carry():
    for args in (("status", [1], [1]), ("frame_ready", [], []), ("frame_ready", [1, 2], [1]),
                 ("frame_ready", [0] * (MAX_BATCH + 1), [0] * (MAX_BATCH + 1))):
        with pytest.raises(ValueError, match="a batch is"):
            encode_batch(*args)


def _ramp_run(pipeline, checker, n, batch, copy, pool=None, delay=0.0, h5=None):
    pipeline.configure_receiver({"type": "simulated", "pattern": "ramp", "shape": [24, 40], "dtype": "uint16",
                                 "frames": n}, max_buffer_mem=48 * buffer_size_for(24 * 40 * 2), notify_batch=batch)
    plugins = [("check", "RampChecker", checker, "frame_receiver", {"delay": delay})]
    if h5 is not None:
        plugins.append(("hdf", "FileWriterPlugin", "framechain.plugins.hdf5_writer", "check",
                        {"file": {"path": str(h5.parent), "prefix": h5.stem}, "frames": n,
                         "dataset": {"data": {"dims": [24, 40], "datatype": "uint16", "chunks": [1, 24, 40]}},
                         "write": True}))
    pipeline.setup_processor(plugins, copy=copy)
    if pool is not None:
        pipeline.processor.ok("configure", {"shared_memory": {"max_pool_memory": pool}})
    pipeline.start()
    rx = pipeline.wait_done()
    last = "hdf" if h5 is not None else "check"
    st = wait_for(lambda: (s := pipeline.processor.status())[last]["acquisitions"] == 1
                  and s["frames"]["released"] == n and s)
    return rx, st


@pytest.mark.parametrize("batch,copy,pool,delay", [
    (1, True, None, 0.0), (64, True, None, 0.0), (64, False, None, 0.0), (7, False, None, 0.0),
    (64, True, 3 * 24 * 40 * 2, 0.0),          # copy mode, a pool of three frames: exhausted mid-batch
    (64, False, None, 0.002),                  # a slow plugin: the chain stalls mid-batch
])
def test_batched_frames_equal_unbatched_frame_by_frame(pipeline, checker_path, batch, copy, pool, delay):
    n = 600
    rx, st = _ramp_run(pipeline, checker_path, n, batch, copy, pool, delay)
    chk = st["check"]
    # every pixel of every frame, each frame once, and the counters as an unbatched run has them
    assert (chk["good"], chk["bad"], chk["unique"], chk["first"], chk["last"], chk["eoa"]) == (n, 0, n, 0, n - 1, 1)
    assert st["frames"]["received"] == st["frames"]["released"] == n and st["frames"]["bad"] == 0
    assert st["check"]["frames_received"] == st["check"]["frames_processed"] == n
    assert rx["frames"]["received"] == rx["frames"]["released"] == n and rx["frames"]["bad_releases"] == 0
    assert rx["buffers"]["consistent"] and rx["buffers"]["mapped"] == 0
    batches = st["batches"]["received"]
    assert (batches == 0) if batch == 1 else (n / batch <= batches <= n)
    assert st["shared_memory"]["release_batching"] is (batch > 1)


def test_batched_and_unbatched_files_are_identical(tmp_path, checker_path):
    from harness import Pipeline
    files = []
    for batch in (1, 32):
        (tmp_path / f"b{batch}").mkdir()
        p = Pipeline(tmp_path / f"b{batch}", processor_args=["--plugin-path", str(tmp_path)])
        try:
            _ramp_run(p, checker_path, 300, batch, False, h5=tmp_path / f"b{batch}" / "run")
        finally:
            p.close()
        files += sorted((tmp_path / f"b{batch}").glob("run*.h5"))
    with h5py.File(files[0]) as a, h5py.File(files[1]) as b:
        assert a["entry/data/data"].shape == (300, 24, 40)
        np.testing.assert_array_equal(a["entry/data/data"][()], b["entry/data/data"][()])
        np.testing.assert_array_equal(a["entry/instrument/detector/parameters/frame_number"][()], np.arange(300))


@pytest.fixture
def checker_path(tmp_path):
    path = tmp_path / "ramp_checker.py"
    path.write_text(CHECKER)
    return str(path)


def test_hostile_batches_are_counted_and_good_ones_still_flow(tmp_path):
    fake = FakeReceiver(8, 64)
    for bid in range(8):
        fake.buf.write_header(bid, FrameHeader(100 + bid, "<u1", (8, 8), 64, 0.0, "", "data", STATE_READY))
    fp = Daemon("processor", [], free_tcp_endpoint(), tmp_path / "fp.log")
    try:
        fp.ok("configure", {"fr_setup": {"fr_ready_cnxn": fake.ready, "fr_release_cnxn": fake.release,
                                         "fr_shared_mem": fake.name},
                            "plugin": {"load": {"index": "d", "library": "dummy"},
                                       "connect": {"index": "d", "connection": "frame_receiver"}}})
        fake.wait_subscribed()
        fake.send("buffer_config", {"shared_buffer_name": fake.name, "notify_batch": 16})
        for raw in (BATCH_MAGIC + b"R\x05\x00\x00\x00", BATCH_MAGIC + b"?", encode_batch("frame_release", [1], [1])):
            fake.pub.socket.send(raw)
        time.sleep(0.3)  # the buffer_config first: releases from here on are batched
        # one batch: two good frames, a wrong frame number, a buffer out of range
        fake.pub.socket.send(encode_batch("frame_ready", [100, 101, 5, 103], [0, 1, 2, 99]))
        st = wait_for(lambda: (s := fp.status())["d"]["frames_processed"] == 2 and s, what="the good frames")
        assert st["batches"] == {"received": 1, "bad": 3}
        assert st["frames"]["bad"] == 2 and "outside 0..7" in st["frames"]["last_bad"]
        assert fp.proc.poll() is None and st["process"]["internal_errors"] == 0
        # the releases come back batched: buffers 0, 1 (processed) and 2 (bad frame), never 99
        seen: list[int] = []
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            if fake.sub.poll(100):
                raw = fake.sub.recv()
                assert is_batch(raw), raw[:40]
                kind, _, bids = decode_batch(raw)
                assert kind == "frame_release"
                seen += bids
        assert sorted(seen) == [0, 1, 2]
    finally:
        fp.stop()
        fake.close()


def test_odin_single_messages_stay_the_default(pipeline, checker_path):
    """notify_batch 1 (the default) sends odin-data's JSON frame_ready and takes JSON releases only."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pipeline.ready)
    try:
        time.sleep(0.3)
        rx, st = _ramp_run(pipeline, checker_path, 50, 1, True)
        seen = []
        while sub.poll(200):
            seen.append(sub.recv())
        assert seen and not any(is_batch(r) for r in seen)
        assert sum(IpcMessage.decode(r).params.get("buffer_id") is not None for r in seen) == 50
        assert pipeline.receiver.ok("request_configuration", {})["notify_batch"] == 1
    finally:
        sub.close()
