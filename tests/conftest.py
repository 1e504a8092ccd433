import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import pipeline  # noqa: E402,F401  (the fixture, shared with interop/)
