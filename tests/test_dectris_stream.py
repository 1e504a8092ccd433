"""DECTRIS stream v2 in: ``framechain simulate dectris`` (a real PUSH player subprocess) -> receiver ->
processor -> HDF5 writer, bit-exact for every compression and two channels; malformed messages are
counted and dropped, and block mode loses nothing when the chain is slower than the detector."""

from __future__ import annotations

import json
import subprocess
import sys

import cbor2
import h5py
import hdf5plugin  # noqa: F401  (registers the filters for reading)
import numpy as np
import pytest
import zmq
from harness import wait_for

from framechain.client.simulate import encode_image, ramp_frame
from framechain.framereceiver.dectris import StreamError, decode_v2
from framechain.ipc import buffer_size_for, free_tcp_endpoint

DET = "/entry/instrument/detector"


def _player(endpoint: str, frames: int, shape, compression: str, channels: str, *extra: str,
            version: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "simulate", "dectris", "--version",
                             str(version),
                             "--endpoint", endpoint, "--frames", str(frames), "--shape", *map(str, shape),
                             "--compression", compression, "--channels", channels, "--series-id", "42", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _writer(path, names, shape, frames):
    return {"file": {"path": str(path), "prefix": "det"}, "frames": frames, "master": names[0],
            "dataset": {n: {"datatype": "uint16", "dims": list(shape)} for n in names}}


@pytest.mark.parametrize("version, compression, detail", [
    (2, "bslz4", ""), (2, "lz4", ""), (2, "none", ""),
    (1, "bslz4", "all"), (1, "lz4", "basic"), (1, "none", "none")])
def test_stream_bit_exact_through_the_writer(pipeline, tmp_path, version, compression, detail):
    """v2: two channels, each its own dataset; v1: one image per message, every encoding and header detail."""
    shape, n = (48, 64), 30
    names = ["threshold_1", "threshold_2"] if version == 2 else ["data"]
    endpoint = free_tcp_endpoint()
    extra = ("--header-detail", detail) if detail else ()
    player = _player(endpoint, n, shape, compression, ",".join(names), *extra, version=version)
    try:
        pipeline.configure_receiver({"type": f"dectris_v{version}", "endpoint": endpoint, "shape": list(shape)})
        pipeline.setup_processor([("hdf", "FileWriterPlugin", "hdf5_writer", "frame_receiver",
                                   _writer(tmp_path, names, shape, n))])
        pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        pipeline.start()
        assert player.wait(60) == 0, player.stderr.read()
        wait_for(lambda: pipeline.plugin_status("hdf")["acquisitions"] == 1, what="the series to end downstream")
        wait_for(lambda: not pipeline.plugin_status("hdf")["writing"], what="the writer to close its file")
    finally:
        player.kill()
        player.wait()
    rx = pipeline.receiver.status()
    assert rx["frames"]["received"] == len(names) * n and rx["frames"]["dropped"] == 0
    assert rx["frames"]["bad_images"] == 0
    assert rx["source"]["series"] == 1
    if version == 2:
        assert rx["source"]["detector"]["image_size_x"] == shape[1]
    else:
        assert rx["source"]["header_parts"] == (["countrate_table", "flatfield", "pixel_mask"] if detail == "all"
                                                else [])
        assert ("x_pixels_in_detector" in rx["source"]["detector"]) == (detail != "none")
    (path,) = tmp_path.glob("det_42_*.h5")  # the series id is the acquisition id
    with h5py.File(path, "r") as f:
        for c, name in enumerate(names):
            got = f[f"{DET}/{name}"][...]
            want = np.stack([ramp_frame(i, shape, np.dtype("u2"), c) for i in range(n)])
            np.testing.assert_array_equal(got, want)


def test_block_mode_waits_for_a_slow_chain_and_loses_nothing(pipeline, tmp_path):
    """4 buffers and a plugin that sleeps: the receiver stops reading the stream, the player waits."""
    shape, n = (16, 16), 60
    endpoint = free_tcp_endpoint()
    plugin = tmp_path / "slow.py"
    plugin.write_text("import time\nfrom framechain.frameprocessor import FrameProcessorPlugin\n"
                      "class Slow(FrameProcessorPlugin):\n"
                      "    def process_frame(self, frame):\n        time.sleep(0.005)\n")
    player = _player(endpoint, n, shape, "bslz4", "threshold_1", "--hwm", "2")
    try:
        pipeline.configure_receiver({"type": "dectris_v2", "endpoint": endpoint, "shape": list(shape)},
                                    max_buffer_mem=4 * buffer_size_for(16 * 16 * 2))
        pipeline.setup_processor([("slow", "Slow", str(plugin), "frame_receiver")], copy=False)
        pipeline.start()
        assert player.wait(60) == 0, player.stderr.read()
        wait_for(lambda: pipeline.plugin_status("slow")["acquisitions"] == 1, what="the end of the series")
    finally:
        player.kill()
        player.wait()
    assert pipeline.plugin_status("slow")["frames_processed"] == n
    rx = pipeline.receiver.status()
    assert rx["frames"]["received"] == n and rx["frames"]["dropped"] == 0 and rx["buffers"]["consistent"]


def test_malformed_stream_messages_are_counted_and_dropped(pipeline):
    shape = (8, 8)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        pipeline.configure_receiver({"type": "dectris_v2", "endpoint": f"tcp://127.0.0.1:{port}",
                                     "shape": list(shape)})
        pipeline.setup_processor([("d", "DummyPlugin", "dummy", "frame_receiver")])
        pipeline.start()
        good = ramp_frame(0, shape, np.dtype("u2"))
        bad = [b"not cbor \xff", cbor2.dumps([1, 2]), cbor2.dumps({"type": "image", "data": 3}),
               cbor2.dumps({"type": "image", "image_id": 1, "data": {"t": cbor2.CBORTag(40, [[8, 8], cbor2.CBORTag(
                   69, cbor2.CBORTag(56500, ["zstd", 0, b"xx"]))])}})]
        too_big = cbor2.dumps({"type": "image", "image_id": 2, "data": {"t": encode_image(
            np.zeros((64, 64), "u2"), "none")}})
        corrupt = encode_image(good, "bslz4")
        corrupt.value[1].value.value[2] = corrupt.value[1].value.value[2][:20]  # truncated compressed bytes
        for raw in [cbor2.dumps({"type": "start", "series_id": 5, "channels": ["t"]}), *bad, too_big,
                    cbor2.dumps({"type": "image", "series_id": 5, "image_id": 3, "data": {"t": corrupt}}),
                    cbor2.dumps({"type": "image", "series_id": 5, "image_id": 0, "data": {"t": encode_image(
                        good, "lz4")}}),
                    cbor2.dumps({"type": "end", "series_id": 5})]:
            push.send(raw)
        wait_for(lambda: pipeline.plugin_status("d")["acquisitions"] == 1, what="the end of the series")
        rx = pipeline.receiver.status()
        assert rx["source"]["bad_messages"] == 3  # not CBOR, not a map, data not a map of channels
        assert rx["frames"]["bad_images"] == 3  # unknown compression, too big for the buffers, truncated bslz4
        assert rx["frames"]["received"] == 1 and pipeline.plugin_status("d")["frames_processed"] == 1
        assert rx["source"]["state"] == "running" and rx["process"]["internal_errors"] == 0
    finally:
        push.close()


@pytest.mark.parametrize("raw", [b"", b"\xa1", cbor2.dumps({"type": 3}), cbor2.dumps({"type": "image"}),
                                 cbor2.dumps({"type": "image", "data": {"t": cbor2.CBORTag(40, [[2], 5])}})])
def test_decode_refuses_what_it_cannot_use(raw):
    with pytest.raises(StreamError):
        decode_v2(raw)


@pytest.mark.parametrize("parts, why", [
    ([], "empty"), ([b"{"], "not JSON"), ([b'{"htype": "dimage-1.0", "frame": 1}'], "at least 3"),
    ([b'{"htype": "dimage-1.0", "frame": -1}', b"{}", b""], "non-negative"),
    ([b'{"htype": "dimage-1.0", "frame": 1}', b'{"htype": "dimage_d-1.0", "shape": [2, 2], "type": "uint16", '
      b'"encoding": "zip<"}', b"xxxx"], "encoding 'zip<'"),
    ([b'{"htype": "dfoo-1.0"}'], "unknown htype"),
])
def test_decode_v1_refuses_what_it_cannot_use(parts, why):
    from framechain.framereceiver.dectris import decode_v1
    with pytest.raises(StreamError, match=why):
        decode_v1(parts)


def test_fan_out_to_three_receivers_writes_every_frame_once_in_order(tmp_path):
    """player -> framechain fan (block 4) -> 3 receiver/processor pairs -> rank writers; rank 0's VDS reads
    every frame in order, each rank file holds only its blocks."""
    from harness import Pipeline
    shape, n, block, ranks = (16, 24), 101, 4, 3
    out = tmp_path / "out"
    out.mkdir()
    upstream, consumers = free_tcp_endpoint(), [free_tcp_endpoint() for _ in range(ranks)]
    pipes, procs = [], []
    try:
        for r in range(ranks):
            d = tmp_path / f"p{r}"
            d.mkdir()
            p = Pipeline(d)
            pipes.append(p)
            p.configure_receiver({"type": "dectris_v2", "endpoint": consumers[r], "shape": list(shape)})
            cfg = _writer(out, ["threshold_1"], shape, n)
            cfg["process"] = {"number": ranks, "rank": r, "frames_per_block": block}
            p.setup_processor([("hdf", "FileWriterPlugin", "hdf5_writer", "frame_receiver", cfg)])
            p.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        fan = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "fan", "--upstream", upstream,
                                "--consumers", *consumers, "--block", str(block), "--series", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(fan)
        for p in pipes:
            p.start()  # each receiver connects to its fan endpoint; the fan then connects upstream
        player = _player(upstream, n, shape, "bslz4", "threshold_1")
        procs.append(player)
        assert player.wait(60) == 0, player.stderr.read()
        assert fan.wait(60) == 0, fan.stderr.read()
        report = json.loads(fan.stdout.read().strip().splitlines()[-1])
        want = [sum(1 for i in range(n) if (i // block) % ranks == r) for r in range(ranks)]
        assert report == {"series": 42, "images": want, "bad_messages": 0}
        for r, p in enumerate(pipes):
            wait_for(lambda p=p: not p.plugin_status("hdf")["writing"], what=f"rank {r} to close its file")
            st = p.plugin_status("hdf")
            assert st["frames_written"] == want[r] and st["frames_rejected"] == 0 and st["error"] == "", st
        (vds,) = out.glob("*_vds.h5")
        with h5py.File(vds, "r") as f:
            got = f["/entry/data/data"][...]
        np.testing.assert_array_equal(got, np.stack([ramp_frame(i, shape, np.dtype("u2")) for i in range(n)]))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for p in pipes:
            p.close()


def test_bslz4_passes_through_compressed_and_is_decoded_only_for_pixel_plugins(pipeline, tmp_path):
    """decompress: false: the detector's bslz4 chunks travel compressed; a BSLZ4 writer stores them byte for
    byte (read_direct_chunk), an uncompressed writer and a sum plugin get them decoded, bit-exact."""
    shape, n = (48, 64), 20
    endpoint = free_tcp_endpoint()
    (tmp_path / "bs").mkdir()
    (tmp_path / "raw").mkdir()
    player = _player(endpoint, n, shape, "bslz4", "threshold_1")
    try:
        pipeline.configure_receiver({"type": "dectris_v2", "endpoint": endpoint, "shape": list(shape),
                                     "decompress": False})
        bs, raw = _writer(tmp_path / "bs", ["threshold_1"], shape, n), _writer(tmp_path / "raw", ["threshold_1"],
                                                                               shape, n)
        bs["dataset"]["threshold_1"]["compression"] = "BSLZ4"
        pipeline.setup_processor([("bs", "FileWriterPlugin", "hdf5_writer", "frame_receiver", bs),
                                  ("raw", "FileWriterPlugin", "hdf5_writer", "frame_receiver", raw),
                                  ("sum", "SumPlugin", "sum", "frame_receiver")])
        pipeline.processor.ok("execute", {"bs": {"command": "start_writing"}, "raw": {"command": "start_writing"}})
        pipeline.start()
        assert player.wait(60) == 0, player.stderr.read()
        for w in ("bs", "raw"):
            wait_for(lambda w=w: not pipeline.plugin_status(w)["writing"], what=f"{w} to close its file")
        wait_for(lambda: pipeline.plugin_status("sum")["acquisitions"] == 1, what="the end of the series")
    finally:
        player.kill()
        player.wait()
    st = pipeline.processor.status()
    assert pipeline.receiver.status()["frames"]["compressed"] == n and st["frames"]["compressed"] == n
    assert st["bs"]["frames_passed_through"] == n and st["bs"]["frames_decompressed"] == 0
    assert st["raw"]["frames_passed_through"] == 0 and st["raw"]["frames_decompressed"] == n
    assert st["sum"]["frames_decompressed"] == n and st["sum"]["frames_processed"] == n
    frames = [ramp_frame(i, shape, np.dtype("u2")) for i in range(n)]
    assert st["sum"]["last"]["sum"] == int(frames[-1].astype(np.int64).sum())
    for sub in ("bs", "raw"):
        (path,) = (tmp_path / sub).glob("det_42_*.h5")
        with h5py.File(path, "r") as f:
            ds = f[f"{DET}/threshold_1"]
            np.testing.assert_array_equal(ds[...], np.stack(frames))
            if sub == "bs":
                for i, frame in enumerate(frames):
                    _mask, chunk = ds.id.read_direct_chunk((i, 0, 0))
                    assert chunk == encode_image(frame, "bslz4").value[1].value.value[2]  # the stream's blob


def test_a_bad_chunk_meant_to_pass_through_is_counted_not_a_receiver_fault(pipeline, tmp_path):
    """decompress: false: the receiver checks each chunk's header (a wrong size is a bad image there); the
    writer walks its blocks before storing it (a truncated one is rejected) and a pixel plugin cannot decode
    it (an error); the good image after them is written and summed."""
    shape = (64, 64)  # four 2 KiB bitshuffle blocks: the truncation below lands inside the last one
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        pipeline.configure_receiver({"type": "dectris_v2", "endpoint": f"tcp://127.0.0.1:{port}",
                                     "shape": list(shape), "decompress": False})
        writer = _writer(tmp_path, ["t"], shape, 3)
        writer["dataset"]["t"]["compression"] = "BSLZ4"
        pipeline.setup_processor([("w", "FileWriterPlugin", "hdf5_writer", "frame_receiver", writer),
                                  ("sum", "SumPlugin", "sum", "frame_receiver")])
        pipeline.processor.ok("execute", {"w": {"command": "start_writing"}})
        pipeline.start()
        rng = np.random.default_rng(3)
        good = rng.integers(0, 4000, shape, dtype=np.uint16)  # noisy: compresses little, blocks stay long
        wrong_size = encode_image(good, "bslz4")
        blob = wrong_size.value[1].value.value[2]
        wrong_size.value[1].value.value[2] = (99).to_bytes(8, "big") + blob[8:]
        truncated = encode_image(good, "bslz4")
        truncated.value[1].value.value[2] = blob[:len(blob) - 100]
        for image_id, arr in ((1, wrong_size), (2, truncated), (0, encode_image(good, "bslz4"))):
            push.send(cbor2.dumps({"type": "image", "series_id": 5, "image_id": image_id, "data": {"t": arr}}))
        push.send(cbor2.dumps({"type": "end", "series_id": 5}))
        wait_for(lambda: pipeline.plugin_status("sum")["acquisitions"] == 1, what="the end of the series")
        rx = pipeline.receiver.status()
        assert rx["frames"]["bad_images"] == 1 and rx["frames"]["received"] == 2 and rx["frames"]["compressed"] == 2
        assert rx["process"]["internal_errors"] == 0
        st = pipeline.processor.status()
        assert st["w"]["frames_rejected"] == 1 and "frame 2" in st["w"]["last_rejected"], st["w"]
        assert st["w"]["frames_passed_through"] == 1
        assert st["sum"]["errors"] == 1 and "does not decode" in st["sum"]["last_error"], st["sum"]
        assert st["sum"]["last"]["sum"] == int(good.astype(np.int64).sum())
        wait_for(lambda: pipeline.plugin_status("w")["frames_written"] == 1, what="the good frame written")
    finally:
        push.close()


MASK_CHECKER = '''
import numpy as np
from framechain.frameprocessor import FrameProcessorPlugin

class MaskCheck(FrameProcessorPlugin):
    """Records what each frame carries of its series' detector header."""
    def __init__(self, name):
        super().__init__(name)
        self.seen = {}

    def process_frame(self, frame):
        m = frame.mask
        d = frame.detector
        self.seen[f"{frame.dataset}/{frame.frame_number}"] = {
            "unused": [] if m is None else np.flatnonzero(~m).tolist(),
            "count_time": None if d is None else d.parameters.get("count_time",
                                                                 d.parameters.get("photon_energy"))}
        self.push(frame)

    def status(self):
        return {"seen": self.seen}
'''


@pytest.mark.parametrize("version", [2, 1])
def test_start_header_reaches_frames_and_the_writer(pipeline, tmp_path, version):
    """The start's pixel mask becomes frame.mask (shared_memory/detector_mask) and, with its flatfield and
    scalars, is stored by the writer under detector/detectorSpecific (and NeXus fields); frames are intact."""
    from framechain.client.simulate import pixel_mask
    shape, n, bad = (32, 40), 6, 25
    names = ["threshold_1", "threshold_2"] if version == 2 else ["data"]
    endpoint = free_tcp_endpoint()
    extra = ("--header-detail", "all") if version == 1 else ()
    checker = tmp_path / "mask_check.py"
    checker.write_text(MASK_CHECKER)
    (tmp_path / "out").mkdir()
    player = _player(endpoint, n, shape, "bslz4", ",".join(names), "--bad-pixels", str(bad), *extra,
                     version=version)
    try:
        pipeline.configure_receiver({"type": f"dectris_v{version}", "endpoint": endpoint, "shape": list(shape)})
        pipeline.setup_processor([("check", "MaskCheck", str(checker), "frame_receiver"),
                                  ("hdf", "FileWriterPlugin", "hdf5_writer", "check",
                                   _writer(tmp_path / "out", names, shape, n))])
        pipeline.processor.ok("configure", {"shared_memory": {"detector_mask": True}})
        pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        pipeline.start()
        assert player.wait(60) == 0, player.stderr.read()
        wait_for(lambda: pipeline.plugin_status("hdf")["acquisitions"] == 1, what="the series to end downstream")
        wait_for(lambda: not pipeline.plugin_status("hdf")["writing"], what="the writer to close its file")
    finally:
        player.kill()
        player.wait()
    st = pipeline.processor.status()
    assert st["shared_memory"]["detector"]["series"] == ["42"] and st["shared_memory"]["detector"]["headers_bad"] == 0
    seen = st["check"]["seen"]
    assert len(seen) == n * len(names)
    masks = {name: pixel_mask(shape, bad, 42 + c) for c, name in enumerate(names)}
    for name, mask in masks.items():
        want = np.flatnonzero(mask).tolist()
        assert len(want) == bad
        for i in range(n):
            assert seen[f"{name}/{i}"]["unused"] == want
            assert seen[f"{name}/{i}"]["count_time"] == 0.001
    (path,) = (tmp_path / "out").glob("det_42_*.h5")
    with h5py.File(path, "r") as f:
        spec = f[f"{DET}/detectorSpecific"]
        for c, name in enumerate(names):
            np.testing.assert_array_equal(spec[f"{name}/pixel_mask"][...], masks[name])
            np.testing.assert_array_equal(spec[f"{name}/flatfield"][...], np.ones(shape, np.float32))
            np.testing.assert_array_equal(f[f"{DET}/{name}"][...],
                                          np.stack([ramp_frame(i, shape, np.dtype("u2"), c) for i in range(n)]))
        np.testing.assert_array_equal(f[f"{DET}/pixel_mask"][...], masks[names[0]])  # NeXus: the master's
        if version == 2:
            assert f[f"{DET}/count_time"][()] == 0.001 and spec["image_size_x"][()] == shape[1]
            assert f["/entry/instrument/beam/incident_energy"][()] == 12400.0
        else:
            assert spec["x_pixels_in_detector"][()] == shape[1] and spec["header_detail"][()] == b"all"
            np.testing.assert_array_equal(spec["data/countrate_table"][...], np.ones(shape, np.float32))


def test_without_detector_mask_frames_keep_no_mask(pipeline, tmp_path):
    """detector_mask defaults to false: the header still reaches frame.detector, frame.mask stays unset."""
    shape, n = (16, 16), 3
    endpoint = free_tcp_endpoint()
    checker = tmp_path / "mask_check.py"
    checker.write_text(MASK_CHECKER)
    player = _player(endpoint, n, shape, "none", "threshold_1", "--bad-pixels", "5")
    try:
        pipeline.configure_receiver({"type": "dectris_v2", "endpoint": endpoint, "shape": list(shape)})
        pipeline.setup_processor([("check", "MaskCheck", str(checker), "frame_receiver")])
        pipeline.start()
        assert player.wait(60) == 0, player.stderr.read()
        wait_for(lambda: len(pipeline.plugin_status("check")["seen"]) == n, what="every frame")
    finally:
        player.kill()
        player.wait()
    seen = pipeline.plugin_status("check")["seen"]
    assert all(v["unused"] == [] and v["count_time"] == 0.001 for v in seen.values())
