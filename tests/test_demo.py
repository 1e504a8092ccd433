"""`make run`'s demo config, unchanged, end to end through `framechain run` (in a scratch directory)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the BSLZ4 filter for reading)
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_calibrates_correlates_and_writes(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    out = subprocess.run([sys.executable, "-m", "framechain.client.cli", "run", "examples/xpcs_demo.json", "--no-progress",
                          "--timeout", "240"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    s = out.stdout
    assert "frames          received 3000, released 3000, dropped 0" in s
    assert "lost frames     0 (none)" in s
    fit = re.search(r"contrast ([\d.]+), relaxation time ([\d.]+) frames \(truth ([\d.]+), ([\d.]+) frames\)", s)
    contrast, tau, true_contrast, true_tau = map(float, fit.groups())
    assert abs(contrast / true_contrast - 1) < 0.05 and abs(tau / true_tau - 1) < 0.05
    frames_file = tmp_path / "output" / "xpcs_demo_demo_000001.h5"
    with h5py.File(frames_file, "r") as f:
        data = f["/entry/instrument/detector/data"]
        assert data.shape == (3000, 128, 128) and data.dtype == np.uint16
        assert 2.5 < data[100].mean() < 3.5  # photon counts: the source's intensity is 3 per pixel
        assert f["/entry/data/data"].id == data.id
    with h5py.File(tmp_path / "output" / "xpcs_demo_results.hdf", "r") as f:
        assert f["/xpcs/multitau/normalized_g2"].shape[1] == 10
    assert (tmp_path / "output" / "xpcs_demo_results_g2.png").stat().st_size > 1000
