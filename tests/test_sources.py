"""Frame sources in-process: ramp formula, speckle g2, raw detector response."""

import numpy as np
import pytest

from framechain.framereceiver.sources import make_source, speckle_g2


@pytest.mark.parametrize("dtype, modulus", [("uint8", 256), ("uint16", 65536), ("uint32", 2**32),
                                            ("float32", 2**24)])
def test_ramp_is_frame_plus_index_mod_range(dtype, modulus):
    src = make_source({"type": "simulated", "pattern": "ramp", "shape": [300, 300], "dtype": dtype})
    out = np.empty((300, 300), dtype)
    for frame in (0, 1, 255, 70000):
        src.fill(frame, out)
        expected = (np.arange(300 * 300, dtype=np.uint64) + frame) % modulus
        np.testing.assert_array_equal(out.ravel().astype(np.uint64), expected)


def test_speckle_g2_follows_the_analytic_form():
    tau_c, contrast = 8.0, 0.4
    src = make_source({"type": "simulated", "pattern": "speckle", "shape": [32, 32], "dtype": "uint32",
                       "correlation_time": tau_c, "contrast": contrast, "intensity": 50.0, "seed": 5})
    frames = np.empty((4000, 32, 32), np.float64)
    out = np.empty((32, 32), np.uint32)
    for i in range(len(frames)):
        src.fill(i, out)
        frames[i] = out
    mean = frames.mean()
    for lag in (1, 4, 8, 16):
        g2 = (frames[:-lag] * frames[lag:]).mean() / (frames[:-lag].mean() * frames[lag:].mean())
        assert g2 == pytest.approx(speckle_g2(lag, tau_c, contrast), rel=0.03), lag
    assert mean == pytest.approx(50.0, rel=0.05)


def test_speckle_raw_detector_response_is_undone_by_its_maps():
    src = make_source({"type": "simulated", "pattern": "speckle", "shape": [16, 16], "dtype": "uint16",
                       "pedestal": 1000, "gain": 40, "fixed_pattern": 0.05, "intensity": 3})
    pedestal, gain = src.detector_maps()
    assert pedestal.std() > 0 and gain.std() > 0
    out = np.empty((16, 16), np.uint16)
    for i in range(20):
        src.fill(i, out)
        photons = (out - pedestal) / gain
        np.testing.assert_allclose(photons, np.rint(photons), atol=0.5 / 30)  # rounding to ADU only
        assert photons.min() > -0.1


def test_bad_speckle_keys():
    with pytest.raises(ValueError, match="'source/contrast' option of a simulated source must be in \\(0, 1\\]"):
        make_source({"type": "simulated", "pattern": "speckle", "contrast": 2})
    with pytest.raises(ValueError, match="'source/gain'"):
        make_source({"type": "simulated", "pattern": "speckle", "gain": 0})
