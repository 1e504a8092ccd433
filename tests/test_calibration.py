"""CalibrationPlugin in-process: outputs against independent numpy formulas, bad input, reload."""

from __future__ import annotations

import numpy as np
import pytest
from calib_helpers import (attach, multigain_constants, multigain_raw, ref_common_mode, ref_multigain, save_h5,
                          save_npy)

from framechain.frameprocessor import Frame
from framechain.ipc.errors import ConfigError
from framechain.plugins.calibration import CalibrationPlugin

H, W = 32, 48


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def consts(tmp_path, rng):
    ped = rng.normal(1000, 20, (H, W)).astype(np.float32)
    gain = rng.normal(40, 2, (H, W)).astype(np.float32)
    ff = rng.uniform(0.8, 1.2, (H, W)).astype(np.float32)
    return {"ped": ped, "gain": gain, "ff": ff,
            "ped_spec": save_npy(tmp_path / "ped.npy", ped),
            "gain_spec": save_h5(tmp_path / "gain.h5", "/entry/gain", gain),
            "ff_spec": save_npy(tmp_path / "ff.npy", ff)}


@pytest.fixture
def mg(tmp_path, rng):
    p3, g3 = multigain_constants(rng, (H, W))
    return {"p3": p3, "g3": g3, "ped_spec": save_h5(tmp_path / "mg.h5", "/pedestal", p3),
            "gain_spec": save_h5(tmp_path / "mg.h5", "/gain", g3)}


def run(plugin, *frames):
    sink = attach(plugin)
    for i, f in enumerate(frames):
        plugin.process_frame(f if isinstance(f, Frame) else Frame(f, i))
    return sink.frames


def test_single_gain_matches_formula_and_leaves_raw_untouched(consts, rng):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "gain": consts["gain_spec"], "flatfield": consts["ff_spec"]})
    raw = rng.integers(0, 4096, (H, W), dtype=np.uint16)
    keep = raw.copy()
    frame = Frame(raw, 7, dataset="data", acquisition_id="acq1", timestamp=12.5, parameters={"x": 1})
    (out,) = run(p, frame)
    ref = (raw.astype(np.float64) - consts["ped"]) / consts["gain"].astype(np.float64) / consts["ff"]
    assert out is not frame and out.dtype == np.float32
    np.testing.assert_allclose(out.data, ref, rtol=1e-6)
    assert np.array_equal(raw, keep)
    assert (out.frame_number, out.acquisition_id, out.timestamp, out.parameters) == (7, "acq1", 12.5, {"x": 1})
    assert p.status()["frames_calibrated"] == 1


def test_pedestal_only_is_bit_exact(consts, rng):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"]})
    raw = rng.integers(0, 4096, (H, W), dtype=np.uint16)
    (out,) = run(p, raw)
    assert np.array_equal(out.data, raw.astype(np.float32) - consts["ped"])


@pytest.mark.parametrize("invalid", ["nan", "zero"])
def test_multigain_all_stages_and_invalid_code(mg, rng, invalid):
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"],
                 "invalid_gain_value": invalid})
    raw = multigain_raw(rng, (H, W))
    for code in (0, 1, 2, 3):
        assert np.any(raw >> 14 == code)
    (out,) = run(p, raw)
    ref = ref_multigain(raw, mg["p3"], mg["g3"], invalid=np.nan if invalid == "nan" else 0.0)
    np.testing.assert_allclose(out.data, ref, rtol=1e-6, equal_nan=True)
    assert np.array_equal(np.isnan(out.data), (raw >> 14 == 2) if invalid == "nan" else np.zeros((H, W), bool))
    st = p.status()
    assert st["invalid_gain_pixels"] == st["last_invalid_gain_pixels"] == int(np.count_nonzero(raw >> 14 == 2))


def test_multigain_with_flatfield_and_all_g0_frame(mg, consts, rng):
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"],
                 "flatfield": consts["ff_spec"]})
    g0 = multigain_raw(rng, (H, W), codes=np.zeros((H, W), np.uint16))
    mixed = multigain_raw(rng, (H, W))
    out = run(p, g0, mixed)
    for o, raw in zip(out, (g0, mixed)):
        np.testing.assert_allclose(o.data, ref_multigain(raw, mg["p3"], mg["g3"], consts["ff"]), rtol=1e-6,
                                   equal_nan=True)


def test_multigain_frame_of_wrong_dtype_is_counted_and_dropped(mg):
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"]})
    assert run(p, np.zeros((H, W), np.int32)) == []
    assert p.status()["frames_wrong_dtype"] == 1


@pytest.mark.parametrize("mode,bank", [("row", [16, 24]), ("bank", [16, 24]), ("row", None)])
def test_common_mode_single_gain(consts, rng, tmp_path, mode, bank):
    status = np.zeros((H, W), np.uint32)
    status[rng.random((H, W)) < 0.05] = 1
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "gain": consts["gain_spec"],
                 "pixel_status": save_npy(tmp_path / "st.npy", status),
                 "common_mode": {"mode": mode, "bank_shape": bank, "cormax": 30.0, "npix_min": 5,
                                 "threshold": 60.0}})
    # dark noise + per-row offsets (one beyond cormax) + a few photons above threshold
    offsets = rng.normal(0, 8, (H, 1)).astype(np.float32)
    offsets[3] = 45.0
    raw = consts["ped"] + offsets + rng.normal(0, 2, (H, W)).astype(np.float32)
    raw[rng.random((H, W)) < 0.02] += 400
    raw = np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
    (out,) = run(p, raw)
    d = raw.astype(np.float32) - consts["ped"]
    ref = ref_common_mode(d, mode, tuple(bank or (H, W)), 30.0, 5, status != 0, 60.0) / consts["gain"]
    np.testing.assert_allclose(out.data, ref, rtol=1e-6, atol=1e-5)
    cm = p.status()["common_mode"]
    assert cm["groups_corrected"] > 0
    if mode == "row":  # the correction removed the row offsets, except the one beyond cormax
        assert cm["groups_skipped_cormax"] >= 1
        assert abs(np.median(out.data[5] * consts["gain"][5])) < 3
        assert abs(np.median(out.data[3] * consts["gain"][3]) - 45) < 3


def test_common_mode_npix_min_skips_groups(consts, rng, tmp_path):
    status = np.zeros((H, W), np.uint32)
    status[:, :20] = 4  # leaves 4 good pixels in each row of the first 24-wide bank
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "pixel_status": save_npy(tmp_path / "st.npy", status),
                 "common_mode": {"mode": "row", "bank_shape": [H, 24], "npix_min": 5}})
    raw = np.clip(np.rint(consts["ped"] + 5), 0, None).astype(np.uint16)
    (out,) = run(p, raw)
    ref = ref_common_mode(raw.astype(np.float32) - consts["ped"], "row", (H, 24), 10.0, 5, status != 0)
    np.testing.assert_allclose(out.data, ref, rtol=1e-6, atol=1e-5)
    assert p.status()["common_mode"]["groups_skipped_npix"] == H


def test_common_mode_multigain_uses_and_corrects_g0_only(mg, rng):
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"],
                 "common_mode": {"mode": "row", "bank_shape": [16, 16], "cormax": 50.0, "npix_min": 3}})
    codes = np.zeros((H, W), np.uint16)
    codes[rng.random((H, W)) < 0.1] = 1
    codes[rng.random((H, W)) < 0.03] = 3
    adc = np.clip(mg["p3"][0] + 7 + rng.normal(0, 2, (H, W)), 0, 0x3FFF)
    raw = ((codes << 14) | np.rint(adc).astype(np.uint16)).astype(np.uint16)
    (out,) = run(p, raw)
    g0 = codes == 0
    d0 = (raw & 0x3FFF).astype(np.float32) - mg["p3"][0]
    d0 = ref_common_mode(d0, "row", (16, 16), 50.0, 3, ~g0)
    ref = ref_multigain(raw, mg["p3"], mg["g3"])
    ref[g0] = (d0 / mg["g3"][0].astype(np.float64))[g0]
    np.testing.assert_allclose(out.data, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_photonize(consts, rng, dtype):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "gain": consts["gain_spec"], "output_dtype": dtype,
                 "photonize": {"photon_energy": 8.0, "threshold": 5.0}})
    raw = np.clip(consts["ped"] + rng.normal(0, 40, (H, W)) + rng.poisson(0.5, (H, W)) * 320, 0, 65535)
    raw = np.rint(raw).astype(np.uint16)
    raw[0, 0] = 65535  # huge signal: clipped to the dtype maximum only if it overflows
    (out,) = run(p, raw)
    # reference straight from the formula in float64: n = rint(E / 8) where E = (raw - ped) / gain >= 5, else 0
    e = (raw.astype(np.float64) - consts["ped"].astype(np.float64)) / consts["gain"].astype(np.float64)
    ref = np.where(e >= 5.0, np.rint(e / 8.0), 0.0)
    assert out.dtype == np.dtype(dtype)
    # The plugin works in float32: raw - ped (one rounding; raw and ped are exact in float32), times the
    # float32 reciprocal of the gain (one rounding) and the product (one rounding); / 8 is exact. So its E
    # is within 3 * 2**-24 (< 2e-7) relative of the float64 E, and it can round differently only where
    # E / 8 lies that close to a half-integer or E that close to the threshold. Outside that band (taken
    # 5x wider, 1e-6 relative) the counts must be equal; inside it they may differ by one photon.
    band = 1e-6 * np.abs(e)
    near = (np.abs(e / 8.0 - np.floor(e / 8.0) - 0.5) <= band / 8.0) | (np.abs(e - 5.0) <= band)
    got = out.data.astype(np.float64)
    np.testing.assert_array_equal(got[~near], ref[~near])
    assert np.all(np.abs(got[near] - ref[near]) <= 1) and near.sum() <= 3
    assert out.data.max() > 1 and (out.data == 0).any() and (out.data == 1).any()


def test_photonize_counts_clip_and_nan_to_zero(mg, rng):
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"], "output_dtype": "uint8",
                 "photonize": {"photon_energy": 0.01}})
    raw = multigain_raw(rng, (H, W))
    (out,) = run(p, raw)
    e = ref_multigain(raw, mg["p3"], mg["g3"])
    assert np.all(out.data[raw >> 14 == 2] == 0)
    big = np.nan_to_num(e, nan=0) / 0.01 > 255
    assert big.any() and np.all(out.data[big] == 255)


def test_wrong_shape_frame_is_counted_and_dropped(consts):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"]})
    out = run(p, np.zeros((H + 1, W), np.uint16), np.zeros((H, W), np.uint16))
    assert len(out) == 1 and out[0].frame_number == 1
    assert p.status()["frames_wrong_shape"] == 1


def test_reload_takes_effect_on_next_frame(consts, tmp_path, rng):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"]})
    sink = attach(p)
    raw = rng.integers(0, 4096, (H, W), dtype=np.uint16)
    p.process_frame(Frame(raw, 0))
    ped2 = consts["ped"] + 100
    p.configure({"pedestal": save_h5(tmp_path / "ped2.h5", "/p", ped2)})
    p.process_frame(Frame(raw, 1))
    assert np.array_equal(sink.frames[0].data, raw.astype(np.float32) - consts["ped"])
    assert np.array_equal(sink.frames[1].data, raw.astype(np.float32) - ped2)
    # the same path rewritten, then 'reload'
    save_h5(tmp_path / "ped2.h5", "/p", consts["ped"])
    p.command("reload", {})
    p.process_frame(Frame(raw, 2))
    assert np.array_equal(sink.frames[2].data, sink.frames[0].data)


def test_configure_rebuilds_constants_only_when_a_constant_key_changes(consts, tmp_path, caplog):
    p = CalibrationPlugin("calib")
    ped_file = tmp_path / "moved_ped.npy"
    ped_spec = save_npy(ped_file, consts["ped"])
    with caplog.at_level("INFO", logger="framechain.frameprocessor.plugin"):
        p.configure({"pedestal": ped_spec, "gain": consts["gain_spec"]})
    loads, before = p.status()["constants"]["loads"], p._constants
    in_use = [r for r in caplog.records if "constants in use" in r.getMessage()]
    assert len(in_use) == 1
    ped_file.unlink()   # a constant file moved away after it was loaded: other settings must still work
    caplog.clear()
    with caplog.at_level("INFO", logger="framechain.frameprocessor.plugin"):
        p.configure({"pool_memory": 64})
        p.configure({"dark_file": str(tmp_path / "dark.h5")})
        p.configure({"attach_mask": False})
        p.configure({"pedestal": ped_spec, "mode": "single"})   # same values: nothing changes
    assert p._constants is before and p.status()["constants"]["loads"] == loads
    assert not [r for r in caplog.records if "constants in use" in r.getMessage()]
    assert p.config["pool_memory"] == 64 and p.pool.max_memory == 64 << 20 and p.config["attach_mask"] is False
    # a changed setting rebuilds from the files, so now the missing pedestal is a nack and nothing changes
    _nack(p, {"common_mode": {"mode": "row"}}, "moved_ped.npy", "does not exist")
    assert p._constants is before and p.config["common_mode"] is None
    save_npy(ped_file, consts["ped"] + 1)
    p.configure({"common_mode": {"mode": "row"}})
    assert p._constants is not before and p.status()["constants"]["loads"] == loads + 1
    assert np.array_equal(p._constants.pedestal, (consts["ped"] + 1).reshape(-1))


def test_pixel_status_attached_as_mask(consts, tmp_path):
    status = np.zeros((H, W), np.uint8)
    status[2, 3] = 8
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "pixel_status": save_npy(tmp_path / "s.npy", status)})
    a, b = run(p, np.zeros((H, W), np.uint16), np.zeros((H, W), np.uint16))
    assert a.mask is b.mask and a.mask.dtype == bool and not a.mask[2, 3] and a.mask.sum() == H * W - 1
    assert p.status()["constants"]["bad_pixels"] == 1


def _nack(plugin, params, *words):
    with pytest.raises(ConfigError) as err:
        plugin.configure(params)
    for w in words:
        assert str(w) in str(err.value), err.value
    return err.value


def test_bad_constants_are_rejected_and_previous_stay(consts, tmp_path, rng, mg):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "gain": consts["gain_spec"]})
    before = p._constants
    _nack(p, {"pedestal": str(tmp_path / "missing.npy")}, "missing.npy", "does not exist", "pedestal")
    _nack(p, {"gain": str(tmp_path / "gain.h5") + ":/nope"}, "gain.h5", "/nope", "no dataset")
    _nack(p, {"pedestal": save_npy(tmp_path / "small.npy", np.zeros((H, W - 1), np.float32))},
          "small.npy", "gain.h5", f"({H}, {W - 1})", f"({H}, {W})")
    _nack(p, {"flatfield": save_npy(tmp_path / "ff1.npy", np.ones((H - 1, W), np.float32))},
          "ff1.npy", "ped.npy", f"({H - 1}, {W})", f"({H}, {W})")
    g = consts["gain"].copy()
    g[1, 2] = np.nan
    _nack(p, {"gain": save_npy(tmp_path / "nan.npy", g)}, "nan.npy", "NaN", "(1, 2)")
    g[1, 2] = 0
    _nack(p, {"gain": save_npy(tmp_path / "zero.npy", g)}, "zero.npy", "zero")
    _nack(p, {"flatfield": save_npy(tmp_path / "neg.npy", -np.ones((H, W)))}, "neg.npy", "negative")
    _nack(p, {"mode": "triple"}, "mode", "triple")
    _nack(p, {"mode": "multigain"}, "multigain", "(3, H, W)")
    _nack(p, {"mode": "multigain", "pedestal": mg["ped_spec"], "gain": consts["gain_spec"]}, "gain.h5", "(3, H, W)")
    _nack(p, {"output_dtype": "uint16"}, "photonize")
    _nack(p, {"common_mode": {"mode": "row", "bank_shape": [5, 5]}}, "bank_shape", f"[{H}, {W}]")
    _nack(p, {"common_mode": {"mode": "row", "cormx": 3}}, "cormx")
    _nack(p, {"photonize": {"threshold": 1}}, "photon_energy")
    _nack(p, {"pedestal": "dark.txt"}, "dark.txt", ".npy")
    assert p._constants is before
    assert p.config["pedestal"] == consts["ped_spec"] and p.config["mode"] == "single"
    raw = rng.integers(0, 4096, (H, W), dtype=np.uint16)
    (out,) = run(p, raw)
    np.testing.assert_allclose(out.data, (raw - consts["ped"].astype(np.float64)) / consts["gain"], rtol=1e-6)


def test_output_frames_come_from_the_plugin_pool_and_return(consts):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"]})
    out = run(p, np.zeros((H, W), np.uint16))
    assert p.pool.stats()["blocks_in_use"] == 1
    del out[:]
    run(p, np.zeros((H, W), np.uint16))
    st = p.pool.stats()
    assert st["blocks_total"] == 1 and st["blocks_reused"] == 1


def test_gain_bits_select_the_documented_stage(mg):
    """Bits 15-14: 00 -> G0, 01 -> G1, 11 -> G2, 10 -> invalid (NaN); written out pixel by pixel."""
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"]})
    raw = np.zeros((H, W), np.uint16)
    raw[0, :4] = [0x0000 | 2000, 0x4000 | 2000, 0xC000 | 2000, 0x8000 | 2000]
    raw[1, :3] = [0x0000 | 16383, 0x4000 | 0, 0xC000 | 16383]
    (out,) = run(p, raw)
    p3, g3 = mg["p3"].astype(np.float64), mg["g3"].astype(np.float64)
    expect = {(0, 0): (2000 - p3[0, 0, 0]) / g3[0, 0, 0], (0, 1): (2000 - p3[1, 0, 1]) / g3[1, 0, 1],
              (0, 2): (2000 - p3[2, 0, 2]) / g3[2, 0, 2], (1, 0): (16383 - p3[0, 1, 0]) / g3[0, 1, 0],
              (1, 1): (0 - p3[1, 1, 1]) / g3[1, 1, 1], (1, 2): (16383 - p3[2, 1, 2]) / g3[2, 1, 2]}
    for (r, c), want in expect.items():
        assert out.data[r, c] == pytest.approx(want, rel=1e-6), (r, c)
    assert np.isnan(out.data[0, 3]) and p.status()["invalid_gain_pixels"] == 1


def test_float64_output_single_and_multigain(consts, mg, rng):
    p = CalibrationPlugin("calib")
    p.configure({"pedestal": consts["ped_spec"], "gain": consts["gain_spec"], "output_dtype": "float64"})
    raw = rng.integers(0, 4096, (H, W), dtype=np.uint16)
    (out,) = run(p, raw)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.data, (raw - consts["ped"].astype(np.float64)) / consts["gain"], rtol=1e-6)
    p.configure({"mode": "multigain", "pedestal": mg["ped_spec"], "gain": mg["gain_spec"]})
    raw = multigain_raw(rng, (H, W))
    (out,) = run(p, raw)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.data, ref_multigain(raw, mg["p3"], mg["g3"]), rtol=1e-6, equal_nan=True)
