"""The ``make run`` pipeline at 1 Mpixel against the sum of its parts, same run.

Value: ``framechain run`` of examples/xpcs_demo.json at 1024x1024 uint16
through the real receiver and processor daemons (calibration -> mask -> XPCS
-> sum -> BSLZ4 writer, live view beside), frames over the time from source
start to the last frame written, lossless checked. The run's fixed costs (the
correlator's set-up on the first frame, the result file at the end) are in it.
The simulated detector's raw frames are replayed from an HDF5 file: the
speckle simulator itself makes only ~10 frames/s at this size.

Baseline: the chain's parts, each plugin run on its own in this process over
the same frames (each fed what the plugin before it produced, one frame to
warm it first), combined as ``1 / sum(1 / rate_i)``: the rate one thread doing
all the work in turn would reach. The ratio says what the chain costs beyond
its parts (< 1), or what the plugin threads gain by overlapping (> 1, up to
the number of cores).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from framechain.frameprocessor import Frame
from framechain.framereceiver.sources import make_source
from framechain.plugins.calibration import CalibrationPlugin
from framechain.plugins.hdf5_writer import FileWriterPlugin
from framechain.plugins.mask import MaskPlugin
from framechain.plugins.sum import SumPlugin
from framechain.plugins.xpcs import XpcsCorrelatorPlugin

from . import Figure

__all__ = ["run"]

SHAPE = (1024, 1024)
DISTINCT = 8
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLUGINS = {"calib": CalibrationPlugin, "mask": MaskPlugin, "xpcs": XpcsCorrelatorPlugin, "sum": SumPlugin,
           "hdf": FileWriterPlugin}


def _config(folder: Path, frames: int) -> tuple[Path, dict[str, Any]]:
    """The demo config at SHAPE, its constants made by its prepare script, replaying raw frames from HDF5."""
    cfg = json.loads((EXAMPLES / "xpcs_demo.json").read_text())
    cfg.pop("prepare")
    cfg["receiver"]["source"].update(shape=list(SHAPE), frames=frames)
    simulated = folder / "simulated.json"
    simulated.write_text(json.dumps(cfg))
    (folder / "output").mkdir()
    subprocess.run([sys.executable, str(EXAMPLES / "prepare_demo.py"), str(simulated)], cwd=folder, check=True)
    src = make_source(cfg["receiver"]["source"])
    src.reset()
    raw = np.empty((DISTINCT, *SHAPE), np.uint16)
    for i in range(DISTINCT):
        src.fill(i, raw[i])
    with h5py.File(folder / "raw.h5", "w") as f:  # the simulator is slower than the chain at 1 Mpixel
        ds = f.create_dataset("data", (frames, *SHAPE), np.uint16, chunks=(1, *SHAPE))
        for i in range(frames):
            ds[i] = raw[i % DISTINCT]
    cfg["receiver"]["source"] = {"type": "hdf5", "file": str(folder / "raw.h5"), "dataset": "data",
                                 "frames": frames, "acquisition_id": "demo"}
    for item in cfg["processor"]:
        if "hdf" in item:
            item["hdf"]["dataset"]["data"]["dims"] = list(SHAPE)
            item["hdf"]["frames"] = frames
        if "xpcs" in item:
            item["xpcs"].update(expected_frames=frames, plot=False)
    path = folder / "whole.json"
    path.write_text(json.dumps(cfg))
    return path, cfg


def _pipeline(folder: Path, path: Path, frames: int) -> float:
    done = subprocess.run([sys.executable, "-m", "framechain.client.cli", "run", "--no-progress", str(path)],
                          cwd=folder, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or "lost frames     0 (none)" not in done.stdout:
        raise RuntimeError(f"the make run pipeline at {SHAPE} failed or lost frames:\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-2000:]}")
    written = re.search(r"plugin hdf\s+processed \d+, written (\d+)", done.stdout)
    if written is None or int(written.group(1)) != frames:
        raise RuntimeError(f"the writer did not write all {frames} frames:\n{done.stdout[-2000:]}")
    return frames / float(re.search(r"elapsed\s+([\d.]+) s", done.stdout).group(1))


class _Keep:
    """Downstream stand-in keeping a copy of the first ``DISTINCT`` frames (data and mask) for the next part."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def submit(self, item: Frame, blocking: bool) -> None:
        if len(self.frames) < DISTINCT:
            f = Frame(np.array(item.data), item.frame_number)
            f.mask = item.mask
            self.frames.append(f)


def _standalone(folder: Path, cfg: dict[str, Any], n: int) -> dict[str, float]:
    """frames/s of each plugin of the chain alone, in chain order, each fed the previous one's output."""
    params = {k: v for item in cfg["processor"] for k, v in item.items() if k in PLUGINS}
    with h5py.File(cfg["receiver"]["source"]["file"], "r") as f:
        raw = [Frame(f["data"][i], i) for i in range(DISTINCT)]
    rates, frames = {}, raw
    for index in ("calib", "mask", "xpcs", "sum", "hdf"):
        plugin = PLUGINS[index](index)
        p = json.loads(json.dumps(params.get(index, {})).replace('"output/', f'"{folder}/output/'))
        if index == "hdf":
            p["frames"] = n + 1
            p["file"] = {**p["file"], "path": str(folder / "output"), "prefix": "standalone"}
        plugin.configure(p)
        keep = _Keep()
        plugin.set_outputs(((keep, True),))
        if index == "hdf":
            plugin.execute("start_writing", {})
        inputs = []
        for i in range(n + 1):
            f = Frame(frames[i % DISTINCT].data, i)
            f.mask = frames[i % DISTINCT].mask
            inputs.append(f)
        plugin.process_frame(inputs[0])  # warm: compiled kernels, pools, the correlator's first-frame set-up
        t0 = time.perf_counter()
        for f in inputs[1:]:
            plugin.process_frame(f)
        if index == "hdf" and not plugin.sync(300):
            raise RuntimeError("the standalone writer did not finish")
        rates[index] = n / (time.perf_counter() - t0)
        if index == "hdf" and plugin.status()["frames_written"] != n + 1:
            raise RuntimeError(f"the standalone writer wrote {plugin.status()['frames_written']} of {n}")
        plugin.close()
        frames = keep.frames or frames
    return rates


def run(quick: bool = False) -> list[Figure]:
    frames = 100 if quick else 400
    with tempfile.TemporaryDirectory(prefix="fcbench_whole_") as d:
        folder = Path(d)
        path, cfg = _config(folder, frames)
        rate = _pipeline(folder, path, frames)
        parts = _standalone(folder, cfg, min(frames, 60 if quick else 300))
    chain = 1.0 / sum(1.0 / r for r in parts.values())
    return [Figure("whole", "make run pipeline 1024x1024 uint16 (calib, mask, xpcs, sum, BSLZ4 hdf)", rate,
                   "frames/s", chain, "its plugins alone, 1/sum(1/rate)",
                   extra="lossless; alone: " + ", ".join(f"{k} {v:,.0f}" for k, v in parts.items()) + " frames/s")]
