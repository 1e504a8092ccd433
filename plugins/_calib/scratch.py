"""Scratch: per-frame-shape work arrays reused frame after frame (allocated once per shape)."""

from __future__ import annotations

import numpy as np

__all__ = ["Scratch"]


class Scratch:
    """Work arrays for frames of one shape, allocated on first use and then reused.

    Only the plugin thread touches a Scratch.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.size = int(np.prod(shape))
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, dtype: np.dtype | str, size: int | None = None) -> np.ndarray:
        """The flat work array ``name`` of ``size`` (default: frame size) elements and ``dtype``.

        Allocated on first use only (no per-frame allocation).
        """
        n = self.size if size is None else size
        a = self._arrays.get(name)
        if a is None or a.dtype != np.dtype(dtype) or a.size != n:
            a = self._arrays[name] = np.empty(n, dtype)
        return a

    def __repr__(self) -> str:
        return f"<Scratch {self.shape} {sorted(self._arrays)}>"
