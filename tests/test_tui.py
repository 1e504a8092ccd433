"""``framechain tui`` in a real terminal (a tmux pane of 80x24, read back with capture-pane),
against real receiver and processor daemons."""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from _clients import REPO
from client import tui
from client._tui.form import KEY_BACKSPACE, KEY_RIGHT, Field, Form
from harness import wait_for
from ipc import free_tcp_endpoint

pytestmark = pytest.mark.timeout(120)

DOWN, UP, ENTER, TAB, ESC, CTRL_U = "Down", "Up", "Enter", "Tab", "Escape", "C-u"
HDF = ("hdf", "FileWriterPlugin", "plugins.hdf5_writer")
_ids = itertools.count()


class Tui:
    """The TUI in its own tmux server and window of ``rows`` x ``cols``; the screen as text."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80) -> None:
        self.socket = f"fctui_{os.getpid()}_{next(_ids)}"
        cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "client.tui", "--interval", "0.2", *args])
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


@pytest.fixture
def tui_for(pipeline):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
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
    pipeline.setup_processor([("dummy", "DummyPlugin", "plugins.dummy", "frame_receiver")])
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
    pipeline.setup_processor([("dummy", "DummyPlugin", "plugins.dummy", "frame_receiver")])
    tui = tui_for()
    tui.wait(r"dummy +0/64")
    tui.menu(0)                                     # Load plugin, prefilled with sum / SumPlugin / plugins.sum
    tui.wait(r"Load plugin.*\n(.*\n)*  module path or \.py file: plugins\.sum")
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
    pipeline.setup_processor([("dummy", "DummyPlugin", "plugins.dummy", "frame_receiver")])
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


def test_cli_refuses_bad_endpoints_and_no_terminal(capsys):
    args = argparse.Namespace(receiver=[], processor=[], endpoints="xx:tcp://127.0.0.1:1", interval=0.5, timeout=0.5)
    assert tui.main(args) == 2
    assert "xx:tcp" in capsys.readouterr().err
    args.endpoints = None
    assert tui.main(args) == 2           # pytest's stdout is not a terminal
    assert "needs a terminal" in capsys.readouterr().err
