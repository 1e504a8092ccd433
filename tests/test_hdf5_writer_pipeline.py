"""FileWriterPlugin through real receiver and processor daemons: bit-exact files, several writer
processes stitched by the VDS master, a SWMR reader in another process, and SIGKILL survival."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import hdf5plugin  # noqa: F401  (registers the filters for reading)
import numpy as np
from harness import Pipeline, wait_for

from framechain.framereceiver.sources import SimulatedSource

HDF = ("FileWriterPlugin", "framechain.plugins.hdf5_writer")
DATA = "/entry/instrument/detector/data"


def ramp(shape, n_frames, dtype="uint16"):
    src = SimulatedSource(tuple(shape), dtype, n_frames, 0, "ramp")
    out = np.empty((n_frames, *shape), dtype)
    for i in range(n_frames):
        src.fill(i, out[i])
    return out


def writer_cfg(path, prefix, shape, frames, compression="none", **extra):
    cfg = {"file": {"path": str(path), "prefix": prefix}, "frames": frames,
           "dataset": {"data": {"datatype": "uint16", "dims": list(shape), "compression": compression}}}
    cfg.update(extra)
    return cfg


def test_every_compression_bit_exact_with_parameters(pipeline, tmp_path):
    shape, n = [64, 96], 150
    out = tmp_path / "out"
    out.mkdir()
    codecs = ["none", "LZ4", "BSLZ4", "blosc"]
    pipeline.configure_receiver({"type": "simulated", "shape": shape, "frames": n, "pattern": "ramp"})
    plugins = [("sum", "SumPlugin", "framechain.plugins.sum", "frame_receiver")]
    plugins += [(f"hdf_{c}", *HDF, "sum", writer_cfg(out, c, shape, n, c)) for c in codecs]
    plugins += [("after", "DummyPlugin", "framechain.plugins.dummy", "hdf_BSLZ4")]  # the writer passes frames on
    pipeline.setup_processor(plugins)
    for c in codecs:
        pipeline.processor.ok("execute", {f"hdf_{c}": {"command": "start_writing"}})
        assert pipeline.plugin_status(f"hdf_{c}")["writing"] is True
    pipeline.start()
    pipeline.wait_done()
    for c in codecs:
        wait_for(lambda c=c: not pipeline.plugin_status(f"hdf_{c}")["writing"], what=f"hdf_{c} to finish")
        st = pipeline.plugin_status(f"hdf_{c}")
        assert st["frames_written"] == n and st["frames_max"] == n and st["error"] == "", st
        assert set(st["timing"]) >= {f"{a}_{b}" for a in ("last", "max", "mean")
                                     for b in ("create", "write", "flush", "close", "process")}  # process: the worker's
        assert st["timing"]["max_process"] > 0, st["timing"]
    wait_for(lambda: pipeline.plugin_status("after")["frames_processed"] == n, what="frames downstream")
    expect = ramp(shape, n)
    for c in codecs:
        with h5py.File(out / f"{c}_000001.h5", "r") as f:
            np.testing.assert_array_equal(f[DATA][...], expect)
            np.testing.assert_array_equal(f["/entry/data/data"][...], expect)
            p = f["/entry/instrument/detector/parameters"]
            assert list(p["frame_number"][:]) == list(range(n))
            np.testing.assert_array_equal(p["sum"][:], expect.reshape(n, -1).sum(axis=1))
            assert (p["timestamp"][:] > 0).all()


def test_bad_requests_nack_over_the_wire(pipeline, tmp_path):
    pipeline.configure_receiver({"type": "simulated", "shape": [8, 8], "frames": 1})
    pipeline.setup_processor([("hdf", *HDF, "frame_receiver")])
    r = pipeline.processor.request("execute", {"hdf": {"command": "start_writing"}})
    assert r.msg_type == "nack" and "dataset" in r.error
    r = pipeline.processor.request("configure", {"hdf": {"file": {"path": str(tmp_path / "missing")}}})
    assert r.msg_type == "nack" and "missing" in r.error
    r = pipeline.processor.request("configure", {"hdf": {"process": {"number": 2, "rank": 5}}})
    assert r.msg_type == "nack" and "rank" in r.error
    r = pipeline.processor.request("configure", {"hdf": writer_cfg(tmp_path, "x", [8, 8], 1, "gzip")})
    assert r.msg_type == "nack" and "gzip" in r.error
    assert pipeline.processor.ok("request_configuration")["hdf"]["dataset"] == {}


def test_existing_file_for_receivers_acquisition_id_counts_every_frame(pipeline, tmp_path):
    """The receiver's acquisition id names the file; an existing one is kept and every frame reported lost."""
    (tmp_path / "run_scan7_000001.h5").write_bytes(b"precious")
    n = 20
    pipeline.configure_receiver({"type": "simulated", "shape": [8, 8], "frames": n, "acquisition_id": "scan7"})
    pipeline.setup_processor([("hdf", *HDF, "frame_receiver", writer_cfg(tmp_path, "run", [8, 8], n))])
    pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})  # the id is not known yet
    pipeline.start()
    pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.plugin_status("hdf"))["frames_lost"] == n and not s["writing"] and s,
                  what="every frame counted lost")
    assert st["frames_written"] == 0 and st["frames_processed"] == n, st
    assert "run_scan7_000001.h5 already exists" in st["error"], st
    assert (tmp_path / "run_scan7_000001.h5").read_bytes() == b"precious"


def test_four_writer_processes_and_vds(tmp_path):
    """Four processor processes each write their rank's share; rank 0's VDS reads all 1141 in order."""
    shape, n = [16, 24], 1141
    out = tmp_path / "out"
    out.mkdir()
    pipes = []
    try:
        for r in range(4):
            d = tmp_path / f"p{r}"
            d.mkdir()
            pipes.append(Pipeline(d))
        for fpb, prefix, want in ((1, "fpb1", [286, 285, 285, 285]), (1000, "fpb1000", [1000, 141, 0, 0])):
            for r, p in enumerate(pipes):
                if fpb == 1:
                    p.configure_receiver({"type": "simulated", "shape": shape, "frames": n, "pattern": "ramp"})
                    p.setup_processor([("hdf", *HDF, "frame_receiver")])
                p.processor.ok("configure", {"hdf": writer_cfg(
                    out, prefix, shape, n, "BSLZ4", process={"number": 4, "rank": r, "frames_per_block": fpb})})
                p.processor.ok("configure", {"hdf": {"write": True}})
            for p in pipes:
                p.start()
            for p in pipes:
                p.wait_done()
            for r, p in enumerate(pipes):
                wait_for(lambda p=p: not p.plugin_status("hdf")["writing"], what=f"rank {r} to finish")
                st = p.plugin_status("hdf")
                assert (st["frames_written"], st["frames_max"], st["rank"], st["processes"]) == \
                    (want[r], want[r], r, 4), st
                assert st["frames_rejected"] == 0 and st["error"] == ""
            expect = ramp(shape, n)
            for r in range(4):
                path = out / f"{prefix}_{1 + r:06d}.h5"
                assert path.exists() == (want[r] > 0)
                if want[r]:
                    with h5py.File(path) as f:
                        assert f[DATA].shape == (want[r], *shape)
                        nums = f["/entry/instrument/detector/parameters/frame_number"][:]
                        np.testing.assert_array_equal(f[DATA][...], expect[nums])
            with h5py.File(out / f"{prefix}_vds.h5") as f:
                assert f[DATA].is_virtual
                np.testing.assert_array_equal(f["/entry/data/data"][...], expect)
    finally:
        for p in pipes:
            p.close()


READER = textwrap.dedent("""
    import json, sys, time
    import h5py, hdf5plugin, numpy as np
    path, total = sys.argv[1], int(sys.argv[2])
    seen, firsts = [], []
    deadline = time.monotonic() + 60
    with h5py.File(path, "r", swmr=True) as f:
        ds = f["/entry/instrument/detector/data"]
        while time.monotonic() < deadline:
            ds.refresh()
            n = ds.shape[0]
            if not seen or n != seen[-1]:
                seen.append(n)
                if n:
                    firsts.append(int(ds[n - 1][0, 0]))
            if n >= total:
                break
            time.sleep(0.01)
    print(json.dumps({"seen": seen, "last_pixels": firsts}))
""")


def test_swmr_reader_in_another_process_sees_frames_land(pipeline, tmp_path):
    shape, n = [32, 32], 160  # 4 s at 40 Hz: long enough for the reader process to start on a busy machine
    pipeline.configure_receiver({"type": "simulated", "shape": shape, "frames": n, "rate": 40, "pattern": "ramp"})
    pipeline.setup_processor([("hdf", *HDF, "frame_receiver",
                               writer_cfg(tmp_path, "swmr", shape, n, "LZ4", flush_frames=5, flush_ms=50))])
    pipeline.processor.ok("configure", {"hdf": {"write": True}})
    pipeline.start()
    path = wait_for(lambda: pipeline.plugin_status("hdf")["current_file_path"], what="the file to open")
    reader = subprocess.run([sys.executable, "-c", READER, path, str(n)], capture_output=True, text=True,
                            timeout=90)
    assert reader.returncode == 0, reader.stderr
    result = json.loads(reader.stdout)
    growing = [s for s in result["seen"] if 0 < s < n]
    assert len(growing) >= 3, result  # saw the file at several sizes while it was being written
    assert result["seen"][-1] == n
    expect = ramp(shape, n)
    assert result["last_pixels"] == [int(expect[s - 1][0, 0]) for s in result["seen"] if s]


def test_sigkill_leaves_a_readable_file(pipeline, tmp_path):
    shape, n = [32, 32], 1000
    pipeline.configure_receiver({"type": "simulated", "shape": shape, "frames": n, "rate": 100, "pattern": "ramp"})
    pipeline.setup_processor([("hdf", *HDF, "frame_receiver",
                               writer_cfg(tmp_path, "killed", shape, n, "BSLZ4", flush_frames=10))])
    pipeline.processor.ok("execute", {"hdf": {"command": "start_writing"}})
    pipeline.start()
    st = wait_for(lambda: (s := pipeline.plugin_status("hdf"))["frames_flushed"] >= 30 and s,
                  what="30 frames flushed")
    flushed, path = st["frames_flushed"], st["current_file_path"]
    pipeline.processor.proc.kill()
    pipeline.processor.proc.wait(10)
    assert path.endswith(".tmp")
    expect = ramp(shape, n)
    with h5py.File(path, "r", swmr=True) as f:
        ds = f[DATA]
        assert flushed <= ds.shape[0] < n
        np.testing.assert_array_equal(ds[:flushed], expect[:flushed])
