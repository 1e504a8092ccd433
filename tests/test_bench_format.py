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


def test_plot_draws_every_panel_from_figures(tmp_path):
    """--plot: a PNG from the figures of a run (real matplotlib), each panel fed by its suite's rows."""
    from framechain.benchmarks import Figure
    from framechain.benchmarks.plot import plot
    figs = [Figure("pipeline", "64x64 uint16 copy", 6000, "frames/s", 700000, "numpy copy"),
            Figure("pipeline", "1024x1024 uint16 copy", 2000, "frames/s", 2300, "numpy copy"),
            Figure("xpcs", "correlator 512x512 B=8 30 bins", 268, "frames/s", 39, "numpy"),
            Figure("xpcs", "sparse 512x1024 B=8 30 bins 0.01 photons/px", 673, "frames/s", 101, "dense"),
            Figure("mpi", "xpcs merge, 2 ranks, 10 bins 1 Mpix", 224, "merges/s", 11000, "numpy sum")]
    out = tmp_path / "p.png"
    plot(figs, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000


def test_a_missing_boost_corr_peer_is_left_out_with_the_reason(capsys, monkeypatch):
    """bench --peers without boost_corr importable: no row, and stderr says what it needs."""
    import sys

    from framechain.benchmarks.peers import _boost_corr
    monkeypatch.setitem(sys.modules, "boost_corr", None)  # as on a 3.11 venv: not installable from PyPI
    assert _boost_corr(quick=True) == []
    err = capsys.readouterr().err
    assert "boost_corr left out" in err and "Python >= 3.12" in err
