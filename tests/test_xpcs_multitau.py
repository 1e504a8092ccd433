"""The multi-tau correlator against brute-force references computed here from the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from framechain.framereceiver.sources import SimulatedSource, speckle_g2
from framechain.plugins._xpcs import (MultitauCorrelator, PixelLayout, fit_g2, levels_for_frames, multitau_batch,
                           multitau_lags)
from framechain.plugins._xpcs.aps import aps_g2
from framechain.plugins._xpcs.twotime import TwoTimeAccumulator

RTOL = 1e-9


def brute_force(frames: np.ndarray, labels: np.ndarray, num_levels: int, num_bufs: int):
    """g2, G, P, F straight from the definitions: explicit loops over levels, lags, pairs and bins."""
    bins = [q for q in range(1, labels.max() + 1)]
    used = labels > 0
    level = [f.astype(np.float64) for f in frames]
    delays, out = [], []
    for lev in range(num_levels):
        for i in (range(num_bufs) if lev == 0 else range(num_bufs // 2, num_bufs)):
            delays.append(i * 2 ** lev)
            G, P, F = [], [], []
            for k in range(i, len(level)):
                past, fut = level[k - i], level[k]
                if not (np.isfinite(past[used]).all() and np.isfinite(fut[used]).all()):
                    continue
                G.append([(past * fut)[labels == q].mean() for q in bins])
                P.append([past[labels == q].mean() for q in bins])
                F.append([fut[labels == q].mean() for q in bins])
            if G:
                g, p, f = np.mean(G, axis=0), np.mean(P, axis=0), np.mean(F, axis=0)
                out.append((g / (p * f), g, p, f, len(G)))
            else:
                out.append((np.full(len(bins), np.nan),) * 4 + (0,))
        level = [(level[2 * k] + level[2 * k + 1]) / 2 for k in range(len(level) // 2)]
    g2, G, P, F, pairs = (np.array([o[j] for o in out]) for j in range(5))
    return np.array(delays), g2, G, P, F, pairs


def online(frames, labels, num_levels, num_bufs, **kw):
    c = MultitauCorrelator(PixelLayout(labels), num_bufs, num_levels, **kw)
    for f in frames:
        c.add(f)
    return c


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, (9, 11))
    frames = rng.poisson(4.0, (150, 9, 11)).astype(np.float32) * rng.uniform(0.5, 1.5, (150, 1, 1)).astype(
        np.float32)
    return labels, frames


@pytest.mark.parametrize("num_bufs,num_levels", [(8, 4), (4, 5), (2, 3), (6, 1)])
def test_g2_matches_brute_force(data, num_bufs, num_levels):
    labels, frames = data
    delays, g2, G, P, F, pairs = brute_force(frames, labels, num_levels, num_bufs)
    r = online(frames, labels, num_levels, num_bufs).result()
    np.testing.assert_array_equal(r.delays, delays)
    np.testing.assert_array_equal(r.pairs, pairs)
    ok = pairs > 0
    for got, want in ((r.g2, g2), (r.G, G), (r.P, P), (r.F, F)):
        np.testing.assert_allclose(got[ok], want[ok], rtol=RTOL, atol=0)
    assert np.isnan(r.g2[~ok]).all()


def test_float32_precision_option(data):
    labels, frames = data
    delays, g2, *_, pairs = brute_force(frames, labels, 4, 8)
    r = online(frames, labels, 4, 8, dtype="float32").result()
    ok = pairs > 0
    np.testing.assert_array_equal(r.pairs, pairs)
    np.testing.assert_allclose(r.g2[ok], g2[ok], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="float64 or float32"):
        MultitauCorrelator(PixelLayout(labels), 8, 4, dtype="float16")


def test_lag_list():
    assert multitau_lags(1, 8).tolist() == list(range(8))
    assert multitau_lags(3, 8).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28]
    assert multitau_lags(3, 4).tolist() == [0, 1, 2, 3, 4, 6, 8, 12]
    assert multitau_lags(2, 2).tolist() == [0, 1, 2]
    assert levels_for_frames(10000, 8) == 11          # level 10 holds 9 frames, enough for lag 4 * 2**10
    assert levels_for_frames(3, 8) == 1


def test_frame_by_frame_equals_batch(data):
    labels, frames = data
    r = online(frames, labels, 4, 8).result()
    b = multitau_batch(frames, labels, 4, 8)
    np.testing.assert_array_equal(r.pairs, b.pairs)
    ok = r.pairs > 0
    np.testing.assert_allclose(r.g2[ok], b.g2[ok], rtol=RTOL, atol=0)
    np.testing.assert_allclose(r.G[ok], b.G[ok], rtol=RTOL, atol=0)


def test_nan_frames_skipped_and_counted(data):
    labels, frames = data
    frames = frames.copy()
    used = np.argwhere(labels > 0)
    frames[10][tuple(used[0])] = np.nan                 # one used pixel
    frames[57] = np.nan                                  # whole frame
    frames[80][labels == 0] = np.nan                     # only unused pixels: frame stays good
    c = online(frames, labels, 4, 8)
    r = c.result()
    assert r.frames == 150 and r.frames_bad == 2
    delays, g2, *_, pairs = brute_force(frames, labels, 4, 8)
    np.testing.assert_array_equal(r.pairs, pairs)
    ok = pairs > 0
    np.testing.assert_allclose(r.g2[ok], g2[ok], rtol=RTOL, atol=0)
    # lag 0: 150 frames less 2 bad; lag 1: 149 pairs less the 4 that touch frame 10 or 57
    assert r.pairs[0] == 148 and r.pairs[1] == 145


def test_missing_frames_keep_the_time_axis(data):
    labels, frames = data
    holed = frames.copy()
    holed[[20, 21, 90]] = np.nan
    want = online(holed, labels, 4, 8).result()
    c = MultitauCorrelator(PixelLayout(labels), 8, 4)
    for k, f in enumerate(frames):
        if k in (20, 21, 90):
            continue
        if k in (22, 91):
            c.add_missing(2 if k == 22 else 1)
        c.add(f)
    got = c.result()
    np.testing.assert_array_equal(got.pairs, want.pairs)
    ok = want.pairs > 0
    np.testing.assert_allclose(got.g2[ok], want.g2[ok], rtol=RTOL, atol=0)


def test_empty_bin_reports_nan(data):
    labels, frames = data
    lab = labels.copy()
    lab[lab == 3] = 0                                    # bin 3 has no pixel, bins 1, 2, 4 do
    r = online(frames, lab, 3, 4).result()
    assert r.g2.shape[1] == 4
    assert np.isnan(r.g2[:, 2]).all()
    assert np.isfinite(r.g2[r.pairs > 0][:, [0, 1, 3]]).all()


def test_integer_dtypes_and_large_values():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (6, 7))
    frames = rng.integers(0, 2 ** 31 - 1, (40, 6, 7)).astype(np.uint32)
    _, g2, *_, pairs = brute_force(frames, labels, 3, 4)
    r = online(frames, labels, 3, 4).result()
    ok = pairs > 0
    np.testing.assert_allclose(r.g2[ok], g2[ok], rtol=RTOL, atol=0)


def test_layout_chunks_cover_every_pixel_once():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 7, (40, 50))
    lay = PixelLayout(labels, chunk=16)
    assert sorted(lay.pixels.tolist()) == np.flatnonzero(labels.ravel()).tolist()
    frame = rng.random((40, 50))
    x = lay.empty()
    lay.gather(frame, x)
    want = np.array([frame[labels == q].sum() for q in range(1, 7)])
    np.testing.assert_allclose(lay.bin_sums(x), want, rtol=1e-12)
    assert x.reshape(-1)[lay.pads].sum() == 0


def test_scikit_beam_agrees(data):
    import skbeam.core.correlation as corr  # the reference correlator (test extra)
    labels, frames = data
    frames = frames.astype(np.float64)
    frames[33] = np.nan
    for num_levels, num_bufs in ((4, 8), (5, 4)):
        g2_ref, lags = corr.multi_tau_auto_corr(num_levels, num_bufs, labels, frames)
        r = online(frames, labels, num_levels, num_bufs).result()
        n = len(lags)
        np.testing.assert_array_equal(r.delays[:n], lags)
        np.testing.assert_allclose(r.g2[:n], g2_ref, rtol=RTOL, atol=0)


def test_aps_normalisation_matches_brute_force():
    rng = np.random.default_rng(11)
    dyn = np.repeat(np.repeat(np.array([[1, 2], [2, 0]]), 4, axis=0), 4, axis=1)
    sta = np.where(dyn > 0, 1 + (np.arange(64).reshape(8, 8) % 3) + 3 * (dyn - 1), 0)   # 3 static per dynamic
    frames = rng.poisson(5.0, (60, 8, 8)).astype(np.float64)
    num_levels, num_bufs = 3, 4
    c = online(frames, dyn, num_levels, num_bufs, per_pixel=True)
    lay = c.layout
    G2, IP, IF = c.pixel_means()
    sb = sta.reshape(-1)[lay.pixels] - 1
    g2, err = aps_g2(G2, IP, IF, lay.pixel_bins, sb, 2, int(sta.max()))
    # brute force per pixel over the pairs of each lag
    level = [f for f in frames]
    t = 0
    for lev in range(num_levels):
        for i in (range(num_bufs) if lev == 0 else range(num_bufs // 2, num_bufs)):
            pairs = [(level[k - i], level[k]) for k in range(i, len(level))]
            if pairs:
                g2p = np.mean([a * b for a, b in pairs], axis=0)
                ip = np.mean([a for a, _ in pairs], axis=0)
                iff = np.mean([b for _, b in pairs], axis=0)
                for d in (1, 2):
                    statics = np.unique(sta[dyn == d])
                    want = np.mean([g2p[sta == s].mean() / (ip[sta == s].mean() * iff[sta == s].mean())
                                    for s in statics])
                    assert g2[t, d - 1] == pytest.approx(want, rel=RTOL)
                    per_pixel = (g2p / (ip * iff))[dyn == d]
                    assert err[t, d - 1] == pytest.approx(per_pixel.std(ddof=1) / np.sqrt(per_pixel.size),
                                                          rel=1e-7)
            t += 1
        level = [(level[2 * k] + level[2 * k + 1]) / 2 for k in range(len(level) // 2)]


def test_twotime_matches_brute_force():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (5, 6))
    frames = rng.poisson(3.0, (12, 5, 6)).astype(np.uint16)
    tt = TwoTimeAccumulator(PixelLayout(labels), max_frames=10)
    for f in frames:
        tt.add(f, True)
    assert tt.n == 10 and tt.frames_beyond == 2
    bins, c2 = tt.compute()
    assert bins.tolist() == [1, 2] and c2.shape == (2, 10, 10)
    for b in (1, 2):
        X = frames[:10][:, labels == b].astype(np.float64)
        want = (X @ X.T / X.shape[1]) / np.outer(X.mean(1), X.mean(1))
        np.testing.assert_allclose(c2[b - 1], want, rtol=1e-6)
    g2 = TwoTimeAccumulator.g2_from_c2(c2)
    assert g2.shape == (9, 2)
    assert g2[0, 0] == pytest.approx(np.mean(np.diagonal(c2[0], 1)), rel=1e-6)


def test_fit_recovers_parameters():
    tau = multitau_lags(10, 8)[1:].astype(float)
    contrast, tau_c = fit_g2(tau, speckle_g2(tau, 37.0, 0.21))
    assert contrast == pytest.approx(0.21, rel=1e-6) and tau_c == pytest.approx(37.0, rel=1e-6)
    assert all(np.isnan(fit_g2([1.0], [1.2])))


def test_physics_simulated_speckle_10000_frames():
    """Fitted contrast and decay rate of the receiver's speckle pattern within 5 % of the truth."""
    truth_tau, truth_contrast, n = 20.0, 0.3, 10_000
    src = SimulatedSource((32, 32), "uint16", n, 0, "speckle", correlation_time=truth_tau,
                          contrast=truth_contrast, intensity=2.0, seed=1)
    c = MultitauCorrelator(PixelLayout(np.ones((32, 32), int)), 8, levels_for_frames(n, 8))
    frame = np.empty((32, 32), np.uint16)
    for k in range(n):
        src.fill(k, frame)
        c.add(frame)
    r = c.result()
    keep = (r.pairs > 0) & (r.delays > 0)
    contrast, tau_c = fit_g2(r.delays[keep], r.g2[keep, 0], weights=r.pairs[keep])
    assert contrast == pytest.approx(truth_contrast, rel=0.05)
    assert (2 / tau_c) == pytest.approx(2 / truth_tau, rel=0.05)   # decay rate of g2 - 1


def test_max_bytes_stops_at_the_levels_that_fit(data):
    labels, frames = data
    lay = PixelLayout(labels)
    level_bytes = lay.padded_size * 8 * 4
    accumulators = MultitauCorrelator(lay, 4, 6).memory_bytes()       # before any level buffer exists
    capped = MultitauCorrelator(lay, 4, 6, max_bytes=accumulators + 2 * level_bytes + 1)
    for f in frames:
        capped.add(f)
    assert capped.capped and capped.level_limit == 2 and capped.levels_reached == 2
    two = online(frames, labels, 2, 4).result()
    r = capped.result()
    n = two.delays.size
    np.testing.assert_array_equal(r.pairs[:n], two.pairs)
    np.testing.assert_allclose(r.g2[:n], two.g2, rtol=1e-15)
    assert (r.pairs[n:] == 0).all() and np.isnan(r.g2[n:]).all()


def test_g2_err_is_the_standard_error_over_chunks():
    """docs/xpcs.md: g2_err = std(g2_chunk, ddof=1) / sqrt(n_chunks), g2_chunk from the chunk's own G, P, F."""
    rng = np.random.default_rng(1)
    labels = np.ones((16, 16), np.int64)
    labels[8:] = 2
    lay = PixelLayout(labels, chunk=32)                       # 4 chunks of 32 pixels per bin
    frames = rng.poisson(2.0, (120, 16, 16)).astype(np.float64)
    c = MultitauCorrelator(lay, num_bufs=4, num_levels=3)
    for f in frames:
        c.add(f)
    r = c.result()
    X = frames.reshape(len(frames), -1)[:, lay.pixels].reshape(len(frames), lay.num_chunks, lay.chunk)
    t = 0
    for lev in range(3):
        for i in (range(4) if lev == 0 else range(2, 4)):
            past, fut = X[:len(X) - i], X[i:]
            g2c = (past * fut).mean(axis=(0, 2)) / (past.mean(axis=(0, 2)) * fut.mean(axis=(0, 2)))
            for b in (0, 1):
                per_chunk = g2c[lay.chunk_bin == b]
                want = per_chunk.std(ddof=1) / np.sqrt(per_chunk.size)
                assert r.g2_err[t, b] == pytest.approx(want, rel=1e-7), (lev, i, b)
            t += 1
        X = (X[0:len(X) // 2 * 2:2] + X[1:len(X) // 2 * 2:2]) / 2


def test_aps_g2_err_leaves_out_pixels_that_never_saw_a_photon():
    rng = np.random.default_rng(3)
    dyn = np.ones((8, 8), np.int64)
    dyn[4:] = 2
    frames = rng.poisson(2.0, (50, 8, 8)).astype(np.float64)
    frames[:, 0, 0] = 0.0                                     # a dead pixel: IP = IF = 0, no g2 of its own
    frames[:, 5, :7] = 0.0                                    # bin 2 keeps 25 lit pixels
    c = online(frames, dyn, 1, 4, per_pixel=True)
    lay = c.layout
    G2, IP, IF = c.pixel_means()
    g2, err = aps_g2(G2, IP, IF, lay.pixel_bins, lay.pixel_bins, 2, 2)
    for i in (1, 2, 3):
        past, fut = frames[:-i], frames[i:]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_pixel = (past * fut).mean(0) / (past.mean(0) * fut.mean(0))
        for d in (1, 2):
            v = per_pixel[(dyn == d) & np.isfinite(per_pixel)]
            assert v.size == (31 if d == 1 else 25)
            assert err[i, d - 1] == pytest.approx(v.std(ddof=1) / np.sqrt(v.size), rel=1e-7)
            assert np.isfinite(g2[i, d - 1])


def test_segment_sums_stay_bounded_and_exact_on_block_edges():
    from framechain.plugins._xpcs.averages import TimeAverages
    rng = np.random.default_rng(5)
    static = rng.integers(1, 4, (6, 7))
    lay = PixelLayout(static)
    frames = rng.poisson(3.0, (64, 6, 7)).astype(np.float64)
    avg = TimeAverages(lay, (6, 7), blocks=8)
    size = avg.static_sums.nbytes()
    for k, f in enumerate(frames):
        avg.add(f, k, k != 13)                                # frame 13 is bad: left out
    assert avg.static_sums.nbytes() == size and avg.static_sums.block == 8
    good = np.ones(64, bool)
    good[13] = False
    per_frame = np.array([[f[static == b].mean() for b in (1, 2, 3)] for f in frames])
    np.testing.assert_allclose(avg.scattering_1d(), per_frame[good].mean(axis=0), rtol=1e-12)
    seg = avg.segments(4)                                     # edges 16, 32, 48 fall on block edges
    for k in range(4):
        part = slice(16 * k, 16 * k + 16)
        np.testing.assert_allclose(seg[k], per_frame[part][good[part]].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(TimeAverages(lay, (6, 7)).segments(1), np.full((1, 3), np.nan))
