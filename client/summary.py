"""The end-of-run summary printed by ``framechain run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["summarise", "output_files"]

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
    f = fp["frames"]
    lost = fr["dropped"] + f["bad"] + f["unrouted"] + f.get("discarded", 0)
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
