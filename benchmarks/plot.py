"""``framechain bench --plot FILE``: how each cost grows with frame size, pixels, occupancy and bins (matplotlib).

Four panels from the figures of the run: the pipeline's GB/s against frame
size (with the numpy copy of the same frames), the dense correlator's
frames/s against used pixels, sparse against dense over photons/pixel, and
the XPCS merge per update against bins. A panel whose suite did not run is
left empty with a note.
"""

from __future__ import annotations

import re

from . import Figure

__all__ = ["plot"]


def _pipeline(ax, figures: list[Figure]) -> None:
    rows: dict[str, list[tuple[int, float]]] = {"copy": [], "zero-copy": [], "numpy copy": []}
    for f in figures:
        m = re.fullmatch(r"(\d+)x(\d+) uint16 (copy|zero-copy)", f.name) if f.suite == "pipeline" else None
        if m:
            px = int(m.group(1)) * int(m.group(2))
            rows[m.group(3)].append((px, f.value * px * 2 / 1e9))
            if m.group(3) == "copy":
                rows["numpy copy"].append((px, f.baseline * px * 2 / 1e9))
    for label, pts in rows.items():
        if pts:
            x, y = zip(*sorted(pts))
            ax.plot(x, y, "o-" if label != "numpy copy" else "k--", label=label)
    ax.set(xscale="log", yscale="log", xlabel="pixels per frame (uint16)", ylabel="GB/s",
           title="receiver -> processor")


def _dense(ax, figures: list[Figure]) -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for f in figures:
        m = re.fullmatch(r"correlator (\d+)x\d+ B=(\d+) 30 bins( precision float32)?", f.name) \
            if f.suite == "xpcs" else None
        if m:
            px = int(m.group(1)) ** 2
            series.setdefault(f"B={m.group(2)}{' float32' if m.group(3) else ''}", []).append((px, f.value))
            series.setdefault(f"numpy baseline B={m.group(2)}", [])
            if not m.group(3):
                series[f"numpy baseline B={m.group(2)}"].append((px, f.baseline))
    for label, pts in series.items():
        if pts:
            x, y = zip(*sorted(pts))
            ax.plot(x, y, "--" if "numpy" in label else "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="frame pixels (ring qmap, 30 bins)", ylabel="frames/s",
           title="XPCS multi-tau, dense")


def _sparse(ax, figures: list[Figure]) -> None:
    sparse, dense = [], []
    for f in figures:
        m = re.fullmatch(r"sparse 512x1024 B=8 30 bins ([\d.]+) photons/px", f.name) if f.suite == "xpcs" else None
        if m:
            sparse.append((float(m.group(1)), f.value))
            dense.append((float(m.group(1)), f.baseline))
    for label, pts, style in (("sparse", sparse, "o-"), ("dense", dense, "k--")):
        if pts:
            x, y = zip(*sorted(pts))
            ax.plot(x, y, style, label=label)
    ax.set(xscale="log", yscale="log", xlabel="photons per pixel", ylabel="frames/s",
           title="XPCS 512x1024, sparse vs dense")


def _merge(ax, figures: list[Figure]) -> None:
    pts = []
    for f in figures:
        m = re.fullmatch(r"xpcs merge, 2 ranks, (\d+) bins 1 Mpix", f.name) if f.suite == "mpi" else None
        if m:
            pts.append((int(m.group(1)), 1e3 / f.value))
    if pts:
        x, y = zip(*sorted(pts))
        ax.plot(x, y, "o-", label="reduce_partials, 2 ranks")
    ax.set(xscale="log", yscale="log", xlabel="dynamic bins (1 Mpixel)", ylabel="ms per update",
           title="--mpi XPCS merge")


def plot(figures: list[Figure], path: str) -> None:
    """Write the four panels of ``figures`` to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for ax, draw in zip(axes.flat, (_pipeline, _dense, _sparse, _merge)):
        draw(ax, figures)
        if ax.lines:
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        else:
            ax.text(0.5, 0.5, "suite not run", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("framechain bench: costs against frame size, pixels, occupancy and bins")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
