"""Plugin chain mechanics in-process with real threads: pooling, EOA, loading, option validation."""

import threading
import time

import numpy as np
import pytest

from framechain.frameprocessor import DataBlockPool, EndOfAcquisition, Frame, FrameProcessorPlugin, Option, PoolExhausted
from framechain.frameprocessor.chain import FRAME_RECEIVER, PluginChain
from framechain.frameprocessor.loader import load_plugin_class
from framechain.ipc import ConfigError, PluginError
from framechain.plugins.dummy import DummyPlugin


class Recorder(FrameProcessorPlugin):
    options = {"gain": Option(float, 1.0, "a number"), "mode": Option(str, "a", "a choice", choices=("a", "b"))}

    def __init__(self, name, delay=0.0):
        super().__init__(name)
        self.delay = delay
        self.frames, self.eoas, self.frames_at_eoa = [], [], []
        self.done = threading.Event()

    def process_frame(self, frame):
        if self.delay:
            time.sleep(self.delay)
        self.frames.append(frame.frame_number)
        self.push(frame)

    def process_end_of_acquisition(self, eoa):
        self.eoas.append(eoa)
        self.frames_at_eoa.append(len(self.frames))
        self.done.set()


def test_pool_reuses_blocks_and_bounds_memory():
    pool = DataBlockPool(max_memory=3 * 1024)
    frames = [pool.frame((16, 32), "u2", i) for i in range(3)]
    with pytest.raises(PoolExhausted):
        pool.frame((16, 32), "u2", 3)
    del frames[0]
    again = pool.frame((16, 32), "u2", 4)
    st = pool.stats()
    assert (st["blocks_total"], st["blocks_in_use"], st["blocks_reused"], st["exhausted"]) == (3, 3, 1, 1)
    del frames, again
    assert pool.stats()["blocks_in_use"] == 0
    # a different size evicts idle blocks rather than failing
    big = pool.frame((3 * 512,), "u2", 5)
    assert big.nbytes == 3 * 1024


def test_frame_release_callback_runs_once_when_last_reference_goes():
    calls = []
    f = Frame(np.zeros(4), 1, on_release=lambda: calls.append(1))
    g = f
    del f
    assert calls == []
    del g
    assert calls == [1]


def test_diamond_chain_delivers_every_frame_and_one_eoa_per_plugin_after_the_slow_branch():
    """a fans out to a slow b (a long queue, so it lags) and a fast c; d joins them and must see
    every frame of both branches before its one end of acquisition."""
    chain = PluginChain()
    plugins = {"a": Recorder("a"), "b": Recorder("b", delay=0.002), "c": Recorder("c"), "d": Recorder("d")}
    for p in plugins.values():
        chain.add(p, "tests", queue_size=200 if p.name == "b" else 4)
    chain.connect("a", FRAME_RECEIVER)
    chain.connect("b", "a")
    chain.connect("c", "a")
    chain.connect("d", "b")
    chain.connect("d", "c")
    with pytest.raises(PluginError, match="cycle"):
        chain.connect("a", "d")
    n = 100
    eoa = EndOfAcquisition("acq", n)
    for i in range(n):
        for worker, _ in chain.sources:
            worker.submit(Frame(np.full(4, i), i), True)
    for worker, _ in chain.sources:
        worker.submit(eoa, True)
    assert plugins["d"].done.wait(20)
    assert chain.drain(10)
    assert plugins["a"].frames == list(range(n))
    assert sorted(plugins["d"].frames) == sorted(list(range(n)) * 2)  # two paths into d
    assert all(len(p.eoas) == 1 for p in plugins.values())
    assert plugins["d"].frames_at_eoa == [2 * n]  # the EOA waited for the slow branch's last frame
    assert chain.status()["d"]["acquisitions"] == 1
    chain.stop()


def test_options_validate_types_and_choices():
    r = Recorder("r")
    r.configure({"gain": 2})
    assert r.config["gain"] == 2.0 and isinstance(r.config["gain"], float)
    with pytest.raises(ConfigError, match="The 'gain' option of Recorder 'r' expected a number, not str 'x'"):
        r.configure({"gain": "x"})
    with pytest.raises(ConfigError, match="must be one of \\['a', 'b'\\]"):
        r.configure({"mode": "z", "gain": 3})
    assert r.config == {"gain": 2.0, "mode": "a"}  # nothing changed by the failed calls


def test_loader_forms(tmp_path):
    assert load_plugin_class("framechain.plugins.dummy", "DummyPlugin") is DummyPlugin
    assert load_plugin_class("framechain.plugins.dummy:DummyPlugin") is DummyPlugin
    assert load_plugin_class("dummy") is DummyPlugin  # entry point
    with pytest.raises(PluginError, match="no plugin named 'nope'"):
        load_plugin_class("nope")
    f = tmp_path / "notaplugin.py"
    f.write_text("class Thing: pass\n")
    with pytest.raises(PluginError, match="is not a FrameProcessorPlugin subclass"):
        load_plugin_class(str(f), "Thing")


def test_plugin_exception_is_counted_not_fatal():
    class Boom(FrameProcessorPlugin):
        def process_frame(self, frame):
            if frame.frame_number == 1:
                raise ValueError("bad pixel soup")
            self.push(frame)

    chain = PluginChain()
    boom, rec = Boom("boom"), Recorder("rec")
    chain.add(boom, "tests")
    chain.add(rec, "tests")
    chain.connect("boom", FRAME_RECEIVER)
    chain.connect("rec", "boom")
    for i in range(3):
        chain.workers["boom"].submit(Frame(np.zeros(2), i), True)
    assert chain.drain(10)
    st = chain.status()["boom"]
    assert st["errors"] == 1 and "bad pixel soup" in st["last_error"] and st["frames_processed"] == 3
    assert rec.frames == [0, 2]
    chain.stop()


def test_frame_like_waits_for_memory_then_gives_up():
    pool = DataBlockPool(max_memory=2 * 64)
    src = Frame(np.arange(16, dtype="u4").reshape(4, 4), 9, acquisition_id="a", parameters={"k": 1})
    src.mask = np.ones((4, 4), bool)
    first = pool.frame_like(src)
    assert (first.shape, first.dtype, first.frame_number, first.acquisition_id) == ((4, 4), np.uint32, 9, "a")
    assert first.parameters == {"k": 1} and first.parameters is not src.parameters and first.mask is src.mask
    held = [pool.frame_like(src)]
    assert pool.frame_like(src, timeout=0.05) is None  # the pool is full
    threading.Timer(0.05, held.clear).start()  # a downstream plugin lets its frame go
    third = pool.frame_like(src, timeout=5)
    assert third is not None
    del first, third


def test_shared_frames_are_read_only_exclusive_ones_writable():
    class Probe(Recorder):
        def process_frame(self, frame):
            self.writeable = frame.data.flags.writeable
            super().process_frame(frame)

    chain = PluginChain()
    a, b, c, d = Probe("a"), Probe("b"), Probe("c"), Probe("d")
    for p in (a, b, c, d):
        chain.add(p, "tests")
    chain.connect("a", FRAME_RECEIVER)
    chain.connect("d", "c")
    chain.connect("b", "a")
    chain.connect("c", "a")  # a fans out to b and c; c passes on to d alone
    chain.workers["a"].submit(Frame(np.zeros(4), 0), True)
    assert chain.drain(10)
    assert a.writeable is True             # only a had it
    assert b.writeable is False and c.writeable is False and d.writeable is False  # shared downstream of a
    chain.stop()
