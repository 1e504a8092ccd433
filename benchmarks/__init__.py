"""Benchmarks for ``make bench`` / ``framechain bench``.

Each suite module defines ``run(quick: bool) -> list[Figure]``; every Figure
is a measured value with the baseline measured in the same run, so the ratio
is meaningful on any machine. Add a suite by adding its module name to SUITES.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Figure", "SUITES"]

SUITES = ["pipeline", "writer", "xpcs", "calibration", "streams", "whole", "mpi"]


@dataclass
class Figure:
    """One benchmark result.

    ``value`` and ``baseline`` are in ``unit`` (higher is better unless the unit
    says otherwise); ``ratio = value / baseline``; ``target`` is the acceptance
    threshold on the ratio (or on the value when ``target_on == "value"``).
    """

    suite: str
    name: str
    value: float
    unit: str
    baseline: float
    baseline_name: str
    target: float | None = None
    target_on: str = "ratio"
    extra: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        return (self.ratio if self.target_on == "ratio" else self.value) >= self.target

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["meets_target"] = self.meets_target
        return d
