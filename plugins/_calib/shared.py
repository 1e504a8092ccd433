"""Small helpers shared by the calibration and mask plugins: an option check and a mask combination cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["IdentityCache", "and_masks", "check_mib"]

T = TypeVar("T")


def check_mib(v: int) -> str | None:
    """Option check of a pool size in MiB."""
    return None if 1 <= v <= 1 << 20 else "must be 1 to 1048576 MiB"


def and_masks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a & b`` as a new read-only bool array."""
    use = np.logical_and(a, b)
    use.flags.writeable = False
    return use


class IdentityCache(Generic[T]):
    """``compute(a, b)`` for the last pair of objects, recomputed only when either object is another one.

    Masks are immutable and reused frame after frame, so identity stands for equality here.
    """

    __slots__ = ("_compute", "_key", "_value")

    def __init__(self, compute: Callable[[Any, Any], T]) -> None:
        self._compute = compute
        self._key: tuple[Any, Any] | None = None
        self._value: T | None = None

    def __call__(self, a: Any, b: Any) -> T:
        key = self._key
        if key is None or key[0] is not a or key[1] is not b:
            self._value = self._compute(a, b)
            self._key = (a, b)
        return self._value

    def clear(self) -> None:
        """Drop the cached pair and value."""
        self._key = self._value = None
