"""The fused (numba) calibration kernels against the numpy kernels and the float64 reference formula.

The plugin takes the fused path for the common configuration and the numpy path
otherwise (common mode, float64 output, missing pedestal or gain); both must
give the same energies, for every gain code, block tails, read-only and strided frames.
"""

from __future__ import annotations

import numpy as np
import pytest
from calib_helpers import attach, multigain_constants, multigain_raw, ref_multigain

from framechain.frameprocessor import Frame
from framechain.plugins._calib.constants import build_constants
from framechain.plugins._calib.fused import fused_multigain, fused_single, multigain_supported, single_supported
from framechain.plugins._calib.kernels import (apply_gain_multigain, apply_gain_single, subtract_pedestal_multigain,
                                    subtract_pedestal_single)
from framechain.plugins._calib.scratch import Scratch
from framechain.plugins.calibration import CalibrationPlugin

_BASE = {"flatfield": None, "pixel_status": None, "common_mode": None, "photonize": None,
         "output_dtype": "float32", "invalid_gain_value": "nan"}


def _constants(tmp_path, mode: str, ped: np.ndarray, gain: np.ndarray, invalid: str = "nan"):
    np.save(tmp_path / "ped.npy", ped)
    np.save(tmp_path / "gain.npy", gain)
    return build_constants({**_BASE, "mode": mode, "pedestal": str(tmp_path / "ped.npy"),
                            "gain": str(tmp_path / "gain.npy"), "invalid_gain_value": invalid})


def _strided(raw: np.ndarray) -> np.ndarray:
    """The same values as a non-contiguous view (every other element of a buffer twice as long)."""
    buf = np.zeros(2 * raw.size, raw.dtype)
    buf[::2] = raw
    view = buf[::2]
    assert not view.flags.c_contiguous
    return view


def _numpy_multigain(raw, c, shape):
    out = np.empty(raw.size, np.float32)
    sw = subtract_pedestal_multigain(raw, c, out, Scratch(shape))
    apply_gain_multigain(c, out, sw)
    return out, sw.invalid


# shapes: smaller than a block, one block tail, exact blocks, a frame with a short last block
@pytest.mark.parametrize("shape", [(1, 5), (7, 9), (8, 64), (33, 65)])
@pytest.mark.parametrize("invalid", ["nan", "zero"])
@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_fused_multigain_matches_numpy_kernels_and_reference(tmp_path, shape, invalid, readonly, strided):
    rng = np.random.default_rng(sum(shape))
    p3, g3 = multigain_constants(rng, shape)
    c = _constants(tmp_path, "multigain", p3, g3, invalid)
    raw = multigain_raw(rng, shape).reshape(-1)
    raw[:5] = [0x3FFF, 0x4000, 0x8000, 0xC000, 0xFFFF][:raw.size]   # the edges of each gain code
    if strided:
        raw = _strided(raw)
    raw.flags.writeable = not readonly
    out = np.full(raw.size, -7.0, np.float32)
    assert multigain_supported(c, out)
    n_invalid = fused_multigain(raw, c, out)
    ref, ref_invalid = _numpy_multigain(raw, c, shape)
    assert n_invalid == ref_invalid == int(np.count_nonzero((raw >> 14) == 2))
    np.testing.assert_array_equal(out, ref)   # same float32 operations in the same order: bit-identical
    fill = np.nan if invalid == "nan" else 0.0
    np.testing.assert_allclose(out, ref_multigain(raw.reshape(shape), p3, g3, invalid=fill).reshape(-1),
                               rtol=2e-6, atol=1e-4)


def test_fused_multigain_sparse_spots_match_numpy_kernels(tmp_path):
    """A JUNGFRAU-like frame (G0 but for one G1/G2 spot and one lone G2 pixel) gives the numpy kernels' energies."""
    shape = (64, 256)
    rng = np.random.default_rng(5)
    p3, g3 = multigain_constants(rng, shape)
    c = _constants(tmp_path, "multigain", p3, g3)
    codes = np.zeros(shape, np.uint16)
    codes[20:26, 100:130] = 1
    codes[22:24, 110:120] = 3
    codes[63, 255] = 3
    raw = multigain_raw(rng, shape, codes).reshape(-1)
    out = np.empty(raw.size, np.float32)
    assert fused_multigain(raw, c, out) == 0
    np.testing.assert_array_equal(out, _numpy_multigain(raw, c, shape)[0])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_fused_single_matches_numpy_kernels(tmp_path, dtype, readonly, strided):
    shape = (13, 37)
    rng = np.random.default_rng(9)
    ped = rng.normal(1000, 20, shape).astype(np.float32)
    gain = rng.normal(40, 2, shape).astype(np.float32)
    c = _constants(tmp_path, "single", ped, gain)
    raw = rng.integers(0, 5000, shape).astype(dtype).reshape(-1)
    if strided:
        raw = _strided(raw)
    raw.flags.writeable = not readonly
    out = np.empty(raw.size, np.float32)
    assert single_supported(raw, c, out)
    fused_single(raw, c, out)
    ref = np.empty_like(out)
    subtract_pedestal_single(raw, c, ref)
    apply_gain_single(c, ref)
    np.testing.assert_array_equal(out, ref)


def test_fused_paths_decline_what_they_do_not_serve(tmp_path):
    shape = (4, 4)
    ped = np.full(shape, 100, np.float32)
    c = _constants(tmp_path, "single", ped, np.full(shape, 2, np.float32))
    f32 = np.empty(16, np.float32)
    assert not single_supported(np.zeros(16, np.float32), c, f32)   # float raw: numpy path
    assert not single_supported(np.zeros(16, np.uint16), c, np.empty(16, np.float64))
    np.save(tmp_path / "p.npy", ped)
    ped_only = build_constants({**_BASE, "mode": "single", "pedestal": str(tmp_path / "p.npy"), "gain": None})
    assert not single_supported(np.zeros(16, np.uint16), ped_only, f32)


@pytest.mark.parametrize("mode", ["single", "multigain"])
def test_strided_frames_take_the_fused_path_with_the_same_result(tmp_path, mode):
    """A strided view (what an upstream plugin may push) is calibrated by the compiled kernel, as a packed one."""
    rng = np.random.default_rng(3)
    n = 64
    if mode == "single":
        ped, gain = rng.normal(100, 5, (n, 1)).astype(np.float32), rng.normal(4, 0.1, (n, 1)).astype(np.float32)
    else:
        ped, gain = multigain_constants(rng, (n, 1))
    np.save(tmp_path / "p.npy", ped)
    np.save(tmp_path / "g.npy", gain)
    p = CalibrationPlugin("calib")
    p.configure({"mode": mode, "pedestal": str(tmp_path / "p.npy"), "gain": str(tmp_path / "g.npy")})
    sink = attach(p)
    wide = multigain_raw(rng, (n, 8)) if mode == "multigain" else rng.integers(0, 4000, (n, 8)).astype(np.uint16)
    strided, packed = wide[:, :1], np.ascontiguousarray(wide[:, :1])
    flat = strided.reshape(-1)
    assert not flat.flags.c_contiguous
    out = np.empty(flat.size, np.float32)
    assert multigain_supported(p._constants, out) if mode == "multigain" else single_supported(flat, p._constants, out)
    p.process_frame(Frame(strided, 0))
    p.process_frame(Frame(packed, 1))
    assert [f.frame_number for f in sink.frames] == [0, 1]
    np.testing.assert_array_equal(sink.frames[0].data, sink.frames[1].data)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
def test_fused_photonize_matches_the_numpy_kernel(dtype):
    """Photon counts from the one-pass kernel equal the numpy kernel's: thresholds, halves, NaN, inf,
    negative energies, and counts beyond the output type (clipped)."""
    from framechain.plugins._calib.fused import fused_photonize, photonize_supported
    from framechain.plugins._calib.kernels import photonize
    rng = np.random.default_rng(4)
    e = rng.normal(3.0, 4.0, 5000).astype(np.float32)
    e[:12] = [np.nan, np.inf, -np.inf, -1.0, 0.0, 0.5, 0.49999997, 1.5, 2.5, 3e9, 70000.0, 300.0]
    out, ref = np.empty(e.size, dtype), np.empty(e.size, dtype)
    assert photonize_supported(e, out)
    for pe, thr in ((1.0, 0.5), (2.5, 1.2), (0.7, -1.0)):
        fused_photonize(e, pe, thr, out)
        photonize(e.copy(), pe, thr, ref, Scratch(e.shape))
        np.testing.assert_array_equal(out, ref)
        top = np.iinfo(dtype).max
        assert top - top // 2**23 <= int(out[1]) <= top and out[0] == 0  # inf clipped to the type, NaN none
