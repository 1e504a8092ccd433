"""ProcessorController: turns control IpcMessages into actions on the chain and the data path.

Plain logic, no sockets: ``handle(msg)`` returns the reply. The daemon owns
the sockets and calls it from its single control thread.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import h5py
import numpy as np
import zmq

from framechain import __version__ as VERSION

from framechain.ipc.channel import endpoint_problem, same_endpoint
from framechain.ipc.control import ControlHandler
from framechain.ipc.errors import ConfigError, FramechainError, PluginError
from framechain.ipc.message import IpcMessage
from framechain.ipc.odin import ChangeStamp, commands_reply, value_metadata, version_block
from framechain.ipc.options import Option, validate_options
from framechain.ipc.shm import shm_name_problem

from .chain import PluginChain
from .decoders import make_decoder
from .frame import EndOfAcquisition
from .meta import MetaPublisher
from .plugin import FrameProcessorPlugin
from .pool import DataBlockPool
from .shm_controller import ReleaseQueue, SharedMemoryController

__all__ = ["ProcessorController", "VERSION"]

log = logging.getLogger(__name__)


def _data_endpoint(v: str) -> str | None:
    return endpoint_problem(v, "tcp://127.0.0.1:5001")


#: odin-data's fr_setup keys
FR_SETUP_OPTIONS = {
    "fr_ready_cnxn": Option(str, "", "the receiver's frame_ready endpoint, e.g. tcp://127.0.0.1:5001",
                            check=_data_endpoint),
    "fr_release_cnxn": Option(str, "", "the receiver's frame_release endpoint, e.g. tcp://127.0.0.1:5002",
                              check=_data_endpoint),
    "fr_shared_mem": Option(str, "", "the shared buffer name (else learnt from buffer_config)",
                            check=lambda v: v and shm_name_problem(v)),
    "decoder": Option(dict, {}, "an odin-data frameReceiver's buffer layout {type: dummy_udp, shape, dtype[, "
                                "dataset]} (default: framechain's own frame header)"),
}
SHARED_MEMORY_OPTIONS = {
    "copy": Option(bool, True, "copy each frame into a pooled block and release the buffer at once "
                               "(false: zero-copy views on the receiver's buffers)"),
    "max_pool_memory": Option(int, 2 << 30, "memory bound of the processor's DataBlockPool, bytes", low=1),
    "detector_mask": Option(bool, False, "attach the pixel mask a DECTRIS stream's start carries as frame.mask "
                                         "(a pixel with any bit set is not used)"),
}


#: odin-data FrameProcessorController keys beside fr_setup / plugin / the plugins' own
ODIN_OPTIONS = {
    "meta_endpoint": Option(str, "", "PUB endpoint for odin's meta_writer items, e.g. tcp://*:5008 (\"\": off)"),
    "ctrl_endpoint": Option(str, "", "the control endpoint (chosen at start with --ctrl; only that value is taken)"),
    "frames": Option(int, 0, "shut the processor down after this many frames (0: run until told)", low=0),
    "clear_errors": Option((bool, int, str, dict, type(None)), None, "forget the errors status reports"),
    "inject_eoa": Option((bool, int, str, dict, type(None)), None, "send an end of acquisition down the chain"),
    "debug_level": Option(int, 0, "0: INFO logging, >0: DEBUG", low=0),
    "store": Option(dict, {}, "keep a configuration to apply later: {index: <name>, value: <configure params or a "
                              "list of them>}"),
    "execute": Option(dict, {}, "apply a stored configuration: {index: <name>}"),
}
MAX_STORED_DEPTH = 4  # a stored configuration may execute another, this deep


def _as_list(value: Any, what: str) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            raise ConfigError(f"plugin {what} expects an object (or a list of objects), not {item!r}", what)
    return items


class ProcessorController(ControlHandler):
    """The processor's control logic."""

    role = "processor"

    def __init__(self, context: zmq.Context | None = None, max_pool_memory: int = 2 << 30) -> None:
        self.context = context or zmq.Context.instance()
        self.chain = PluginChain()
        self.chain.plugin_path = ()  # built-ins and entry points only, until the daemon gives --plugin-path
        self.pool = DataBlockPool(max_pool_memory)
        self.shm: SharedMemoryController | None = None
        self.releases = ReleaseQueue()  # lives as long as the processor: plugin threads write to it
        self.copy = True
        self.detector_mask = False
        self.fr_setup: dict[str, str] = {}
        self.started = time.time()
        self.shutdown_requested = False
        self.on_shm_change: Callable[[], None] = lambda: None
        self.meta = MetaPublisher(self.context)
        self.data_roots: tuple[str, ...] = ()  # where plugins may write (the daemon's --data-root; empty: anywhere)
        self.ctrl_endpoint = ""  # set by the daemon: where the control socket listens
        self.shutdown_after = 0  # odin's "frames": stop after this many frames (0: never)
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.config_ts = ChangeStamp()  # moves on each committed configure
        self.status_ts = ChangeStamp()  # moves when status gains or loses a part (plugins, data path)
        self._depth = 0

    # -- simple requests ---------------------------------------------------------
    def _on_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        st: dict[str, Any] = {"process": {"pid": os.getpid(), "uptime": round(time.time() - self.started, 3),
                                          "switch_interval_ms": round(sys.getswitchinterval() * 1000, 4),
                                          **self.control_status()}}
        if self.shm is not None:
            st.update(self.shm.status())
        else:
            st["shared_memory"] = {"configured": False}
            st["frames"] = {"received": 0, "released": 0, "bad": 0, "unrouted": 0}
        st["pool"] = self.pool.stats()
        st["meta"] = self.meta.status()
        st.update(self.chain.status())
        errors, warnings = [], []
        for index in self.chain.workers:
            ps = st[index]
            for text in (ps.get("last_error"), ps.get("error")):
                if isinstance(text, str) and text:
                    errors.append(f"{index}: {text}")
            for key in ("warning", "stalled"):
                if isinstance(ps.get(key), str) and ps[key]:
                    warnings.append(f"{index}: {ps[key]}")
            if "stuck" in ps:
                s = ps["stuck"]
                warnings.append(f"{index}: stuck on frame {s['frame']} for {s['seconds']} s (since {s['since']})")
        st["error"], st["warning"] = errors, warnings
        st["status_ts"] = self.status_ts.value
        if params.get("metadata") is True:
            st["metadata"] = {i: value_metadata(st[i]) for i in self.chain.workers}
        return st

    def _on_request_version(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """odin's layout, ``version/<component>/{major, minor, patch, short, full}`` (plugins by index)."""
        version = {"framechain": version_block(VERSION)}
        for i, w in self.chain.workers.items():
            version[i] = {**version_block(w.plugin.version), "name": type(w.plugin).__name__}
        return {"version": version,
                "libraries": {"python": platform.python_version(), "numpy": np.__version__, "h5py": h5py.__version__,
                              "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
                              "hdf5": h5py.version.hdf5_version}}

    def _on_request_configuration(self, params: Mapping[str, Any]) -> dict[str, Any]:
        cfg: dict[str, Any] = {"ctrl_endpoint": self.ctrl_endpoint, "meta_endpoint": self.meta.endpoint,
                               "frames": self.shutdown_after,
                               "fr_setup": dict(self.fr_setup),
                               "shared_memory": {"copy": self.copy, "max_pool_memory": self.pool.max_memory,
                                                 "detector_mask": self.detector_mask},
                               "plugin": self.chain.configuration(),
                               "plugins": {"names": list(self.chain.workers)},
                               "stored": sorted(self.stored)}
        for index, worker in self.chain.workers.items():
            cfg[index] = worker.plugin.request_configuration()
        cfg["config_ts"] = self.config_ts.value
        if params.get("metadata") is True:
            cfg["metadata"] = {i: value_metadata(cfg[i], w.plugin.options)
                               for i, w in self.chain.workers.items()}
        return cfg

    def _on_request_commands(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """odin's shape: ``{<index>: {"supported": [...]}}`` for each plugin that has commands."""
        return commands_reply({i: list(w.plugin.commands) for i, w in self.chain.workers.items()})

    def _on_reset_statistics(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.chain.reset_statistics()
        if self.shm is not None:
            self.shm.reset_statistics()
        return {}

    def _on_shutdown(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.shutdown_requested = True
        return {}

    def _on_execute(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not params:
            raise ConfigError("execute needs {<index>: {\"command\": ...}}")
        plan = []
        for index, spec in params.items():  # check every command before running any
            worker = self.chain.get(index)
            if not isinstance(spec, dict) or not isinstance(spec.get("command"), str):
                raise ConfigError(f"execute for {index!r} needs {{\"command\": <name>}}; got {spec!r}", index)
            plugin = worker.plugin
            args = plugin.check_command(spec["command"], {k: v for k, v in spec.items() if k != "command"})
            plan.append((plugin, spec["command"], args))
        for plugin, command, args in plan:
            plugin.execute(command, args)
        return {}

    # -- configure --------------------------------------------------------------
    def _on_configure(self, params: Mapping[str, Any]) -> dict[str, Any]:
        known = {"fr_setup", "shared_memory", "plugin", *ODIN_OPTIONS}
        loading = self._loading_indices(params.get("plugin"))
        for key in params:
            if key not in known and key not in self.chain.workers and key not in loading:
                raise ConfigError(f"unknown configure key or plugin index {key!r}; loaded plugins: "
                                  f"{sorted(self.chain.workers)}; other keys: {sorted(known)}", key)
        odin = validate_options("the frame processor", ODIN_OPTIONS,
                                {k: v for k, v in params.items() if k in ODIN_OPTIONS})
        self._check_odin(odin)
        setup = self._check_fr_setup(params["fr_setup"]) if "fr_setup" in params else None
        shm_cfg = self._check_shared_memory(params["shared_memory"]) if "shared_memory" in params else None
        # prepare: every part checks its values and makes what it needs; nothing in use changes
        prepared: list[tuple[FrameProcessorPlugin, Any]] = []
        new_shm: SharedMemoryController | None = None
        meta_socket: Any = None
        plugins_before = list(self.chain.workers)
        try:
            if "meta_endpoint" in odin and odin["meta_endpoint"] != self.meta.endpoint:
                meta_socket = self.meta.prepare(odin["meta_endpoint"])
            for index, value in params.items():
                if index in self.chain.workers and index not in loading:
                    plugin = self.chain.get(index).plugin
                    prepared.append((plugin, plugin.prepare(value)))
            if setup is not None:
                new_shm = self._connect(setup)  # a bad endpoint fails here, before anything changed
            if "plugin" in params:  # loads, connects, disconnects: rolled back as a whole on error
                self._configure_plugins(params["plugin"], {k: v for k, v in params.items() if k in loading})
        except BaseException:
            for plugin, change in reversed(prepared):
                self._abort(plugin, change)
            if new_shm is not None:
                new_shm.close()
            if meta_socket is not None:
                meta_socket.close()
            raise
        # commit: every part prepared; nothing below fails for a bad request
        if "meta_endpoint" in odin and odin["meta_endpoint"] != self.meta.endpoint:
            self.meta.commit(meta_socket, odin["meta_endpoint"])
        if shm_cfg is not None:
            self._apply_shared_memory(shm_cfg)
        if new_shm is not None:
            self._swap_shm(new_shm, setup)
        failed = [f"{plugin.owner}: {err}" for plugin, change in prepared
                  if (err := self._commit(plugin, change)) is not None]
        self._commit_odin(odin)
        self.config_ts.touch()
        if list(self.chain.workers) != plugins_before or new_shm is not None:
            self.status_ts.touch()
        if failed:
            raise FramechainError("configure committed, but a plugin's commit raised (a bug in the plugin; "
                                  "see the processor log): " + "; ".join(failed))
        if "execute" in odin:
            self._execute_stored(odin["execute"]["index"])
        return {}

    def _check_odin(self, odin: dict[str, Any]) -> None:
        """Check odin-data's controller keys before anything changes."""
        ctrl = odin.get("ctrl_endpoint")
        if ctrl is not None and not same_endpoint(ctrl, self.ctrl_endpoint):
            raise ConfigError(f"ctrl_endpoint {ctrl!r}: the processor's control endpoint is chosen when it starts "
                              f"(--ctrl); it listens on {self.ctrl_endpoint!r}, so only that value is taken",
                              "ctrl_endpoint")
        if "inject_eoa" in odin and self.shm is not None and self.shm.busy:
            raise ConfigError("inject_eoa: a frame is waiting for a plugin; retry when the chain has room",
                              "inject_eoa")
        store = odin.get("store")
        if store is not None:
            if set(store) != {"index", "value"} or not isinstance(store["index"], str) or not store["index"]:
                raise ConfigError("store needs {\"index\": <name>, \"value\": <configure params or a list of "
                                  f"them>}}, not {store!r}", "store")
            items = store["value"] if isinstance(store["value"], list) else [store["value"]]
            if not items or not all(isinstance(i, dict) for i in items):
                raise ConfigError("store value must be configure params (an object) or a non-empty list of them",
                                  "store")
        run = odin.get("execute")
        if run is not None:
            if set(run) != {"index"} or not isinstance(run["index"], str):
                raise ConfigError(f"execute (in configure) needs {{\"index\": <stored name>}}, not {run!r}", "execute")
            known = set(self.stored) | ({store["index"]} if store is not None else set())
            if run["index"] not in known:
                raise ConfigError(f"no stored configuration {run['index']!r}; stored: {sorted(known) or 'none'} "
                                  "(keep one with store first)", "execute")
            if self._depth >= MAX_STORED_DEPTH:
                raise ConfigError(f"stored configurations execute each other more than {MAX_STORED_DEPTH} deep",
                                  "execute")

    def _commit_odin(self, odin: dict[str, Any]) -> None:
        if "frames" in odin:
            self.shutdown_after = odin["frames"]
        if "debug_level" in odin:
            logging.getLogger("framechain").setLevel(logging.DEBUG if odin["debug_level"] > 0 else logging.INFO)
        if "clear_errors" in odin:
            for worker in self.chain.workers.values():
                worker.last_error = ""
                try:
                    worker.plugin.clear_errors()
                except Exception:
                    log.exception("%s clear_errors failed", worker.plugin.owner)
        if "inject_eoa" in odin:
            self.inject_eoa()
        if "store" in odin:
            value = odin["store"]["value"]
            self.stored[odin["store"]["index"]] = [dict(v) for v in (value if isinstance(value, list) else [value])]

    def _execute_stored(self, name: str) -> None:
        """Apply a stored configuration, item by item (each one prepared and committed on its own, as odin)."""
        self._depth += 1
        try:
            for i, item in enumerate(self.stored[name]):
                try:
                    self._on_configure(item)
                except FramechainError as err:
                    raise FramechainError(f"stored configuration {name!r} item {i}: {err}") from err
        finally:
            self._depth -= 1

    def inject_eoa(self, stopping: bool = False) -> None:
        """odin's inject_eoa: an end of acquisition (no id, no frame count) down the chain (``stopping``: the
        processor is shutting down)."""
        eoa = EndOfAcquisition("", 0, stopping)
        if self.shm is not None:
            self.shm.inject(eoa)
        else:
            self.chain.offer(eoa, list(self.chain.sources))

    @staticmethod
    def _commit(plugin: FrameProcessorPlugin, change: Any) -> str | None:
        try:
            plugin.commit(change)
        except Exception as err:  # commit must not fail; if it does, the other parts still commit
            log.exception("%s commit failed", plugin.owner)
            return f"{type(err).__name__}: {err}"
        return None

    @staticmethod
    def _abort(plugin: FrameProcessorPlugin, change: Any) -> None:
        try:
            plugin.abort(change)
        except Exception:
            log.exception("%s abort failed", plugin.owner)

    @staticmethod
    def _loading_indices(plugin_cfg: Any) -> set[str]:
        if not isinstance(plugin_cfg, dict) or "load" not in plugin_cfg:
            return set()
        loads = plugin_cfg["load"] if isinstance(plugin_cfg["load"], list) else [plugin_cfg["load"]]
        return {d.get("index") for d in loads if isinstance(d, dict) and isinstance(d.get("index"), str)}

    def _check_fr_setup(self, value: Any) -> dict[str, str]:
        value = validate_options("the frame processor", FR_SETUP_OPTIONS, value, "fr_setup/")
        for key in ("fr_ready_cnxn", "fr_release_cnxn"):
            if key not in value:
                raise ConfigError(f"fr_setup needs {key} ({FR_SETUP_OPTIONS[key].help})", key)
        make_decoder(value.get("decoder"))  # ConfigError if it does not describe a known layout
        if self.shm is not None and self.shm.busy:
            raise ConfigError("cannot change fr_setup while a frame is waiting for a plugin; retry when idle",
                              "fr_setup")
        if self.shm is not None and self.shm.outstanding:
            raise ConfigError(f"cannot change fr_setup while plugins still hold {self.shm.outstanding} zero-copy "
                              "frames of the current receiver; retry when they are released", "fr_setup")
        return dict(value)

    def _check_shared_memory(self, value: Any) -> dict[str, Any]:
        value = validate_options("the frame processor", SHARED_MEMORY_OPTIONS, value, "shared_memory/")
        if "copy" in value and value["copy"] != self.copy and self.shm is not None and self.shm.busy:
            raise ConfigError("cannot change shared_memory copy mode while a frame is waiting; retry when idle", "copy")
        return value

    def _apply_shared_memory(self, value: dict[str, Any]) -> None:
        if "max_pool_memory" in value:
            self.pool.max_memory = value["max_pool_memory"]
        if "copy" in value:
            self.copy = value["copy"]
            if self.shm is not None:
                self.shm.copy = self.copy
        if "detector_mask" in value:
            self.detector_mask = value["detector_mask"]
            if self.shm is not None:
                self.shm.detector_mask = self.detector_mask

    def _connect(self, setup: dict[str, str]) -> SharedMemoryController:
        """A data path to the receiver ``setup`` names (not yet in use)."""
        shm = SharedMemoryController(setup["fr_ready_cnxn"], setup["fr_release_cnxn"], self.chain, self.pool,
                                     self.releases, setup.get("fr_shared_mem"), self.copy, self.context)
        shm.decoder = make_decoder(setup.get("decoder"))
        return shm

    def _swap_shm(self, new: SharedMemoryController, setup: dict[str, str]) -> None:
        new.copy = self.copy  # shared_memory settings of the same message apply to the new path
        new.detector_mask = self.detector_mask
        old, self.shm, self.fr_setup = self.shm, new, setup
        if old is not None:
            old.close()
        log.info("connected to receiver: ready %s, release %s", setup["fr_ready_cnxn"], setup["fr_release_cnxn"])
        self.on_shm_change()

    def _configure_plugins(self, value: Any, initial: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise ConfigError("plugin must be an object with load, connect and/or disconnect", "plugin")
        unknown = set(value) - {"load", "connect", "disconnect"}
        if unknown:
            raise ConfigError(f"unknown plugin action(s) {sorted(unknown)}; use load, connect, disconnect", "plugin")
        created: list[FrameProcessorPlugin] = []
        connected: list[tuple[str, str]] = []
        try:
            for spec in _as_list(value.get("load", []), "load"):
                bad = set(spec) - {"index", "name", "library", "queue_size"}
                if bad:
                    raise ConfigError(f"unknown plugin load key(s) {sorted(bad)}; use index, name, library, queue_size")
                q = spec.get("queue_size", 64)
                if not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= 100000:
                    raise ConfigError(f"plugin load queue_size must be an integer 1..100000, not {q!r}", "queue_size")
                plugin = self.chain.create(spec.get("index"), spec.get("name"), spec.get("library"))
                plugin.meta = self.meta
                plugin.data_roots = self.data_roots
                if plugin.name in (p.name for p in created):
                    raise PluginError(f"plugin index {plugin.name!r} appears twice in one load", plugin.name)
                if plugin.name in initial:
                    plugin.configure(initial[plugin.name])
                created.append(plugin)
                self.chain.add(plugin, spec["library"], q)
            connects = _as_list(value.get("connect", []), "connect")
            for spec in connects:
                self._check_cnxn_spec(spec)
                self.chain.connect(spec["index"], spec["connection"], spec.get("blocking", True))
                connected.append((spec["index"], spec["connection"]))
            for spec in _as_list(value.get("disconnect", []), "disconnect"):
                self._check_cnxn_spec(spec)
                self.chain.check_disconnect(spec["index"], spec["connection"])
        except (Exception, SystemExit):
            # roll back everything this message did
            for index, upstream in reversed(connected):
                self.chain.disconnect(index, upstream)
            for plugin in created:
                self.chain.remove(plugin.name)
            raise
        for spec in _as_list(value.get("disconnect", []), "disconnect"):
            self.chain.disconnect(spec["index"], spec["connection"])

    @staticmethod
    def _check_cnxn_spec(spec: dict[str, Any]) -> None:
        bad = set(spec) - {"index", "connection", "blocking"}
        if bad:
            raise ConfigError(f"unknown connect key(s) {sorted(bad)}; use index, connection, blocking")
        for key in ("index", "connection"):
            if not isinstance(spec.get(key), str):
                raise ConfigError(f"plugin connect/disconnect needs '{key}' (a plugin index or "
                                  f"'frame_receiver'), got {spec.get(key)!r}", key)
        if not isinstance(spec.get("blocking", True), bool):
            raise ConfigError("connect 'blocking' must be true or false", "blocking")

    # -- life cycle -----------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        self.chain.stop(timeout)
        self.meta.close()
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        self.releases.close()
