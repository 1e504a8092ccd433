"""APS 8-ID-I normalisation: g2 from per-pixel G2/IP/IF, averaged over static bins within each dynamic bin.

For each lag, per pixel ``G2_p``, ``IP_p``, ``IF_p`` are time means over the pairs.
For static bin ``s``: ``g2_s = <G2>_s / (<IP>_s <IF>_s)``. A dynamic bin's g2 is
the unweighted mean of ``g2_s`` over the static bins that share its pixels;
its error is ``std_p(G2_p / (IP_p IF_p)) / sqrt(n)`` over its ``n`` pixels where that ratio
is finite (a pixel that never saw a photon has none); NaN when fewer than two are.
"""

from __future__ import annotations

import numpy as np

__all__ = ["aps_g2"]


def _bin_sums(values: np.ndarray, bins: np.ndarray, nbins: int) -> np.ndarray:
    """Per-bin sums of every row of ``values`` ``(rows, pixels)`` with one bincount call."""
    rows = values.shape[0]
    idx = (np.arange(rows)[:, None] * nbins + bins[None, :]).ravel()
    return np.bincount(idx, weights=values.ravel(), minlength=rows * nbins).reshape(rows, nbins)


def _bin_means(values: np.ndarray, bins: np.ndarray, nbins: int) -> np.ndarray:
    """Per-bin means of every row of ``values`` ``(rows, pixels)``."""
    sums = _bin_sums(values, bins, nbins)
    counts = np.bincount(bins, minlength=nbins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def aps_g2(G2: np.ndarray, IP: np.ndarray, IF: np.ndarray, dynamic_bins: np.ndarray, static_bins: np.ndarray,
           num_dynamic: int, num_static: int) -> tuple[np.ndarray, np.ndarray]:
    """APS-normalised ``(g2, g2_err)``, each ``(n_lags, num_dynamic)``.

    Parameters
    ----------
    G2, IP, IF : numpy.ndarray
        Per-pixel time means, ``(n_lags, pixels)``.
    dynamic_bins, static_bins : numpy.ndarray
        0-based dynamic and static bin of every pixel (same pixel order); a static bin of -1
        means the pixel belongs to no static bin (used for g2_err only).
    """
    s = static_bins >= 0                       # pixels without a static bin only count for g2_err
    with np.errstate(invalid="ignore", divide="ignore"):
        sb = static_bins[s]
        g2_s = _bin_means(G2[:, s], sb, num_static) / (
            _bin_means(IP[:, s], sb, num_static) * _bin_means(IF[:, s], sb, num_static))
        g2_p = G2 / (IP * IF)
        # membership: which static bins share pixels with each dynamic bin
        member = np.zeros((num_dynamic, num_static))
        member[dynamic_bins[s], sb] = 1.0
        n_members = member.sum(axis=1)
        finite = np.isfinite(g2_s)
        g2 = (np.where(finite, g2_s, 0.0) @ member.T) / (finite.astype(float) @ member.T)
        g2[:, n_members == 0] = np.nan
        # a pixel whose IP or IF is 0 (never lit) has no g2 of its own: it is left out of the error
        ok = np.isfinite(g2_p)
        g2_p = np.where(ok, g2_p, 0.0)
        n = _bin_sums(ok.astype(np.float64), dynamic_bins, num_dynamic)
        mean_p = _bin_sums(g2_p, dynamic_bins, num_dynamic) / n
        sq_p = _bin_sums(g2_p ** 2, dynamic_bins, num_dynamic) / n
        var = np.maximum(sq_p - mean_p ** 2, 0.0) * n / (n - 1)            # ddof=1, as APS does
        err = np.sqrt(var) / np.sqrt(n)
        err[n < 2] = np.nan
    return g2, err
