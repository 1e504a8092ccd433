"""PNG plot of g2(tau) per bin (matplotlib, Agg canvas; no pyplot, no display, thread-safe)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_g2"]


def plot_g2(path: str, delays_s: np.ndarray, g2: np.ndarray, g2_err: np.ndarray | None = None,
            labels: list[str] | None = None, title: str = "") -> None:
    """Write ``g2`` ``(n_tau, bins)`` against ``delays_s`` on a log axis to ``path`` (PNG)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    nb = g2.shape[1] if g2.ndim == 2 else 0
    cmap = matplotlib.colormaps["viridis"]
    plotted = 0
    for q in range(nb):
        y = g2[:, q]
        if not np.isfinite(y).any():
            continue
        plotted += 1
        color = cmap(q / max(1, nb - 1))
        label = labels[q] if labels and nb <= 12 else None
        if g2_err is not None and np.isfinite(g2_err[:, q]).any():
            ax.errorbar(delays_s, y, yerr=np.nan_to_num(g2_err[:, q]), fmt="o", ms=3, lw=0.8, color=color,
                        label=label)
        else:
            ax.plot(delays_s, y, "o-", ms=3, lw=0.8, color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("delay (s)")
    ax.set_ylabel("g2")
    ax.set_title(title or "g2(tau) per bin")
    if labels and plotted and nb <= 12:
        ax.legend(fontsize="small")
    if not plotted:
        ax.text(0.5, 0.5, "no lag with pairs yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
