"""Peers side by side (``framechain bench --peers``, ``make bench-peers``): not part of the default run.

- XPCS: scikit-beam's ``multi_tau_auto_corr`` (the field's reference, in the
  test extras) on the same 512x512 frames and labels (30 rings, B=8) as
  framechain's correlator, same run; the g2 difference is in the notes.
  boost_corr is left out: it needs PyTorch, which ``make`` does not install.
- Photon finding for a 2M ePix-sized frame (16 modules of 352x384, uint16):
  pedestal, gain and photonize in the CalibrationPlugin, frames/s on one
  plugin thread (one core), beside the LCLS-II ask of 100 frames/s per core
  (seed 002) and against the bare numpy formula on the same frames.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from framechain.plugins._xpcs.layout import PixelLayout
from framechain.plugins._xpcs.multitau import MultitauCorrelator
from framechain.plugins.calibration import CalibrationPlugin

from . import Figure
from .calibration import _rate_bare, _rate_plugin
from .xpcs import ring_labels

__all__ = ["run"]

EPIX_2M = (4 * 352, 4 * 384)   # 16 modules of 352 x 384 pixels: 2.16 Mpixel
ASK_PER_CORE = 100.0           # frames/s per core for photon finding at 25 kHz on a 2M ePix (seed 002)


def _xpcs(quick: bool) -> list[Figure]:
    import skbeam.core.correlation as corr
    size, B, levels = 512, 8, 6
    n = 100 if quick else 400
    rng = np.random.default_rng(0)
    frames = rng.poisson(2.0, (n, size, size)).astype(np.float64)
    labels = ring_labels(size)
    t0 = time.perf_counter()
    g2_sk, lags = corr.multi_tau_auto_corr(levels, B, labels, frames)
    t_sk = time.perf_counter() - t0
    ours = MultitauCorrelator(PixelLayout(labels), B, levels)
    t0 = time.perf_counter()
    for f in frames:
        ours.add(f)
    res = ours.result()
    t_ours = time.perf_counter() - t0
    keep = res.pairs > 0
    k = min(int(keep.sum()), len(lags))
    diff = float(np.nanmax(np.abs(res.g2[keep][:k] / g2_sk[:k] - 1)))
    return [Figure("peers", f"xpcs {size}x{size} B={B} 30 bins vs scikit-beam multi_tau_auto_corr", n / t_ours,
                   "frames/s", n / t_sk, "scikit-beam multi_tau_auto_corr, same frames and labels",
                   extra=f"{n} frames, {levels} levels; max |g2/g2_skbeam - 1| = {diff:.1e}")]


def _photon_finding(quick: bool) -> list[Figure]:
    n = 20 if quick else 100
    rng = np.random.default_rng(3)
    ped = rng.normal(1000, 15, EPIX_2M).astype(np.float32)
    gain = rng.normal(40, 1, EPIX_2M).astype(np.float32)
    frames = [(ped + gain * rng.poisson(0.05, EPIX_2M) + rng.normal(0, 3, EPIX_2M)).astype(np.uint16)
              for _ in range(8)]

    def bare(raw: np.ndarray) -> np.ndarray:  # photons = floor(E / photon_energy + 1 - threshold), at least 0
        return np.maximum(np.floor((raw.astype(np.float32) - ped) / gain + 0.5), 0).astype(np.uint16)

    with tempfile.TemporaryDirectory(prefix="fcbench_peers_") as d:
        np.save(Path(d) / "ped.npy", ped)
        np.save(Path(d) / "gain.npy", gain)
        plugin = CalibrationPlugin("calib")
        plugin.configure({"pedestal": str(Path(d) / "ped.npy"), "gain": str(Path(d) / "gain.npy"),
                          "photonize": {"photon_energy": 1.0, "threshold": 0.5}, "output_dtype": "uint16"})
        best, best_bare = 0.0, 0.0
        for _ in range(2 if quick else 3):
            best_bare = max(best_bare, _rate_bare(bare, frames, n))
            best = max(best, _rate_plugin(plugin, frames, n))
    return [Figure("peers", "photon finding, 2M ePix-sized frame (pedestal, gain, photonize)", best,
                   "frames/s per core", best_bare, "bare numpy formula, same frames", ASK_PER_CORE, "value",
                   extra=f"{EPIX_2M[0]}x{EPIX_2M[1]} uint16 in, photon counts out; the LCLS-II ask is "
                         f"{ASK_PER_CORE:g} frames/s per core (seed 002)")]


def run(quick: bool = False) -> list[Figure]:
    return _xpcs(quick) + _photon_finding(quick)
