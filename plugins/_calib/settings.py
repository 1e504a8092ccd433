"""Validated sub-settings of the calibration plugin: common mode and photonize."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from framechain.ipc.errors import ConfigError

__all__ = ["CommonModeSettings", "PhotonizeSettings", "OUTPUT_DTYPES", "parse_common_mode", "parse_photonize"]

OUTPUT_DTYPES = ("float32", "float64", "uint8", "uint16", "int16", "int32", "uint32")


def _number(cfg: Mapping[str, Any], key: str, path: str, default: float | None, positive: bool = False,
            allow_none: bool = False) -> float | None:
    v = cfg.get(key, default)
    if v is None and allow_none:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or (positive and v <= 0):
        want = "a positive number" if positive else "a finite number"
        raise ConfigError(f"'{path}/{key}' must be {want}{' or null' if allow_none else ''}, not {v!r}", key)
    return float(v)


def _unknown(cfg: Mapping[str, Any], allowed: set[str], path: str) -> None:
    bad = sorted(set(cfg) - allowed)
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in '{path}'; known: {sorted(allowed)}", bad[0])


@dataclass(frozen=True)
class CommonModeSettings:
    """Common-mode correction: median of good pixels per row within a bank (``row``) or per bank (``bank``).

    ``bank_shape`` None means the whole frame is one bank. ``cormax`` and
    ``threshold`` are in ADU after pedestal subtraction.
    """

    mode: str
    bank_shape: tuple[int, int] | None
    cormax: float
    npix_min: int
    threshold: float | None

    def banks(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """Bank height and width for frames of ``shape``; ConfigError if they do not tile it."""
        if len(shape) != 2:
            raise ConfigError(f"common mode needs 2-D frames; frames have shape {shape}", "common_mode")
        bh, bw = self.bank_shape or shape
        if shape[0] % bh or shape[1] % bw:
            raise ConfigError(f"common_mode bank_shape {[bh, bw]} does not tile frames of shape {list(shape)}",
                              "bank_shape")
        return bh, bw


@dataclass(frozen=True)
class PhotonizeSettings:
    """``round(E / photon_energy)`` where ``E >= threshold``, else 0 (E in the output's units)."""

    photon_energy: float
    threshold: float


def parse_common_mode(cfg: Any) -> CommonModeSettings | None:
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"'common_mode' must be an object like {{\"mode\": \"row\"}} or null, not {cfg!r}",
                          "common_mode")
    _unknown(cfg, {"mode", "bank_shape", "cormax", "npix_min", "threshold"}, "common_mode")
    mode = cfg.get("mode", "row")
    if mode == "none":
        return None
    if mode not in ("row", "bank"):
        raise ConfigError(f"'common_mode/mode' must be 'row', 'bank' or 'none', not {mode!r}", "mode")
    bank = cfg.get("bank_shape")
    if bank is not None and (not isinstance(bank, list) or len(bank) != 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in bank)):
        raise ConfigError(f"'common_mode/bank_shape' must be [height, width] of positive integers or null, "
                          f"not {bank!r}", "bank_shape")
    npix = cfg.get("npix_min", 10)
    if not isinstance(npix, int) or isinstance(npix, bool) or npix < 1:
        raise ConfigError(f"'common_mode/npix_min' must be an integer >= 1, not {npix!r}", "npix_min")
    return CommonModeSettings(mode, tuple(bank) if bank else None,
                              _number(cfg, "cormax", "common_mode", 10.0, positive=True), npix,
                              _number(cfg, "threshold", "common_mode", None, positive=True, allow_none=True))


def parse_photonize(cfg: Any) -> PhotonizeSettings | None:
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"'photonize' must be an object like {{\"photon_energy\": 9.5}} or null, not {cfg!r}",
                          "photonize")
    _unknown(cfg, {"photon_energy", "threshold"}, "photonize")
    if "photon_energy" not in cfg:
        raise ConfigError("'photonize' needs 'photon_energy' (in the units of the calibrated output)",
                          "photon_energy")
    pe = _number(cfg, "photon_energy", "photonize", None, positive=True)
    thr = _number(cfg, "threshold", "photonize", pe / 2, positive=True)
    return PhotonizeSettings(pe, thr)
