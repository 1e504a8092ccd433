"""FrameProcessorPlugin: the base class every plugin subclasses.

A plugin is plain code: ``process_frame(frame)`` does the work and calls
``self.push(frame)`` (or pushes a new Frame) to pass it on. The processor runs
each plugin on its own thread (see ``worker.py``); the plugin never sees a
thread or a socket. Minimal example::

    class CountPlugin(FrameProcessorPlugin):
        def process_frame(self, frame):
            self.push(frame)

Configuration is two-phase. ``prepare(params)`` checks the values and does
every costly or fallible step (files read, sockets bound, sessions built)
without changing anything the plugin's thread can see, and returns a
*change*; ``commit(change)`` then swaps references and must not fail, or
``abort(change)`` releases what prepare made. The processor prepares every
part of a configure message and commits all of them only when all prepared.

Threads: ``prepare``, ``commit``, ``abort``, ``execute``, ``request_configuration``,
``status`` and ``reset_statistics`` run on the processor's control thread;
``process_frame`` and ``process_end_of_acquisition`` run on the plugin's own
thread; ``close`` runs on the control thread after the plugin's thread ended.
A commit that replaces whole objects (``self.config``, a table, a socket handed
over through a queue) needs no lock: the plugin thread reads the old or the new.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from framechain.ipc.errors import ConfigError

from .frame import EndOfAcquisition, Frame
from framechain.ipc.options import Option, validate_options

__all__ = ["FrameProcessorPlugin", "FrameSink", "Option", "path_within"]


def path_within(path: str, dirs: Sequence[str]) -> bool:
    """True when ``path`` (symlinks and ``..`` resolved) lies inside one of ``dirs``."""
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, root]) == root for root in map(os.path.realpath, dirs))


class FrameSink(Protocol):
    """Where a plugin's ``push`` delivers: a plugin's worker, or a test's collector."""

    def submit(self, item: Frame | EndOfAcquisition, blocking: bool) -> None:
        """Take ``item``; when ``blocking``, wait for room, else drop (and count) when full."""


class FrameProcessorPlugin:
    """Base class for plugins.

    Class attributes
    ----------------
    options : dict[str, Option]
        Every configuration key with its type, default and help.
    commands : dict[str, dict[str, Option]]
        Commands accepted by ``execute``, each with its declared parameters (a tuple of
        names is accepted too: parameters then reach ``execute`` unchecked).
    version : str
        Reported by ``request_version``.
    accepts_compressed : bool
        True if ``process_frame`` handles frames whose ``data`` is a compressed chunk
        (``frame.compressed`` set); otherwise the worker decodes them first. Override
        ``wants_compressed(frame)`` to decide frame by frame.

    Attributes
    ----------
    name : str
        The plugin's index in the chain (``"hdf"``, ``"calib"`` ...).
    config : dict
        Current values of every declared option.
    log : logging.Logger
        ``framechain.frameprocessor.plugin.<name>``.
    """

    options: ClassVar[dict[str, Option]] = {}
    commands: ClassVar[Mapping[str, Mapping[str, Option]] | tuple[str, ...]] = {}
    version: ClassVar[str] = "0.1.0"
    accepts_compressed: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = logging.getLogger(__name__).getChild(name)
        self.config: dict[str, Any] = {k: o.default for k, o in self.options.items()}
        self._outputs: tuple[tuple[FrameSink, bool], ...] = ()
        self.meta: Any = None  #: the processor's MetaPublisher (set when the plugin is loaded)
        #: where the plugin may write files (the processor's --data-root; empty: anywhere)
        self.data_roots: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

    # -- configuration (control thread) -----------------------------------------
    def prepare(self, params: Mapping[str, Any]) -> Any:
        """Check ``params`` and make what the change needs; change nothing in use; return the change.

        The default validates against ``options`` and returns the coerced values. Raise
        ConfigError (naming the key) to refuse; anything made before raising must be released.
        """
        return validate_options(self.owner, self.options, params)

    def commit(self, change: Any) -> None:
        """Put a prepared change in use; must not fail. The default merges values into ``config``."""
        self.config = {**self.config, **change}

    def abort(self, change: Any) -> None:
        """Release what ``prepare`` made for a change that will not be committed (default: nothing)."""

    def configure(self, params: Mapping[str, Any]) -> None:
        """Prepare then commit: a one-plugin configure (the processor uses the phases itself)."""
        self.commit(self.prepare(params))

    def request_configuration(self) -> dict[str, Any]:
        return dict(self.config)

    def check_output_path(self, path: str, key: str) -> None:
        """ConfigError unless ``path`` lies under one of the processor's data roots (any path when none)."""
        roots = self.data_roots
        if roots and not path_within(path, roots):
            raise ConfigError(f"{self.owner} '{key}' {path!r} is outside this processor's data roots "
                              f"({', '.join(roots)}); write under one of them (--data-root when it starts)", key)

    # -- commands (control thread) ----------------------------------------------
    def check_command(self, command: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """A known command's parameters, validated against its declaration (defaults filled in)."""
        if command not in self.commands:
            known = ", ".join(self.commands) or "none"
            raise ConfigError(f"{self.owner} has no command {command!r}; its commands: {known}", "command")
        declared = self.commands[command] if isinstance(self.commands, Mapping) else None
        if declared is None:
            return dict(params)
        return validate_options(f"{self.owner} command {command!r}", declared, params, complete=True)

    def execute(self, command: str, params: Mapping[str, Any]) -> None:
        """Run a command with parameters ``check_command`` returned; the default knows none."""
        known = ", ".join(self.commands) or "none"
        raise ConfigError(f"{self.owner} has no command {command!r}; its commands: {known}", "command")

    def command(self, command: str, params: Mapping[str, Any] | None = None) -> None:
        """Check then run one command (the processor checks every command of a message first)."""
        self.execute(command, self.check_command(command, params or {}))

    # -- wiring ---------------------------------------------------------------
    def set_outputs(self, outputs: tuple[tuple[FrameSink, bool], ...]) -> None:
        """Replace the downstream sinks as ``(sink, blocking)`` pairs (one reference swap)."""
        self._outputs = tuple(outputs)

    @property
    def outputs(self) -> tuple[tuple[FrameSink, bool], ...]:
        """The downstream ``(sink, blocking)`` pairs ``push`` delivers to."""
        return self._outputs

    # -- data path (plugin thread) ---------------------------------------------
    def wants_compressed(self, frame: Frame) -> bool:
        """Whether ``process_frame`` takes this compressed frame as it is (else the worker decodes it first)."""
        return self.accepts_compressed

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

    def publish_meta(self, item: str, body: Any, header: Mapping[str, Any], source: str = "",
                     kind: str = "string") -> None:
        """Publish one item on the processor's ``meta_endpoint`` (nothing happens when none is configured).

        ``source`` is the message's ``plugin`` field (default: the plugin's class name); odin's
        meta_writer reads the FileWriter's items under ``"Acquisition"``.
        """
        meta = self.meta
        if meta is not None and meta.enabled:
            meta.publish(source or type(self).__name__, item, body, dict(header), kind)

    # -- reporting ------------------------------------------------------------
    def clear_errors(self) -> None:
        """Forget the error a status reports (odin's ``clear_errors``); the worker's own are cleared too."""

    def status(self) -> dict[str, Any]:
        """Plugin-specific counters (the worker adds frames and timing)."""
        return {}

    def reset_statistics(self) -> None:
        """Zero plugin-specific counters."""

    def close(self) -> None:
        """Release resources (files, sockets) when the plugin is removed or the daemon stops."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
