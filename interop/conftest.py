"""Interop tests against peers built outside this repository (``make interop``); never part of ``make test``."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import pipeline  # noqa: E402,F401  (the fixture tests/ uses)


@pytest.fixture(scope="session")
def odin_prefix() -> Path:
    """An odin-data build or install (``bin/frameSimulator``, ``lib/``), named by ODIN_DATA_PREFIX."""
    value = os.environ.get("ODIN_DATA_PREFIX")
    if not value:
        pytest.fail("make interop needs ODIN_DATA_PREFIX: an odin-data build folder with bin/frameSimulator "
                    "and lib/ (see docs/operations.md, 'Interop with odin-data')")
    prefix = Path(value)
    if not (prefix / "bin" / "frameSimulator").exists():
        pytest.fail(f"{prefix}/bin/frameSimulator does not exist")
    return prefix
