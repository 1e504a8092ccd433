"""PluginChain: the loaded plugins, their workers and the connections between them."""

from __future__ import annotations

import logging
import time
from typing import Any

from framechain.ipc.errors import PluginError

from .frame import EndOfAcquisition, Frame, FrameBatch
from .loader import load_plugin_class
from .plugin import FrameProcessorPlugin
from .worker import STUCK_AFTER_S, PluginWorker

__all__ = ["PluginChain", "FRAME_RECEIVER"]

log = logging.getLogger(__name__)
FRAME_RECEIVER = "frame_receiver"


class PluginChain:
    """Plugin registry and wiring. Mutated only from the controller thread."""

    def __init__(self) -> None:
        self.workers: dict[str, PluginWorker] = {}
        self.loads: dict[str, dict[str, Any]] = {}
        # index -> list of (upstream, blocking); upstream may be FRAME_RECEIVER
        self.inputs: dict[str, list[tuple[str, bool]]] = {}
        self.sources: tuple[tuple[PluginWorker, bool], ...] = ()
        #: directories plugin files and modules may come from (None: anywhere; the processor daemon sets it)
        self.plugin_path: tuple[str, ...] | None = None
        self.stuck_after = STUCK_AFTER_S  #: seconds on one frame before a plugin shows as stuck

    # -- load -------------------------------------------------------------
    def create(self, index: str, name: str | None, library: str) -> FrameProcessorPlugin:
        """Instantiate a plugin without registering it (validation step)."""
        if not isinstance(index, str) or not index or index == FRAME_RECEIVER:
            raise PluginError(f"bad plugin index {index!r}: use a short non-empty name")
        if index in self.workers:
            raise PluginError(f"a plugin with index {index!r} is already loaded", index)
        cls = load_plugin_class(library, name, self.plugin_path)
        try:
            return cls(index)
        except (Exception, SystemExit) as err:
            raise PluginError(f"{cls.__name__}({index!r}) failed to initialise: {err}", index) from err

    def add(self, plugin: FrameProcessorPlugin, library: str, queue_size: int = 64) -> None:
        worker = PluginWorker(plugin, queue_size, self.stuck_after)
        worker.start()
        self.workers[plugin.name] = worker
        self.inputs[plugin.name] = []
        self.loads[plugin.name] = {"index": plugin.name, "name": type(plugin).__name__, "library": library}
        log.info("loaded plugin %s (%s from %s)", plugin.name, type(plugin).__name__, library)

    def get(self, index: str) -> PluginWorker:
        try:
            return self.workers[index]
        except KeyError:
            raise PluginError(f"no plugin with index {index!r}; loaded: {sorted(self.workers)}", index) from None

    def remove(self, index: str) -> None:
        """Stop and forget a plugin that has no connections left to it."""
        worker = self.workers.pop(index)
        self.inputs.pop(index, None)
        self.loads.pop(index, None)
        for ups in self.inputs.values():
            ups[:] = [(u, b) for u, b in ups if u != index]
        self._rewire()
        worker.stop(drain=False)

    # -- connect ------------------------------------------------------------
    def check_connect(self, index: str, upstream: str) -> None:
        self.get(index)
        if upstream != FRAME_RECEIVER:
            self.get(upstream)
            if upstream == index or self._reaches(index, upstream):
                raise PluginError(f"connecting {index!r} to {upstream!r} would make a cycle", index)
        if any(u == upstream for u, _ in self.inputs[index]):
            raise PluginError(f"{index!r} is already connected to {upstream!r}", index)

    def _reaches(self, start: str, target: str) -> bool:
        """True if frames flow from ``start`` to ``target``."""
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node == target:
                return True
            if node in seen:
                continue
            seen.add(node)
            stack.extend(i for i, ups in self.inputs.items() if any(u == node for u, _ in ups))
        return False

    def connect(self, index: str, upstream: str, blocking: bool = True) -> None:
        self.check_connect(index, upstream)
        self.inputs[index].append((upstream, blocking))
        self._rewire()
        log.info("connected %s <- %s (%s)", index, upstream, "blocking" if blocking else "non-blocking")

    def check_disconnect(self, index: str, upstream: str) -> None:
        self.get(index)
        if not any(u == upstream for u, _ in self.inputs[index]):
            raise PluginError(f"{index!r} is not connected to {upstream!r}", index)

    def disconnect(self, index: str, upstream: str) -> None:
        self.check_disconnect(index, upstream)
        self.inputs[index] = [(u, b) for u, b in self.inputs[index] if u != upstream]
        self._rewire()

    def _rewire(self) -> None:
        outputs: dict[str, list[tuple[PluginWorker, bool]]] = {i: [] for i in self.workers}
        outputs[FRAME_RECEIVER] = []
        for index, ups in self.inputs.items():
            for up, blocking in ups:
                outputs[up].append((self.workers[index], blocking))
        for index, worker in self.workers.items():
            worker.plugin.set_outputs(tuple(outputs[index]))  # one swap; threads read the tuple
            worker.inputs = len(self.inputs.get(index, ()))
        self.sources = tuple(outputs[FRAME_RECEIVER])

    # -- life cycle -----------------------------------------------------------
    def idle(self) -> bool:
        return all(w.idle() for w in self.workers.values())

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every queue is empty and every plugin is between frames."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every plugin thread within ``timeout`` seconds in all (a stuck one is abandoned)."""
        # Stop in topological order so upstream plugins finish pushing first.
        deadline = time.monotonic() + timeout
        for index in self._topological():
            self.workers[index].stop(drain=True, timeout=max(0.2, deadline - time.monotonic()))

    def _topological(self) -> list[str]:
        done: list[str] = []
        remaining = dict(self.inputs)
        while remaining:
            ready = [i for i, ups in remaining.items()
                     if all(u == FRAME_RECEIVER or u in done for u, _ in ups)]
            if not ready:  # cannot happen (no cycles) but never loop forever
                ready = list(remaining)
            for i in ready:
                done.append(i)
                remaining.pop(i)
        return done

    def configuration(self) -> dict[str, Any]:
        return {"load": list(self.loads.values()),
                "connect": [{"index": i, "connection": u, "blocking": b}
                            for i, ups in self.inputs.items() for u, b in ups]}

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {"plugins": {"names": list(self.workers)}}
        for index, worker in self.workers.items():
            st[index] = worker.status()
        return st

    def reset_statistics(self) -> None:
        for w in self.workers.values():
            w.reset_statistics()
            w.plugin.reset_statistics()

    def offer(self, item: Frame | EndOfAcquisition, targets: list[tuple[PluginWorker, bool]]) -> list:
        """Queue ``item`` to each target without waiting; return the blocking targets still to do.

        Non-blocking targets that are full count a drop.
        """
        left = []
        for worker, blocking in targets:
            if not worker.offer(item):
                if blocking or item.__class__ is EndOfAcquisition:
                    left.append((worker, blocking))
                else:
                    worker.count_drop(len(item) if item.__class__ is FrameBatch else 1)
        return left
