"""Start a receiver + processor pair for benchmarks (free ports, unique shm name, logs in a temp dir)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ipc import IpcClient, IpcTimeout, free_tcp_endpoint

__all__ = ["BenchPipeline"]


class BenchPipeline:
    """Receiver + processor subprocesses wired together."""

    def __init__(self) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="framechain_bench_"))
        self.shm_name = f"fcbench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.ready, self.release = free_tcp_endpoint(), free_tcp_endpoint()
        self.procs: list[subprocess.Popen] = []
        self.rx = self._spawn("receiver", ["--ready", self.ready, "--release", self.release])
        self.fp = self._spawn("processor", [])

    def _spawn(self, kind: str, args: list[str]) -> IpcClient:
        ctrl = free_tcp_endpoint()
        with open(self.log_dir / f"{kind}.log", "w") as log:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "client.cli", kind, "--ctrl", ctrl,
                                                "--log-level", "WARNING", *args], stdout=log, stderr=log))
        client = IpcClient(ctrl, timeout=30)
        for _ in range(100):
            try:
                client.request("status", timeout=0.3)
                return client
            except IpcTimeout:
                continue
        raise RuntimeError(f"{kind} did not start; see {self.log_dir}")

    def ok(self, client: IpcClient, msg_val: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = client.request(msg_val, params)
        if reply.msg_type != "ack":
            raise RuntimeError(f"{msg_val} {params}: {reply.error}")
        return reply.params

    def setup(self, source: dict[str, Any], processor: list[dict[str, Any]], copy: bool = True,
              num_buffers: int | None = None, buffer_size: int | None = None) -> None:
        rx: dict[str, Any] = {"shared_buffer_name": self.shm_name, "source": source}
        if num_buffers and buffer_size:
            rx["max_buffer_mem"] = num_buffers * buffer_size
        self.ok(self.rx, "configure", rx)
        self.ok(self.fp, "configure", {"fr_setup": {"fr_ready_cnxn": self.ready, "fr_release_cnxn": self.release},
                                       "shared_memory": {"copy": copy}})
        for params in processor:
            self.ok(self.fp, "configure", params)
        while not self.ok(self.fp, "status")["shared_memory"]["configured"]:
            time.sleep(0.02)
        while self.ok(self.rx, "status")["ready_subscribers"] < 1:
            time.sleep(0.02)

    def run(self, index: str, frames: int, poll: float = 0.02) -> float:
        """Start the source; return seconds until plugin ``index`` has processed ``frames``."""
        t0 = time.perf_counter()
        self.ok(self.rx, "execute", {"source": {"command": "start"}})
        while self.ok(self.fp, "status")[index]["frames_processed"] < frames:
            time.sleep(poll)
        return time.perf_counter() - t0

    def close(self) -> None:
        for client in (self.fp, self.rx):
            try:
                client.request("shutdown", timeout=30)
            except IpcTimeout:
                pass
            client.close()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def __enter__(self) -> BenchPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
