"""Common-mode correction: subtract the median of the good pixels of each row-in-bank or bank.

Pixels excluded from the median: bad pixels (pixel status != 0), gain-switched
pixels (multi-gain), and pixels whose pedestal-subtracted value exceeds
``threshold`` ADU (photons). A group with fewer than ``npix_min`` usable
pixels, or whose median exceeds ``cormax`` in magnitude, is left uncorrected.

The median is computed without per-group Python loops: groups are copied into
a scratch array, excluded pixels set to NaN, each group sorted (NaN sorts
last), and the middle element(s) of the first ``n`` picked per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scratch import Scratch
from .settings import CommonModeSettings

__all__ = ["CommonModeResult", "apply_common_mode"]


@dataclass
class CommonModeResult:
    """Per-frame outcome: groups corrected and skipped, mean correction applied (ADU)."""

    corrected: int = 0
    skipped_npix: int = 0
    skipped_cormax: int = 0
    mean_correction: float = 0.0


def _group_views(values: np.ndarray, shape: tuple[int, int], cm: CommonModeSettings) -> tuple[
        np.ndarray, tuple[int, int, int, int]]:
    """A 4-D view of the flat frame with axes ordered so each group is contiguous after copying."""
    bh, bw = cm.banks(shape)
    nbh, nbw = shape[0] // bh, shape[1] // bw
    v4 = values.reshape(nbh, bh, nbw, bw)
    if cm.mode == "bank":
        return v4.transpose(0, 2, 1, 3), (nbh, nbw, bh, bw)
    return v4, (nbh, bh, nbw, bw)


def _group_index(flat: np.ndarray, shape: tuple[int, int], cm: CommonModeSettings) -> np.ndarray:
    """Map flat frame indices to flat positions in the grouped scratch order."""
    if cm.mode == "row":
        return flat
    bh, bw = cm.banks(shape)
    nbw = shape[1] // bw
    r, c = np.divmod(flat, shape[1])
    return (((r // bh) * nbw + c // bw) * bh + r % bh) * bw + c % bw


def apply_common_mode(values: np.ndarray, shape: tuple[int, int], cm: CommonModeSettings, scratch: Scratch,
                      bad_nan: np.ndarray | None = None, exclude_index: np.ndarray | None = None) -> CommonModeResult:
    """Subtract the common mode from ``values`` (flat, pedestal-subtracted ADU) in place.

    Parameters
    ----------
    values : ndarray
        Flat float frame, modified in place.
    shape : (H, W)
        Frame shape.
    cm : CommonModeSettings
    scratch : Scratch
        Work arrays for this frame shape.
    bad_nan : ndarray, optional
        Flat float32, NaN at bad pixels, 0 elsewhere (static exclusion).
    exclude_index : ndarray, optional
        Flat indices of further pixels to exclude this frame (gain-switched pixels).
    """
    src4, order = _group_views(values, shape, cm)
    work = scratch.get("cm_sort", values.dtype)
    work4 = work.reshape(order)
    if bad_nan is not None:
        bad4, _ = _group_views(bad_nan, shape, cm)
        np.add(src4, bad4, out=work4)
    else:
        np.copyto(work4, src4)
    has_nan = bad_nan is not None
    if exclude_index is not None and exclude_index.size:
        work[_group_index(exclude_index, shape, cm)] = np.nan
        has_nan = True
    glen = order[3] if cm.mode == "row" else order[2] * order[3]
    groups = work.reshape(-1, glen)
    if cm.threshold is not None:
        absval = scratch.get("cm_abs", values.dtype)
        above = scratch.get("cm_above", np.bool_)
        np.abs(work, out=absval)
        np.greater(absval, cm.threshold, out=above)
        if above.any():
            np.copyto(work, np.nan, where=above)
            has_nan = True
    groups.sort(axis=1)
    ngroups = groups.shape[0]
    if has_nan:
        isnan = scratch.get("cm_isnan", np.bool_).reshape(-1, glen)
        np.isnan(groups, out=isnan)
        n = glen - np.count_nonzero(isnan, axis=1)
        rows = np.arange(ngroups)
        lo = np.maximum((n - 1) // 2, 0)
        median = (groups[rows, lo] + groups[rows, n // 2]) / 2
        median[n == 0] = 0
    else:
        n = np.full(ngroups, glen)
        median = (groups[:, (glen - 1) // 2] + groups[:, glen // 2]) / 2
    few = n < cm.npix_min
    big = (np.abs(median) > cm.cormax) & ~few
    median[few | big] = 0
    if cm.mode == "row":
        values.reshape(-1, order[3])[...] -= median[:, None]
    else:
        nbh, nbw, bh, bw = order
        values.reshape(nbh, bh, nbw, bw)[...] -= median.reshape(nbh, 1, nbw, 1)
    corrected = ngroups - int(few.sum()) - int(big.sum())
    return CommonModeResult(corrected, int(few.sum()), int(big.sum()),
                            float(median.sum() / corrected) if corrected else 0.0)
