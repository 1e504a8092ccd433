"""The plugin in docs/writing-plugins.md is the example file verbatim, and it works in real daemons."""

import re
from pathlib import Path

from harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugins" / "bright_pixels.py"


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
