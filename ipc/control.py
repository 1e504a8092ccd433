"""Control scaffolding shared by both daemons.

- ``ControlHandler``: dispatches each ``cmd`` IpcMessage to ``_on_<msg_val>(params)``
  and turns every outcome into exactly one reply (errors a person can act on as
  nacks, bugs as a nack plus a logged traceback).
- ``ThrottledLog``: the first few warnings of a kind are logged, the rest only counted.
- ``load_config_file`` / ``apply_config_file``: the ``--config`` JSON file (one
  configure object or a list of them, applied in order).
- ``run_daemon``: a daemon's ``main()`` body with one set of exit codes:
  0 after a requested stop (``shutdown``, SIGTERM, SIGINT), 2 for a bad
  endpoint or ``--config``, 1 for a failure while running.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .errors import ConfigError, FramechainError
from .message import IpcMessage

__all__ = ["ControlHandler", "ThrottledLog", "load_config_file", "apply_config_file", "run_daemon",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "switch_interval_ms", "set_switch_interval"]

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ControlHandler:
    """Base of a daemon's control logic: ``handle(msg)`` always returns the one reply to ``msg``.

    Subclasses define ``_on_<msg_val>(params) -> dict`` (the ack's params) and raise
    FramechainError (a nack with its text) for a request they refuse.
    """

    role = "daemon"
    #: messages refused before dispatch (not parseable, over a limit) and loop faults; the daemon bumps them
    malformed_messages = 0
    internal_errors = 0
    auth_failures = 0  #: clients refused in the CURVE handshake (the daemon counts them)

    def control_status(self) -> dict[str, int]:
        """The counters every daemon reports under ``process``."""
        return {"malformed_messages": self.malformed_messages, "internal_errors": self.internal_errors,
                "auth_failures": self.auth_failures}

    def handle(self, msg: IpcMessage) -> IpcMessage:
        """Reply to one control message; never raises for a bad request."""
        if msg.msg_type != "cmd":
            return msg.nack(f"the {self.role}'s control channel takes 'cmd' messages, not '{msg.msg_type}'")
        handler = getattr(self, f"_on_{msg.msg_val}", None)
        if handler is None:
            return msg.nack(f"the {self.role} does not handle '{msg.msg_val}' on its control channel; "
                            "it handles: " + ", ".join(self.handled()))
        try:
            return msg.ack(handler(msg.params))
        except FramechainError as err:
            return msg.nack(str(err))
        except (Exception, SystemExit) as err:  # a bug, or a plugin calling sys.exit: still a reply
            log.exception("%s: '%s' failed", self.role, msg.msg_val)
            return msg.nack(f"internal error while handling '{msg.msg_val}': {type(err).__name__}: {err}")

    def handled(self) -> list[str]:
        """The msg_vals this daemon answers on its control channel."""
        return sorted(n[4:] for n in dir(self) if n.startswith("_on_"))


class ThrottledLog:
    """Log the first ``limit`` warnings, then say once that the rest are only counted (see ``counted_in``)."""

    def __init__(self, logger: logging.Logger, limit: int = 5, counted_in: str = "status") -> None:
        self.logger, self.limit, self.counted_in = logger, limit, counted_in
        self.count = 0

    def warning(self, fmt: str, *args: Any) -> None:
        self.count += 1
        if self.count <= self.limit:
            self.logger.warning(fmt, *args)
        elif self.count == self.limit + 1:
            self.logger.warning("further warnings of this kind suppressed; see %s", self.counted_in)


def switch_interval_ms(text: str) -> float:
    """argparse type for a daemon's ``--switch-interval-ms`` (0.01..100 ms)."""
    import argparse
    try:
        ms = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0.01 <= ms <= 100:
        raise argparse.ArgumentTypeError(f"{ms:g} ms is outside 0.01..100 ms (Python's own default is 5)")
    return ms


def set_switch_interval(ms: float) -> None:
    """The GIL switch interval, in ms (CPython truncates to whole µs)."""
    import sys
    sys.setswitchinterval((round(ms * 1000) + 0.5) / 1e6)


def load_config_file(path: str) -> list[dict[str, Any]]:
    """The configure params in ``path``: a JSON object or a list of objects. ConfigError naming the problem."""
    try:
        with open(path) as fh:
            items = json.load(fh)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    items = items if isinstance(items, list) else [items]
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{path} item {i} must be a JSON object of configure params, not "
                              f"{type(item).__name__}")
    return items


def apply_config_file(handle: Callable[[IpcMessage], IpcMessage], path: str) -> None:
    """Send each configure of ``path`` through ``handle`` in order; FramechainError on the first nack."""
    for i, params in enumerate(load_config_file(path)):
        reply = handle(IpcMessage("cmd", "configure", params))
        if reply.msg_type == "nack":
            raise ConfigError(f"{path} item {i}: {reply.error}")


class Daemon(Protocol):
    stop_requested: bool

    def handle(self, msg: IpcMessage) -> IpcMessage: ...
    def run(self) -> None: ...
    def close(self) -> None: ...


def run_daemon(name: str, build: Callable[[], Daemon], config: str | None) -> int:
    """Build, configure from ``config``, serve until stopped, close; the exit code.

    SIGINT and SIGTERM only set ``stop_requested``: the daemon's loop ends and it shuts down cleanly.
    """
    try:
        daemon = build()
    except FramechainError as err:
        log.error("%s: %s", name, err)
        return EXIT_USAGE

    def on_signal(signum: int, _frame: Any) -> None:
        daemon.stop_requested = True

    try:
        if config:
            try:
                apply_config_file(daemon.handle, config)
            except FramechainError as err:
                log.error("bad --config: %s", err)
                return EXIT_USAGE
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        daemon.run()  # anything raised here is a runtime fault, not the config's: traceback, exit 1
    except Exception:
        log.exception("the %s failed", name)
        return EXIT_FAILED
    finally:
        daemon.close()
    return EXIT_OK
