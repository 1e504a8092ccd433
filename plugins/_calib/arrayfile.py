"""Array files: ``file.npy`` or ``file.h5:/dataset`` specs read into numpy arrays.

Every problem raises :class:`ipc.errors.ConfigError` with a sentence naming
the configuration key, the file, the dataset and (for shape problems) the
shapes, so a processor nack tells the user exactly what to fix.
"""

from __future__ import annotations

import os
import re

import h5py
import numpy as np

from framechain.ipc.errors import ConfigError

__all__ = ["ArraySpec", "parse_spec", "load_array", "check_finite", "check_integral"]

_H5_SPEC = re.compile(r"^(?P<file>.+\.(?:h5|hdf5|hdf|nxs|nx5|cxi)):(?P<dataset>/?[^:]+)$", re.IGNORECASE)


class ArraySpec:
    """A parsed array location: a ``.npy`` file, or an HDF5 file plus a dataset path."""

    __slots__ = ("file", "dataset")

    def __init__(self, file: str, dataset: str | None) -> None:
        self.file = file
        self.dataset = dataset

    def __str__(self) -> str:
        return self.file if self.dataset is None else f"{self.file}:{self.dataset}"

    def describe(self) -> str:
        return f"file {self.file!r}" if self.dataset is None else \
            f"dataset {self.dataset!r} in file {self.file!r}"


def parse_spec(spec: str, key: str) -> ArraySpec:
    """Split ``"file.npy"`` or ``"file.h5:/dataset"``; raise ConfigError for anything else."""
    m = _H5_SPEC.match(spec)
    if m:
        ds = m.group("dataset")
        return ArraySpec(m.group("file"), ds if ds.startswith("/") else "/" + ds)
    if spec.lower().endswith(".npy"):
        return ArraySpec(spec, None)
    raise ConfigError(f"'{key}' must name a .npy file or an HDF5 dataset as 'file.h5:/dataset', not {spec!r}", key)


def load_array(spec: str, key: str) -> tuple[np.ndarray, ArraySpec]:
    """Read the array named by ``spec`` (configuration key ``key``) into memory."""
    loc = parse_spec(spec, key)
    if not os.path.isfile(loc.file):
        raise ConfigError(f"'{key}': file {loc.file!r} does not exist", key)
    if loc.dataset is None:
        try:
            arr = np.load(loc.file, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"'{key}': file {loc.file!r} is not a readable .npy array: {err}", key) from err
        if not isinstance(arr, np.ndarray):
            raise ConfigError(f"'{key}': file {loc.file!r} holds several arrays; give one .npy array", key)
    else:
        try:
            with h5py.File(loc.file, "r") as f:
                dset = f.get(loc.dataset)
                if not isinstance(dset, h5py.Dataset):
                    raise ConfigError(f"'{key}': file {loc.file!r} has no dataset {loc.dataset!r}", key)
                arr = dset[()]
        except OSError as err:
            raise ConfigError(f"'{key}': file {loc.file!r} is not a readable HDF5 file: {err}", key) from err
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ConfigError(f"'{key}': {loc.describe()} must hold a numeric array, not "
                          f"{getattr(arr, 'dtype', type(arr).__name__)}", key)
    return arr, loc


def check_finite(arr: np.ndarray, loc: ArraySpec, key: str, nonzero: bool = False, positive: bool = False) -> None:
    """Reject NaN/inf (and zeros or non-positive values when asked), naming the first bad pixel."""
    bad = ~np.isfinite(arr)
    what = "NaN or inf"
    if nonzero:
        bad |= arr == 0
        what = "NaN, inf or zero"
    if positive:
        bad |= ~(arr > 0)
        what = "NaN, inf, zero or negative"
    n = int(np.count_nonzero(bad))
    if n:
        first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape))
        raise ConfigError(f"'{key}': {loc.describe()} (shape {arr.shape}) has {n} {what} value(s), "
                          f"first at index {first}", key)


def check_integral(arr: np.ndarray, loc: ArraySpec, key: str, purpose: str = "") -> None:
    """Reject a float array that does not hold non-negative integers (NaN, inf, fractions, negatives).

    Integer arrays pass unchecked; ``purpose`` (e.g. ``" (0 = good)"``) is added to the message.
    """
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(arr < 0)):
        raise ConfigError(f"'{key}': {loc.describe()} must hold non-negative integers{purpose}, not {arr.dtype} "
                          f"values with fractions, NaN or negatives", key)
