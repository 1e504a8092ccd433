"""MaskPlugin: conventions, fill and attach, combination with the calibration's pixel status, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from calib_helpers import CAPTURE, attach, save_h5, save_npy
from harness import wait_for

from framechain.frameprocessor import Frame
from framechain.ipc.errors import ConfigError
from framechain.plugins.calibration import CalibrationPlugin
from framechain.plugins.mask import MaskPlugin

H, W = 16, 20


@pytest.fixture
def use_mask(tmp_path):
    m = np.ones((H, W), np.uint8)
    m[0, :] = 0
    m[5, 7] = 0
    return m, save_npy(tmp_path / "mask.npy", m)


def test_use_convention_fill_zero_in_place(use_mask):
    m, spec = use_mask
    p = MaskPlugin("mask")
    p.configure({"mask": spec})
    sink = attach(p)
    data = np.arange(H * W, dtype=np.float32).reshape(H, W) + 1
    frame = Frame(data, 0)
    p.process_frame(frame)
    (out,) = sink.frames
    assert out is frame
    assert np.array_equal(out.data, np.where(m == 1, np.arange(H * W).reshape(H, W) + 1, 0))
    assert np.array_equal(out.mask, m == 1)
    st = p.status()
    assert st["masked_pixels"] == st["masked_pixels_combined"] == W + 1 and st["mask_file"] == spec


def test_nexus_pixel_mask_bits_and_nan_fill_of_integer_frame(tmp_path):
    field = np.zeros((H, W), np.uint32)
    field[1, 1] = 1          # dead
    field[2, 2] = 2          # cold
    field[3, 3] = 1 << 30    # virtual / gap
    spec = save_h5(tmp_path / "det.h5", "/entry/instrument/detector/pixel_mask", field)
    p = MaskPlugin("mask")
    p.configure({"mask": spec, "convention": "pixel_mask", "pixel_mask_bits": 1 | (1 << 30),
                 "fill_value": "nan"})
    sink = attach(p)
    raw = np.full((H, W), 7, np.uint16)
    p.process_frame(Frame(raw, 3, acquisition_id="a"))
    (out,) = sink.frames
    assert out.dtype == np.float32 and out.frame_number == 3 and out.acquisition_id == "a"
    expect = np.full((H, W), 7.0, np.float32)
    expect[1, 1] = expect[3, 3] = np.nan
    np.testing.assert_array_equal(out.data, expect)
    assert np.all(raw == 7)  # the integer frame was copied, not changed
    assert p.status()["masked_pixels"] == 2 and p.status()["frames_copied"] == 1


def test_read_only_frame_is_copied_and_attach_only_leaves_data(use_mask):
    m, spec = use_mask
    p = MaskPlugin("mask")
    p.configure({"mask": spec})
    sink = attach(p)
    data = np.ones((H, W), np.float32)
    data.flags.writeable = False
    p.process_frame(Frame(data, 0))
    assert sink.frames[0].data is not data and sink.frames[0].data[0, 0] == 0 and data[0, 0] == 1
    p.configure({"action": "attach"})
    data2 = np.ones((H, W), np.float32)
    p.process_frame(Frame(data2, 1))
    assert sink.frames[1].data is data2 and np.all(data2 == 1) and np.array_equal(sink.frames[1].mask, m == 1)


def test_shared_frame_attach_sets_the_mask_on_a_new_frame_over_the_same_pixels(use_mask):
    m, spec = use_mask
    p = MaskPlugin("mask")
    p.configure({"mask": spec, "action": "attach"})
    sink = attach(p)
    data = np.ones((H, W), np.float32)
    data.flags.writeable = False          # shared: a sibling branch holds the same Frame
    released = []
    frame = Frame(data, 4, parameters={"k": 1}, on_release=lambda: released.append(4))
    p.process_frame(frame)
    (out,) = sink.frames
    assert out is not frame and out.data is data and out.frame_number == 4 and out.parameters == {"k": 1}
    assert frame.mask is None and np.array_equal(out.mask, m == 1)   # the sibling does not see the mask
    assert p.status()["frames_copied"] == 0
    del frame, sink.frames[:]
    assert released == []                 # the new frame still holds the pixels
    del out
    assert released == [4]                # the pixels stayed alive as long as the new frame, then went back


def test_combined_with_calibration_pixel_status(tmp_path, use_mask):
    m, spec = use_mask
    status = np.zeros((H, W), np.uint32)
    status[9, 9] = 1
    status[0, 3] = 4        # already masked by the static mask
    calib = CalibrationPlugin("calib")
    calib.configure({"pixel_status": save_npy(tmp_path / "status.npy", status)})
    mask = MaskPlugin("mask")
    mask.configure({"mask": spec, "fill_value": "nan"})
    calib_out = attach(calib)
    sink = attach(mask)
    for i in range(3):
        calib.process_frame(Frame(np.full((H, W), 5, np.uint16), i))
        mask.process_frame(calib_out.frames[-1])
    use = (m == 1) & (status == 0)
    for out in sink.frames:
        assert np.array_equal(out.mask, use)
        assert np.array_equal(np.isnan(out.data), ~use)
    assert sink.frames[0].mask is sink.frames[2].mask  # combined once, not per frame
    assert mask.status()["masked_pixels_combined"] == W + 2
    mask.configure({"use_upstream": False})
    calib.process_frame(Frame(np.full((H, W), 5, np.uint16), 9))
    mask.process_frame(calib_out.frames[-1])
    assert np.array_equal(sink.frames[-1].mask, m == 1)


def test_upstream_mask_alone_without_a_mask_file(tmp_path):
    status = np.zeros((H, W), np.uint8)
    status[4, 4] = 1
    calib = CalibrationPlugin("calib")
    calib.configure({"pixel_status": save_npy(tmp_path / "s.npy", status)})
    mask = MaskPlugin("mask")
    calib_out, sink = attach(calib), attach(mask)
    calib.process_frame(Frame(np.ones((H, W), np.uint16), 0))
    mask.process_frame(calib_out.frames[0])
    assert sink.frames[0].data[4, 4] == 0 and sink.frames[0].data.sum() == H * W - 1


def test_bad_masks_are_rejected_and_previous_stays(tmp_path, use_mask):
    m, spec = use_mask
    p = MaskPlugin("mask")
    p.configure({"mask": spec})
    before = p._mask
    bad = m.astype(np.int32)
    bad[2, 2] = 3
    with pytest.raises(ConfigError, match=r"bad\.npy.*\(16, 20\).*1 value\(s\) other than 0 and 1"):
        p.configure({"mask": save_npy(tmp_path / "bad.npy", bad)})
    with pytest.raises(ConfigError, match=r"m\.h5.*/nothing"):
        p.configure({"mask": save_h5(tmp_path / "m.h5", "/x", m) and f"{tmp_path}/m.h5:/nothing"})
    with pytest.raises(ConfigError, match="missing.npy.*does not exist"):
        p.configure({"mask": str(tmp_path / "missing.npy")})
    with pytest.raises(ConfigError, match="fill_value"):
        p.configure({"fill_value": "zero"})
    with pytest.raises(ConfigError, match="convention"):
        p.configure({"convention": "ones"})
    assert p._mask is before and p.config["mask"] == spec


def test_wrong_shape_frame_is_counted_and_dropped(use_mask):
    _, spec = use_mask
    p = MaskPlugin("mask")
    p.configure({"mask": spec})
    sink = attach(p)
    p.process_frame(Frame(np.ones((H, W + 1), np.float32), 0))
    p.process_frame(Frame(np.ones((H, W), np.float32), 1))
    assert [f.frame_number for f in sink.frames] == [1]
    assert p.status()["frames_wrong_shape"] == 1


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "zero_copy"])
def test_fill_leaves_the_frame_a_sibling_on_frame_receiver_shares_untouched(pipeline, tmp_path, copy):
    """mask fills while a writer-like capture on frame_receiver saves the same frames after mask saw them."""
    n, fill = 5, 60000
    m = np.ones((H, W), np.uint8)
    m[0, :] = 0
    m[5, 7] = 0
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "capture.py").write_text(CAPTURE)
    lib = str(tmp_path / "capture.py")
    pipeline.configure_receiver({"type": "simulated", "pattern": "ramp", "shape": [H, W], "frames": n})
    pipeline.setup_processor([
        ("mask", "MaskPlugin", "framechain.plugins.mask", "frame_receiver", {"mask": save_npy(tmp_path / "m.npy", m),
                                                                   "fill_value": fill}),
        ("cap", "CapturePlugin", lib, "mask", {"dir": str(out)}),
        ("rawcap", "CapturePlugin", lib, "frame_receiver", {"dir": str(out), "after": "cap"}),
    ], copy=copy)
    pipeline.start()
    pipeline.wait_done()
    wait_for(lambda: pipeline.plugin_status("rawcap")["frames_processed"] == n, what="raw captures")
    ramp = np.arange(H * W).reshape(H, W)
    for i in range(n):
        raw = (ramp + i).astype(np.uint16)
        assert np.array_equal(np.load(out / f"rawcap_{i}.npy"), raw)       # the sibling saw the raw frame
        assert not (out / f"rawcap_mask_{i}.npy").exists()                 # ... without mask's frame.mask
        assert np.array_equal(np.load(out / f"cap_{i}.npy"), np.where(m == 1, raw, fill))
        assert np.array_equal(np.load(out / f"cap_mask_{i}.npy"), m == 1)
    st = pipeline.plugin_status("mask")
    assert st["frames_masked"] == n and st["frames_copied"] == n
