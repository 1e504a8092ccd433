"""The plugin in docs/writing-plugins.md is the example file verbatim, and it works in real daemons."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from harness import Pipeline, wait_for

from framechain.frameprocessor.testing import run_plugin

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugins" / "bright_pixels.py"


@pytest.fixture
def pipeline(tmp_path):
    """A pipeline whose processor may load the example plugins (its --plugin-path, as the doc says)."""
    with Pipeline(tmp_path, ["--plugin-path", str(EXAMPLE.parent)]) as p:
        yield p


def test_doc_shows_the_example_verbatim_in_about_20_lines():
    doc = (ROOT / "docs" / "writing-plugins.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert block == EXAMPLE.read_text()
    assert len(block.strip().splitlines()) <= 25


def test_example_plugin_runs_in_the_pipeline(pipeline):
    n = 40
    pipeline.configure_receiver({"type": "simulated", "pattern": "ramp", "shape": [10, 10], "frames": n})
    pipeline.setup_processor([("bright", "BrightPixelPlugin", str(EXAMPLE), "frame_receiver", {"threshold": 50})])
    pipeline.start()
    pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.plugin_status("bright"))["acquisitions"] == 1 and s)
    # ramp: pixel = frame + index, 100 pixels; pixels above 50 in frame f: count of i in 0..99 with f+i > 50
    expected = sum(sum(1 for i in range(100) if f + i > 50) for f in range(n))
    assert st["total_bright_pixels"] == expected and st["frames_processed"] == n


BACKGROUND = ROOT / "examples" / "plugins" / "background.py"


def test_doc_shows_the_two_phase_example_verbatim():
    doc = (ROOT / "docs" / "writing-plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert BACKGROUND.read_text() in blocks


def test_two_phase_example_with_the_testing_helper(tmp_path):
    spec = importlib.util.spec_from_file_location("background_example", BACKGROUND)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    np.save(tmp_path / "bg.npy", np.full((4, 4), 2.0))
    out = run_plugin(module.BackgroundPlugin("bg"), [np.full((4, 4), 5, "u2")] * 3,
                     {"background": str(tmp_path / "bg.npy")})
    assert len(out.frames) == 3 and out.end_of_acquisition.frames == 3
    assert all(f.dtype == np.float32 and (f.data == 3).all() for f in out.frames)


def test_two_phase_example_in_the_pipeline_refuses_a_bad_file_and_keeps_the_good_one(pipeline, tmp_path):
    shape, n = (8, 8), 20
    np.save(tmp_path / "bg.npy", np.full(shape, 1.0))
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    pipeline.configure_receiver({"type": "simulated", "pattern": "ramp", "shape": list(shape), "frames": n})
    pipeline.setup_processor([("bg", "BackgroundPlugin", str(BACKGROUND), "frame_receiver",
                               {"background": str(tmp_path / "bg.npy")}),
                              ("sum", "SumPlugin", "sum", "bg")])
    r = pipeline.processor.request("configure", {"sum": {"enabled": False},
                                                 "bg": {"background": str(tmp_path / "broken.npy")}})
    assert r.msg_type == "nack" and "broken.npy" in r.params["error"] and "background" in r.params["error"]
    cfg = pipeline.processor.ok("request_configuration")
    assert cfg["bg"]["background"] == str(tmp_path / "bg.npy") and cfg["sum"]["enabled"] is True
    pipeline.start()
    pipeline.wait_done()
    st = wait_for(lambda: (s := pipeline.processor.status())["sum"]["frames"] == n and s)
    assert st["bg"]["frames_subtracted"] == n
    # ramp: pixel = frame + flat index; the last frame's sum less the background of 1 per pixel
    last = sum(n - 1 + i for i in range(shape[0] * shape[1])) - shape[0] * shape[1]
    assert st["sum"]["last"]["sum"] == last
