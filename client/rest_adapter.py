"""odin-control adapter that controls framechain receivers and processors over REST.

Load it in an odin-control INI (see ``examples/rest.cfg``)::

    [server]
    adapters = framechain
    [adapter.framechain]
    module = framechain.client.rest_adapter.FramechainAdapter
    endpoints = fr:tcp://127.0.0.1:5000, fp:tcp://127.0.0.1:5004

Routes (under ``/api/framechain/``; every answer is JSON except the PNG):

- ``GET  [path]`` -- the parameter tree ``{adapter, status, config, live, xpcs}``
  or any sub-path of it (``status/fp0/status/hdf/frames_written``).
- ``PUT  config[/<daemon>][/<index>/<key>...]`` -- body JSON; wrapped under the
  path elements and sent as ``configure`` to every processor (or ``?rank=N``,
  or the named daemon); answers each daemon's ack/nack.
- ``PUT  execute[/<daemon>]/<index>`` -- body ``{"command": ..., ...}`` (or a
  JSON string naming the command); sent as ``execute``.
- ``PUT  reset_statistics[/<daemon>]`` -- zero the counters.
- ``GET  live/image.png?colormap=viridis&log=1`` -- the newest live view frame.

A daemon that does not answer shows ``connected: false`` in ``status`` and
requests to it fail within ``poll_timeout`` seconds (HTTP 503); a nack is HTTP
400 carrying the daemon's error text; an unknown path is 404, and so is an
unknown daemon name (a path element like ``fp7`` that is not configured and is
not a loaded plugin index).

Logger: ``framechain.client.rest``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
from typing import Any

try:  # odin-control 2.x
    from odin_control.adapters.async_adapter import AsyncApiAdapter
    from odin_control.adapters.parameter_tree import ParameterTree, ParameterTreeError
    from odin_control.adapters.response import ApiAdapterResponse
except ImportError:  # odin-control 1.x (package "odin"), the server odin-data's own adapters run in
    from odin.adapters.adapter import ApiAdapterResponse
    from odin.adapters.async_adapter import AsyncApiAdapter
    from odin.adapters.parameter_tree import ParameterTree, ParameterTreeError

from framechain.ipc.errors import IpcTimeout

from ._monitor import DaemonLink, Monitor, parse_endpoints
from .metrics import CONTENT_TYPE_LATEST as METRICS_CONTENT_TYPE
from .metrics import render as render_metrics
from ._png import COLORMAPS, render_png
from ._subscriber import JsonSubscriber, LiveViewSubscriber

__all__ = ["FramechainAdapter", "FramechainController", "RestError", "OPTIONS"]

log = logging.getLogger(__name__)

#: adapter option -> (type, default, help)
OPTIONS: dict[str, tuple[type, Any, str]] = {
    "endpoints": (str, "fr:tcp://127.0.0.1:5000, fp:tcp://127.0.0.1:5004",
                  "daemons to control: comma-separated 'fr:ENDPOINT' (receiver) and 'fp:ENDPOINT' (processor) items"),
    "update_interval": (float, 0.5, "seconds between status polls of each daemon"),
    "poll_timeout": (float, 0.5, "seconds to wait for a status reply before showing a daemon as disconnected"),
    "request_timeout": (float, 5.0, "seconds to wait for the reply to a configure/execute from a connected daemon"),
    "live_endpoint": (str, "tcp://127.0.0.1:5020", "live view PUB to subscribe to ('none' to disable)"),
    "xpcs_endpoint": (str, "tcp://127.0.0.1:5021", "XPCS correlator g2 PUB to subscribe to ('none' to disable)"),
    "curve_dir": (str, "", "CURVE key directory for daemons started with --curve-dir (\"\": plain)"),
    "token_file": (str, "", "file holding the bearer token every PUT must carry (Authorization: Bearer <token>); "
                            "also FRAMECHAIN_REST_TOKEN. Required when the server listens beyond loopback"),
}
TOKEN_ENV = "FRAMECHAIN_REST_TOKEN"


def rest_token(token_file: str) -> str:
    """The bearer token: the first line of ``token_file``, else $FRAMECHAIN_REST_TOKEN, else "" (none)."""
    if token_file:
        try:
            with open(token_file) as fh:
                token = fh.readline().strip()
        except OSError as err:
            raise ValueError(f"framechain adapter token_file {token_file!r}: {err.strerror or err}") from err
        if not token:
            raise ValueError(f"framechain adapter token_file {token_file!r} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip()


#: The names the adapter gives daemons (``fr0``, ``fp1``, ...).
_DAEMON_NAME = re.compile(r"f[rp]\d+")


class RestError(Exception):
    """A request the adapter refuses, with the HTTP status code to answer."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def _parse_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown framechain adapter option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    out = {}
    for key, (kind, default, _) in OPTIONS.items():
        value = options.get(key, default)
        try:
            out[key] = kind(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"framechain adapter option {key}={value!r} is not a {kind.__name__}") from err
        if kind is float and out[key] <= 0:
            raise ValueError(f"framechain adapter option {key}={value!r} must be > 0")
    return out


def _reply_dict(reply: Any) -> dict[str, Any]:
    d = {"msg_type": reply.msg_type, "params": reply.params}
    if reply.msg_type == "nack":
        d["error"] = reply.error
    return d


class FramechainController:
    """The adapter's logic, free of tornado: a :class:`Monitor` plus the live/XPCS subscribers.

    Parameters
    ----------
    options
        Adapter options (strings from the INI are converted; see :data:`OPTIONS`).
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = _parse_options(options)
        specs = parse_endpoints(self.options["endpoints"])
        self.monitor = Monitor(specs, curve_dir=self.options["curve_dir"] or None,
                               interval=self.options["update_interval"],
                               poll_timeout=self.options["poll_timeout"],
                               request_timeout=self.options["request_timeout"]).start()
        self.live = self._subscriber(LiveViewSubscriber, "live_endpoint")
        self.xpcs = self._subscriber(JsonSubscriber, "xpcs_endpoint")
        self.started = time.time()
        self._png_cache: tuple[tuple, bytes, Any] | None = None

    def _subscriber(self, cls: type, key: str) -> Any:
        endpoint = self.options[key]
        if endpoint.lower() in ("", "none", "off"):
            return None
        return cls(endpoint).start()

    # -- GET ----------------------------------------------------------------
    def tree(self) -> dict[str, Any]:
        """The whole parameter tree as plain data."""
        status, config = {}, {}
        for name, link in self.monitor.links.items():
            snap = link.snapshot()
            status[name] = {"kind": link.kind, "endpoint": link.endpoint, "connected": snap.connected,
                            "error": snap.error, "updated": snap.updated, "rates": snap.rates,
                            "status": snap.status}
            config[name] = snap.config
        return {
            "adapter": {"version": _version(), "uptime": round(time.time() - self.started, 3),
                        "endpoints": {n: {"kind": lk.kind, "endpoint": lk.endpoint}
                                      for n, lk in self.monitor.links.items()},
                        "update_interval": self.options["update_interval"],
                        "colormaps": sorted(COLORMAPS)},
            "status": status,
            "config": config,
            "live": self._live_info(),
            "xpcs": self._xpcs_info(),
            "rollup": self.monitor.rollup(),  # every receiver/processor pair (rank), totals, the slowest
        }

    def _live_info(self) -> dict[str, Any]:
        if self.live is None:
            return {"enabled": False}
        info = {"enabled": True, **self.live.info(), "frame": None}
        latest = self.live.latest()
        if latest is not None:
            header, image = latest
            info["frame"] = {"frame_num": header.get("frame_num"), "acquisition_id": header.get("acquisition_id", ""),
                             "dataset": header.get("dataset", ""), "dtype": str(image.dtype),
                             "shape": list(image.shape)}
        return info

    def _xpcs_info(self) -> dict[str, Any]:
        if self.xpcs is None:
            return {"enabled": False}
        return {"enabled": True, **self.xpcs.info(), "latest": self.xpcs.latest()}

    def get(self, path: str) -> dict[str, Any]:
        """Look ``path`` up in the parameter tree; RestError 404 when it is not there.

        A leaf comes back as ``{"value": leaf}``, as odin-control does.
        """
        tree = ParameterTree(self.tree())
        try:
            return tree.get(path.strip("/"))
        except ParameterTreeError as err:
            raise RestError(f"{err}; top-level paths are adapter, status, config, live, xpcs, metrics "
                            f"and live/image.png", 404) from err

    def metrics(self) -> bytes:
        """Prometheus exposition of every polled daemon (no extra request to them)."""
        return render_metrics((name, link.kind, (snap := link.snapshot()).connected, snap.status)
                              for name, link in self.monitor.links.items())

    def image(self, query: dict[str, str]) -> bytes:
        """The newest live frame as PNG (query ``colormap``, ``log``, ``max_size``); the last one is cached."""
        if self.live is None:
            raise RestError("live view is disabled (adapter option live_endpoint = none)", 404)
        latest = self.live.latest()
        if latest is None:
            raise RestError(f"no live view frame received yet from {self.live.endpoint}; is a live view "
                            f"plugin loaded and frames flowing?", 404)
        colormap = query.get("colormap", "viridis")
        log_scale = query.get("log", "0").lower() in ("1", "true", "yes", "on")
        try:
            max_size = int(query.get("max_size", "1024"))
        except ValueError as err:
            raise RestError(f"max_size={query['max_size']!r} is not an integer", 400) from err
        key = (id(latest), colormap, log_scale, max_size)
        cached = self._png_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            png = render_png(latest[1], colormap, log_scale, max_size)
        except ValueError as err:
            raise RestError(str(err), 400) from err
        self._png_cache = (key, png, latest)       # keep `latest` alive so its id stays unique
        return png

    # -- PUT ----------------------------------------------------------------
    def _plugin_indices(self) -> set[str]:
        """Plugin indices loaded on any processor, as of the last poll."""
        out: set[str] = set()
        for link in self.monitor.of_kind("processor"):
            plugins = link.snapshot().status.get("plugins")
            if isinstance(plugins, dict):
                out.update(n for n in plugins.get("names") or [] if isinstance(n, str))
        return out

    def _targets(self, parts: list[str], query: dict[str, str]) -> tuple[list[DaemonLink], list[str]]:
        links = self.monitor.links
        if parts and parts[0] in links:
            if "rank" in query:
                raise RestError("give either a daemon name in the path or ?rank=, not both")
            return [links[parts[0]]], parts[1:]
        if parts and _DAEMON_NAME.fullmatch(parts[0]) and parts[0] not in self._plugin_indices():
            # shaped like a daemon name and no plugin of that index is loaded: a daemon we do not know
            raise RestError(f"unknown daemon {parts[0]!r}; known: {sorted(links)}", 404)
        processors = self.monitor.of_kind("processor")
        if "rank" in query:
            try:
                rank = int(query["rank"])
            except ValueError as err:
                raise RestError(f"rank={query['rank']!r} is not an integer") from err
            if not 0 <= rank < len(processors):
                raise RestError(f"rank={rank} is out of range: {len(processors)} processor(s) configured "
                                f"({', '.join(p.name for p in processors)})")
            return [processors[rank]], parts
        if not processors:
            raise RestError("no processor endpoints are configured; name a daemon in the path "
                            f"(one of {sorted(links)})")
        return processors, parts

    def _send(self, targets: list[DaemonLink], msg_val: str, params: dict[str, Any]) -> tuple[int, dict]:
        replies: dict[str, Any] = {}
        errors, down = [], []
        for link in targets:
            try:
                reply = link.request(msg_val, params)
            except IpcTimeout as err:
                replies[link.name] = {"msg_type": "timeout", "error": str(err)}
                down.append(str(err))
                continue
            replies[link.name] = _reply_dict(reply)
            if reply.msg_type != "ack":
                errors.append(f"{link.name}: {reply.error}")
        body: dict[str, Any] = {"msg_val": msg_val, "params": params, "replies": replies}
        if errors or down:
            body["error"] = "; ".join(errors + down)
            return (400 if errors else 503), body
        return 200, body

    def put(self, path: str, data: Any, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Handle a PUT; return (HTTP status, JSON body). RestError for refusals."""
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise RestError("PUT needs a path: config/..., execute/<index> or reset_statistics", 404)
        verb, rest = parts[0], parts[1:]
        if verb == "config":
            targets, keys = self._targets(rest, query)
            params = data
            for key in reversed(keys):
                params = {key: params}
            if not isinstance(params, dict) or not params:
                raise RestError(f"PUT config needs a non-empty JSON object of configure params as the body "
                                f"(or a path naming what to set); got {json.dumps(data)[:80]}")
            return self._send(targets, "configure", params)
        if verb == "execute":
            targets, keys = self._targets(rest, query)
            if len(keys) != 1:
                raise RestError("PUT execute/[<daemon>/]<index> names exactly one plugin index "
                                "(or 'source' on a receiver)", 404 if len(keys) > 1 else 400)
            if isinstance(data, str):
                data = {"command": data}
            if not isinstance(data, dict) or not isinstance(data.get("command"), str) or not data["command"]:
                raise RestError(f"PUT execute needs a body like {{\"command\": \"start_writing\"}}; "
                                f"got {json.dumps(data)[:80]}")
            return self._send(targets, "execute", {keys[0]: data})
        if verb == "reset_statistics":
            if rest and rest[0] not in self.monitor.links:
                raise RestError(f"unknown daemon {rest[0]!r}; known: {sorted(self.monitor.links)}", 404)
            if len(rest) > 1:
                raise RestError("PUT reset_statistics[/<daemon>] takes at most a daemon name", 404)
            targets = [self.monitor.links[rest[0]]] if rest else list(self.monitor.links.values())
            return self._send(targets, "reset_statistics", {})
        raise RestError(f"no PUT route {path!r}; PUT config/..., execute/<index> or reset_statistics", 404)

    def cleanup(self) -> None:
        """Stop polling and subscribing (safe to call twice)."""
        self.monitor.close()
        for sub in (self.live, self.xpcs):
            if sub is not None:
                sub.close()


def _version() -> str:
    try:
        from framechain import __version__
        return __version__
    except ImportError:
        return "unknown"


def _query(request: Any) -> dict[str, str]:
    args = getattr(request, "query_arguments", {}) or {}
    return {k: (v[-1].decode() if isinstance(v[-1], bytes) else str(v[-1])) for k, v in args.items() if v}


def _json(data: dict[str, Any], status_code: int = 200) -> ApiAdapterResponse:
    return ApiAdapterResponse(data, content_type="application/json", status_code=status_code)


class FramechainAdapter(AsyncApiAdapter):
    """odin-control adapter for framechain daemons (options: see :data:`OPTIONS`).

    GETs are answered from the polled snapshot without waiting on a daemon;
    PUTs run on a worker thread so a slow or dead daemon never stalls the
    server's event loop.
    """

    version = _version()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.controller = FramechainController(self.options)
        self._token = rest_token(self.controller.options["token_file"]).encode()

    async def initialize(self, adapters: dict[str, Any]) -> None:
        log.debug("framechain adapter initialised beside %d other adapter(s)", len(adapters) - 1)

    async def get(self, path: str, request: Any) -> ApiAdapterResponse:
        try:
            if path.strip("/") == "metrics":  # Prometheus text, from the polled snapshots
                return ApiAdapterResponse(self.controller.metrics(), content_type=METRICS_CONTENT_TYPE,
                                          status_code=200)
            if path.strip("/") == "live/image.png":
                loop = asyncio.get_running_loop()     # rendering a big frame takes a while: not on the IOLoop
                png = await loop.run_in_executor(None, self.controller.image, _query(request))
                return ApiAdapterResponse(png, content_type="image/png", status_code=200)
            return _json(self.controller.get(path))
        except RestError as err:
            return _json({"error": str(err)}, err.status_code)

    def _authorized(self, request: Any) -> bool:
        if not self._token:
            return True
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)

    async def put(self, path: str, request: Any) -> ApiAdapterResponse:
        if not self._authorized(request):
            return _json({"error": "this server needs 'Authorization: Bearer <token>' on every PUT (the token "
                                   "in the adapter's token_file or $FRAMECHAIN_REST_TOKEN)"}, 401)
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type not in ("application/json", "application/vnd.odin-native", ""):
            return _json({"error": f"request content type {content_type!r} is not supported; send application/json"},
                         415)
        body = request.body
        if isinstance(body, (bytes, str)):
            try:
                data = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError) as err:
                return _json({"error": f"request body is not valid JSON: {err}"}, 400)
        else:
            data = body
        try:
            loop = asyncio.get_running_loop()
            code, result = await loop.run_in_executor(None, self.controller.put, path, data, _query(request))
        except RestError as err:
            return _json({"error": str(err)}, err.status_code)
        return _json(result, code)

    async def post(self, path: str, request: Any) -> ApiAdapterResponse:
        return _json({"error": "the framechain adapter takes GET and PUT, not POST"}, 405)

    async def delete(self, path: str, request: Any) -> ApiAdapterResponse:
        return _json({"error": "the framechain adapter takes GET and PUT, not DELETE"}, 405)

    async def cleanup(self) -> None:
        self.controller.cleanup()
