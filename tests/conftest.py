import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Pipeline  # noqa: E402


@pytest.fixture
def pipeline(tmp_path):
    """A running receiver + processor pair on free ports (stopped after the test)."""
    p = Pipeline(tmp_path)
    try:
        yield p
    finally:
        p.close()
