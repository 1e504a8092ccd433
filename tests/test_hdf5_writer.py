"""FileWriterPlugin driven directly (no daemons): config validation, layout, codecs, life cycle."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import hdf5plugin  # noqa: F401  (registers the filters for reading)
import numpy as np
import pytest
from harness import wait_for

from framechain.frameprocessor.frame import EndOfAcquisition, Frame
from framechain.frameprocessor.pool import DataBlockPool
from framechain.ipc.errors import ConfigError
from framechain.plugins._hdf5.distribution import Distribution, frames_for_rank
from framechain.plugins._hdf5.engine import Job
from framechain.plugins.hdf5_writer import FileWriterPlugin

SHAPE = (32, 48)


@pytest.fixture
def hdf():
    p = FileWriterPlugin("hdf")
    yield p
    p.close()


def base(tmp_path, **extra):
    cfg = {"file": {"path": str(tmp_path), "prefix": "run"},
           "dataset": {"data": {"datatype": "uint16", "dims": list(SHAPE)}}}
    cfg.update(extra)
    return cfg


def frame_data(n: int, dtype="u2") -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.poisson(5 + n % 7, SHAPE).astype(dtype)


def feed(p: FileWriterPlugin, numbers, pool: DataBlockPool | None = None, acq: str = "", params=True) -> None:
    pool = pool or DataBlockPool(1 << 26)
    for n in numbers:
        f = pool.frame(SHAPE, "u2", n, acquisition_id=acq)
        f.data[...] = frame_data(n)
        if params:
            f.parameters.update({"sum": int(f.data.sum()), "mean": float(f.data.mean())})
        p.process_frame(f)
        del f
    assert p.sync()


# -- distribution -------------------------------------------------------------------
def test_rank_test_vectors():
    assert [frames_for_rank(1141, 4, r, 1) for r in range(4)] == [286, 285, 285, 285]
    assert [frames_for_rank(1141, 4, r, 1000) for r in range(4)] == [1000, 141, 0, 0]
    assert [Distribution(4, r, 1000).frames_mine(1141) for r in range(4)] == [1000, 141, 0, 0]
    assert Distribution(4, 1, 1000).frames_mine(0) == 0
    for fpb in (1, 1000):
        counts = [0] * 4
        for o in range(1141):
            owners = [r for r in range(4) if Distribution(4, r, fpb).owns(o)]
            assert len(owners) == 1
            counts[owners[0]] += 1
        assert counts == [frames_for_rank(1141, 4, r, fpb) for r in range(4)]


@pytest.mark.parametrize("number,fpb,bpf", [(4, 1, 0), (4, 1000, 0), (3, 7, 2), (2, 5, 3), (1, 1, 4)])
def test_distribution_places_every_frame_once(number, fpb, bpf):
    seen = {}
    for r in range(number):
        d = Distribution(number, r, fpb, bpf)
        for o in range(1141):
            if d.owns(o):
                key = (d.file_index(o), d.index_in_file(o))
                assert key not in seen
                seen[key] = o
                assert d.offset_of(*key) == o
    assert len(seen) == 1141
    d = Distribution(number, 0, fpb, bpf)
    for fi in d.file_indices(1141):
        idx = sorted(i for (f, i) in seen if f == fi)
        assert idx == list(range(d.frames_in_file(1141, fi)))


def test_odin_index_formula():
    d = Distribution(number=2, rank=1, frames_per_block=3, blocks_per_file=2)
    # frames 3,4,5 | 9,10,11 go to file 1; 15.. to file 3
    assert [d.index_in_file(o) for o in (3, 4, 5, 9, 10, 11, 15)] == [0, 1, 2, 3, 4, 5, 0]
    assert [d.file_index(o) for o in (3, 11, 15)] == [1, 1, 3]


# -- configuration ----------------------------------------------------------------------
@pytest.mark.parametrize("params,key", [
    ({"file": {"path": "/nonexistent/dir"}}, "path"),
    ({"dataset": {"data": {"datatype": "int7", "dims": [4, 4]}}}, "datatype"),
    ({"dataset": {"data": {"datatype": "uint16", "dims": [4, 4], "compression": "zip"}}}, "compression"),
    ({"dataset": {"data": {"datatype": "uint16", "dims": [4, 4], "chunks": [1, 2, 4]}}}, "chunks"),
    ({"dataset": {"other": {"datatype": "uint16"}}}, "dims"),
    ({"process": {"number": 2, "rank": 2}}, "rank"),
    ({"process": {"number": 0}}, "process/number"),
    ({"frames": -1}, "frames"),
    ({"colour": "red"}, "colour"),
    ({"dataset": {"data": {"datatype": "uint16", "dims": [4, 4], "blosc_level": 12}}}, "blosc_level"),
])
def test_bad_config_nacks_and_changes_nothing(hdf, tmp_path, params, key):
    hdf.configure(base(tmp_path))
    before = hdf.request_configuration()
    with pytest.raises(ConfigError, match=key.split("/")[-1]):
        hdf.configure(params)
    assert hdf.request_configuration() == before


def test_new_dims_bring_their_own_chunks_unless_chunks_are_given(hdf, tmp_path):
    hdf.configure(base(tmp_path))
    hdf.configure({"dataset": {"data": {"dims": [8, 6]}}})
    assert hdf.request_configuration()["dataset"]["data"]["chunks"] == [1, 8, 6]
    with pytest.raises(ConfigError, match="chunks"):
        hdf.configure({"dataset": {"data": {"dims": [4, 4], "chunks": [1, 8, 6]}}})
    assert hdf.request_configuration()["dataset"]["data"]["dims"] == [8, 6]


def test_unwritable_path_nacks(hdf, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    # root can write into a 0500 directory; /proc/self is a directory nobody may create files in
    target = "/proc/self" if os.access(ro, os.W_OK) else str(ro)
    assert not os.access(target, os.W_OK)
    try:
        before = hdf.request_configuration()
        with pytest.raises(ConfigError, match="not writable"):
            hdf.configure({"file": {"path": target}})
        assert hdf.request_configuration() == before
    finally:
        ro.chmod(0o700)


def test_start_without_dataset_nacks(hdf, tmp_path):
    hdf.configure({"file": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError, match="without a dataset"):
        hdf.command("start_writing", {})
    with pytest.raises(ConfigError, match="without a dataset"):
        hdf.configure({"write": True})
    assert hdf.status()["writing"] is False


def test_existing_file_is_never_overwritten(hdf, tmp_path):
    (tmp_path / "run_000001.h5").write_bytes(b"precious")
    hdf.configure(base(tmp_path))
    with pytest.raises(ConfigError, match="already exists"):
        hdf.command("start_writing", {})
    assert (tmp_path / "run_000001.h5").read_bytes() == b"precious"
    assert not hdf.status()["writing"]


def test_existing_file_with_configured_acquisition_id_or_later_file_nacks(hdf, tmp_path):
    """start_writing checks every name it will use: configured acquisition id, every file of the rank."""
    (tmp_path / "run_acq1_000001.h5").write_bytes(b"precious")
    hdf.configure(base(tmp_path, frames=3, acquisition_id="acq1"))
    with pytest.raises(ConfigError, match="run_acq1_000001.h5 already exists"):
        hdf.command("start_writing", {})
    hdf.configure({"acquisition_id": "", "frames": 6, "process": {"frames_per_block": 2, "blocks_per_file": 1},
                   "vds": False})
    (tmp_path / "run_000003.h5.tmp").write_bytes(b"another writer's file")  # the third of three files
    with pytest.raises(ConfigError, match=r"run_000003.h5.tmp already exists"):
        hdf.command("start_writing", {})
    assert not hdf.status()["writing"]
    assert (tmp_path / "run_acq1_000001.h5").read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["run_000003.h5.tmp", "run_acq1_000001.h5"]


def accounted(st) -> bool:
    """Every frame handed to the writer is written, lost or discarded -- none vanishes."""
    return st["frames_processed"] == st["frames_written"] + st["frames_lost"] + st["frames_discarded"]


def test_existing_file_for_frames_acquisition_id_counts_every_frame(hdf, tmp_path):
    """Acquisition ids that arrive with the frames are checked when the file opens: the file is kept,
    every frame of that acquisition is counted in frames_lost, and the next acquisition is written."""
    (tmp_path / "run_a1_000001.h5").write_bytes(b"precious")
    hdf.configure(base(tmp_path, frames=3))
    hdf.command("start_writing", {})
    pool = DataBlockPool(1 << 26)
    feed(hdf, range(3), pool, acq="a1")
    st = hdf.status()
    assert (st["frames_written"], st["frames_lost"], st["writing"]) == (0, 3, False), st
    assert "run_a1_000001.h5 already exists" in st["error"] and "frames_lost" in st["error"]
    assert accounted(st), st
    assert (tmp_path / "run_a1_000001.h5").read_bytes() == b"precious"
    hdf.command("start_writing", {})
    feed(hdf, range(3), pool, acq="a2")
    st = hdf.status()
    assert (st["frames_written"], st["frames_lost"], st["error"]) == (3, 3, ""), st
    with h5py.File(tmp_path / "run_a2_000001.h5") as f:
        assert f["/entry/data/data"].shape[0] == 3


@pytest.mark.parametrize("a1_exists", [False, True])
def test_next_acquisition_id_opens_next_file(hdf, tmp_path, a1_exists):
    """A new acquisition id closes the file and opens the next one; an acquisition refused because its
    file exists does not stop an unbounded session either: the next one is written."""
    if a1_exists:
        (tmp_path / "run_a1_000001.h5.tmp").write_bytes(b"a crashed writer's frames")
    hdf.configure(base(tmp_path, frames=0))
    hdf.command("start_writing", {})
    pool = DataBlockPool(1 << 26)
    feed(hdf, range(4), pool, acq="a1")
    feed(hdf, range(2), pool, acq="a2")
    hdf.command("stop_writing", {})
    assert hdf.sync()
    st = hdf.status()
    # frames_written counts the last acquisition's frames (a2's)
    assert (st["frames_lost"], st["frames_written"], st["frames_processed"]) == (4 if a1_exists else 0, 2, 6), st
    a1 = "run_a1_000001.h5" + (".tmp" if a1_exists else "")
    assert sorted(os.listdir(tmp_path)) == [a1, "run_a2_000001.h5"]
    if a1_exists:
        assert accounted(st), st  # nothing of a1 written
        assert (tmp_path / a1).read_bytes() == b"a crashed writer's frames"
    else:
        with h5py.File(tmp_path / a1) as f:
            assert f["/entry/data/data"].shape[0] == 4 and f["/entry"].attrs["acquisition_id"] == "a1"
    with h5py.File(tmp_path / "run_a2_000001.h5") as f:
        assert f["/entry/data/data"].shape[0] == 2


def test_later_file_that_exists_loses_only_its_frames(hdf, tmp_path):
    """With frames 0 later file names are unknown at start_writing: the one that exists is refused at open."""
    (tmp_path / "run_000002.h5").write_bytes(b"precious")
    hdf.configure(base(tmp_path, frames=0, process={"frames_per_block": 2, "blocks_per_file": 1}))
    hdf.command("start_writing", {})
    feed(hdf, range(6))
    hdf.command("stop_writing", {})
    assert hdf.sync()
    st = hdf.status()
    assert (st["frames_written"], st["frames_lost"]) == (2, 4), st
    assert "run_000002.h5 (or its temporary name) already exists" in st["error"] and accounted(st)
    assert (tmp_path / "run_000002.h5").read_bytes() == b"precious"
    with h5py.File(tmp_path / "run_000001.h5") as f:
        assert list(f["/entry/instrument/detector/parameters/frame_number"][:]) == [0, 1]


def test_config_frozen_while_writing(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=5))
    hdf.command("start_writing", {})
    with pytest.raises(ConfigError, match="stop_writing"):
        hdf.configure({"frames": 10})
    hdf.configure({"write": False})
    assert not hdf.status()["writing"]
    hdf.configure({"frames": 10})


def test_seed_style_config(hdf, tmp_path):
    """The odin-data README's older keys: file {path, name}, dataset {cmd, name, datatype enum}."""
    hdf.configure({"file": {"path": str(tmp_path), "name": "test_file.h5"}, "frames": 3,
                   "dataset": {"cmd": "create", "name": "data", "datatype": 1, "dims": list(SHAPE),
                               "chunks": [1, *SHAPE]}})
    hdf.configure({"write": True})
    feed(hdf, range(3))
    assert (tmp_path / "test_file.h5").exists()
    with h5py.File(tmp_path / "test_file.h5") as f:
        assert f["/entry/data/data"].shape == (3, *SHAPE)


# -- writing ------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "LZ4", "BSLZ4", "blosc"])
def test_frames_bit_exact_and_layout(hdf, tmp_path, compression):
    n = 12
    hdf.configure(base(tmp_path, frames=n))
    hdf.configure({"dataset": {"data": {"compression": compression}}})
    hdf.command("start_writing", {})
    st = hdf.status()
    assert st["writing"] and st["frames_max"] == n
    feed(hdf, range(n))
    st = hdf.status()
    assert st["frames_written"] == n and not st["writing"], st
    path = tmp_path / "run_000001.h5"
    assert path.exists() and not (tmp_path / "run_000001.h5.tmp").exists()
    with h5py.File(path, "r") as f:
        ds = f["/entry/instrument/detector/data"]
        assert ds.shape == (n, *SHAPE) and ds.chunks == (1, *SHAPE) and ds.dtype == np.uint16
        for i in range(n):
            np.testing.assert_array_equal(ds[i], frame_data(i))
        assert f["/entry/data"].attrs["signal"] == "data"
        assert f["/entry/data/data"].id == ds.id  # hard link, same object
        assert f["/entry/data"].attrs["NX_class"] == "NXdata"
        p = f["/entry/instrument/detector/parameters"]
        assert list(p["frame_number"][:]) == list(range(n))
        assert list(p["sum"][:]) == [int(frame_data(i).sum()) for i in range(n)]
        if compression != "none":
            assert ds.id.get_create_plist().get_nfilters() == 1
            assert ds.id.get_create_plist().get_filter(0)[0] == {"LZ4": 32004, "BSLZ4": 32008,
                                                                 "blosc": 32001}[compression]
        assert "versions" in f["/entry"].attrs and "config" in f["/entry"].attrs


def test_mismatched_frames_rejected_and_counted(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=2))
    hdf.command("start_writing", {})
    hdf.process_frame(Frame(np.zeros(SHAPE, "u4"), 0))
    hdf.process_frame(Frame(np.zeros((4, 4), "u2"), 0))
    hdf.process_frame(Frame(np.zeros(SHAPE, "u2"), 0, dataset="other"))
    assert hdf.sync()
    st = hdf.status()
    assert st["frames_rejected"] == 3 and st["frames_written"] == 0 and "not configured" in hdf.last_rejected
    feed(hdf, range(2))
    assert hdf.status()["frames_written"] == 2


def test_unlimited_frames_stop_writing_closes(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=0))
    hdf.command("start_writing", {})
    feed(hdf, range(7))
    st = hdf.status()
    assert st["writing"] and st["frames_written"] == 7
    assert st["current_file_path"].endswith("run_000001.h5.tmp")
    hdf.command("stop_writing", {})
    assert hdf.sync()
    assert (tmp_path / "run_000001.h5").exists()
    with h5py.File(tmp_path / "run_000001.h5") as f:
        assert f["/entry/data/data"].shape == (7, *SHAPE)
    feed(hdf, range(7, 9))  # not writing any more: nothing written, nothing reopened
    assert sorted(os.listdir(tmp_path)) == ["run_000001.h5"]


def test_end_of_acquisition_closes_and_missing_frames_time_out(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=0, close_file_timeout=0.2))
    hdf.command("start_writing", {})
    feed(hdf, [0, 1, 3])
    hdf.process_end_of_acquisition(EndOfAcquisition("", 5))  # frames 2 and 4 missing
    assert hdf.sync()
    assert hdf.status()["timeout_active"] is True
    feed(hdf, [2])  # a late frame still lands
    wait_for(lambda: not hdf.status()["writing"], timeout=10, what="close_file_timeout to close the file")
    st = hdf.status()
    assert not st["writing"] and "3 of 5" not in st["error"] and "4 of 5" in st["error"], st
    with h5py.File(tmp_path / "run_000001.h5") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][2], frame_data(2))


def test_end_of_acquisition_complete_closes_cleanly(hdf, tmp_path):
    hdf.configure(base(tmp_path))
    hdf.command("start_writing", {})
    feed(hdf, range(4))
    hdf.process_end_of_acquisition(EndOfAcquisition("", 4))
    assert hdf.sync()
    st = hdf.status()
    assert not st["writing"] and st["error"] == "" and st["frames_written"] == 4
    assert (tmp_path / "run_000001.h5").exists()


def test_frame_of_a_replaced_session_takes_its_own_buffers_and_a_live_pool(hdf, tmp_path):
    """The plugin thread can hand over a frame checked against session A after the control thread started
    session B (other frame size, other pool size): it compresses into A's buffers on a pool that is not
    shut down, reaches the writer after B's start and is discarded, not written into B's file."""
    big, small = [64, 64], [8, 8]
    hdf.configure(base(tmp_path, threads=2, dataset={"data": {"dims": big, "compression": "BSLZ4"}}))
    hdf.command("start_writing", {})
    a = hdf._session
    hdf.command("stop_writing", {})
    hdf.configure({"threads": 3, "dataset": {"data": {"dims": small}}})
    hdf.command("start_writing", {})
    b = hdf._session
    depth = a.bufs["data"].qsize()
    assert b.bufs["data"] is not a.bufs["data"] and depth > 0
    hdf._engine.submit(Job(a.id, Frame(np.full(big, 3, "u2"), 0), ""), a)  # A's frame, late
    for n in range(2):
        hdf.process_frame(Frame(np.full(small, n, "u2"), n))
    hdf.command("stop_writing", {})
    assert hdf.sync()
    st = hdf.status()
    assert (st["frames_discarded"], st["frames_written"], st["frames_lost"], st["error"]) == (1, 2, 0, ""), st
    assert a.bufs["data"].qsize() == depth  # A's buffer came back to A
    with h5py.File(tmp_path / "run_000001.h5") as f:
        assert [int(f["/entry/data/data"][i][0, 0]) for i in range(2)] == [0, 1]


def test_pool_blocks_return_after_writing(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=20))
    hdf.configure({"dataset": {"data": {"compression": "BSLZ4"}}})
    hdf.command("start_writing", {})
    pool = DataBlockPool(1 << 26)
    feed(hdf, range(20), pool)
    assert pool.stats()["blocks_in_use"] == 0


def test_blocks_per_file_rotates_files_and_vds(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=10, process={"blocks_per_file": 2, "frames_per_block": 2}))
    hdf.command("start_writing", {})
    feed(hdf, range(10))
    names = sorted(os.listdir(tmp_path))
    assert names == ["run_000001.h5", "run_000002.h5", "run_000003.h5", "run_vds.h5"], names
    with h5py.File(tmp_path / "run_vds.h5") as f:
        ds = f["/entry/data/data"]
        assert ds.shape == (10, *SHAPE)
        for i in range(10):
            np.testing.assert_array_equal(ds[i], frame_data(i))


FULL_DISK = """
import json, resource, signal, sys
import numpy as np
from framechain.frameprocessor.frame import Frame
from framechain.plugins.hdf5_writer import FileWriterPlugin
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, resource.RLIM_INFINITY))  # the 'disk' fills at 1.5 MB
hdf = FileWriterPlugin("hdf")
hdf.configure({"file": {"path": sys.argv[1], "prefix": "full"}, "flush_frames": 10,
               "dataset": {"data": {"datatype": "uint16", "dims": [64, 64]}}})
hdf.command("start_writing", {})
n = 0
while hdf.status()["writing"] and n < 5000:
    hdf.process_frame(Frame(np.full((64, 64), n, "u2"), n))
    n += 1
    if n % 20 == 0:
        hdf.sync()
hdf.sync()
print(json.dumps(hdf.status()))
hdf.close()
"""


def run_child(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter from the repository root; return the status it prints as JSON."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                       cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_disk_full_stops_writing_and_keeps_written_frames(tmp_path):
    """A real write failure (file size limit in a child process) stops writing with an error."""
    st = run_child(FULL_DISK, str(tmp_path))
    assert not st["writing"] and "too large" in st["error"].lower(), st
    written = st["frames_written"]
    assert written > 10
    with h5py.File(tmp_path / "full_000001.h5.tmp", "r", swmr=True) as f:
        ds = f["/entry/instrument/detector/data"]
        assert ds.shape[0] >= written
        for i in range(written):
            assert ds[i][0, 0] == i


def test_overwrite_is_an_explicit_opt_in(hdf, tmp_path):
    (tmp_path / "run_000001.h5").write_bytes(b"old")
    hdf.configure(base(tmp_path, frames=2))
    hdf.configure({"file": {"overwrite": True}})
    hdf.command("start_writing", {})
    feed(hdf, range(2))
    with h5py.File(tmp_path / "run_000001.h5") as f:
        assert f["/entry/data/data"].shape[0] == 2


def test_existing_master_file_nacks(hdf, tmp_path):
    (tmp_path / "run_vds.h5").write_bytes(b"old")
    hdf.configure(base(tmp_path, frames=10, process={"blocks_per_file": 1, "frames_per_block": 5}))
    with pytest.raises(ConfigError, match="run_vds.h5 already exists"):
        hdf.command("start_writing", {})


def test_timer_flush_makes_frames_durable_without_frame_count(hdf, tmp_path):
    hdf.configure(base(tmp_path, flush_frames=1000, flush_ms=50))
    hdf.command("start_writing", {})
    feed(hdf, range(3))
    wait_for(lambda: hdf.status()["frames_flushed"] == 3, timeout=10, what="the flush timer")
    path = hdf.status()["current_file_path"]
    with h5py.File(path, "r", swmr=True) as f:  # another reader sees them while the file is open
        assert f["/entry/data/data"].shape[0] == 3
        assert list(f["/entry/instrument/detector/parameters/frame_number"][:]) == [0, 1, 2]


def test_two_datasets_in_one_file(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=3))
    hdf.configure({"dataset": {"mask": {"datatype": "uint8", "dims": [4, 4], "compression": "LZ4"}}})
    hdf.command("start_writing", {})
    for n in range(3):
        hdf.process_frame(Frame(np.full((4, 4), n, "u1"), n, dataset="mask"))
    feed(hdf, range(3))
    assert not hdf.status()["writing"]
    with h5py.File(tmp_path / "run_000001.h5") as f:
        det = f["/entry/instrument/detector"]
        assert det["mask"].shape == (3, 4, 4) and det["data"].shape == (3, *SHAPE)
        assert [int(det["mask"][i][0, 0]) for i in range(3)] == [0, 1, 2]


def test_frame_numbers_beyond_frames_are_rejected_not_fatal(hdf, tmp_path):
    hdf.configure(base(tmp_path, frames=3))
    hdf.command("start_writing", {})
    feed(hdf, [1, 2, 3])  # a source numbering from 1: frame 3 has no place in a 3-frame acquisition
    st = hdf.status()
    assert st["frames_rejected"] == 1 and "outside" in st["last_rejected"] and st["writing"] and not st["error"]
    feed(hdf, [0])
    assert hdf.status()["frames_written"] == 3 and not hdf.status()["writing"]


WATCHED = ("create", "write", "flush", "close")


@pytest.mark.parametrize("watchdog_ms", [1, 1_000_000])
def test_watchdog_counts_every_call_over_the_limit(hdf, tmp_path, watchdog_ms):
    """A real 64 MB uncompressed frame: its write cannot finish in 1 ms (that would be 64 GB/s), so with
    watchdog_ms 1 at least the write is reported; every create/write/flush/close over the limit is counted
    (and none under a 1000 s limit)."""
    dims = [4096, 4096]
    hdf.configure({"file": {"path": str(tmp_path), "prefix": "big"}, "frames": 1, "flush_frames": 1,
                   "watchdog_ms": watchdog_ms, "dataset": {"data": {"datatype": "uint32", "dims": dims}}})
    hdf.command("start_writing", {})
    hdf.process_frame(Frame(np.full(dims, 7, "u4"), 0))
    assert hdf.sync()
    st = hdf.status()
    assert st["frames_written"] == 1 and not st["writing"] and st["error"] == "", st
    t = st["timing"]
    over = [w for w in WATCHED if t[f"last_{w}"] > watchdog_ms * 1000]  # each ran exactly once
    assert st["watchdog_warnings"] == len(over), (st["watchdog_warnings"], t)
    if watchdog_ms == 1:
        assert "write" in over and st["last_watchdog"].startswith(f"{over[-1]} took "), (st["last_watchdog"], t)
        assert st["last_watchdog"].endswith("(limit 1 ms)")
    else:
        assert over == [] and st["last_watchdog"] == ""


PERMISSION_DENIED = """
import ctypes, json, os, sys
import numpy as np
from framechain.frameprocessor.frame import Frame
from framechain.plugins.hdf5_writer import FileWriterPlugin


def drop_dac_override():
    '''Root ignores file modes through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: drop both (capabilities are
    per thread, so before the writer's threads exist) and the kernel applies the modes to us too.'''
    if os.geteuid() != 0:
        return
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    hdr, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    if libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


out, temp_suffix = sys.argv[1], sys.argv[2]
drop_dac_override()
hdf = FileWriterPlugin("hdf")
hdf.configure({"file": {"path": out, "prefix": "perm", "temp_suffix": temp_suffix}, "frames": 10, "vds": False,
               "process": {"frames_per_block": 5, "blocks_per_file": 1},
               "dataset": {"data": {"datatype": "uint16", "dims": [16, 16]}}})
hdf.command("start_writing", {})
for n in range(10):
    if n == 5:  # the first file is full; the directory turns read-only before the second is needed
        hdf.sync()
        os.chmod(out, 0o500)
    hdf.process_frame(Frame(np.full((16, 16), n, "u2"), n))
hdf.sync()
st = hdf.status()
st["dir_writable"] = os.access(out, os.W_OK)
os.chmod(out, 0o700)
print(json.dumps(st))
hdf.close()
"""


@pytest.mark.parametrize("temp_suffix,kept", [(".tmp", "perm_000001.h5.tmp"), ("", "perm_000001.h5")])
def test_permission_denied_mid_acquisition_stops_and_keeps_written_frames(tmp_path, temp_suffix, kept):
    """A real EACCES: the output directory turns read-only between two files (a child process without the
    root capabilities that bypass file modes). With a temp suffix the first file's rename fails, without
    one the second file's creation: either way writing stops with the error, the frame that could not be
    written is counted in frames_lost, and the first file keeps its 5 frames."""
    out = tmp_path / "out"
    out.mkdir()
    st = run_child(PERMISSION_DENIED, str(out), temp_suffix)
    assert st["dir_writable"] is False  # the kernel really refuses us
    assert not st["writing"] and "permission denied" in st["error"].lower(), st
    assert (st["frames_written"], st["frames_lost"]) == (5, 1), st
    assert accounted(st), st
    assert sorted(os.listdir(out)) == [kept]
    with h5py.File(out / kept, "r") as f:
        assert [int(f["/entry/data/data"][i][0, 0]) for i in range(f["/entry/data/data"].shape[0])] == \
            [0, 1, 2, 3, 4]


def test_parameter_columns_keep_one_flush_interval_and_late_values_land(tmp_path):
    """Per-frame parameters are held only since the last flush (memory does not grow with the file); a value
    for a frame already flushed (a late frame) still lands at its index, and unset ones read as the fill."""
    from framechain.plugins._hdf5.codecs import make_codec
    from framechain.plugins._hdf5.config import DatasetSpec
    from framechain.plugins._hdf5.h5file import H5File

    spec = DatasetSpec("data", "uint16", (2, 2), (1, 2, 2))
    codec = make_codec("none", spec.dtype, spec.dims, 1, 5, 2)
    f = H5File(str(tmp_path / "p.h5"), ".tmp", {"data": (spec, codec)}, "data", 0, {"sum": 1.0}, {}, swmr=False)
    for i in range(5000):
        f.set_parameters(i, i, 0.5, {"sum": float(i)})
        if i % 1000 == 999:
            f.flush()
    col = f._params["sum"]
    assert col.base == 5000 and col.values.shape[0] <= 4096  # the window, not the whole file
    f.set_parameters(7, 7, 0.5, {"sum": -7.0})   # late: below the window
    f.set_parameters(5002, 5002, 0.5, {"sum": 5002.0})  # 5000 and 5001 never set
    f.close()
    with h5py.File(tmp_path / "p.h5", "r") as h:
        s = h["/entry/instrument/detector/parameters/sum"][:]
    assert s.shape == (5003,) and s[7] == -7.0 and s[4999] == 4999.0 and s[5002] == 5002.0
    assert np.isnan(s[5000]) and np.isnan(s[5001])
    np.testing.assert_array_equal(s[:7], np.arange(7.0))
