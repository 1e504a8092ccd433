"""Calibration and mask through real receiver and processor daemons (subprocesses, ZeroMQ, shared memory)."""

from __future__ import annotations

import h5py
import numpy as np
from calib_helpers import CAPTURE, multigain_constants, multigain_raw, ref_multigain, save_h5, save_npy
from harness import wait_for

H, W, N = 64, 64, 6


def test_multigain_calib_and_mask_in_the_processor(pipeline, tmp_path):
    rng = np.random.default_rng(11)
    raw = np.stack([multigain_raw(rng, (H, W)) for _ in range(N)])
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["data"] = raw
    p3, g3 = multigain_constants(rng, (H, W))
    status = np.zeros((H, W), np.uint32)
    status[10, 10] = 1
    mask = np.ones((H, W), np.uint8)
    mask[:, 0] = 0
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (tmp_path / "capture.py").write_text(CAPTURE)
    calib_cfg = {"mode": "multigain", "pedestal": save_h5(tmp_path / "c.h5", "/pedestal", p3),
                 "gain": save_h5(tmp_path / "c.h5", "/gain", g3),
                 "pixel_status": save_npy(tmp_path / "status.npy", status)}
    cap = {"dir": str(out_dir)}
    pipeline.configure_receiver({"type": "hdf5", "file": str(tmp_path / "raw.h5"), "dataset": "/data"})
    pipeline.setup_processor([
        ("calib", "CalibrationPlugin", "framechain.plugins.calibration", "frame_receiver", calib_cfg),
        ("mask", "MaskPlugin", "framechain.plugins.mask", "calib", {"mask": save_npy(tmp_path / "mask.npy", mask),
                                                          "fill_value": "nan"}),
        ("cap", "CapturePlugin", str(tmp_path / "capture.py"), "mask", cap),
        ("rawcap", "CapturePlugin", str(tmp_path / "capture.py"), "frame_receiver", cap),
    ])
    pipeline.start()
    pipeline.wait_done()
    wait_for(lambda: pipeline.plugin_status("cap")["frames_processed"] == N
             and pipeline.plugin_status("rawcap")["frames_processed"] == N, what="captures")
    use = (mask == 1) & (status == 0)
    for i in range(N):
        got = np.load(out_dir / f"cap_{i}.npy")
        ref = ref_multigain(raw[i], p3, g3)
        ref[~use] = np.nan
        np.testing.assert_allclose(got, ref, rtol=1e-6, equal_nan=True)
        assert np.array_equal(np.load(out_dir / f"cap_mask_{i}.npy"), use)
        assert np.array_equal(np.load(out_dir / f"rawcap_{i}.npy"), raw[i])  # raw branch untouched
    st = pipeline.processor.status()
    assert st["calib"]["frames_calibrated"] == N
    assert st["calib"]["invalid_gain_pixels"] == int(np.count_nonzero(raw >> 14 == 2))
    assert st["mask"]["masked_pixels"] == H and st["mask"]["masked_pixels_combined"] == H + 1

    # a bad constant is a nack naming the file and shapes; the old constants stay
    bad = save_h5(tmp_path / "bad.h5", "/pedestal", np.zeros((3, H, W + 2), np.float32))
    reply = pipeline.processor.request("configure", {"calib": {"pedestal": bad}})
    assert reply.msg_type == "nack"
    assert "bad.h5" in reply.error and f"(3, {H}, {W + 2})" in reply.error and f"(3, {H}, {W})" in reply.error
    assert pipeline.plugin_status("calib")["constants"]["pedestal"] == calib_cfg["pedestal"]

    # dark collection of gain stage 0 over a second pass of the same frames, then in use
    dark = tmp_path / "dark.h5"
    pipeline.processor.ok("execute", {"calib": {"command": "collect_dark", "frames": N, "file": str(dark)}})
    pipeline.receiver.ok("execute", {"source": {"command": "start"}})
    wait_for(lambda: pipeline.plugin_status("calib")["dark"]["state"] == "done", what="dark collection")
    g0 = (raw >> 14) == 0
    n0 = g0.sum(0)
    expect = np.where(n0 > 0, ((raw & 0x3FFF) * g0).sum(0) / np.maximum(n0, 1), p3[0])
    with h5py.File(dark) as f:
        np.testing.assert_allclose(f["pedestal"][0], expect, rtol=1e-6)
        assert np.array_equal(f["pedestal"][1:], p3[1:])
    assert pipeline.plugin_status("calib")["constants"]["pedestal"] == f"{dark}:/pedestal"


def test_dark_from_the_simulated_source_recovers_its_pedestal_within_noise(pipeline, tmp_path):
    """collect_dark through the daemons on a dark-like speckle stream (almost no photons, read noise).

    Each raw pixel is rint(P + 5 * normal) with a per-pixel pedestal P (1000 ADU with a 5 % fixed
    pattern, known from SimulatedSource.detector_maps()), so one frame has noise sigma = sqrt(5**2 + 1/12)
    (read noise plus the rounding to integer ADU, uniform since 5 ADU >> 1 ADU) and the mean of N frames
    has sigma / sqrt(N). At 1e-9 photons per pixel per frame the expected number of photons in the whole
    run is 1e-9 * N * H * W < 1e-3, so no photon biases the mean.
    """
    from framechain.framereceiver.sources import SimulatedSource

    n, shape = 200, (H, W)
    src = {"type": "simulated", "pattern": "speckle", "shape": list(shape), "dtype": "uint16", "frames": n,
           "seed": 5, "intensity": 1e-9, "pedestal": 1000.0, "gain": 40.0, "read_noise": 5.0, "fixed_pattern": 0.05}
    truth = SimulatedSource(shape, "uint16", n, 0.0, "speckle", seed=5, intensity=1e-9, pedestal=1000.0,
                            gain=40.0, read_noise=5.0, fixed_pattern=0.05).detector_maps()[0].astype(np.float64)
    sigma = np.sqrt(5.0 ** 2 + 1 / 12)
    dark = tmp_path / "dark.h5"
    pipeline.configure_receiver(src)
    pipeline.setup_processor([("calib", "CalibrationPlugin", "framechain.plugins.calibration", "frame_receiver", {})])
    pipeline.processor.ok("execute", {"calib": {"command": "collect_dark", "frames": n, "file": str(dark)}})
    pipeline.start()
    pipeline.wait_done()
    wait_for(lambda: pipeline.plugin_status("calib")["dark"]["state"] in ("done", "failed"), what="dark collection")
    st = pipeline.plugin_status("calib")
    assert st["dark"]["state"] == "done" and st["dark"]["frames_collected"] == n, st["dark"]
    assert st["frames_calibrated"] == n and st["constants"]["pedestal"] == f"{dark}:/pedestal"
    with h5py.File(dark) as f:
        est, rms = f["pedestal"][()].astype(np.float64), f["rms"][()].astype(np.float64)
        status = f["pixel_status"][()]
    assert np.ptp(truth) > 100 * sigma / np.sqrt(n)    # the fixed pattern is far larger than the bound
    z = (est - truth) / (sigma / np.sqrt(n))           # standard normal per pixel if the dark is right
    # every pixel within 5 sigma/sqrt(N): for 4096 pixels P(any beyond) ~ 4096 * 5.7e-7 = 0.2 %
    assert np.abs(z).max() < 5, np.abs(z).max()
    # and noise-limited as a whole: no bias, spread 1 (sampling errors 1/64 and 1/sqrt(2*4096); 6 of them)
    assert abs(z.mean()) < 6 / 64 and abs(z.std() - 1) < 6 / np.sqrt(2 * z.size), (z.mean(), z.std())
    assert abs(np.median(rms) / sigma - 1) < 0.02      # rms of one frame; the median over 4096 pixels
    assert np.count_nonzero(status) <= 2               # 6-sigma cuts on a clean dark flag (almost) nothing
