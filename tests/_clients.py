"""Helpers for the client tests: a real ``framechain rest`` server, an HTTP client, test PUB sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from harness import wait_for
from ipc import free_tcp_endpoint

REPO = Path(__file__).resolve().parent.parent

__all__ = ["RestServer", "http", "Publisher", "REPO"]


def http(method: str, url: str, body: Any = None, raw: bytes | None = None,
         content_type: str = "application/json", timeout: float = 10,
         headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """One HTTP request; returns (status, content type, body bytes) for any status."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


class RestServer:
    """``python -m client.rest --config CFG --port P`` as a subprocess on a free loopback port."""

    def __init__(self, tmp_path: Path, endpoints: str, live: str, xpcs: str,
                 config: Path | None = None, interval: float = 0.2) -> None:
        self.port = int(free_tcp_endpoint().rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = config or tmp_path / "rest.cfg"
        if config is None:
            cfg.write_text("[server]\nadapters = framechain\n[tornado]\nlogging = warning\n"
                           "[adapter.framechain]\nmodule = client.rest_adapter.FramechainAdapter\n"
                           f"endpoints = {endpoints}\nupdate_interval = {interval}\npoll_timeout = 0.5\n"
                           f"request_timeout = 5\nlive_endpoint = {live}\nxpcs_endpoint = {xpcs}\n")
            extra = []
        else:
            extra = ["--endpoints", endpoints]
        self.log_path = tmp_path / "rest.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "client.rest", "--config", str(cfg),
                                      "--port", str(self.port), *extra],
                                     cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=20, what=f"the REST server on port {self.port}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"rest server exited {self.proc.returncode}:\n{self.log()}")
        try:
            return self.get("adapter")[0] == 200
        except OSError:
            return False

    def api(self, path: str) -> str:
        return f"{self.base}/api/framechain/{path}"

    def get(self, path: str) -> tuple[int, Any]:
        code, ctype, body = http("GET", self.api(path), timeout=5)
        return code, (json.loads(body) if "json" in ctype else body)

    def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        code, ctype, data = http("PUT", self.api(path), body, **kw)
        return code, json.loads(data)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class Publisher:
    """A real ZeroMQ PUB that repeats a live view frame or a g2 message until closed.

    It stands in for the live view / XPCS plugins with their documented wire
    format, so the adapter's subscriber is tested whether or not those plugins
    are installed.
    """

    def __init__(self, endpoint: str, kind: str, shape: tuple[int, int] = (32, 48)) -> None:
        self.endpoint, self.kind, self.shape = endpoint, kind, shape
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _message(self) -> list[bytes]:
        n = self.sent
        if self.kind == "live":
            h, w = self.shape
            img = ((np.arange(h * w).reshape(h, w) + n * 7) % 4096).astype(np.uint16)
            header = {"frame_num": n, "acquisition_id": "acq", "dtype": "uint16", "dsize": img.nbytes,
                      "dataset": "data", "compression": "none", "shape": [str(h), str(w)], "tags": {}}
            return [json.dumps(header).encode(), img.tobytes()]
        # the XPCS plugin's message (plugins/_xpcs/live.py): g2 per bin at each delay
        delays = [1, 2, 3, 4, 6, 8, 12, 16]
        g2 = [[1 + 0.3 * np.exp(-d / (5.0 + q)) for d in delays] for q in range(2)]
        return [json.dumps({"msg_type": "xpcs_g2", "plugin": "xpcs", "acquisition_id": "", "final": False,
                            "frames": 100 + n, "frames_used": 100 + n, "frame_time": 1.0, "bins": [1, 2],
                            "delays": delays, "delays_s": delays, "g2": g2,
                            "g2_err": [[float("nan")] * len(delays)] * 2}).encode()]

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        try:
            while not self._stop.is_set():
                sock.send_multipart(self._message())
                self.sent += 1
                time.sleep(0.05)
        finally:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
