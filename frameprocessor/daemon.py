"""The frame processor daemon: one control thread owning every socket.

Loggers: ``framechain.frameprocessor.*``. Run with ``framechain processor``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import zmq

from framechain.ipc.channel import IpcChannel
from framechain.ipc.control import run_daemon, set_switch_interval, switch_interval_ms
from framechain.ipc.curve import AuthFailures, secure_server
from framechain.ipc.message import IpcMessage

from .controller import ProcessorController

__all__ = ["FrameProcessorDaemon", "main"]

log = logging.getLogger(__name__)
DEFAULT_CTRL = "tcp://127.0.0.1:5004"
#: GIL switch interval of the daemon (ms). h5py and numpy release the GIL inside their C calls and must take
#: it back afterwards; at Python's default 5 ms a thread busy in Python code (a Python plugin's loop) holds
#: it that long each time, so the HDF5 writer thread waited up to 5 ms per 0.4 ms chunk write (12x slower,
#: docs/performance.md). 0.5 ms bounds that wait at a small cost in switching.
DEFAULT_SWITCH_INTERVAL_MS = 0.5


class FrameProcessorDaemon:
    """Binds the control ROUTER and runs the poll loop."""

    def __init__(self, ctrl_endpoint: str = DEFAULT_CTRL, context: zmq.Context | None = None,
                 plugin_path: Sequence[str] = (), data_roots: Sequence[str] = (), curve_dir: str | None = None,
                 shutdown_timeout: float = 30.0, stuck_after: float = 5.0) -> None:
        self.context = context or zmq.Context.instance()
        self.shutdown_timeout = shutdown_timeout
        self.controller = ProcessorController(self.context)
        self.controller.chain.plugin_path = tuple(os.path.realpath(p) for p in plugin_path)
        self.controller.data_roots = tuple(os.path.realpath(p) for p in data_roots)
        self.controller.chain.stuck_after = stuck_after
        self.ctrl = IpcChannel(zmq.ROUTER, self.context)
        self.auth: AuthFailures | None = None
        if curve_dir:
            secure_server(self.ctrl.socket, curve_dir)
            self.auth = AuthFailures(self.ctrl.socket)
        self.ctrl.bind(ctrl_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.ctrl.socket, zmq.POLLIN)
        self._registered: tuple[Any, ...] = ()
        self.controller.on_shm_change = self._reregister
        self.controller.ctrl_endpoint = ctrl_endpoint
        self.stop_requested = False
        self._closed_chain = False
        log.info("frame processor control on %s", self.ctrl.endpoint)

    def _reregister(self) -> None:
        for s in self._registered:
            try:
                self.poller.unregister(s)
            except KeyError:
                pass
        self._registered = ()

    def _sync_poller(self) -> None:
        shm = self.controller.shm
        want: tuple[Any, ...] = ()
        if shm is not None:
            want = (shm.wakeup_fd, shm.release.socket) + (() if shm.busy else (shm.ready.socket,))
        if want != self._registered:
            self._reregister()
            for s in want:
                self.poller.register(s, zmq.POLLIN)
            self._registered = want

    def handle(self, msg: IpcMessage) -> IpcMessage:
        """Reply to one control message; a shutdown drains the chain before it is acknowledged."""
        reply = self.controller.handle(msg)
        if msg.msg_val == "shutdown" and reply.msg_type == "ack":
            self.shutdown()
        return reply

    def run(self) -> None:
        """Serve until shutdown or a stop signal."""
        while not self.stop_requested:
            try:
                self._step()
            except Exception:  # a bug must not take the daemon (and its buffers) down
                self.controller.internal_errors += 1
                log.exception("internal error in the processor loop (%d so far)", self.controller.internal_errors)
                time.sleep(0.01)
        if not self.controller.shutdown_requested:
            self.shutdown()

    def _step(self) -> None:
        """One poll: control, releases, stalled frames, new frames."""
        self._sync_poller()
        shm = self.controller.shm
        events = dict(self.poller.poll(1 if shm is not None and shm.busy else 100))
        if self.ctrl.socket in events:
            if self.auth is not None:
                self.controller.auth_failures = self.auth.drain()
            self.controller.malformed_messages += self.ctrl.serve(self.handle)
        shm = self.controller.shm
        if shm is None:
            return
        if shm.release.socket in events:
            shm.on_release_channel()
        if shm.wakeup_fd in events:
            shm.drain_releases()
        shm.tick()  # first: a receiver that came back holds its frames until its buffer_config
        if shm.busy:
            shm.retry()
        if shm.ready.socket in events:
            shm.on_ready()
        shm.flush_releases()
        after = self.controller.shutdown_after
        if after and shm.frames_received >= after and not shm.busy and self.controller.chain.idle():
            log.info("%d frames processed (configure frames %d): shutting down", shm.frames_received, after)
            self.controller.shutdown_requested = True
            self.shutdown()

    def shutdown(self) -> None:
        """Drain queued frames through every plugin, release buffers, stop plugin threads."""
        self.stop_requested = True
        shm = self.controller.shm
        deadline = time.monotonic() + self.shutdown_timeout
        while time.monotonic() < deadline:
            if shm is not None:
                if shm.busy:
                    shm.retry()
                shm.drain_releases()
                shm.flush_releases()
                shm.on_release_channel()
            if (shm is None or not shm.busy) and self.controller.chain.idle():
                break
            time.sleep(0.002)
        if shm is not None:
            shm.discard_pending()  # announced but never taken: give the buffers back, counted
            log.info("frames discarded at shutdown: %d (announced while stopping, released unprocessed; "
                     "%d frames received in all)", shm.frames_discarded, shm.frames_received)
            if shm.in_acquisition and not shm.busy:
                # stopped mid-acquisition: finish it as an end of acquisition would (files closed, XPCS results)
                log.info("stopping mid-acquisition: sending an end of acquisition down the chain first")
                self.controller.inject_eoa(stopping=True)
                shm.in_acquisition = False
                while time.monotonic() < deadline and not self.controller.chain.idle():
                    time.sleep(0.005)
        self.controller.close(max(1.0, deadline - time.monotonic()))
        self._closed_chain = True
        abandoned = [w.name for w in self.controller.chain.workers.values() if w.abandoned]
        if abandoned:
            log.error("frame processor stopped, abandoning stuck plugin(s) %s after --shutdown-timeout %g s",
                      abandoned, self.shutdown_timeout)
        else:
            log.info("frame processor stopped")

    def close(self) -> None:
        """Close the control socket (and the chain, if ``shutdown`` did not run: a refused --config)."""
        if not self._closed_chain:
            self.controller.close()
            self._closed_chain = True
        if self.auth is not None:
            self.auth.close()
        self.ctrl.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framechain processor", description="Run the frame processor daemon.")
    parser.add_argument("--ctrl", default=DEFAULT_CTRL, help="control endpoint to bind (default %(default)s)")
    parser.add_argument("--config", help="JSON file: a list of configure params applied in order at start")
    parser.add_argument("--plugin-path", action="append", default=[], metavar="DIR",
                        help="a directory plugin .py files and modules may be loaded from (repeatable); built-in "
                             "and installed plugins load without it, nothing else does")
    parser.add_argument("--data-root", action="append", default=[], metavar="DIR",
                        help="a directory plugins may write files under (repeatable; default: anywhere this "
                             "user may write)")
    parser.add_argument("--curve-dir", help="a CURVE key directory ('framechain keys DIR'): encrypt the control "
                                            "socket and accept only the clients listed in DIR/authorized")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds a shutdown waits for plugins to finish their queued frames before a stuck one "
                             "is abandoned (default %(default)s)")
    parser.add_argument("--stuck-after", type=float, default=5.0,
                        help="seconds on one frame before status shows a plugin as stuck (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.add_argument("--switch-interval-ms", type=switch_interval_ms, default=DEFAULT_SWITCH_INTERVAL_MS,
                        help="GIL switch interval in ms: how long a busy Python thread may keep the writer or "
                             "other plugin threads waiting after their C calls (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_switch_interval(args.switch_interval_ms)
    for flag, dirs in (("--plugin-path", args.plugin_path), ("--data-root", args.data_root)):
        for d in dirs:
            if not os.path.isdir(d):
                parser.error(f"{flag} {d!r} is not a directory")
    return run_daemon("frame processor", lambda: FrameProcessorDaemon(
        args.ctrl, plugin_path=args.plugin_path, data_roots=args.data_root, curve_dir=args.curve_dir,
        shutdown_timeout=args.shutdown_timeout, stuck_after=args.stuck_after), args.config)


if __name__ == "__main__":
    sys.exit(main())
