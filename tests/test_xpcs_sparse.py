"""Sparse multi-tau equals the dense correlator (and the definitions) frame by frame; the plugin's sparse option."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from framechain.frameprocessor import EndOfAcquisition, Frame
from framechain.ipc.errors import ConfigError
from framechain.plugins._xpcs import MultitauCorrelator, PixelLayout, multitau_batch
from framechain.plugins._xpcs.sparse import SparseMultitauCorrelator
from framechain.plugins.xpcs import AUTO_SPARSE_WINDOW, XpcsCorrelatorPlugin

RTOL = 1e-12


def photon_frames(n: int, shape: tuple[int, ...], occupancy: float, seed: int = 0, calibrated: bool = False):
    rng = np.random.default_rng(seed)
    f = rng.poisson(occupancy, (n,) + shape)
    if calibrated:                       # energies in photons: non-integer, some negative (noise)
        f = f * rng.normal(1.0, 0.05, f.shape) - (rng.random(f.shape) < occupancy / 4) * 0.3
        return f.astype(np.float32)
    return f.astype(np.uint16)


def assert_same(dense: MultitauCorrelator, sparse: MultitauCorrelator) -> None:
    a, b = dense.result(), sparse.result()
    np.testing.assert_array_equal(a.pairs, b.pairs)
    assert (a.frames, a.frames_bad) == (b.frames, b.frames_bad)
    for name in ("G", "P", "F", "g2", "g2_err"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        np.testing.assert_allclose(y, x, rtol=RTOL, atol=0, equal_nan=True, err_msg=name)
    assert dense.level_limit == sparse.level_limit and dense.levels_reached == sparse.levels_reached


def labels_for(shape, bins, seed=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, bins + 1, shape)


@pytest.mark.parametrize("num_bufs,num_levels,occupancy,dense_above,calibrated", [
    (8, 6, 0.01, 0.1, False), (8, 6, 0.05, 0.1, True), (4, 7, 0.02, 0.0, False), (4, 7, 0.02, 1.0, True),
    (16, 4, 0.2, 0.3, False), (2, 6, 0.5, 1.0, True), (64, 2, 0.003, 0.1, False), (6, 5, 1.5, 0.1, False),
])
@pytest.mark.parametrize("background", [True, False])
def test_sparse_equals_dense_frame_by_frame(num_bufs, num_levels, occupancy, dense_above, calibrated, background):
    shape = (37, 53)                                   # not a multiple of 4 pixels: the scan's tail
    labels = labels_for(shape, 7)
    lay = PixelLayout(labels)
    frames = photon_frames(300, shape, occupancy, calibrated=calibrated)
    frames[::3] = 0 if occupancy < 0.1 else frames[::3]             # empty frames too
    dense = MultitauCorrelator(lay, num_bufs, num_levels)
    sparse = SparseMultitauCorrelator(lay, num_bufs, num_levels, dense_above=dense_above, background=background)
    for k, f in enumerate(frames):
        if k in (41, 42, 170):                          # bad frames: a NaN in a used pixel
            f = f.astype(np.float64)
            f.reshape(-1)[lay.pixels[k % lay.num_pixels]] = np.nan
        if k == 100:
            dense.add_missing(5)
            sparse.add_missing(5)
        assert dense.add(f) == sparse.add(f)
        assert dense.last_sum == pytest.approx(sparse.last_sum, rel=RTOL, nan_ok=True)
        if k % 37 == 0:
            assert_same(dense, sparse)
    assert_same(dense, sparse)
    assert sparse.frames_bad == 8


def test_sparse_equals_the_whole_stack_computation():
    shape = (24, 24)
    labels = labels_for(shape, 4)
    frames = photon_frames(200, shape, 0.03, seed=5).astype(np.float64)
    c = SparseMultitauCorrelator(PixelLayout(labels), 8, 5)
    for f in frames:
        c.add(f)
    ref, r = multitau_batch(frames, labels, 5, 8), c.result()
    np.testing.assert_array_equal(r.pairs, ref.pairs)
    np.testing.assert_allclose(r.g2, ref.g2, rtol=RTOL, equal_nan=True)


def test_events_equal_frames_and_bad_events_are_refused():
    shape = (20, 30)
    labels = labels_for(shape, 5)
    lay = PixelLayout(labels)
    frames = photon_frames(120, shape, 0.04, seed=2)
    by_frame, by_events = SparseMultitauCorrelator(lay, 4, 5), SparseMultitauCorrelator(lay, 4, 5)
    for f in frames:
        flat = f.reshape(-1)
        idx = np.flatnonzero(flat)                       # unused pixels included: they are ignored
        by_frame.add(f)
        by_events.add_events(idx, flat[idx])
    assert_same(by_frame, by_events)
    assert by_events.counts
    for f in frames[:40] * 0.5:                          # events that are not photon counts
        flat = f.reshape(-1)
        idx = np.flatnonzero(flat)
        by_frame.add(f)
        by_events.add_events(idx, flat[idx])
    assert not by_events.counts and not by_frame.counts
    assert_same(by_frame, by_events)
    with pytest.raises(ValueError, match="not above the one before"):
        by_events.add_events(np.array([5, 3]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="out of range"):
        by_events.add_events(np.array([10**6]), np.array([1.0]))
    with pytest.raises(ValueError, match="one length"):
        by_events.add_events(np.array([1, 2]), np.array([1.0]))


def test_frames_of_any_layout_and_dtype():
    shape = (16, 18)
    labels = labels_for(shape, 3)
    lay = PixelLayout(labels)
    rng = np.random.default_rng(4)
    dense, sparse = MultitauCorrelator(lay, 4, 4), SparseMultitauCorrelator(lay, 4, 4)
    for k in range(60):
        base = rng.poisson(0.1, (shape[1], shape[0])).astype([np.uint8, np.uint32, np.int16, np.float64][k % 4])
        f = base.T                                          # a strided (transposed) view
        if k % 5 == 0:
            f = np.ascontiguousarray(f)
            f.setflags(write=False)                         # frames are shared read-only between plugins
        dense.add(f)
        sparse.add(f)
    assert_same(dense, sparse)
    with pytest.raises(ValueError, match="pixels"):
        sparse.add(np.zeros((4, 4), np.uint16))


def test_hand_over_to_dense_mid_run_continues_exactly():
    shape = (30, 30)
    labels = labels_for(shape, 6)
    lay = PixelLayout(labels)
    frames = photon_frames(260, shape, 0.02, seed=9)
    for switch in (1, 7, 64, 131):
        dense, sparse = MultitauCorrelator(lay, 8, 6), SparseMultitauCorrelator(lay, 8, 6, dense_above=0.05)
        for f in frames[:switch]:
            dense.add(f)
            sparse.add(f)
        handed = sparse.to_dense()
        for f in frames[switch:]:
            dense.add(f)
            handed.add(f)
        assert_same(dense, handed)


def test_max_bytes_caps_the_same_levels_as_dense():
    shape = (20, 20)
    labels = labels_for(shape, 4)
    lay = PixelLayout(labels)
    level = lay.padded_size * 8 * 4
    limit = MultitauCorrelator(lay, 4, 6).memory_bytes() + 2 * level + 1
    dense, sparse = MultitauCorrelator(lay, 4, 6, max_bytes=limit), SparseMultitauCorrelator(lay, 4, 6, max_bytes=limit)
    for f in photon_frames(100, shape, 0.1):
        dense.add(f)
        sparse.add(f)
    assert_same(dense, sparse)                         # waits for the dense levels' thread
    assert sparse.capped and sparse.level_limit == 2



def test_dense_levels_keep_counts_then_widen_then_hold_values():
    """Photon counts on the dense levels are uint8 sums, widened to uint16 when a sum outgrows a byte, to float64
    values past 65535 or once a value is not a count; every step equals the dense correlator."""
    shape = (24, 30)
    lay = PixelLayout(labels_for(shape, 5))
    frames = photon_frames(330, shape, 0.3, seed=11).astype(np.float64)
    frames[120:, 0, :4] = 150                    # level 1 sums of 300: past a byte
    frames[200:, 1, :4] = 40000                  # level 1 sums of 80000: past 16 bits
    frames[290] += 0.25                          # not a count: every dense level holds values from here
    dense, sparse = MultitauCorrelator(lay, 4, 6), SparseMultitauCorrelator(lay, 4, 6, dense_above=0.0)
    seen = []
    for k, f in enumerate(frames):
        dense.add(f)
        sparse.add(f)
        if k in (119, 199, 289, 329):
            seen.append((sparse._buf[1].dtype, sparse.counts))
            assert_same(dense, sparse)
    assert seen == [(np.uint8, True), (np.uint16, True), (np.float64, True), (np.float64, False)]
    assert sparse.to_dense()._buf[2].dtype == np.float64

def test_more_than_64_bufs_is_refused():
    with pytest.raises(ValueError, match="at most 64|<= 64"):
        SparseMultitauCorrelator(PixelLayout(np.ones((4, 4), int)), 66, 2)


# -- the plugin's sparse option ----------------------------------------------------------------------
def _run(plugin: XpcsCorrelatorPlugin, frames: np.ndarray) -> dict:
    for k, f in enumerate(frames):
        plugin.process_frame(Frame(f, k, acquisition_id="a"))
    st = plugin.status()
    plugin.process_end_of_acquisition(EndOfAcquisition("a", len(frames)))
    return st


@pytest.mark.parametrize("occupancy", [0.01, 0.8])
def test_plugin_sparse_true_false_auto_give_the_same_g2(occupancy):
    frames = photon_frames(200, (24, 24), occupancy, seed=1)
    results, states = {}, {}
    for mode in (True, False, "auto"):
        p = XpcsCorrelatorPlugin("xpcs")
        p.configure({"sparse": mode, "num_bufs": 8})
        states[mode] = _run(p, frames)
        results[mode] = p.results()
    for mode in (True, "auto"):
        np.testing.assert_allclose(results[mode]["g2"], results[False]["g2"], rtol=RTOL, equal_nan=True)
    assert states[True]["sparse"] is True and states[False]["sparse"] is False
    assert states["auto"]["sparse"] is (occupancy < 0.05)
    assert states["auto"]["occupancy"] == pytest.approx(1 - np.exp(-occupancy), rel=0.2)


def test_plugin_auto_hands_over_when_the_frames_fill_up(caplog):
    caplog.set_level("INFO")
    shape = (24, 24)
    frames = np.concatenate([photon_frames(2 * AUTO_SPARSE_WINDOW, shape, 0.005, seed=2),
                             photon_frames(3 * AUTO_SPARSE_WINDOW, shape, 1.0, seed=3)])
    auto, dense = XpcsCorrelatorPlugin("xpcs"), XpcsCorrelatorPlugin("xpcs")
    dense.configure({"sparse": False})
    st = _run(auto, frames)
    _run(dense, frames)
    assert st["sparse"] is False and st["sparse_switched_at"] == 3 * AUTO_SPARSE_WINDOW - 1
    assert any("dense correlator goes on" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(auto.results()["g2"], dense.results()["g2"], rtol=RTOL, equal_nan=True)


def test_plugin_sparse_true_refuses_what_it_cannot_do():
    p = XpcsCorrelatorPlugin("xpcs")
    before = p.request_configuration()
    with pytest.raises(ConfigError, match="aps normalization"):
        p.configure({"sparse": True, "normalization": "aps"})
    with pytest.raises(ConfigError, match="num_bufs must be at most 64"):
        p.configure({"sparse": True, "num_bufs": 128})
    with pytest.raises(ConfigError, match="sparse"):
        p.configure({"sparse": "yes"})
    assert p.request_configuration() == before


def _compare_in_child() -> None:
    shape = (20, 20)
    lay = PixelLayout(labels_for(shape, 4))
    dense, sparse = MultitauCorrelator(lay, 4, 5), SparseMultitauCorrelator(lay, 4, 5, dense_above=0.0)
    for f in photon_frames(80, shape, 0.05, seed=8):
        dense.add(f)
        sparse.add(f)
    assert_same(dense, sparse)


def test_dense_levels_thread_runs_in_a_forked_child():
    """A child forked after the parent used the dense levels' thread makes a thread of its own."""
    _compare_in_child()                                   # the parent's thread exists now
    child = multiprocessing.get_context("fork").Process(target=_compare_in_child)
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0


def test_frames_with_every_pixel_occupied():
    """Every used pixel holds a photon and unused ones too (after the last used one): the scan's events fill level
    0's slot exactly, nothing is written past it (this once overwrote the next slot's first event)."""
    shape = (48, 64)                                      # more used pixels than a slot's first capacity
    labels = labels_for(shape, 3)
    labels[labels == 0] = 1
    labels.reshape(-1)[-7:] = 0                           # unused pixels after the last used one
    lay = PixelLayout(labels)
    rng = np.random.default_rng(12)
    dense, sparse = MultitauCorrelator(lay, 4, 4), SparseMultitauCorrelator(lay, 4, 4)
    for _ in range(40):
        f = (rng.poisson(2.0, shape) + 1).astype(np.uint16)
        dense.add(f)
        sparse.add(f)
        assert sparse.last_events == lay.num_pixels
    assert_same(dense, sparse)
