"""framechain: odin-data-style frame receiver/processor daemons for X-ray detectors.

The repository's top-level folders install as subpackages of this one:
``framechain.ipc``, ``framechain.framereceiver``, ``framechain.frameprocessor``,
``framechain.plugins``, ``framechain.client`` and ``framechain.benchmarks``.
Every logger is a child of the ``framechain`` logger.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("framechain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
