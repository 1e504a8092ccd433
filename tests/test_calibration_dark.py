"""Dark collection: pedestal recovered within noise/sqrt(N), pixel status, file written and switched to."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from calib_helpers import attach, save_h5

from framechain.frameprocessor import Frame
from framechain.ipc.errors import ConfigError
from framechain.plugins._calib.dark import COLD_RMS, HOT_RMS, INVALID_GAIN, MEAN_OUTLIER, NO_DATA, SATURATED
from framechain.plugins.calibration import CalibrationPlugin

H, W, N, SIGMA = 24, 32, 200, 5.0


def test_single_gain_dark_recovers_pedestal_flags_pixels_and_switches(tmp_path):
    rng = np.random.default_rng(7)
    ped = rng.normal(1000, 50, (H, W))
    sigma = np.full((H, W), SIGMA)
    sigma[1, 1] = 60.0          # hot
    ped[2, 2] = 4000.0          # mean outlier
    p = CalibrationPlugin("calib")
    sink = attach(p)
    path = tmp_path / "dark.h5"
    p.command("collect_dark", {"frames": N, "file": str(path)})
    assert p.status()["dark"]["state"] == "requested"
    frames = []
    for i in range(N + 1):
        raw = np.clip(np.rint(ped + rng.normal(0, 1, (H, W)) * sigma), 0, 65535).astype(np.uint16)
        raw[3, 3] = 65535       # saturated (and rms 0: cold)
        frames.append(raw)
        p.process_frame(Frame(raw, i))
    assert len(sink.frames) == N + 1  # frames are calibrated and passed on while the dark is collected
    st = p.status()
    assert st["dark"]["state"] == "done" and st["dark"]["frames_collected"] == N
    with h5py.File(path) as f:
        est, rms, status = f["pedestal"][()], f["rms"][()], f["pixel_status"][()]
        assert f.attrs["frames"] == N
    stack = np.stack(frames[:N]).astype(np.float64)
    np.testing.assert_allclose(est, stack.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rms, stack.std(0), rtol=1e-4, atol=1e-3)
    normal = np.ones((H, W), bool)
    normal[[1, 2, 3], [1, 2, 3]] = False
    assert np.all(np.abs(est - ped)[normal] < 5 * SIGMA / np.sqrt(N))
    assert status[1, 1] & HOT_RMS and status[2, 2] & MEAN_OUTLIER
    assert status[3, 3] & SATURATED and status[3, 3] & COLD_RMS
    assert np.count_nonzero(status[normal]) <= 2  # 6-sigma robust cuts: essentially no false positives
    # switched: the frame after the N-th used the new pedestal and carries the status as frame.mask
    assert p.config["pedestal"] == f"{path}:/pedestal" and st["constants"]["pedestal"] == f"{path}:/pedestal"
    last = sink.frames[N]
    assert np.array_equal(last.data, frames[N].astype(np.float32) - est)
    assert np.array_equal(last.mask, status == 0)
    assert not np.array_equal(sink.frames[N - 1].data, frames[N - 1].astype(np.float32) - est)


def test_multigain_dark_of_one_stage(tmp_path):
    rng = np.random.default_rng(3)
    p3 = np.stack([np.full((H, W), v) for v in (1000.0, 11000.0, 14000.0)]).astype(np.float32)
    g3 = np.stack([np.full((H, W), v) for v in (40.0, -1.5, -0.1)]).astype(np.float32)
    p = CalibrationPlugin("calib")
    p.configure({"mode": "multigain", "pedestal": save_h5(tmp_path / "c.h5", "/p", p3),
                 "gain": save_h5(tmp_path / "c.h5", "/g", g3)})
    attach(p)
    true1 = rng.normal(12000, 100, (H, W))
    path = tmp_path / "dark_g1.h5"
    p.command("collect_dark", {"frames": 50, "file": str(path), "gain": 1})
    for i in range(50):
        adc = np.clip(np.rint(true1 + rng.normal(0, 3, (H, W))), 0, 0x3FFF).astype(np.uint16)
        raw = (adc | (1 << 14)).astype(np.uint16)
        raw[0, 0] = adc[0, 0]                       # stays in G0: no G1 data
        if i == 10:
            raw[0, 1] = (2 << 14) | adc[0, 1]       # one invalid gain code
        p.process_frame(Frame(raw, i))
    assert p.status()["dark"]["state"] == "done"
    with h5py.File(path) as f:
        ped, status = f["pedestal"][()], f["pixel_status"][()]
    assert ped.shape == (3, H, W)
    assert np.array_equal(ped[0], p3[0]) and np.array_equal(ped[2], p3[2])
    ok = np.ones((H, W), bool)
    ok[0, :2] = False
    assert np.all(np.abs(ped[1] - true1)[ok] < 5 * 3 / np.sqrt(50) + 0.5)
    assert ped[1][0, 0] == p3[1][0, 0] and status[0, 0] & NO_DATA
    assert status[0, 1] & INVALID_GAIN
    assert np.array_equal(p._constants.raw_pedestal, ped)


def test_collect_dark_bad_requests(tmp_path):
    p = CalibrationPlugin("calib")
    for params, word in (({"frames": 0}, "frames"), ({"frames": "10"}, "frames"),
                         ({"frames": 5, "file": str(tmp_path / "no" / "d.h5")}, "does not exist"),
                         ({"frames": 5, "gain": 1}, "multigain"), ({"frames": 5, "speed": 1}, "speed"),
                         ({"frames": 5, "rms_nsigma": -1}, "rms_nsigma")):
        with pytest.raises(ConfigError, match=word):
            p.command("collect_dark", params)
    with pytest.raises(ConfigError, match="no dark collection"):
        p.command("cancel_dark", {})
    p.command("collect_dark", {"frames": 5, "file": str(tmp_path / "d.h5")})
    with pytest.raises(ConfigError, match="already running"):
        p.command("collect_dark", {"frames": 5, "file": str(tmp_path / "d.h5")})
    attach(p)
    p.process_frame(Frame(np.zeros((4, 4), np.uint16), 0))
    p.command("cancel_dark", {})
    for i in range(6):
        p.process_frame(Frame(np.zeros((4, 4), np.uint16), i))
    assert p.status()["dark"]["state"] == "cancelled" and not (tmp_path / "d.h5").exists()
    with pytest.raises(ConfigError, match="commands: collect_dark"):
        p.command("fly", {})


def test_cancel_before_the_first_frame_ends_the_request(tmp_path):
    p = CalibrationPlugin("calib")
    sink = attach(p)
    path = tmp_path / "d.h5"
    p.command("collect_dark", {"frames": 3, "file": str(path)})
    p.command("cancel_dark", {})
    assert p.status()["dark"]["state"] == "cancelled"
    for i in range(5):
        p.process_frame(Frame(np.full((4, 4), i, np.uint16), i))
    assert p.status()["dark"]["state"] == "cancelled" and p.status()["dark"]["frames_collected"] == 0
    assert not path.exists() and len(sink.frames) == 5
    with pytest.raises(ConfigError, match="no dark collection"):
        p.command("cancel_dark", {})
    # a new collection after the cancelled one runs normally
    p.command("collect_dark", {"frames": 3, "file": str(path)})
    for i in range(3):
        p.process_frame(Frame(np.full((4, 4), 10 + i, np.uint16), i))
    assert p.status()["dark"]["state"] == "done"
    with h5py.File(path) as f:
        assert np.all(f["pedestal"][()] == 11)


def test_frame_shape_change_fails_the_collection_and_frames_go_on(tmp_path, caplog):
    p = CalibrationPlugin("calib")   # no constants: frames of any shape are calibrated
    sink = attach(p)
    path = tmp_path / "d.h5"
    p.command("collect_dark", {"frames": 5, "file": str(path)})
    p.process_frame(Frame(np.ones((4, 4), np.uint16), 0))
    p.process_frame(Frame(np.ones((4, 4), np.uint16), 1))
    with caplog.at_level("WARNING"):
        for i in range(2, 8):
            p.process_frame(Frame(np.full((4, 5), 3, np.uint16), i))
    assert [f.frame_number for f in sink.frames] == list(range(8))   # every frame calibrated and passed on
    assert np.all(sink.frames[-1].data == 3)
    dark = p.status()["dark"]
    assert dark["state"] == "failed" and dark["frames_collected"] == 2
    assert "frame 2" in dark["error"] and "(4, 5)" in dark["error"] and "(4, 4)" in dark["error"]
    assert len([r for r in caplog.records if "dark collection" in r.getMessage()]) == 1  # logged once
    assert not path.exists()
    p.command("collect_dark", {"frames": 2, "file": str(path)})     # not stuck: a new one can start
    for i in range(2):
        p.process_frame(Frame(np.full((4, 5), 3, np.uint16), 10 + i))
    assert p.status()["dark"]["state"] == "done" and path.exists()
