"""XpcsCorrelatorPlugin: configuration and bad input, status, reset, live PUB, result file, and one real run."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zmq

from framechain.frameprocessor import EndOfAcquisition, Frame
from harness import wait_for
from framechain.ipc import free_tcp_endpoint
from framechain.ipc.errors import ConfigError
from framechain.plugins._xpcs import MultitauCorrelator, PixelLayout
from framechain.plugins.xpcs import XpcsCorrelatorPlugin


def make_plugin(**cfg) -> XpcsCorrelatorPlugin:
    p = XpcsCorrelatorPlugin("xpcs")
    if cfg:
        p.configure(cfg)
    return p


def frames(n: int, shape=(16, 16), seed=0, acq="acq1"):
    rng = np.random.default_rng(seed)
    for k in range(n):
        yield Frame(rng.poisson(3.0, shape).astype(np.uint16), k, acquisition_id=acq)


def run(plugin, n=64, shape=(16, 16), seed=0, acq="acq1", eoa=True):
    for f in frames(n, shape, seed, acq):
        plugin.process_frame(f)
    if eoa:
        plugin.process_end_of_acquisition(EndOfAcquisition(acq, n))


@pytest.fixture
def qmap_npy(tmp_path):
    labels = np.zeros((16, 16), np.int32)
    labels[:8] = 1
    labels[8:, :8] = 2
    labels[8:, 8:] = 3
    path = tmp_path / "qmap.npy"
    np.save(path, labels)
    return str(path), labels


@pytest.fixture
def qmap_h5(tmp_path):
    y, x = np.mgrid[:16, :16]
    r = np.hypot(y - 7.5, x - 7.5)
    dyn = np.clip((r / 3).astype(np.int32) + 1, 0, 3)
    dyn[r > 9] = 0
    sta = np.where(dyn > 0, np.clip((r / 1.5).astype(np.int32) + 1, 1, 6), 0)
    mask = np.ones((16, 16), np.uint8)
    mask[0, 0] = 0
    path = tmp_path / "qmap.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("qmap")
        g["dynamic_roi_map"], g["static_roi_map"], g["mask"] = dyn, sta, mask
        g["beam_center_x"] = 7.5
    return str(path), dyn, sta


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,key", [
    ({"num_bufs": 7}, "num_bufs"), ({"num_bufs": 0}, "num_bufs"), ({"num_levels": 0}, "num_levels"),
    ({"num_levels": -2}, "num_levels"), ({"num_levels": "many"}, "num_levels"), ({"num_levels": 2.5}, "num_levels"),
    ({"frame_time": 0}, "frame_time"), ({"normalization": "sutton"}, "normalization"),
    ({"publish_endpoint": "nowhere"}, "publish_endpoint"), ({"output": "/tmp/{frame}.h5"}, "output"),
    ({"qmap": "/no/such/qmap.npy"}, "qmap"), ({"mask": "/no/such/mask.npy"}, "mask"), ({"bufs": 8}, "bufs"),
])
def test_bad_options_are_rejected_and_change_nothing(params, key):
    p = make_plugin()
    before = p.request_configuration()
    with pytest.raises(ConfigError, match=key) as err:
        p.configure(params)
    assert err.value.key == key
    assert p.request_configuration() == before


def test_empty_qmap_and_mismatched_mask_are_rejected(tmp_path, qmap_npy):
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((16, 16), np.int32))
    with pytest.raises(ConfigError, match="selects no pixel"):
        make_plugin(qmap=str(empty))
    np.save(tmp_path / "mask.npy", np.ones((8, 8), bool))
    with pytest.raises(ConfigError, match=r"shape \(8, 8\)"):
        make_plugin(qmap=qmap_npy[0], mask=str(tmp_path / "mask.npy"))
    np.save(tmp_path / "none.npy", np.zeros((16, 16), bool))
    with pytest.raises(ConfigError, match="removes every labelled pixel"):
        make_plugin(qmap=qmap_npy[0], mask=str(tmp_path / "none.npy"))
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(ConfigError, match="qmap"):
        make_plugin(qmap=str(tmp_path / "junk.npy"))


def test_publish_endpoint_in_use_is_a_nack():
    ep = free_tcp_endpoint()
    first = make_plugin(publish_endpoint=ep)
    try:
        with pytest.raises(ConfigError, match="cannot bind"):
            make_plugin(publish_endpoint=ep)
    finally:
        first.close()


def test_qmap_of_another_shape_rejects_frames_with_a_reason(qmap_npy):
    p = make_plugin(qmap=qmap_npy[0])
    run(p, n=5, shape=(8, 8))
    st = p.status()
    assert st["frames_rejected"] == 5 and "shape [8, 8]" in st["last_rejection"] and "[16, 16]" in st["last_rejection"]
    assert st["state"] == "idle"


def test_frames_of_a_changed_shape_mid_run_are_rejected():
    p = make_plugin()
    run(p, n=10, eoa=False)
    p.process_frame(Frame(np.ones((8, 8), np.uint16), 10, acquisition_id="acq1"))
    st = p.status()
    assert st["frames"] == 10 and st["frames_rejected"] == 1 and "this run's frames have shape" in st["last_rejection"]


def test_mask_removing_a_bin_gives_nan_for_that_bin_only(tmp_path, qmap_npy):
    path, labels = qmap_npy
    mask = labels != 2
    np.save(tmp_path / "mask.npy", mask)
    p = make_plugin(qmap=path, mask=str(tmp_path / "mask.npy"))
    run(p, n=40, eoa=False)
    st = p.status()
    assert st["empty_bins"] == [2] and any("bin(s) [2]" in w for w in st["warnings"])
    res = p.results()
    assert np.isnan(res["g2"][:, 1]).all() and np.isfinite(res["g2"][:, [0, 2]]).all()


def test_frame_mask_from_a_mask_plugin_is_used():
    shape = (16, 16)
    fmask = np.ones(shape, bool)
    fmask[:4] = False
    p = make_plugin()
    rng = np.random.default_rng(1)
    data = rng.poisson(3.0, (30,) + shape).astype(np.float32)
    data[:, :4] = np.nan                                      # what a mask plugin may do to masked pixels
    for k in range(30):
        f = Frame(data[k], k, acquisition_id="a")
        f.mask = fmask
        p.process_frame(f)
    st = p.status()
    assert st["frames_used"] == 30 and st["frames_nan"] == 0 and st["pixels"] == 12 * 16
    c = MultitauCorrelator(PixelLayout(fmask.astype(int)), 8, 20)
    for d in data:
        c.add(d)
    want = c.result()
    keep = (want.pairs > 0) & (want.delays > 0)
    np.testing.assert_allclose(p.results()["g2"], want.g2[keep], rtol=1e-12)


def test_max_memory_refuses_or_caps_a_run():
    p = make_plugin(max_memory=1000)                          # not even the first level fits
    run(p, n=3, eoa=False)
    st = p.status()
    assert st["state"] == "idle" and st["frames_rejected"] == 3 and "max_memory" in st["last_rejection"]
    lay = PixelLayout(np.ones((16, 16), int))
    one_level = lay.padded_size * 8 * 8
    sums = 16 * 16 * 8 + 2048 * (10 + 1) * 8                 # image sum, segment sums of the 10 default rings
    p = make_plugin(num_levels=6, max_memory=sums + 3 * one_level)
    run(p, n=200, eoa=False)
    st = p.status()
    assert st["levels_capped"] is True and st["frames_used"] == 200 and st["levels_reached"] < 6
    assert any("stops the correlator" in w for w in st["warnings"])


def test_frame_mask_removing_everything_is_a_counted_rejection():
    p = make_plugin()
    f = Frame(np.ones((8, 8), np.uint16), 0, acquisition_id="a")
    f.mask = np.zeros((8, 8), bool)
    p.process_frame(f)
    st = p.status()
    assert st["frames_rejected"] == 1 and "remove every labelled pixel" in st["last_rejection"]


@pytest.mark.parametrize("shape", [(50,), (2, 8, 8)])
def test_one_and_three_dimensional_frames(tmp_path, shape):
    p = make_plugin(output=str(tmp_path / "r{run}.hdf"))
    run(p, n=40, shape=shape)
    st = p.status()
    assert st["frames_used"] == 40 and st["results_written"] == 1 and st["last_result_error"] == ""
    with h5py.File(tmp_path / "r1.hdf", "r") as f:
        assert f["/xpcs/temporal_mean/scattering_2d"].shape == (1,) + shape


def test_nan_and_missing_frames_are_counted():
    p = make_plugin()
    for f in frames(30):
        if f.frame_number in (5, 6):
            continue                                          # lost upstream
        if f.frame_number == 9:
            f = Frame(np.full((16, 16), np.nan, np.float32), 9, acquisition_id="acq1")
        p.process_frame(f)
    p.process_frame(Frame(np.ones((16, 16), np.uint16), 3, acquisition_id="acq1"))   # goes back in time
    st = p.status()
    assert (st["frames"], st["frames_used"], st["frames_nan"], st["frames_missing"]) == (28, 27, 1, 2)
    assert st["frames_rejected"] == 1 and "out of order" in st["last_rejection"]


# -- results -----------------------------------------------------------------------------------------
def test_result_file_has_every_aps_path(tmp_path, qmap_h5):
    path, dyn, sta = qmap_h5
    out = tmp_path / "res" / "{acquisition_id}_results.hdf"
    p = make_plugin(qmap=path, output=str(out), plot=True, num_bufs=4, frame_time=0.01, twotime=True,
                    twotime_frames=20, segments=4, incident_energy=8.0)
    run(p, n=64, acq="A001")
    st = p.status()
    assert st["results_written"] == 1 and st["last_result_error"] == ""
    file = tmp_path / "res" / "A001_results.hdf"
    assert st["result_file"] == str(file)
    assert (tmp_path / "res" / "A001_results_g2.png").stat().st_size > 1000
    assert st["plot_file"] == str(tmp_path / "res" / "A001_results_g2.png")
    n_dyn, n_sta = int(dyn.max()), int(sta.max())
    with h5py.File(file, "r") as f:
        tau = f["/xpcs/multitau/delay_list"][()]
        assert tau[0] == 1 and (np.diff(tau) > 0).all()
        assert f["/xpcs/multitau/normalized_g2"].shape == (tau.size, n_dyn)
        assert f["/xpcs/multitau/normalized_g2_err"].shape == (tau.size, n_dyn)
        assert f["/xpcs/multitau/config/stride_frame"][()] == 1 and f["/xpcs/multitau/config/avg_frame"][()] == 1
        q = f["/xpcs/qmap"]
        for key in ("mask", "dynamic_roi_map", "static_roi_map"):
            assert q[key].shape == (16, 16)
        assert q["dynamic_index_mapping"][()].tolist() == list(range(n_dyn))
        assert q["static_index_mapping"][()].tolist() == list(range(n_sta))
        assert q["dynamic_num_pts"][()].tolist() == [n_dyn, 1] and q["static_num_pts"][()].tolist() == [n_sta, 1]
        assert q["dynamic_v_list_dim0"].shape == (n_dyn,) and q["static_v_list_dim0"].shape == (n_sta,)
        assert q["dynamic_v_list_dim1"].shape == (1,) and q["static_v_list_dim1"].shape == (1,)
        assert q["beam_center_x"][()] == 7.5                  # from the qmap file
        for key in ("beam_center_y", "detector_distance", "pixel_size"):
            assert np.isfinite(q[key][()])
        assert q["map_names"].shape == (2,) and q["map_units"].shape == (2,)
        assert len(q.attrs["hash"]) == 64
        assert f["/xpcs/temporal_mean/scattering_2d"].shape == (1, 16, 16)
        assert f["/xpcs/temporal_mean/scattering_1d"].shape == (1, n_sta)
        assert f["/xpcs/temporal_mean/scattering_1d_segments"].shape == (4, n_sta)
        ivt = f["/xpcs/spatial_mean/intensity_vs_time"][()]
        assert ivt.shape == (2, 64) and ivt[0].tolist() == list(range(64))
        assert f["/entry/start_time"][()]
        assert f["/entry/instrument/detector_1/frame_time"][()] == 0.01
        assert f["/entry/instrument/detector_1/count_time"][()] == 0.01
        assert f["/entry/instrument/incident_beam/incident_energy"][()] == 8.0
        assert isinstance(f["/entry/instrument/bluesky/metadata"], h5py.Group)
        half = f["/xpcs/twotime/correlation_map/c2_00001"][()]
        assert half.shape == (20, 20) and (np.tril(half, -1) == 0).all() and np.isfinite(np.diag(half)).all()
        assert f["/xpcs/twotime/normalized_g2_segments"].shape == (3, 5, n_dyn)
        assert f["/xpcs/twotime/config/stride_frame"][()] == 1
        assert f["/xpcs/twotime/processed_bins"][()].tolist() == list(range(1, n_dyn + 1))
        assert f["/xpcs/twotime/normalized_g2"].shape == (19, n_dyn)
        # the time-averaged image and the static means agree with the frames
        data = np.stack([fr.data for fr in frames(64)]).astype(np.float64)
        np.testing.assert_allclose(f["/xpcs/temporal_mean/scattering_2d"][0], data.mean(0), rtol=1e-6)
        m = np.where(f["/xpcs/qmap/mask"][()] > 0, sta, 0)
        want = [data[:, m == s].mean() for s in range(1, n_sta + 1)]
        np.testing.assert_allclose(f["/xpcs/temporal_mean/scattering_1d"][0], want, rtol=1e-12)


def test_aps_normalisation_option_runs_and_differs_from_symmetric(qmap_h5):
    path = qmap_h5[0]
    sym, aps = make_plugin(qmap=path, num_bufs=4), make_plugin(qmap=path, num_bufs=4, normalization="aps")
    run(sym, n=48, eoa=False)
    run(aps, n=48, eoa=False)
    a, s = aps.results(), sym.results()
    assert a["g2"].shape == s["g2"].shape and np.isfinite(a["g2"]).all() and np.isfinite(a["g2_err"]).all()
    np.testing.assert_allclose(a["g2"], s["g2"], rtol=0.05)  # same physics, different averaging
    assert not np.allclose(a["g2"], s["g2"], rtol=1e-12, atol=0)


def test_live_results_on_pub_and_reset():
    ep = free_tcp_endpoint()
    p = make_plugin(publish_endpoint=ep, update_every=10)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(ep)
    try:
        gen = frames(100000)
        msg = None
        for _ in range(500):                                  # PUB/SUB joins asynchronously
            for _ in range(10):
                p.process_frame(next(gen))
            if sub.poll(50):
                msg = json.loads(sub.recv())
                break
        assert msg is not None, "no live message"
        assert msg["msg_type"] == "xpcs_g2" and msg["final"] is False and msg["frames"] % 10 == 0
        assert msg["bins"] == [1] and len(msg["g2"]) == 1 and len(msg["g2"][0]) == len(msg["delays"])
        assert msg["delays"][0] == 1
        frames_before = p.status()["frames"]
        p.process_end_of_acquisition(EndOfAcquisition("acq1", frames_before))
        final = None
        while sub.poll(2000):
            m = json.loads(sub.recv())
            if m["final"]:
                final = m
                break
        assert final is not None and final["frames"] == frames_before and "contrast" in final["fit"]
        assert p.status()["state"] == "finished"
        p.execute("reset", {})
        assert p.status()["state"] == "idle" and p.status()["updates_published"] == 0
        with pytest.raises(ConfigError, match="no command"):
            p.execute("restart", {})
    finally:
        sub.close()
        p.close()


def test_status_answers_while_the_plugin_is_busy():
    import threading
    p = make_plugin()
    run(p, n=20, eoa=False)
    assert "busy" not in p.status()
    held, release = threading.Event(), threading.Event()

    def long_end_of_acquisition():                            # holds the plugin the way a long EOA does
        with p._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=long_end_of_acquisition)
    t.start()
    try:
        held.wait(5)
        st = p.status()
        assert st["busy"] is True and st["frames"] == 20
    finally:
        release.set()
        t.join()


def test_float32_precision_agrees_with_float64(qmap_npy):
    f64, f32 = make_plugin(qmap=qmap_npy[0]), make_plugin(qmap=qmap_npy[0], precision="float32")
    run(f64, n=80, eoa=False)
    run(f32, n=80, eoa=False)
    a, b = f64.results(), f32.results()
    np.testing.assert_allclose(b["g2"], a["g2"], rtol=1e-6)
    assert f32.status()["memory_bytes"] < f64.status()["memory_bytes"]


def test_new_acquisition_starts_over():
    p = make_plugin()
    run(p, n=20, acq="one")
    run(p, n=30, acq="two", eoa=False)
    st = p.status()
    assert st["acquisition_id"] == "two" and st["frames"] == 30 and st["runs"] == 2


# -- through the real daemons --------------------------------------------------------------------------
def test_speckle_through_receiver_and_processor(pipeline, tmp_path):
    out = tmp_path / "xpcs_results.hdf"
    pipeline.configure_receiver({"type": "simulated", "pattern": "speckle", "shape": [32, 32], "frames": 3000,
                                 "dtype": "uint16", "correlation_time": 10.0, "contrast": 0.3, "seed": 3,
                                 "acquisition_id": "speckle1"})
    pipeline.setup_processor([("xpcs", "XpcsCorrelatorPlugin", "framechain.plugins.xpcs", "frame_receiver",
                               {"num_bufs": 8, "expected_frames": 3000, "frame_time": 0.001,
                                "output": str(out), "update_every": 500})])
    reply = pipeline.processor.request("configure", {"xpcs": {"num_bufs": 7}})
    assert reply.msg_type == "nack" and "num_bufs" in reply.error and "even" in reply.error
    assert pipeline.processor.ok("request_configuration")["xpcs"]["num_bufs"] == 8
    pipeline.start()
    pipeline.wait_done(timeout=120)
    st = wait_for(lambda: (s := pipeline.plugin_status("xpcs"))["results_written"] == 1 and s, timeout=60,
                  what="the xpcs result file")
    assert st["frames"] == st["frames_used"] == 3000 and st["frames_rejected"] == 0
    assert st["fit"]["contrast"] == pytest.approx(0.3, rel=0.05)
    assert st["fit"]["tau_c_frames"] == pytest.approx(10.0, rel=0.05)
    assert st["fit"]["tau_c"] == pytest.approx(0.01, rel=0.05)
    with h5py.File(out, "r") as f:
        assert f["/xpcs/multitau/normalized_g2"].shape[1] == 1
        assert f["/xpcs/spatial_mean/intensity_vs_time"].shape == (2, 3000)
        assert f["/xpcs/temporal_mean/scattering_1d"].shape == (1, 10)      # default: 10 static rings


def test_mask_of_another_shape_than_the_frames_is_a_counted_rejection(tmp_path):
    np.save(tmp_path / "mask.npy", np.ones((4, 4), bool))
    p = make_plugin(mask=str(tmp_path / "mask.npy"), num_levels=2)
    run(p, n=3, shape=(8, 8), eoa=False)
    st = p.status()
    assert st["state"] == "idle" and st["frames_rejected"] == 3
    why = st["last_rejection"]
    assert "shape [8, 8]" in why and "mask" in why and "[4, 4]" in why


def test_failed_result_write_leaves_no_part_file(tmp_path):
    out = tmp_path / "res.hdf"
    out.mkdir()                                               # the final rename onto a directory fails
    p = make_plugin(output=str(out), num_levels=2)
    run(p, n=20)
    st = p.status()
    assert st["results_written"] == 0 and "res.hdf" in st["last_result_error"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["res.hdf"]


def test_twotime_matrices_count_in_max_memory_at_configure(qmap_npy):
    p = make_plugin(qmap=qmap_npy[0])
    with pytest.raises(ConfigError) as err:
        p.configure({"twotime": True, "twotime_frames": 100000, "max_memory": 1 << 30})
    assert err.value.key == "twotime_frames"
    assert "3 matrices of 100000 x 100000 float32" in str(err.value) and "max_memory" in str(err.value)
    assert p.config["twotime"] is False                       # nothing changed


def test_twotime_matrices_count_in_max_memory_at_run_start():
    n = 1000                                                  # one bin: 12 MB of matrices pass the configure check
    p = make_plugin(twotime=True, twotime_frames=n, max_memory=13 * 10**6)
    run(p, n=3, eoa=False)                                    # + 1000 frames of 256 pixels do not fit
    st = p.status()
    assert st["state"] == "idle" and st["frames_rejected"] == 3
    assert "two-time" in st["last_rejection"] and "1 matrices of 1000^2 float32" in st["last_rejection"]


MEMORY_ERROR_AT_END = r"""
import json, resource, sys
import numpy as np
from framechain.frameprocessor import EndOfAcquisition, Frame
from framechain.plugins.xpcs import XpcsCorrelatorPlugin
labels = np.repeat(np.arange(1, 33), 2).reshape(8, 8)
np.save(sys.argv[2], labels)
p = XpcsCorrelatorPlugin("xpcs")
p.configure({"qmap": sys.argv[2], "num_levels": 6, "twotime": True, "twotime_frames": 1500,
             "output": sys.argv[1], "max_memory": 1 << 40})
rng = np.random.default_rng(0)
for k in range(1500):
    p.process_frame(Frame(rng.poisson(2.0, (8, 8)).astype(np.float32), k, acquisition_id="a"))
vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (150 << 20), resource.RLIM_INFINITY))   # 32 x 1500^2 x 4 = 288 MB
p.process_end_of_acquisition(EndOfAcquisition("a", 1500))
st = p.status()
print(json.dumps({k: st[k] for k in ("results_written", "result_file", "last_result_error", "state")}))
"""


def test_memory_error_in_two_time_keeps_the_multitau_result(tmp_path):
    """A real MemoryError (address space limited in a child process) while computing the two-time matrices."""
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "res.hdf"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", MEMORY_ERROR_AT_END, str(out), str(tmp_path / "q.npy")],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = json.loads(proc.stdout.strip().splitlines()[-1])
    assert st["state"] == "finished" and st["results_written"] == 1 and st["result_file"] == str(out)
    assert "MemoryError" in st["last_result_error"] and "two-time" in st["last_result_error"]
    with h5py.File(out, "r") as f:
        assert f["/xpcs/multitau/normalized_g2"].shape[1] == 32 and "xpcs/twotime" not in f
    assert not (tmp_path / "res.hdf.part").exists()


def test_rejections_are_logged_once_per_cause_and_counted(caplog):
    import logging
    p = make_plugin(num_levels=3)
    run(p, n=5, eoa=False)
    with caplog.at_level(logging.WARNING):
        for k in range(5, 205):
            p.process_frame(Frame(np.ones((8, 9)), k, acquisition_id="acq1"))        # changed shape mid-run
        for _ in range(100):
            p.process_frame(Frame(np.ones((16, 16)), 0, acquisition_id="acq1"))      # back in time
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage()[:80] for r in warnings]
    st = p.status()
    assert st["frames_rejected"] == 300 and st["rejections"] == {"shape_changed": 200, "out_of_order": 100}
    p.execute("reset", {})
    assert p.status()["rejections"] == {}


def test_a_refused_run_is_not_rebuilt_for_every_frame(monkeypatch):
    import framechain.plugins.xpcs as xpcs
    built = []

    class CountingRun(xpcs._Run):
        def __init__(self, *args, **kw):
            built.append(1)
            super().__init__(*args, **kw)

    rings = []
    real_rings = xpcs.uniform_qmap
    monkeypatch.setattr(xpcs, "_Run", CountingRun)
    monkeypatch.setattr(xpcs, "uniform_qmap", lambda shape: rings.append(shape) or real_rings(shape))
    p = make_plugin(max_memory=1000)
    run(p, n=10, eoa=False)
    st = p.status()
    assert st["frames_rejected"] == 10 and st["rejections"] == {"max_memory": 10}
    assert "max_memory" in st["last_rejection"]
    assert len(built) == 1 and len(rings) == 1
    p.configure({"max_memory": 1 << 30})                    # a new configuration: tried again, and it fits
    run(p, n=10, eoa=False)
    assert len(built) == 2 and len(rings) == 1 and p.status()["frames"] == 10



def test_qmap_is_read_once_per_configure_and_only_when_named(monkeypatch, qmap_npy):
    import framechain.plugins.xpcs as xpcs
    reads = []
    real_load = xpcs.load_qmap
    monkeypatch.setattr(xpcs, "load_qmap", lambda path: reads.append(path) or real_load(path))
    p = XpcsCorrelatorPlugin("xpcs")
    p.commit(p.prepare({"qmap": qmap_npy[0]}))               # as the controller does: prepare, then commit
    assert reads == [qmap_npy[0]] and p._qmap is not None
    qmap = p._qmap
    p.configure({"update_every": 5, "twotime": True})         # other keys: no file read, the same map
    assert reads == [qmap_npy[0]] and p._qmap is qmap
    p.configure({"qmap": qmap_npy[0]})                        # named again: read again (a rewritten file)
    assert len(reads) == 2 and p._qmap is not qmap


def test_a_frame_mask_equal_to_the_runs_is_adopted_not_counted():
    shape = (16, 16)
    first = np.ones(shape, bool)
    first[:2] = False
    p = make_plugin()
    for k, fmask in enumerate([first, first.copy(), first.copy()]):
        f = Frame(np.full(shape, 3, np.uint16), k, acquisition_id="a")
        f.mask = fmask
        p.process_frame(f)
        assert p._run.frame_mask is fmask                     # later frames with this object: identity only
    assert p.status()["mask_changes"] == 0
