"""Test harness: real receiver and processor daemons as subprocesses on free loopback ports.

Usage::

    with Pipeline(tmp_path) as p:
        p.configure_receiver({"type": "simulated", "shape": [64, 64], "frames": 100})
        p.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
        p.start()
        p.wait_for(lambda: p.plugin_status("dummy")["frames_processed"] == 100)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from framechain.ipc import IpcChannel, IpcClient, IpcMessage, SharedBuffer, buffer_size_for, free_tcp_endpoint

__all__ = ["Daemon", "Pipeline", "FakeReceiver", "wait_for", "stop_process", "unique_shm_name"]


def unique_shm_name() -> str:
    return f"fctest_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (KeyError, IndexError, TypeError) as err:
            last_err = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}; last error {last_err!r}")


def stop_process(proc: subprocess.Popen, grace: float, terminate: bool = False) -> int:
    """Wait up to ``grace`` s for ``proc`` to exit (after SIGTERM when ``terminate``), then kill it; its exit code."""
    if terminate and proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


class Daemon:
    """One daemon subprocess plus a control client."""

    def __init__(self, kind: str, args: list[str], ctrl: str, log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.kind, self.ctrl, self.log_path = kind, ctrl, log_path
        if kind == "processor" and "--plugin-path" not in args:
            args = [*args, "--plugin-path", str(log_path.parent)]  # the test's own folder: its plugin files
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", kind, "--ctrl", ctrl, *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        self.client = IpcClient(ctrl, timeout=10)
        wait_for(self._answers, timeout=20, what=f"{kind} to answer on {ctrl}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.client.request("status", timeout=0.5).msg_type == "ack"
        except TimeoutError:
            return False

    def request(self, msg_val: str, params: dict | None = None, timeout: float = 10) -> IpcMessage:
        return self.client.request(msg_val, params, timeout=timeout)

    def ok(self, msg_val: str, params: dict | None = None) -> dict:
        reply = self.request(msg_val, params)
        assert reply.msg_type == "ack", f"{self.kind} nacked {msg_val} {params}: {reply.error}"
        return reply.params

    def status(self) -> dict:
        return self.ok("status")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            try:
                self.client.request("shutdown", timeout=30)
            except TimeoutError:
                pass
            stop_process(self.proc, 15)
        self.client.close()
        self._log.close()
        return self.proc.returncode


class Pipeline:
    """A receiver and a processor wired together on free ports with a unique shm name."""

    def __init__(self, tmp_path: Path, processor_args: list[str] | None = None,
                 receiver_args: list[str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.shm_name = unique_shm_name()
        self.ready, self.release = free_tcp_endpoint(), free_tcp_endpoint()
        self.receiver = Daemon("receiver", ["--ready", self.ready, "--release", self.release, *(receiver_args or [])],
                               free_tcp_endpoint(), tmp_path / "receiver.log")
        try:
            self.processor = Daemon("processor", processor_args or [], free_tcp_endpoint(),
                                    tmp_path / "processor.log")
        except BaseException:
            self.receiver.stop()
            raise

    def configure_receiver(self, source: dict, **params: Any) -> dict:
        return self.receiver.ok("configure", {"shared_buffer_name": self.shm_name, "source": source, **params})

    def setup_processor(self, plugins: list[tuple], copy: bool = True, blocking: bool = True) -> None:
        """``plugins``: (index, class, library, upstream[, config]) tuples, loaded and connected in order."""
        self.processor.ok("configure", {"fr_setup": {"fr_ready_cnxn": self.ready, "fr_release_cnxn": self.release},
                                        "shared_memory": {"copy": copy}})
        for spec in plugins:
            index, name, library, upstream = spec[:4]
            self.processor.ok("configure", {"plugin": {"load": {"index": index, "name": name, "library": library}}})
            if len(spec) > 4 and spec[4]:
                self.processor.ok("configure", {index: spec[4]})
            self.processor.ok("configure", {"plugin": {"connect": {"index": index, "connection": upstream,
                                                                   "blocking": blocking}}})
        wait_for(lambda: self.processor.status()["shared_memory"]["configured"], timeout=10,
                 what="processor to map the shared buffer")

    def start(self) -> None:
        # PUB/SUB joins asynchronously: wait until the processor's subscription has reached the receiver
        wait_for(lambda: self.receiver.status()["ready_subscribers"] >= 1, timeout=10,
                 what="the processor to subscribe to frame_ready")
        self.receiver.ok("execute", {"source": {"command": "start"}})

    def plugin_status(self, index: str) -> dict:
        return self.processor.status()[index]

    def wait_done(self, timeout: float = 60) -> dict:
        """Wait for the source to finish and every buffer to come back; return receiver status."""
        def done() -> dict | None:
            st = self.receiver.status()
            if st["source"]["state"] in ("done", "stopped") and st["buffers"]["mapped"] == 0:
                return st
            return None
        return wait_for(done, timeout, what="the acquisition to finish and all buffers to be released")

    def close(self) -> None:
        self.processor.stop()
        self.receiver.stop()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FakeReceiver:
    """The test plays the receiver: a real shm segment, a bound XPUB (ready) and SUB (release)."""

    def __init__(self, num_buffers: int, frame_bytes: int) -> None:
        self.name = unique_shm_name()
        self.ready, self.release = free_tcp_endpoint(), free_tcp_endpoint()
        self.pub = IpcChannel(zmq.XPUB)  # XPUB: we see the processor subscribe
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.pub.bind(self.ready)
        self.sub.bind(self.release)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.buf, _ = SharedBuffer.create(self.name, num_buffers, buffer_size_for(frame_bytes))

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Wait until a processor's SUB has joined the ready XPUB (what it is sent before then is lost)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(self.pub.subscription_events()):
                return
            self.pub.poll(50)
        raise AssertionError(f"no processor subscribed to {self.ready} within {timeout} s")

    def send(self, msg_val: str, params: dict) -> None:
        self.pub.send(IpcMessage("notify", msg_val, params))

    def released(self, count: int, timeout: float = 20) -> set[int]:
        """Buffer ids of the frame_release messages seen until ``count`` distinct ones or ``timeout``."""
        ids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ids) < count and time.monotonic() < deadline:
            if self.sub.poll(100):
                msg = IpcMessage.decode(self.sub.recv())
                if msg.msg_val == "frame_release":
                    ids.add(msg.params["buffer_id"])
        return ids

    def close(self) -> None:
        self.pub.close()
        self.sub.close()
        self.buf.close()
        self.buf.unlink()


@pytest.fixture
def pipeline(tmp_path: Path):
    """A running receiver + processor pair on free ports (stopped after the test); for tests and interop."""
    p = Pipeline(tmp_path)
    try:
        yield p
    finally:
        p.close()
