"""The end-of-run summary printed by ``framechain run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["summarise", "output_files", "pair_counts", "rollup_totals", "COUNTS"]

COUNTS = ("received", "processed", "written", "lost")

_FILE_KEYS = ("output_files", "current_file_path", "last_file_path", "master_file", "result_file", "output",
              "plot_file")


def output_files(fp: dict[str, Any]) -> list[str]:
    """Files the plugins report having written (keys from _FILE_KEYS in each plugin's status)."""
    files: list[str] = []
    for name in fp.get("plugins", {}).get("names", []):
        st = fp.get(name, {})
        for key in _FILE_KEYS:
            v = st.get(key)
            for f in (v if isinstance(v, list) else [v]):
                if isinstance(f, str) and f and f not in files and Path(f).is_file():
                    files.append(f)
    return files


def pair_counts(rx: dict[str, Any], fp: dict[str, Any]) -> dict[str, int]:
    """One receiver/processor pair's frames: received, processed (the slowest plugin's count), written (by
    every writer) and lost (dropped by the receiver, bad, unrouted or discarded by the processor)."""
    names = fp.get("plugins", {}).get("names", [])
    fr, f = rx.get("frames", {}), fp.get("frames", {})
    return {"received": fr.get("received", 0),
            "processed": min((fp.get(n, {}).get("frames_handled", 0) for n in names), default=0),
            "written": sum(fp.get(n, {}).get("frames_written", 0) for n in names),
            "lost": fr.get("dropped", 0) + f.get("bad", 0) + f.get("unrouted", 0) + f.get("discarded", 0)}


def rollup_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of :data:`COUNTS` over the rows of the ranks that are up, and the slowest one's ``rank``."""
    slowest = min(rows, key=lambda r: r["processed"])["rank"] if rows else None
    return {"slowest_rank": slowest, **{k: sum(r[k] for r in rows) for k in COUNTS}}


def summarise(cfg: dict[str, Any], rx: dict[str, Any], fp: dict[str, Any], elapsed: float, log_dir: Path) -> str:
    fr = rx["frames"]
    names = fp.get("plugins", {}).get("names", [])
    lines = ["", "framechain run summary", "----------------------",
             f"source          {rx['source'].get('type', '?')} {rx['source'].get('pattern', '')} "
             f"{rx['source'].get('shape', '')} {rx['source'].get('dtype', '')} ({rx['source']['state']})",
             f"frames          received {fr['received']}, released {fr['released']}, dropped {fr['dropped']}",
             f"processor       received {fp['frames']['received']}, bad {fp['frames']['bad']}, "
             f"unrouted {fp['frames']['unrouted']}",
             f"elapsed         {elapsed:.2f} s, {fr['received'] / elapsed if elapsed > 0 else 0:,.0f} frames/s"]
    for n in names:
        st = fp[n]
        t = st["timing"]
        written = f", written {st['frames_written']}" if "frames_written" in st else ""
        lines.append(f"plugin {n:<9} processed {st['frames_handled']}{written}, dropped {st['queue']['dropped']}, "
                     f"errors {st['errors']}, mean {t['mean_process']:.1f} us, max {t['max_process']:.0f} us"
                     + (f"  last error: {st['last_error']}" if st.get("last_error") else ""))
    lost = pair_counts(rx, fp)["lost"]
    lines.append(f"lost frames     {lost} ({'none' if lost == 0 else 'see counters above'})")
    missed = {n: fp[n]["queue"]["dropped"] for n in names if fp[n]["queue"]["dropped"]}
    if missed:  # non-blocking connections drop by design (live view); the frame went on elsewhere
        lines.append("not delivered   " + ", ".join(f"{n}: {k}" for n, k in missed.items())
                     + " (non-blocking connections)")
    for n in names:
        fit = fp[n].get("fit")
        if isinstance(fit, dict) and "contrast" in fit:
            src = rx["source"]
            truth = (f" (truth {src['contrast']:g}, {src['correlation_time']:g} frames)"
                     if src.get("pattern") == "speckle" else "")
            lines.append(f"g2 fit ({n})      contrast {fit['contrast']:.4f}, relaxation time "
                         f"{fit.get('tau_c_frames', float('nan')):.2f} frames{truth}")
    for f in output_files(fp):
        lines.append(f"output          {f}")
    lines.append(f"daemon logs     {log_dir}")
    return "\n".join(lines)
