"""Peers side by side (``framechain bench --peers``, ``make bench-peers``): not part of the default run.

- XPCS: scikit-beam's ``multi_tau_auto_corr`` (the field's reference, in the
  test extras) on the same 512x512 frames and labels (30 rings, B=8) as
  framechain's correlator, same run; the g2 difference is in the notes.
- XPCS: APS's boost_corr (PyTorch) on the CPU, one thread, on the same frames,
  when it can be imported (with torch): its PyPI releases need Python >= 3.12
  and framechain's venv is 3.11, so ``make`` does not install it; a source
  checkout on ``PYTHONPATH`` and ``pip install torch`` (a CPU build) serve.
  Without it the row is left out and a line on stderr says why.
- Photon finding for a 2M ePix-sized frame (16 modules of 352x384, uint16):
  pedestal, gain and photonize in the CalibrationPlugin, frames/s on one
  plugin thread (one core), beside the LCLS-II ask of 100 frames/s per core
  (seed 002) and against the bare numpy formula on the same frames.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from framechain.plugins._xpcs.layout import PixelLayout
from framechain.plugins._xpcs.multitau import MultitauCorrelator, MultitauResult
from framechain.plugins.calibration import CalibrationPlugin

from . import Figure
from .calibration import _rate_bare, _rate_plugin
from .xpcs import ring_labels

__all__ = ["run"]

EPIX_2M = (4 * 352, 4 * 384)   # 16 modules of 352 x 384 pixels: 2.16 Mpixel
ASK_PER_CORE = 100.0           # frames/s per core for photon finding at 25 kHz on a 2M ePix (seed 002)


def _ours(labels: np.ndarray, frames: np.ndarray, B: int, levels: int) -> tuple[MultitauResult, np.ndarray, float]:
    """framechain's correlator over ``frames``: its result, its lags and the seconds it took."""
    ours = MultitauCorrelator(PixelLayout(labels), B, levels)
    t0 = time.perf_counter()
    for f in frames:
        ours.add(f)
    res = ours.result()
    return res, ours.delays, time.perf_counter() - t0


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
    res, _, t_ours = _ours(labels, frames, B, levels)
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


def _boost_corr(quick: bool) -> list[Figure]:
    try:
        import torch
        from boost_corr import MultitauCorrelator as BoostMultitau
    except ImportError as err:
        print(f"peers: boost_corr left out ({err}); it needs torch, and its PyPI releases Python >= 3.12",
              file=sys.stderr)
        return []
    size, B, levels = 512, 8, 6
    n = 128 if quick else 512
    frames = np.random.default_rng(0).poisson(2.0, (n, size, size))
    labels = ring_labels(size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # one core, as framechain's correlator
    try:
        peer = BoostMultitau(det_size=(size, size), frame_num=n, device="cpu", queue_size=64,
                             max_count=int(frames.max()))
        dtype = peer.dtype_list[0][0]        # its level-0 storage type: the best case for it
        batches = [torch.from_numpy(frames[k:k + 64].reshape(-1, size * size).astype(np.float32)).to(dtype)
                   for k in range(0, n, 64)]
        t0 = time.perf_counter()
        for x in batches:
            peer.process(x)
        peer.post_process()
        t_peer = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    res, delays, t_ours = _ours(labels, frames, B, levels)
    # the same estimator from its per-pixel G2, IP, IF: npix * sum G2 / (sum IP * sum IF) per ring, at the
    # lags both compute at the same level (1..7 at level 0, then 2**l * (5..7) at level l)
    g = peer.g2.double().numpy()
    flat = labels.reshape(-1)
    rings = [np.flatnonzero(flat == b) for b in range(1, int(flat.max()) + 1)]
    diff, compared = 0.0, 0
    taus = list(zip(*peer.tau_bin.tolist()))
    for tid, (tau, level) in enumerate(taus):
        same_level = tau < B if level == 0 else tau // 2 ** level in range(B // 2 + 1, B)
        ours_row = np.flatnonzero(delays == tau)
        if not same_level or not len(ours_row):
            continue
        for b, px in enumerate(rings):
            theirs = len(px) * g[tid, 0, px].sum() / (g[tid, 1, px].sum() * g[tid, 2, px].sum())
            diff = max(diff, abs(res.g2[ours_row[0], b] / theirs - 1))
            compared += 1
    return [Figure("peers", f"xpcs {size}x{size} B={B} 30 bins vs boost_corr (torch, CPU, 1 thread)", n / t_ours,
                   "frames/s", n / t_peer, "boost_corr MultitauCorrelator, same frames",
                   extra=f"{n} frames; torch {torch.__version__}; max |g2/g2_boost - 1| = {diff:.1e} over the "
                         f"{compared} (lag, ring) values both compute alike (its sums are float32)")]


def run(quick: bool = False) -> list[Figure]:
    return _xpcs(quick) + _boost_corr(quick) + _photon_finding(quick)
