"""Single-exponential fit of g2: ``g2(tau) = 1 + contrast * exp(-2 tau / tau_c)``.

``tau_c`` is the field (intermediate scattering function) relaxation time, the
convention of the simulated speckle source and of pyXPCSViewer's single
exponential (``a * exp(-2 x / b) + d`` with ``d = 1``). Pure numpy: a weighted
log-linear start followed by Gauss-Newton steps on the model itself.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_g2", "g2_model"]


def g2_model(tau: np.ndarray, contrast: float, tau_c: float, baseline: float = 1.0) -> np.ndarray:
    """``baseline + contrast * exp(-2 tau / tau_c)``."""
    return baseline + contrast * np.exp(-2.0 * np.asarray(tau, float) / tau_c)


def fit_g2(delays: np.ndarray, g2: np.ndarray, weights: np.ndarray | None = None,
           baseline: float = 1.0, iterations: int = 50) -> tuple[float, float]:
    """Fit ``g2 = baseline + contrast * exp(-2 tau / tau_c)``; return ``(contrast, tau_c)``.

    Parameters
    ----------
    delays : array
        Lags (any unit; ``tau_c`` comes back in the same unit). Lag 0 and non-finite
        points are ignored.
    g2 : array
        g2 at those lags (1-D; average the bins first for several bins).
    weights : array, optional
        Per-point weights (e.g. number of pairs); default equal.
    baseline : float
        Fixed baseline (1 for an ergodic sample).

    Returns
    -------
    (contrast, tau_c) : tuple of float
        NaN, NaN when fewer than two usable points.

    Examples
    --------
    >>> tau = np.arange(1, 200.0)
    >>> c, t = fit_g2(tau, 1 + 0.3 * np.exp(-2 * tau / 20))
    >>> round(c, 6), round(t, 6)
    (0.3, 20.0)
    """
    tau = np.asarray(delays, float).ravel()
    y = np.asarray(g2, float).ravel() - baseline
    w = np.ones_like(tau) if weights is None else np.asarray(weights, float).ravel()
    ok = (tau > 0) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    tau, y, w = tau[ok], y[ok], w[ok]
    if tau.size < 2:
        return float("nan"), float("nan")
    # start: straight line through log(y) over the points well above the noise
    pos = y > 0.05 * y.max() if y.max() > 0 else np.zeros_like(y, bool)
    if pos.sum() >= 2:
        A = np.vstack([np.ones(pos.sum()), tau[pos]]).T
        sw = np.sqrt(w[pos] * y[pos] ** 2)
        coef, *_ = np.linalg.lstsq(A * sw[:, None], np.log(y[pos]) * sw, rcond=None)
        c0, rate = float(np.exp(coef[0])), float(-coef[1])
    else:
        c0, rate = float(max(y.max(), 1e-6)), 1.0 / float(np.median(tau))
    if not np.isfinite(rate) or rate <= 0:
        rate = 1.0 / float(np.median(tau))
    p = np.array([c0, rate])
    sw = np.sqrt(w)
    for _ in range(iterations):                  # Gauss-Newton on y = c exp(-rate tau)
        e = np.exp(-p[1] * tau)
        r = (y - p[0] * e) * sw
        J = np.vstack([e, -p[0] * tau * e]).T * sw[:, None]
        step, *_ = np.linalg.lstsq(J, r, rcond=None)
        new = p + step
        if new[1] <= 0:
            new[1] = p[1] / 2
        done = np.all(np.abs(step) <= 1e-12 * np.maximum(np.abs(p), 1e-300))
        p = new
        if done:
            break
    contrast, rate = float(p[0]), float(p[1])
    return contrast, (2.0 / rate if rate > 0 else float("inf"))
