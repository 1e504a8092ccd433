"""The framechain exception hierarchy: one root, a few meaningful subclasses."""

from __future__ import annotations

__all__ = ["FramechainError", "ProtocolError", "ConfigError", "ShmError", "PluginError", "IpcTimeout"]


class FramechainError(Exception):
    """Root of every error framechain raises on purpose."""


class ProtocolError(FramechainError, ValueError):
    """A message on the wire does not follow the IpcMessage format."""


class ConfigError(FramechainError, ValueError):
    """A configuration value was rejected; nothing was changed.

    ``key`` names the offending configuration path when known.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ShmError(FramechainError):
    """A shared-memory segment could not be created, opened or used."""


class PluginError(FramechainError):
    """A plugin could not be loaded, connected or run. ``plugin`` names it."""

    def __init__(self, message: str, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class IpcTimeout(FramechainError, TimeoutError):
    """A request got no reply in time."""
