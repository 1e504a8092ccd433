"""``framechain run CONFIG``: the all-in-one launcher.

Starts a receiver and a processor as subprocesses on free loopback ports,
applies the configuration, runs the acquisition to its end with a progress
bar, prints a summary and stops everything (also on Ctrl-C or SIGTERM; repeated
signals during the shutdown terminate, then kill, the daemons instead of orphaning them).

Config file (JSON)::

    {"receiver": {<receiver configure params, incl. "source">},
     "processor": [<configure params>, ...],        # applied in order; fr_setup is added
     "start": [<processor execute params>, ...],    # e.g. {"hdf": {"command": "start_writing"}}
     "endpoints": {"receiver": "tcp://127.0.0.1:5000", "ready": ..., "release": ..., "processor": ...},
                                                    # optional fixed endpoints (default: free loopback ports)
     "output_dir": "output",                        # created before the run
     "plugin_path": ["my_plugins"],                 # directories plugin files may come from (the folders of
                                                    # .py libraries the processor items name are added)
     "prepare": "examples/prepare_demo.py"}         # optional script run first, with the config path
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from framechain.ipc.channel import endpoint_problem, free_tcp_endpoint
from framechain.ipc.client import IpcClient
from framechain.ipc.errors import FramechainError, IpcTimeout, ShmError
from framechain.ipc.message import IpcMessage
from framechain.ipc.shm import SharedBuffer

from .summary import pair_counts, summarise

__all__ = ["Launcher", "LaunchError", "main", "control_endpoints", "load_config"]

log = logging.getLogger(__name__)
_KEYS = {"description", "receiver", "processor", "start", "output_dir", "timeout", "prepare", "endpoints",
         "plugin_path", "mpi"}
ENDPOINT_KEYS = ("receiver", "ready", "release", "processor")


def control_endpoints(cfg: dict[str, Any]) -> dict[str, str]:
    """The fixed control endpoints a run config names (``receiver``, ``processor``), for clients to attach."""
    eps = cfg.get("endpoints") or {}
    return {k: eps[k] for k in ("receiver", "processor") if k in eps}


def load_specs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``plugin.load`` entry (``{index, name, library}``) of a run config's processor items."""
    specs = []
    for item in cfg.get("processor", []):
        load = item.get("plugin", {}).get("load", []) if isinstance(item, dict) and isinstance(
            item.get("plugin"), dict) else []
        specs += [spec for spec in (load if isinstance(load, list) else [load]) if isinstance(spec, dict)]
    return specs


def plugin_dirs(cfg: dict[str, Any]) -> list[str]:
    """The processor's --plugin-path for a run config: its ``plugin_path`` and the folders of the ``.py``
    plugin files its processor items load (the config's author chose them)."""
    dirs = [str(d) for d in cfg.get("plugin_path", []) if isinstance(d, str)]
    for spec in load_specs(cfg):
        lib = spec.get("library")
        if isinstance(lib, str) and lib.endswith(".py"):
            dirs.append(os.path.dirname(os.path.abspath(lib)))
    return sorted({os.path.abspath(d) for d in dirs if os.path.isdir(d)})


class LaunchError(FramechainError):
    """The launcher could not bring the pipeline up; the message says why."""


class Launcher:
    """Owns the two daemon subprocesses of one run."""

    def __init__(self, config: dict[str, Any], log_dir: Path, preexec: Any = None) -> None:
        self.config = config
        self.preexec = preexec  # run in each daemon child before exec (--mpi: die with the rank)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.clients: dict[str, IpcClient] = {}
        eps = config.get("endpoints") or {}
        self.endpoints = {k: eps.get(k) or free_tcp_endpoint() for k in ENDPOINT_KEYS}
        self.ready, self.release = self.endpoints["ready"], self.endpoints["release"]
        self.segment = config["receiver"].get("shared_buffer_name") or f"framechain_run_{os.getpid()}"
        self.hurry = 0  # signals received while shutting down: 1 terminate the daemons, 2 kill them

    # -- daemons ---------------------------------------------------------------
    def _spawn(self, kind: str, args: list[str]) -> None:
        ctrl = self.endpoints[kind]
        logf = open(self.log_dir / f"{kind}.log", "w")
        # their own session: Ctrl-C reaches us, and we stop them in order
        self.procs[kind] = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", kind, "--ctrl", ctrl,
                                             *args], stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=self.preexec)
        logf.close()
        self.clients[kind] = IpcClient(ctrl, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            if self.procs[kind].poll() is not None:
                raise LaunchError(f"the {kind} exited at start; see {self.log_dir / (kind + '.log')}")
            try:
                self.clients[kind].request("status", timeout=0.5)
                return
            except IpcTimeout:
                if time.monotonic() > deadline:
                    raise LaunchError(f"the {kind} did not answer within 30 s") from None

    def request(self, kind: str, msg_val: str, params: dict | None = None, timeout: float = 30) -> dict[str, Any]:
        reply = self.clients[kind].request(msg_val, params, timeout=timeout)
        if reply.msg_type == "nack":
            raise LaunchError(f"the {kind} refused {msg_val} {json.dumps(params)[:200]}: {reply.error}")
        return reply.params

    def start(self) -> None:
        """:meth:`setup`, then :meth:`start_source`."""
        self.setup()
        self.start_source()

    def setup(self) -> None:
        """Spawn and configure both daemons; return once frames can flow (the source is not started)."""
        self._spawn("receiver", ["--ready", self.ready, "--release", self.release])
        self._spawn("processor", [a for d in plugin_dirs(self.config) for a in ("--plugin-path", d)])
        self.request("receiver", "configure", {**self.config["receiver"], "shared_buffer_name": self.segment})
        self.request("processor", "configure", {"fr_setup": {"fr_ready_cnxn": self.ready,
                                                             "fr_release_cnxn": self.release}})
        for params in self.config.get("processor", []):
            self.request("processor", "configure", params)
        deadline = time.monotonic() + 10
        while not self.request("processor", "status")["shared_memory"]["configured"]:
            if time.monotonic() > deadline:
                raise LaunchError("the processor did not map the receiver's shared buffer within 10 s")
            time.sleep(0.05)
        for params in self.config.get("start", []):
            self.request("processor", "execute", params)
        deadline = time.monotonic() + 10
        while self.request("receiver", "status")["ready_subscribers"] < 1:  # PUB/SUB joins asynchronously
            if time.monotonic() > deadline:
                raise LaunchError("the processor did not subscribe to the receiver's frame_ready within 10 s")
            time.sleep(0.02)

    def start_source(self) -> None:
        self.request("receiver", "execute", {"source": {"command": "start"}})

    def endpoints_option(self) -> str:
        """The control endpoints as the TUI's and REST adapter's ``endpoints`` option."""
        return f"fr:{self.clients['receiver'].endpoint},fp:{self.clients['processor'].endpoint}"

    def stop_source(self) -> None:
        try:
            self.request("receiver", "execute", {"source": {"command": "stop"}}, timeout=5)
        except (FramechainError, KeyError):
            pass

    def shutdown(self) -> None:
        """Stop the daemons, processor first (it drains); SIGTERM, then SIGKILL, any that will not stop.

        Waits by polling, so a signal handler calling :meth:`escalate` takes effect at once; a receiver that
        had to be killed leaves its shared-memory segment behind, which is unlinked here.
        """
        for kind in ("processor", "receiver"):
            proc = self.procs.get(kind)
            if proc is None:
                continue
            if proc.poll() is None and not self.hurry:
                try:
                    self.clients[kind].channel.send(IpcMessage("cmd", "shutdown"))  # the exit is the answer
                except zmq.ZMQError:
                    pass
            self._wait_exit(proc, kind)
            self.clients[kind].close()
        receiver = self.procs.get("receiver")
        if receiver is not None and receiver.returncode == -signal.SIGKILL:
            self._unlink_segment(receiver.pid)

    def _wait_exit(self, proc: subprocess.Popen, kind: str, grace: float = 75.0) -> None:
        deadline, terminated = time.monotonic() + grace, False
        while proc.poll() is None:
            now = time.monotonic()
            if self.hurry >= 2 or terminated and now > deadline:
                log.warning("killing the %s (pid %d)", kind, proc.pid)
                proc.kill()
                proc.wait()
                return
            if not terminated and (self.hurry or now > deadline):
                proc.terminate()  # the daemons stop cleanly on SIGTERM
                terminated, deadline = True, now + 10.0
            time.sleep(0.05)

    def escalate(self) -> int:
        """Called for each SIGINT/SIGTERM during shutdown: the first terminates the daemons, the next kills them."""
        self.hurry += 1
        for proc in self.procs.values():
            if proc.poll() is None and self.hurry == 1:
                proc.terminate()
            elif proc.poll() is None:
                proc.kill()
        return self.hurry

    def _unlink_segment(self, receiver_pid: int) -> None:
        try:
            buf = SharedBuffer.open(self.segment)
        except ShmError:
            return
        try:
            if buf.manager_id == receiver_pid:  # still the killed receiver's, not someone else's
                buf.unlink()
                log.warning("unlinked shared buffer %s left by the killed receiver", self.segment)
        finally:
            buf.close()

    # -- progress --------------------------------------------------------------
    def snapshot(self, timeout: float = 30) -> tuple[dict[str, Any], dict[str, Any]]:
        return (self.request("receiver", "status", timeout=timeout),
                self.request("processor", "status", timeout=timeout))

    @staticmethod
    def finished(rx: dict[str, Any], fp: dict[str, Any]) -> bool:
        names = fp["plugins"]["names"]
        src = rx["source"]  # a stream source keeps listening: its first series' end ends the run
        over = src["state"] in ("done", "stopped") or src.get("series_ended", 0) >= 1 and not src.get("in_series")
        return (over and rx["buffers"]["mapped"] == 0
                and all(fp[n]["acquisitions"] >= 1 and fp[n]["queue"]["size"] == 0
                        and not fp[n].get("writing", False) for n in names))  # writers close files on their own thread

    @staticmethod
    def processed(fp: dict[str, Any]) -> int:
        return pair_counts({}, fp)["processed"]


def load_config(path: str) -> dict[str, Any]:
    """Read and check a ``framechain run`` config file; :class:`LaunchError` says what is wrong."""
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except OSError as err:
        raise LaunchError(f"cannot read run config {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise LaunchError(f"run config {path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict) or "receiver" not in cfg:
        raise LaunchError(f"{path} must be a JSON object with at least 'receiver' and 'processor'")
    unknown = set(cfg) - _KEYS
    if unknown:
        raise LaunchError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    eps = cfg.get("endpoints", {})
    if not isinstance(eps, dict) or set(eps) - set(ENDPOINT_KEYS) or not all(
            endpoint_problem(v) is None for v in eps.values()):
        raise LaunchError(f"{path}: 'endpoints' must map some of {list(ENDPOINT_KEYS)} to ZeroMQ endpoints "
                          "like tcp://127.0.0.1:5000")
    return cfg


class _Signals:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt); once shutting down, signals hurry the shutdown instead.

    The daemons run in their own sessions (a terminal's Ctrl-C reaches only the launcher, which stops them in
    order), so the launcher must never be interrupted out of its shutdown and leave them running.
    """

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.received = signal.SIGINT
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            signal.signal(sig, self._interrupt)

    def _interrupt(self, signum: int, _frame: Any) -> None:
        self.received = signum
        raise KeyboardInterrupt

    def _hurry(self, signum: int, _frame: Any) -> None:
        level = self.launcher.escalate()
        print(f"framechain run: {'killing' if level > 1 else 'terminating'} the daemons", file=sys.stderr)

    def shutting_down(self) -> None:
        for sig in self._previous:
            signal.signal(sig, self._hurry)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except LaunchError as err:
        print(f"framechain run: {err}", file=sys.stderr)
        return 2
    if cfg.get("output_dir"):
        Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
    if cfg.get("prepare"):
        script = Path(cfg["prepare"])
        if not script.exists():
            script = Path(args.config).parent / cfg["prepare"]
        done = subprocess.run([sys.executable, str(script), args.config])
        if done.returncode != 0:
            print(f"framechain run: prepare script {script} failed (exit {done.returncode})", file=sys.stderr)
            return 1
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="framechain_run_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    total = cfg["receiver"].get("source", {}).get("frames", 0) or None
    launcher = Launcher(cfg, log_dir)
    signals = _Signals(launcher)
    code = 0
    rx: dict[str, Any] = {}
    fp: dict[str, Any] = {}
    t0 = time.monotonic()
    timeout = args.timeout or cfg.get("timeout", 0)
    try:
        launcher.start()
        t0 = time.monotonic()
        print(f"watch it live: framechain tui --endpoints {launcher.endpoints_option()}", file=sys.stderr)
        bar = None
        if not args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="frame", desc="processed", dynamic_ncols=True, file=sys.stderr)
        while True:
            rx, fp = launcher.snapshot()
            if bar is not None:
                bar.n = launcher.processed(fp)
                bar.set_postfix(received=rx["frames"]["received"], dropped=rx["frames"]["dropped"], refresh=False)
                bar.refresh()
            if launcher.finished(rx, fp):
                break
            if timeout and time.monotonic() - t0 > timeout:
                print(f"\nframechain run: gave up after {timeout} s", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
        if bar is not None:
            bar.close()
    except KeyboardInterrupt:
        signals.shutting_down()
        what = "terminated" if signals.received == signal.SIGTERM else "interrupted"
        print(f"\nframechain run: {what}; stopping the source and draining "
              "(again to stop the daemons at once, a third time to kill them)", file=sys.stderr)
        launcher.stop_source()
        code = 128 + signals.received
    except FramechainError as err:
        print(f"framechain run: {err}", file=sys.stderr)
        code = 1
    finally:
        signals.shutting_down()
        elapsed = time.monotonic() - t0
        try:
            if code != 1 and not launcher.hurry:
                rx, fp = launcher.snapshot(timeout=10)
        except FramechainError:
            pass
        launcher.shutdown()
        signals.restore()
    if rx and fp:
        print(summarise(cfg, rx, fp, elapsed, log_dir))
    return code
