"""Shared helpers for the calibration and mask tests: a frame sink, constant files, reference formulas."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from framechain.frameprocessor import Frame
from framechain.frameprocessor.testing import FrameCollector, attach_collector

CODES = {0: 0, 1: 1, 2: 3}  # gain stage -> gain bits

#: A plugin for the daemon tests, loaded from a .py file written to tmp_path: it saves every frame (and its
#: mask) to <dir>/<index>_<frame>.npy (<dir>/<index>_mask_<frame>.npy). With ``after`` set it first waits
#: until <dir>/<after>_<frame>.npy exists, i.e. until that capture (on a sibling branch) has seen the frame,
#: so what it saves shows whether the sibling branch changed the shared frame.
CAPTURE = '''
import os
import time

import numpy as np
from framechain.frameprocessor import FrameProcessorPlugin, Option


class CapturePlugin(FrameProcessorPlugin):
    options = {"dir": Option(str, "", "output directory"),
               "after": Option(str, "", "index of a capture whose file for this frame must exist first")}

    def process_frame(self, frame):
        out = self.config["dir"]
        if self.config["after"]:
            other = f"{out}/{self.config['after']}_{frame.frame_number}.npy"
            give_up = time.monotonic() + 30
            while not os.path.exists(other) and time.monotonic() < give_up:
                time.sleep(0.002)
        np.save(f"{out}/{self.name}_{frame.frame_number}.npy", frame.data)
        if frame.mask is not None:
            np.save(f"{out}/{self.name}_mask_{frame.frame_number}.npy", frame.mask)
'''


def attach(plugin) -> FrameCollector:
    return attach_collector(plugin)


def save_npy(path: Path, arr: np.ndarray) -> str:
    np.save(path, arr)
    return str(path)


def save_h5(path: Path, dataset: str, arr: np.ndarray) -> str:
    with h5py.File(path, "a") as f:
        if dataset in f:
            del f[dataset]
        f.create_dataset(dataset, data=arr)
    return f"{path}:{dataset}"


def multigain_raw(rng: np.random.Generator, shape: tuple[int, int], codes: np.ndarray | None = None) -> np.ndarray:
    """uint16 frames with every gain code (00, 01, 11 and the invalid 10) and random ADC bits."""
    if codes is None:
        codes = rng.choice(np.array([0, 1, 3, 2], np.uint16), size=shape, p=[0.6, 0.2, 0.15, 0.05])
    adc = rng.integers(0, 0x4000, size=shape, dtype=np.uint16)
    return ((codes.astype(np.uint16) << 14) | adc).astype(np.uint16)


def multigain_constants(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """JUNGFRAU-like (3, *shape) pedestal and gain maps for stages G0, G1, G2 (float32)."""
    p3 = np.stack([rng.normal(m, 30, shape) for m in (1500, 12000, 14000)]).astype(np.float32)
    g3 = np.stack([rng.normal(m, s, shape) for m, s in ((40, 1), (-1.5, 0.05), (-0.1, 0.004))]).astype(np.float32)
    return p3, g3


def ref_multigain(raw: np.ndarray, p3: np.ndarray, g3: np.ndarray, ff: np.ndarray | None = None,
                  invalid: float = np.nan) -> np.ndarray:
    """E = ((raw & 0x3FFF) - P[g]) / G[g] written independently in float64 with explicit stage selection."""
    bits = raw >> 14
    adc = (raw & 0x3FFF).astype(np.float64)
    out = np.full(raw.shape, invalid, np.float64)
    for stage, code in CODES.items():
        sel = bits == code
        g = g3[stage].astype(np.float64) * (1.0 if ff is None else ff.astype(np.float64))
        out[sel] = (adc[sel] - p3[stage][sel].astype(np.float64)) / g[sel]
    if invalid == 0:
        out[bits == 2] = 0
    return out


def ref_common_mode(d: np.ndarray, mode: str, bank: tuple[int, int], cormax: float, npix_min: int,
                    exclude: np.ndarray | None = None, threshold: float | None = None) -> np.ndarray:
    """Loop-based common mode with np.nanmedian (independent of the plugin's sort-based one)."""
    d = d.astype(np.float64).copy()
    bh, bw = bank
    ex = np.zeros(d.shape, bool) if exclude is None else exclude
    for r0 in range(0, d.shape[0], bh):
        for c0 in range(0, d.shape[1], bw):
            rows = [(r, r + 1) for r in range(r0, r0 + bh)] if mode == "row" else [(r0, r0 + bh)]
            for a, b in rows:
                block = d[a:b, c0:c0 + bw]
                use = ~ex[a:b, c0:c0 + bw]
                if threshold is not None:
                    use &= np.abs(block) <= threshold
                vals = block[use]
                if vals.size < npix_min:
                    continue
                cm = np.median(vals)
                if abs(cm) > cormax:
                    continue
                d[a:b, c0:c0 + bw] -= cm
    return d
