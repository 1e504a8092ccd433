"""FrameProcessorPlugin: the base class every plugin subclasses.

A plugin is plain code: ``process_frame(frame)`` does the work and calls
``self.push(frame)`` (or pushes a new Frame) to pass it on. The processor runs
each plugin on its own thread (see ``worker.py``); the plugin never sees a
thread or a socket. Minimal example::

    class CountPlugin(FrameProcessorPlugin):
        def process_frame(self, frame):
            self.push(frame)

Configuration keys are declared in ``options`` and validated before any is
applied; a bad value raises ConfigError naming the key and the plugin.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ipc.errors import ConfigError

from .frame import EndOfAcquisition, Frame
from .options import Option, validate_options

if TYPE_CHECKING:
    from .worker import PluginWorker

__all__ = ["FrameProcessorPlugin", "Option"]


class FrameProcessorPlugin:
    """Base class for plugins.

    Class attributes
    ----------------
    options : dict[str, Option]
        Every configuration key with its type, default and help.
    commands : tuple[str, ...]
        Commands accepted by ``execute``.
    version : str
        Reported by ``request_version``.

    Attributes
    ----------
    name : str
        The plugin's index in the chain (``"hdf"``, ``"calib"`` ...).
    config : dict
        Current values of every declared option.
    log : logging.Logger
        ``frameprocessor.plugin.<name>``.
    """

    options: ClassVar[dict[str, Option]] = {}
    commands: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "0.1.0"

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = logging.getLogger(f"frameprocessor.plugin.{name}")
        self.config: dict[str, Any] = {k: o.default for k, o in self.options.items()}
        self._outputs: tuple[tuple[PluginWorker, bool], ...] = ()

    @property
    def owner(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

    # -- configuration ----------------------------------------------------
    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``params`` against ``options`` without changing anything; return coerced values."""
        return validate_options(self.owner, self.options, params)

    def configure(self, params: Mapping[str, Any]) -> None:
        """Validate then apply. Override ``apply`` (not this) to act on new values."""
        values = self.validate(params)
        self.apply(values)

    def apply(self, values: dict[str, Any]) -> None:
        """Apply validated values. The default stores them in ``self.config``."""
        self.config.update(values)

    def request_configuration(self) -> dict[str, Any]:
        return dict(self.config)

    def execute(self, command: str, params: Mapping[str, Any]) -> None:
        """Run a command; the default knows none."""
        known = ", ".join(self.commands) or "none"
        raise ConfigError(f"{self.owner} has no command {command!r}; its commands: {known}", "command")

    # -- data path ----------------------------------------------------------
    def process_frame(self, frame: Frame) -> None:
        """Handle one frame (runs on the plugin's thread). Subclasses must implement it."""
        raise NotImplementedError

    def process_end_of_acquisition(self, eoa: EndOfAcquisition) -> None:
        """Called once per acquisition after its last frame; the marker is forwarded afterwards."""

    def push(self, frame: Frame) -> None:
        """Pass ``frame`` to every connected downstream plugin.

        A frame going to more than one plugin becomes read-only (``frame.data.flags.writeable``
        is False), so no branch can change what another sees; a plugin that finds its frame
        writable is its only consumer and may modify it in place.
        """
        outputs = self._outputs
        frame.fan_out(len(outputs))
        for worker, blocking in outputs:
            worker.submit(frame, blocking)

    # -- reporting ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Plugin-specific counters (the worker adds frames and timing)."""
        return {}

    def reset_statistics(self) -> None:
        """Zero plugin-specific counters."""

    def close(self) -> None:
        """Release resources (files, sockets) when the plugin is removed or the daemon stops."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
