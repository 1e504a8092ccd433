"""``framechain bench``: run the benchmark suites and print a table (or JSON).

The table's ``notes`` column is each figure's ``extra`` (the pipeline suite's GB/s next to its frames/s);
``--json`` carries it as ``extra``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys

from framechain.benchmarks import SUITES, Figure

__all__ = ["main", "format_table"]


def format_table(figures: list[Figure]) -> str:
    rows = [("suite", "benchmark", "value", "unit", "baseline", "ratio", "target", "notes")]
    for f in figures:
        target = "" if f.target is None else (
            f"{'ratio' if f.target_on == 'ratio' else 'value'} >= {f.target:g} "
            f"{'ok' if f.meets_target else 'MISSED'}")
        rows.append((f.suite, f.name, f"{f.value:,.1f}", f.unit, f"{f.baseline:,.1f} ({f.baseline_name})",
                     "nan" if math.isnan(f.ratio) else f"{f.ratio:.3f}", target, f.extra))  # e.g. GB/s
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    names = args.only.split(",") if args.only else list(SUITES)
    if getattr(args, "peers", False) and "peers" not in names:
        names.append("peers")  # optional: scikit-beam (test extras) and the photon-finding figure
    unknown = [n for n in names if n not in SUITES + ["peers"]]
    if unknown:
        print(f"framechain bench: unknown suite(s) {unknown}; suites: {SUITES}", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    for name in names:
        module = importlib.import_module(f"framechain.benchmarks.{name}")
        if not args.json:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        figures.extend(module.run(quick=args.quick))
    if args.json:
        print(json.dumps([f.as_dict() for f in figures], indent=2))
    else:
        print(format_table(figures))
    if getattr(args, "plot", None):
        from framechain.benchmarks.plot import plot
        plot(figures, args.plot)
        print(f"framechain bench: plot written to {args.plot}", file=sys.stderr)
    return 0
