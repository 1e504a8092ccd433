"""``framechain tui`` in a real terminal (a tmux pane of 80x24, read back with capture-pane),
against real receiver and processor daemons."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from _clients import REPO
from framechain.client import tui
from framechain.client._monitor import Monitor, parse_endpoints
from framechain.client._tui.app import App
from framechain.client._tui.form import KEY_BACKSPACE, KEY_RIGHT, Field, Form
from harness import wait_for
from framechain.ipc import free_tcp_endpoint

pytestmark = pytest.mark.timeout(120)

DOWN, UP, ENTER, TAB, ESC, CTRL_U = "Down", "Up", "Enter", "Tab", "Escape", "C-u"
HDF = ("hdf", "FileWriterPlugin", "framechain.plugins.hdf5_writer")
_ids = itertools.count()


class Tui:
    """The TUI in its own tmux server and window of ``rows`` x ``cols``; the screen as text."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80) -> None:
        self.socket = f"fctui_{os.getpid()}_{next(_ids)}"
        cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "framechain.client.tui", "--interval", "0.2", *args])
        shell = f"cd {shlex.quote(str(REPO))} && {cmd}; echo TUI-EXIT=$?; sleep 60"
        self._tmux("new-session", "-d", "-x", str(cols), "-y", str(rows), shell)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait(self, pattern: str, timeout: float = 10) -> re.Match:
        rx = re.compile(pattern)
        try:
            return wait_for(lambda: rx.search(self.text()), timeout=timeout, interval=0.05,
                            what=f"{pattern!r} on the TUI screen")
        except AssertionError as err:
            raise AssertionError(f"{err}\nscreen:\n{self.text()}") from None

    def keys(self, *seq: str) -> None:
        """Send tmux key names (Down, Enter, C-u, ...) or literal text."""
        for k in seq:
            if k in (DOWN, UP, ENTER, TAB, ESC, CTRL_U):
                self._tmux("send-keys", k)
            else:
                self._tmux("send-keys", "-l", k)
            time.sleep(0.1 if k == ESC else 0.02)

    def menu(self, item: int) -> None:
        """Open the menu and the ``item``-th action (0 = Load plugin)."""
        self.keys("m")
        self.wait("Menu")
        self.keys(*[DOWN] * item, ENTER)

    def resize(self, rows: int, cols: int) -> None:
        self._tmux("resize-window", "-x", str(cols), "-y", str(rows))

    def quit(self) -> str:
        """Press q; return the exit status the shell printed."""
        self.keys("q")
        return self.wait(r"TUI-EXIT=(\d+)").group(1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def need_tmux() -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")


@pytest.fixture
def tui_for(pipeline):
    need_tmux()
    sessions = []

    def start(*extra: str, rows: int = 24, cols: int = 80) -> Tui:
        t = Tui(["--receiver", pipeline.receiver.ctrl, "--processor", pipeline.processor.ctrl, *extra], rows, cols)
        sessions.append(t)
        return t
    yield start
    for t in sessions:
        t.close()


def received(tui: Tui, daemon: str = "fp0") -> int:
    block = tui.text().split(daemon, 1)[1]
    return int(re.search(r"frames received (\d+)", block).group(1))


def test_live_counters_and_dead_endpoint_within_2s(pipeline, tui_for):
    pipeline.configure_receiver({"type": "simulated", "shape": [32, 32], "frames": 100000, "rate": 200})
    pipeline.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    dead = free_tcp_endpoint()
    tui = tui_for("--processor", dead)
    tui.wait(r"framechain tui")                     # running (first draw: every daemon CONNECTING)
    tui.wait(r"fp1 processor \S+ +DISCONNECTED +no reply to status", timeout=2)
    tui.wait(r"fp0 processor \S+ +CONNECTED")
    tui.wait(r"dummy +0/64")
    tui.menu(6)                                     # Start source (receiver)
    tui.wait(r"Start source")
    tui.keys(ENTER)
    tui.wait(r"fr0 execute ack")
    tui.wait(r"source running")
    first = received(tui)
    wait_for(lambda: received(tui) > first + 20, timeout=10, what="frames received to grow on screen")
    tui.wait(r"fp0 processor.*\n  frames received \d+ \([\d.]+k?/s\)")
    screen = tui.text()
    assert all(len(line) <= 80 for line in screen.splitlines())
    assert tui.quit() == "0"


def test_load_and_connect_a_plugin_through_the_menus(pipeline, tui_for):
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 50})
    pipeline.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    tui = tui_for()
    tui.wait(r"dummy +0/64")
    tui.menu(0)                                     # Load plugin, prefilled with sum / SumPlugin / sum
    tui.wait(r"Load plugin.*\n(.*\n)*  plugin name, module path or \.py file: sum")
    tui.keys(ENTER)
    tui.wait(r"fp0 configure ack")
    tui.menu(1)                                     # Connect plugin: daemon, index, connection, blocking
    tui.wait(r"Connect plugin")
    tui.keys(TAB, CTRL_U, "sum", TAB, CTRL_U, "dummy", ENTER)
    tui.wait(r"(?s)fp0 configure ack.*fp0 configure ack")
    tui.wait(r"sum +0/64")
    assert {"index": "sum", "connection": "dummy", "blocking": True} in \
        pipeline.processor.ok("request_configuration")["plugin"]["connect"]
    tui.keys("2")                                   # chain screen
    tui.wait(r"frame_receiver\n +`- dummy.*\n +`- sum +SumPlugin")
    pipeline.start()
    pipeline.wait_done()
    wait_for(lambda: pipeline.plugin_status("sum")["frames_processed"] == 50)
    tui.keys("1")
    tui.wait(r"sum +0/64 +50 ")


def test_start_stop_writing_and_json_form(pipeline, tui_for, tmp_path):
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 100000, "rate": 200})
    cfg = {"file": {"path": str(tmp_path), "prefix": "tui"},
           "dataset": {"data": {"datatype": "uint16", "dims": [16, 16]}}}
    pipeline.setup_processor([(*HDF, "frame_receiver", cfg)])
    pipeline.start()
    tui = tui_for()
    tui.wait(r"hdf +\d+/64.*not writing")
    tui.menu(4)                                     # Start writing (index prefilled 'hdf')
    tui.wait(r"Start writing")
    tui.keys(ENTER)
    tui.wait(r"fp0 execute ack")
    tui.wait(r"hdf .*WRITING \d+ written")
    wait_for(lambda: pipeline.plugin_status("hdf")["frames_written"] > 10, what="frames written")
    # invalid JSON in the configure form: refused with the parse error, nothing sent
    tui.menu(3)
    tui.wait(r"Configure plugin")
    tui.keys(TAB, TAB, CTRL_U, '{"frames": ', ENTER)
    tui.wait(r"invalid JSON in params.*not sent")
    tui.keys(ESC)
    tui.wait(r"hdf .*WRITING")
    assert "configure" not in tui.text().split("-- responses", 1)[1].replace("execute", "")
    tui.menu(5)                                     # Stop writing
    tui.wait(r"Stop writing")
    tui.keys(ENTER)
    tui.wait(r"(?s)fp0 execute ack.*fp0 execute ack")
    tui.wait(r"hdf .*not writing")
    assert pipeline.plugin_status("hdf")["writing"] is False
    assert list(tmp_path.glob("tui*.h5"))


def test_nack_shown_resize_and_help(pipeline, tui_for):
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 10})
    pipeline.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    tui = tui_for()
    tui.wait(r"dummy +0/64")
    tui.menu(3)                                     # Configure plugin with a key dummy does not have
    tui.wait(r"Configure plugin")
    tui.keys(TAB, TAB, CTRL_U, '{"no_such_key": 1}', ENTER)
    tui.wait(r"fp0 configure nack: .*no_such_key")
    tui.resize(30, 100)
    tui.wait(r"-- responses -{86}-+\n")             # the separator spans the new width
    assert max(len(line) for line in tui.text().splitlines()) == 100
    tui.resize(24, 80)
    tui.keys("h")
    tui.wait(r"q +quit")
    tui.keys("1")
    tui.wait(r"fp0 processor")


def test_form_refuses_invalid_json_before_sending():
    sent = []
    form = Form("t", [Field("params", "params", "", "json"), Field("mode", "mode", "a", "choice", ["a", "b"])],
                sent.append)
    for ch in '{"x": ':
        form.key(ord(ch))
    form.key(10)
    assert not sent and not form.done and "invalid JSON in params" in form.error
    form.key(KEY_BACKSPACE)
    for ch in ' 1}':
        form.key(ord(ch))
    form.key(9)
    form.key(KEY_RIGHT)
    form.key(10)
    assert form.done and sent == [{"params": {"x": 1}, "mode": "b"}]


def test_cli_refuses_bad_endpoints_and_no_terminal(capsys, tmp_path):
    args = argparse.Namespace(receiver=[], processor=[], endpoints="xx:tcp://127.0.0.1:1", interval=0.5, timeout=0.5,
                              config=None)
    assert tui.main(args) == 2
    assert "xx:tcp" in capsys.readouterr().err
    args.endpoints = None
    assert tui.main(args) == 2           # pytest's stdout is not a terminal
    assert "needs a terminal" in capsys.readouterr().err
    # a run config without fixed endpoints: told to use the line 'framechain run' prints
    run_cfg = tmp_path / "run.json"
    run_cfg.write_text(json.dumps({"receiver": {"source": {"type": "simulated"}}, "processor": []}))
    args.config = str(run_cfg)
    assert tui.main(args) == 2
    err = capsys.readouterr().err
    assert "fixes no receiver or processor control endpoint" in err and "tui --endpoints fr:...,fp:..." in err
    run_cfg.write_text(json.dumps({"receiver": {}, "endpoints": {"receiver": "tcp://127.0.0.1:1"}}))
    assert tui.main(args) == 2
    assert "fixes no processor control endpoint" in capsys.readouterr().err
    args.config = str(tmp_path / "missing.json")
    assert tui.main(args) == 2
    assert "cannot read run config" in capsys.readouterr().err


def test_attaches_to_the_daemons_of_a_framechain_run_config(tmp_path):
    need_tmux()
    eps = {k: free_tcp_endpoint() for k in ("receiver", "ready", "release", "processor")}
    cfg = {"endpoints": eps,
           "receiver": {"source": {"type": "simulated", "shape": [16, 16], "frames": 1000000, "rate": 100}},
           "processor": [{"plugin": {"load": {"index": "dummy", "name": "DummyPlugin", "library": "framechain.plugins.dummy"},
                                     "connect": {"index": "dummy", "connection": "frame_receiver"}}}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    run_log = open(tmp_path / "run.log", "w")
    run = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "run", str(path), "--no-progress", "--timeout", "90",
                            "--log-dir", str(tmp_path / "logs")], cwd=REPO, stdout=run_log, stderr=subprocess.STDOUT)
    t = None
    try:
        wait_for(lambda: "watch it live" in (tmp_path / "run.log").read_text() or run.poll() is not None,
                 timeout=30, what="framechain run to start its daemons")
        assert run.poll() is None, (tmp_path / "run.log").read_text()
        t = Tui(["--config", str(path)])
        t.wait(rf"fr0 receiver {re.escape(eps['receiver'])} +CONNECTED")
        t.wait(rf"fp0 processor {re.escape(eps['processor'])} +CONNECTED")
        t.wait(r"source running")
        t.wait(r"dummy +\d+/64 +[1-9]\d* ")
        assert t.quit() == "0"
    finally:
        if t is not None:
            t.close()
        if run.poll() is None:
            run.send_signal(signal.SIGINT)      # the launcher stops the source, drains and shuts both daemons down
            try:
                run.wait(30)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(5)
        run_log.close()


def test_killed_daemon_shown_disconnected_within_2s_and_requests_fail_fast(pipeline, tui_for):
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 10})
    pipeline.setup_processor([("dummy", "DummyPlugin", "framechain.plugins.dummy", "frame_receiver")])
    tui = tui_for()
    tui.wait(r"fp0 processor \S+ +CONNECTED")
    tui.wait(r"dummy +0/64")
    pipeline.processor.proc.send_signal(signal.SIGKILL)
    pipeline.processor.proc.wait(10)
    tui.wait(r"fp0 processor \S+ +DISCONNECTED +no reply to status", timeout=2)
    tui.wait(r"fr0 receiver \S+ +CONNECTED")
    tui.keys("r")                                   # reset statistics on every daemon
    tui.wait(r"fr0 reset_statistics ack")
    tui.wait(r"fp0 reset_statistics FAILED: fp0 \(tcp://[\d.:]+\) is not\s+answering", timeout=2)
    tui.wait(r"-- responses -")                     # nothing left pending
    assert tui.quit() == "0"


def test_plugin_table_sums_every_drop_counter(pipeline, tui_for, tmp_path):
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((8, 8), dtype=bool))      # frames are 16x16: every frame has the wrong shape
    pipeline.configure_receiver({"type": "simulated", "shape": [16, 16], "frames": 10})
    pipeline.setup_processor([("mask", "MaskPlugin", "framechain.plugins.mask", "frame_receiver", {"mask": str(mask)})])
    pipeline.start()
    pipeline.wait_done()
    assert pipeline.plugin_status("mask")["frames_wrong_shape"] == 10
    assert pipeline.plugin_status("mask")["frames_dropped"] == 0
    tui = tui_for()
    tui.wait(r"plugin +queue +processed +rate +drops +err +mean us")
    tui.wait(r"mask +0/64 +10 +\S+ +10 +0 +\S+ +wrong_shape=10\n")


def test_pending_count_is_exact_under_concurrent_sends_and_replies(pipeline):
    monitor = Monitor(parse_endpoints([f"fp:{pipeline.processor.ctrl}"]))
    app = App(monitor)
    link = monitor.links["fp0"]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                     # switch threads as often as CPython allows
    try:
        senders = [threading.Thread(target=lambda: [app.send([link], "status", {}) for _ in range(150)])
                   for _ in range(2)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        wait_for(lambda: app.pending == 0, timeout=30, what="pending to drop back to 0")
    finally:
        sys.setswitchinterval(old)
        app.close()
        monitor.close()
    assert app.pending == 0
    assert not [text for _, text in app.responses if "FAILED" in text or "nack" in text]
