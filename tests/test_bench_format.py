"""The benchmark table and JSON carry value, baseline and ratio (no timings asserted)."""

import json

from framechain.benchmarks import Figure
from framechain.client.bench import format_table


def test_figure_ratio_target_and_json():
    f = Figure("pipeline", "64x64", 20000.0, "frames/s", 1e6, "numpy copy", 15000, "value")
    g = Figure("pipeline", "1024x1024", 1000.0, "frames/s", 4000.0, "numpy copy", 0.5)
    assert f.meets_target is True and g.meets_target is False and g.ratio == 0.25
    d = json.loads(json.dumps(g.as_dict()))
    assert {"name", "value", "unit", "baseline", "ratio"} <= set(d)
    table = format_table([f, g])
    assert "value >= 15000 ok" in table and "ratio >= 0.5 MISSED" in table and "0.250" in table


def test_the_streams_suite_runs_through_the_command(capsys):
    """framechain bench --quick --only streams: every figure with its same-run baseline (no timing asserted)."""
    from framechain.client.cli import main
    assert main(["bench", "--quick", "--only", "streams", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert [f["suite"] for f in figures] == ["streams"] * 7  # v2 and v1: 3 each, then UDP
    assert sum("passed through" in f["name"] for f in figures) == 2 and "UDP" in figures[-1]["name"]
    assert all(f["value"] > 0 and f["baseline"] > 0 and f["unit"] == "frames/s" for f in figures)
