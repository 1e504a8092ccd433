"""Helpers for the client tests: a real ``framechain rest`` server and an HTTP client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import Pipeline, stop_process, wait_for
from framechain.ipc import free_tcp_endpoint

REPO = Path(__file__).resolve().parent.parent

__all__ = ["RestServer", "http", "REPO", "speckle_stack"]


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
    """``python -m framechain.client.rest --config CFG --port P`` as a subprocess on a free loopback port."""

    def __init__(self, tmp_path: Path, endpoints: str, live: str, xpcs: str,
                 config: Path | None = None, interval: float = 0.2, env: dict[str, str] | None = None,
                 adapter_options: dict[str, Any] | None = None) -> None:
        self.port = int(free_tcp_endpoint().rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = config or tmp_path / "rest.cfg"
        if config is None:
            cfg.write_text("[server]\nadapters = framechain\n[tornado]\nlogging = warning\n"
                           "[adapter.framechain]\nmodule = framechain.client.rest_adapter.FramechainAdapter\n"
                           f"endpoints = {endpoints}\nupdate_interval = {interval}\npoll_timeout = 0.5\n"
                           f"request_timeout = 5\nlive_endpoint = {live}\nxpcs_endpoint = {xpcs}\n"
                           + "".join(f"{k} = {v}\n" for k, v in (adapter_options or {}).items()))
            extra = []
        else:
            extra = ["--endpoints", endpoints]
        self.log_path = tmp_path / "rest.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "framechain.client.rest", "--config", str(cfg),
                                      "--port", str(self.port), *extra],
                                     cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
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
        code = stop_process(self.proc, 10, terminate=True)
        self._log.close()
        return code


@contextmanager
def speckle_stack(tmp_path: Path, shape: list[int], live_per_second: float, before: list[tuple] = (),
                  after: list[tuple] = ()) -> Iterator[tuple[Pipeline, RestServer]]:
    """Speckle frames -> [before] -> XpcsCorrelatorPlugin -> LiveViewPlugin [after], and the REST server on
    the correlator's and live view's PUB sockets (daemons configured, source not started)."""
    live_ep, xpcs_ep = free_tcp_endpoint(), free_tcp_endpoint()
    pipe = Pipeline(tmp_path)
    server = None
    try:
        pipe.configure_receiver({"type": "simulated", "pattern": "speckle", "shape": shape, "frames": 1000000,
                                 "rate": 100, "correlation_time": 20.0, "contrast": 0.3, "intensity": 5.0})
        pipe.setup_processor([
            *before,
            ("xpcs", "XpcsCorrelatorPlugin", "framechain.plugins.xpcs", "frame_receiver",
             {"publish_endpoint": xpcs_ep, "update_every": 20, "num_bufs": 8}),
            ("live", "LiveViewPlugin", "framechain.plugins.live_view", "xpcs",
             {"live_view_socket_addr": live_ep, "per_second": live_per_second}),
            *after,
        ])
        server = RestServer(tmp_path, f"fr:{pipe.receiver.ctrl}, fp:{pipe.processor.ctrl}", live_ep, xpcs_ep)
        yield pipe, server
    finally:
        if server is not None:
            server.close()
        pipe.close()
