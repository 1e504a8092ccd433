"""The frame receiver daemon: one thread owning the control ROUTER, ready PUB and release SUB.

Loggers: ``framechain.framereceiver.*``. Run with ``framechain receiver``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

import zmq

from framechain.ipc.batch import decode_batch, is_batch
from framechain.ipc.channel import IpcChannel
from framechain.ipc.control import run_daemon, set_switch_interval, switch_interval_ms
from framechain.ipc.curve import AuthFailures, secure_server
from framechain.ipc.errors import FramechainError, ProtocolError
from framechain.ipc.message import IpcMessage

from .controller import ReceiverController

__all__ = ["FrameReceiverDaemon", "main"]

log = logging.getLogger(__name__)
DEFAULTS = {"ctrl": "tcp://127.0.0.1:5000", "ready": "tcp://127.0.0.1:5001", "release": "tcp://127.0.0.1:5002"}


class FrameReceiverDaemon:
    """Binds the receiver's three endpoints and runs its loop."""

    def __init__(self, ctrl: str = DEFAULTS["ctrl"], ready: str = DEFAULTS["ready"],
                 release: str = DEFAULTS["release"], context: zmq.Context | None = None,
                 curve_dir: str | None = None) -> None:
        ctx = self.context = context or zmq.Context.instance()
        self.ctrl = IpcChannel(zmq.ROUTER, ctx)
        self.ready = self._ready_channel()
        self.release = IpcChannel(zmq.SUB, ctx, hwm=0)
        self.poller = zmq.Poller()
        self.auth: AuthFailures | None = None
        try:
            if curve_dir:
                secure_server(self.ctrl.socket, curve_dir)
                self.auth = AuthFailures(self.ctrl.socket)
            self.ctrl.bind(ctrl)
            self.ready.bind(ready)
            self.release.bind(release)
        except FramechainError:
            self.close()
            raise
        self.controller = ReceiverController(self.ready.send, self.ready.socket.send)
        self.controller.endpoints = {"ctrl": ctrl, "ready": ready, "release": release}
        self.controller.rebind = self._rebind
        self.stop_requested = False
        log.info("frame receiver: control %s, ready %s, release %s", self.ctrl.endpoint, self.ready.endpoint,
                 self.release.endpoint)

    def _ready_channel(self) -> IpcChannel:
        ch = IpcChannel(zmq.XPUB, self.context, hwm=0)  # XPUB: we see processors subscribe
        ch.socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # pass every (un)subscribe so we can count them
        return ch

    def _rebind(self, want: dict[str, str]) -> Callable[[bool], None]:
        """Bind new frame_ready / frame_release sockets (odin's configure keys); the returned call swaps them in
        (True) or closes them (False). A bind that fails raises before anything changed."""
        made: dict[str, IpcChannel] = {}
        try:
            if "ready" in want:
                made["ready"] = self._ready_channel()
                made["ready"].bind(want["ready"])
            if "release" in want:
                made["release"] = IpcChannel(zmq.SUB, self.context, hwm=0)
                made["release"].bind(want["release"])
        except FramechainError:
            for ch in made.values():
                ch.close()
            raise

        def commit(ok: bool) -> None:
            for key, ch in made.items():
                if not ok:
                    ch.close()
                    continue
                old = getattr(self, key)
                try:
                    self.poller.unregister(old.socket)
                except KeyError:
                    pass
                old.close()
                setattr(self, key, ch)
                self.poller.register(ch.socket, zmq.POLLIN)
                self.controller.endpoints[key] = want[key]
                log.info("frame receiver: %s now on %s", key, want[key])
            if ok and "ready" in made:
                ctl = self.controller
                ctl.send_json, ctl.publish_raw = self.ready.send, self.ready.socket.send
                ctl.subscribers = ctl.peer_subscribers = 0  # processors subscribe again on the new endpoint
        return commit

    def handle_releases(self, limit: int = 1024) -> None:
        for raw in self.release.pending(limit):
            try:
                if is_batch(raw):
                    kind, _, bids = decode_batch(raw)
                    if kind != "frame_release":
                        raise ProtocolError(f"a {kind} batch on the release channel")
                    self.controller.release_buffers(bids)
                else:
                    self.controller.on_release(IpcMessage.decode(raw))
            except ProtocolError as err:
                self.controller.warnings.warning("ignored malformed release-channel message: %s", err)

    def handle_subscriptions(self) -> None:
        """Count processors subscribed to frame_ready (XPUB delivers subscribe/unsubscribe events)."""
        ctl = self.controller
        for joined in self.ready.subscription_events():
            ctl.subscribers = ctl.subscribers + 1 if joined else max(0, ctl.subscribers - 1)
        ctl.peer_subscribers = self.ready.peers
        ctl.subscribers_changed()

    def handle(self, msg: IpcMessage) -> IpcMessage:
        """Reply to one control message."""
        return self.controller.handle(msg)

    def run(self) -> None:
        poller = self.poller
        poller.register(self.ctrl.socket, zmq.POLLIN)
        poller.register(self.release.socket, zmq.POLLIN)
        poller.register(self.ready.socket, zmq.POLLIN)
        ctl = self.controller
        self._stream: zmq.Socket | int | None = None
        while not self.stop_requested:
            try:
                self._step(poller)
            except Exception:  # a bug must not take the receiver (and its segment) down
                ctl.internal_errors += 1
                log.exception("internal error in the receiver loop (%d so far)", ctl.internal_errors)
                time.sleep(0.01)
        log.info("frame receiver stopping")

    def _step(self, poller: zmq.Poller) -> None:
        """One poll: releases, subscriptions, control, then frames that are due."""
        ctl = self.controller
        stream = ctl.stream_socket()  # a detector stream is read only while a buffer is free (block mode)
        if stream != self._stream:  # a zmq socket or, for UDP, an eventfd number
            if self._stream is not None:
                poller.unregister(self._stream)  # works on a socket the source has closed
            if stream is not None:
                poller.register(stream, zmq.POLLIN)
            self._stream = stream
        wait = ctl.wait_time()
        timeout = 100 if wait is None else int(wait * 1000)
        events = dict(poller.poll(timeout))
        if self.release.socket in events:
            self.handle_releases()
        if self.ready.socket in events:
            self.handle_subscriptions()
        if self.ctrl.socket in events:
            if self.auth is not None:
                ctl.auth_failures = self.auth.drain()
            ctl.malformed_messages += self.ctrl.serve(ctl.handle)
            if ctl.shutdown_requested:
                self.stop_requested = True
        ctl.produce()

    def close(self) -> None:
        if hasattr(self, "controller"):
            self.controller.close()
        if getattr(self, "auth", None) is not None:
            self.auth.close()
        for ch in (self.ctrl, self.ready, self.release):
            ch.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framechain receiver", description="Run the frame receiver daemon.")
    parser.add_argument("--ctrl", default=DEFAULTS["ctrl"], help="control endpoint (default %(default)s)")
    parser.add_argument("--ready", default=DEFAULTS["ready"], help="frame_ready PUB endpoint (default %(default)s)")
    parser.add_argument("--release", default=DEFAULTS["release"],
                        help="frame_release SUB endpoint (default %(default)s)")
    parser.add_argument("--config", help="JSON file: configure params (an object or a list) applied at start")
    parser.add_argument("--curve-dir", help="a CURVE key directory ('framechain keys DIR'): encrypt the control "
                                            "socket and accept only the clients listed in DIR/authorized")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.add_argument("--switch-interval-ms", type=switch_interval_ms, default=5.0,
                        help="GIL switch interval in ms: how soon the UDP receive thread gets the GIL back from "
                             "the control thread (default %(default)s, Python's own)")
    args = parser.parse_args(argv)
    set_switch_interval(args.switch_interval_ms)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_daemon("frame receiver", lambda: FrameReceiverDaemon(args.ctrl, args.ready, args.release,
                                                                    curve_dir=args.curve_dir), args.config)


if __name__ == "__main__":
    sys.exit(main())
