"""``framechain run CONFIG``: the all-in-one launcher.

Starts a receiver and a processor as subprocesses on free loopback ports,
applies the configuration, runs the acquisition to its end with a progress
bar, prints a summary and stops everything (also on Ctrl-C).

Config file (JSON)::

    {"receiver": {<receiver configure params, incl. "source">},
     "processor": [<configure params>, ...],        # applied in order; fr_setup is added
     "start": [<processor execute params>, ...],    # e.g. {"hdf": {"command": "start_writing"}}
     "endpoints": {"receiver": "tcp://127.0.0.1:5000", "ready": ..., "release": ..., "processor": ...},
                                                    # optional fixed endpoints (default: free loopback ports)
     "output_dir": "output",                        # created before the run
     "prepare": "examples/prepare_demo.py"}         # optional script run first, with the config path
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ipc.channel import free_tcp_endpoint
from ipc.client import IpcClient
from ipc.errors import FramechainError, IpcTimeout

from .summary import summarise

__all__ = ["Launcher", "main", "control_endpoints"]

log = logging.getLogger("client.launcher")
_KEYS = {"description", "receiver", "processor", "start", "output_dir", "timeout", "prepare", "endpoints"}
ENDPOINT_KEYS = ("receiver", "ready", "release", "processor")


def control_endpoints(cfg: dict[str, Any]) -> dict[str, str]:
    """The fixed control endpoints a run config names (``receiver``, ``processor``), for clients to attach."""
    eps = cfg.get("endpoints") or {}
    return {k: eps[k] for k in ("receiver", "processor") if k in eps}


class LaunchError(FramechainError):
    """The launcher could not bring the pipeline up; the message says why."""


class Launcher:
    """Owns the two daemon subprocesses of one run."""

    def __init__(self, config: dict[str, Any], log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.clients: dict[str, IpcClient] = {}
        self.shm_name = f"framechain_run_{os.getpid()}"
        eps = config.get("endpoints") or {}
        self.endpoints = {k: eps.get(k) or free_tcp_endpoint() for k in ENDPOINT_KEYS}
        self.ready, self.release = self.endpoints["ready"], self.endpoints["release"]

    # -- daemons ---------------------------------------------------------------
    def _spawn(self, kind: str, args: list[str]) -> None:
        ctrl = self.endpoints[kind]
        logf = open(self.log_dir / f"{kind}.log", "w")
        self.procs[kind] = subprocess.Popen([sys.executable, "-m", "client.cli", kind, "--ctrl", ctrl, *args],
                                            stdout=logf, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # Ctrl-C reaches us; we stop them in order
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
        self._spawn("receiver", ["--ready", self.ready, "--release", self.release])
        self._spawn("processor", [])
        rx = dict(self.config["receiver"])
        rx.setdefault("shared_buffer_name", self.shm_name)
        self.request("receiver", "configure", rx)
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
        for kind in ("processor", "receiver"):
            proc = self.procs.get(kind)
            if proc is None:
                continue
            if proc.poll() is None:
                try:
                    self.clients[kind].request("shutdown", timeout=60)
                except IpcTimeout:
                    pass
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    proc.wait(10)
            self.clients[kind].close()

    # -- progress --------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.request("receiver", "status"), self.request("processor", "status")

    @staticmethod
    def finished(rx: dict[str, Any], fp: dict[str, Any]) -> bool:
        names = fp["plugins"]["names"]
        return (rx["source"]["state"] in ("done", "stopped") and rx["buffers"]["mapped"] == 0
                and all(fp[n]["acquisitions"] >= 1 and fp[n]["queue"]["size"] == 0
                        and not fp[n].get("writing", False) for n in names))  # writers close files on their own thread

    @staticmethod
    def processed(fp: dict[str, Any]) -> int:
        names = fp["plugins"]["names"]
        return min((fp[n]["frames_handled"] for n in names), default=0)


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except OSError as err:
        raise LaunchError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise LaunchError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict) or "receiver" not in cfg:
        raise LaunchError(f"{path} must be a JSON object with at least 'receiver' and 'processor'")
    unknown = set(cfg) - _KEYS
    if unknown:
        raise LaunchError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    eps = cfg.get("endpoints", {})
    if not isinstance(eps, dict) or set(eps) - set(ENDPOINT_KEYS) or not all(
            isinstance(v, str) and "://" in v for v in eps.values()):
        raise LaunchError(f"{path}: 'endpoints' must map some of {list(ENDPOINT_KEYS)} to ZeroMQ endpoints "
                          "like tcp://127.0.0.1:5000")
    return cfg


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = _load(args.config)
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
        print("\nframechain run: interrupted; stopping the source and draining", file=sys.stderr)
        launcher.stop_source()
        code = 130
    except FramechainError as err:
        print(f"framechain run: {err}", file=sys.stderr)
        code = 1
    finally:
        elapsed = time.monotonic() - t0
        try:
            if code != 1:
                rx, fp = launcher.snapshot()
        except FramechainError:
            pass
        launcher.shutdown()
    if rx and fp:
        print(summarise(cfg, rx, fp, elapsed, log_dir))
    return code
