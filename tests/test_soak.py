"""Soak: many small frames receiver → processor → sum → HDF5 writer. Block mode loses no frame; drop mode's
drops are exact; neither daemon's memory grows after warm-up.

``FRAMECHAIN_SOAK_FRAMES``: 50,000 in ``make test``, 1,000,000 in ``make soak``. The note of a soak run gives
the RSS figures the test prints."""

from __future__ import annotations

import os

import h5py
import pytest
from harness import Pipeline, wait_for

FRAMES = int(os.environ.get("FRAMECHAIN_SOAK_FRAMES", "50000"))
SHAPE = [16, 16]
pytestmark = pytest.mark.timeout(max(300, FRAMES // 1000 * 3))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _writer(path, frames):
    return {"file": {"path": str(path), "prefix": "soak"}, "frames": frames, "flush_frames": 5000,
            "dataset": {"data": {"datatype": "uint16", "dims": SHAPE}}}


def test_block_mode_soak_loses_nothing_and_memory_stays_flat(tmp_path):
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": SHAPE, "frames": FRAMES, "pattern": "ramp"})
        p.setup_processor([("sum", "SumPlugin", "framechain.plugins.sum", "frame_receiver"),
                           ("hdf", "FileWriterPlugin", "framechain.plugins.hdf5_writer", "sum",
                            _writer(tmp_path, FRAMES))])
        p.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        pids = {"receiver": p.receiver.proc.pid, "processor": p.processor.proc.pid}
        p.start()
        rss: dict[str, list[int]] = {k: [] for k in pids}
        for mark in (0.2, 0.4, 0.6, 0.8, 1.0):  # after warm-up, on the way, at the end
            wait_for(lambda m=mark: p.receiver.status()["frames"]["released"] >= m * FRAMES,
                     timeout=max(120, FRAMES / 500), interval=0.2, what=f"{mark:.0%} of the frames")
            for k, pid in pids.items():
                rss[k].append(_rss_kib(pid))
        st = p.wait_done(timeout=120)
        hdf = wait_for(lambda: (s := p.plugin_status("hdf"))["frames_written"] == FRAMES and not s["writing"] and s,
                       timeout=120, what="every frame written")
        assert st["frames"]["received"] == FRAMES and st["frames"]["released"] == FRAMES
        assert st["frames"]["dropped"] == 0 and hdf["frames_lost"] == 0 and hdf["frames_rejected"] == 0
        assert p.plugin_status("sum")["frames_processed"] == FRAMES
        with h5py.File(hdf["last_file_path"], "r") as f:
            assert f["/entry/instrument/detector/data"].shape[0] == FRAMES
            assert list(f["/entry/instrument/detector/parameters/frame_number"][-3:]) == list(
                range(FRAMES - 3, FRAMES))
        print(f"soak {FRAMES} frames, RSS KiB at 20/40/60/80/100 %: {rss}")
        for k, (warm, *later) in rss.items():
            assert max(later) <= warm * 1.05 + 2048, f"{k} RSS grew after warm-up (KiB at 20..100 %): {rss[k]}"


def test_drop_mode_counts_every_drop_exactly(tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\nfrom framechain.frameprocessor import FrameProcessorPlugin\n\n"
                    "class Slow(FrameProcessorPlugin):\n"
                    "    def process_frame(self, frame):\n        time.sleep(0.002)\n        self.push(frame)\n")
    n = min(FRAMES, 20000)
    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": SHAPE, "frames": n, "rate": 5000}, mode="drop",
                             max_buffer_mem=8 * 4096)
        p.setup_processor([("slow", "Slow", str(slow), "frame_receiver"),
                           ("hdf", "FileWriterPlugin", "framechain.plugins.hdf5_writer", "slow", _writer(tmp_path, 0))],
                          copy=False)
        p.processor.ok("execute", {"hdf": {"command": "start_writing"}})
        p.start()
        st = p.wait_done(timeout=120)
        f = st["frames"]
        assert f["dropped"] > 0  # the point: a slow chain in drop mode
        assert f["received"] == n and f["released"] + f["dropped"] == n, f
        wait_for(lambda: p.plugin_status("hdf")["frames_written"] == f["released"], what="every delivered frame")
        assert p.plugin_status("slow")["frames_processed"] == f["released"]
