"""The curses control client: screens, key bindings, the response pane.

The screen is redrawn five times a second from the :class:`Monitor`'s
snapshots, so drawing never waits on a daemon; user requests go to one worker
thread and their acks/nacks appear in the response pane when they come back.

Keys: ``1``/``s`` status, ``2``/``c`` chain, ``m`` menu, ``h``/``?`` help,
``r`` reset statistics of every daemon, Up/Down/PgUp/PgDn scroll, ``q`` quit.
In the menu: Up/Down and Enter, Esc back. In a form: Tab/Up/Down move,
Left/Right/Space choose, Enter sends, Esc cancels.

Logger: ``framechain.client.tui``.
"""

from __future__ import annotations

import curses
import json
import os
import queue
import sys
import textwrap
import threading
import time
from collections import deque
from typing import Any

from framechain.ipc.errors import IpcTimeout

from .._monitor import DaemonLink, Monitor
from .actions import ACTIONS
from .form import Form
from .view import Line, chain_lines, status_lines

__all__ = ["App"]

HELP = [
    "Keys",
    "  1 or s   live status of every daemon and plugin",
    "  2 or c   plugin chain as a tree",
    "  m        menu: load/connect/configure plugins, start/stop writing, ...",
    "  r        reset statistics on every daemon",
    "  Up/Down, PgUp/PgDn   scroll",
    "  h or ?   this help",
    "  q        quit (the daemons keep running)",
    "",
    "In a form",
    "  Tab/Down, Shift-Tab/Up   next/previous field",
    "  Left/Right/Space         change a choice",
    "  Backspace, Ctrl-U        delete a character, clear the field",
    "  Enter                    check and send (bad JSON is refused, not sent)",
    "  Esc                      cancel",
    "",
    "Colours: green connected/ack, red disconnected/nack/errors/drops, yellow queue >= 80% full.",
]


class App:
    """State and drawing of the curses client.

    Parameters
    ----------
    monitor
        The daemons to show and control (started by the caller).
    refresh
        Seconds between redraws (at most 1).
    """

    RESPONSE_LINES = 5

    def __init__(self, monitor: Monitor, refresh: float = 0.2) -> None:
        self.monitor = monitor
        self.refresh = min(refresh, 1.0)
        self.screen = "status"
        self.scroll = 0
        self.menu_pos = 0
        self.form: Form | None = None
        self.responses: deque[tuple[str, str]] = deque(maxlen=200)
        self._pending = 0
        self._pending_lock = threading.Lock()     # send() runs on the UI thread, _work() on the worker
        self._jobs: queue.Queue[tuple[DaemonLink, str, dict] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="tui-requests", daemon=True)
        self._worker.start()
        self.running = True
        self._attrs: dict[str, int] = {}

    # -- requests -------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Requests queued or in flight (read by the UI thread; changed under a lock by both threads)."""
        with self._pending_lock:
            return self._pending

    def _count(self, delta: int) -> None:
        with self._pending_lock:
            self._pending += delta

    def send(self, targets: list[DaemonLink], msg_val: str, params: dict[str, Any]) -> None:
        """Queue ``cmd/msg_val`` to each target; the reply shows in the response pane."""
        for link in targets:
            self._count(+1)
            self.respond("dim", f"{link.name} <- {msg_val} {json.dumps(params)}")
            self._jobs.put((link, msg_val, params))

    def respond(self, style: str, text: str) -> None:
        self.responses.append((style, f"{time.strftime('%H:%M:%S')} {text}"))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            link, msg_val, params = job
            try:
                reply = link.request(msg_val, params)
            except IpcTimeout as err:
                self.respond("bad", f"{link.name} {msg_val} FAILED: {err}")
            else:
                if reply.msg_type == "ack":
                    body = json.dumps(reply.params) if reply.params else ""
                    self.respond("ok", f"{link.name} {msg_val} ack {body}")
                else:
                    self.respond("bad", f"{link.name} {msg_val} nack: {reply.error}")
            finally:
                self._count(-1)

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(2)

    # -- keys -----------------------------------------------------------------
    def key(self, ch: int) -> None:
        """Handle one key code."""
        if self.form is not None:
            self.form.key(ch)
            if self.form.done:
                self.form = None
                self.screen = "status"
            return
        if ch == curses.KEY_RESIZE:
            return
        if self.screen == "menu":
            if ch == curses.KEY_UP:
                self.menu_pos = (self.menu_pos - 1) % len(ACTIONS)
                return
            if ch == curses.KEY_DOWN:
                self.menu_pos = (self.menu_pos + 1) % len(ACTIONS)
                return
            if ch in (10, 13, curses.KEY_ENTER):
                self.form = ACTIONS[self.menu_pos][1](self)
                self.screen = "form"
                return
            if ch == 27:
                self.screen = "status"
                return
        keymap = {ord("q"): "quit", ord("Q"): "quit", ord("1"): "status", ord("s"): "status",
                  ord("2"): "chain", ord("c"): "chain", ord("m"): "menu", ord("h"): "help", ord("?"): "help"}
        action = keymap.get(ch)
        if action == "quit":
            self.running = False
        elif action is not None:
            self.screen, self.scroll = action, 0
            if action == "menu":
                self.menu_pos = 0
        elif ch == ord("r"):
            self.send(list(self.monitor.links.values()), "reset_statistics", {})
        elif ch in (curses.KEY_DOWN, ord("j")):
            self.scroll += 1
        elif ch in (curses.KEY_UP, ord("k")):
            self.scroll = max(0, self.scroll - 1)
        elif ch == curses.KEY_NPAGE:
            self.scroll += 10
        elif ch == curses.KEY_PPAGE:
            self.scroll = max(0, self.scroll - 10)

    # -- drawing --------------------------------------------------------------
    def _init_colors(self) -> None:
        attrs = {"normal": curses.A_NORMAL, "bold": curses.A_BOLD, "dim": curses.A_DIM,
                 "title": curses.A_REVERSE, "focus": curses.A_REVERSE,
                 "ok": curses.A_BOLD, "bad": curses.A_BOLD, "warn": curses.A_BOLD, "head": curses.A_BOLD}
        if curses.has_colors():
            curses.start_color()
            try:
                curses.use_default_colors()
                bg = -1
            except curses.error:
                bg = curses.COLOR_BLACK
            for i, (style, fg) in enumerate((("ok", curses.COLOR_GREEN), ("bad", curses.COLOR_RED),
                                             ("warn", curses.COLOR_YELLOW), ("head", curses.COLOR_CYAN)), 1):
                curses.init_pair(i, fg, bg)
                attrs[style] = curses.color_pair(i) | curses.A_BOLD
        self._attrs = attrs

    def _put(self, win: Any, y: int, x: int, text: str, style: str = "normal") -> int:
        h, w = win.getmaxyx()
        if y >= h or x >= w:
            return x
        room = w - x - (1 if y == h - 1 else 0)
        if room <= 0:
            return x
        text = text[:room]
        try:
            win.addstr(y, x, text, self._attrs.get(style, 0))
        except curses.error:
            pass
        return x + len(text)

    def _line(self, win: Any, y: int, line: Line) -> None:
        x = 0
        for text, style in line:
            x = self._put(win, y, x, text, style)

    def _menu_lines(self) -> list[Line]:
        out: list[Line] = [[("Menu", "head"), ("  Up/Down to choose, Enter to open, Esc back", "dim")], []]
        for i, (label, _) in enumerate(ACTIONS):
            style = "focus" if i == self.menu_pos else "normal"
            out.append([(f"  {'>' if i == self.menu_pos else ' '} ", "bold"), (f"{label:<30}", style)])
        return out

    def _form_lines(self, width: int) -> tuple[list[Line], int]:
        form = self.form
        assert form is not None
        out: list[Line] = [[(form.title, "head"),
                            ("  Enter send  Esc cancel  Tab next  Left/Right choose", "dim")], []]
        cursor_row = 0
        for i, f in enumerate(form.fields):
            label = f"  {f.label}: "
            room = max(10, width - len(label) - 4)
            shown = f"< {f.value} >" if f.kind == "choice" else f.value
            if len(shown) > room:
                shown = "..." + shown[-(room - 3):]
            focused = i == form.focus
            if focused:
                cursor_row = len(out)
            out.append([(label, "bold" if focused else "normal"),
                        (shown + (" " if f.kind != "choice" else ""), "focus" if focused else "normal")])
        out.append([])
        if form.error:
            out += [[(chunk, "bad")] for chunk in textwrap.wrap(form.error, max(20, width - 2))]
        if form.help:
            out.append([(form.help, "dim")])
        return out, cursor_row

    def draw(self, win: Any) -> None:
        h, w = win.getmaxyx()
        win.erase()
        if h < 10 or w < 40:
            self._put(win, 0, 0, f"terminal too small ({w}x{h}); need 40x10", "bad")
            win.noutrefresh()
            curses.doupdate()
            return
        links = list(self.monitor.links.values())
        up = sum(1 for link in links if link.snapshot().connected)
        title = f" framechain tui | 1 status 2 chain m menu h help q quit | {up}/{len(links)} up"
        clock = time.strftime("%H:%M:%S ")
        self._put(win, 0, 0, title.ljust(w - len(clock))[: max(0, w - len(clock))] + clock, "title")
        nresp = self.RESPONSE_LINES if h >= 20 else 3
        body_top, body_rows = 1, h - nresp - 2
        cursor = None
        if self.screen == "form" and self.form is not None:
            lines, row = self._form_lines(w)
            cursor = row
        elif self.screen == "menu":
            lines = self._menu_lines()
        elif self.screen == "chain":
            lines = chain_lines(links)
        elif self.screen == "help":
            lines = [[(text, "head" if text and not text.startswith(" ") else "normal")] for text in HELP]
        else:
            lines = status_lines(links)
        max_scroll = max(0, len(lines) - body_rows)
        if cursor is not None:
            self.scroll = max(0, cursor - body_rows + 1)
        self.scroll = min(self.scroll, max_scroll)
        for i, line in enumerate(lines[self.scroll:self.scroll + body_rows]):
            self._line(win, body_top + i, line)
        if self.scroll < max_scroll:
            self._put(win, body_top + body_rows - 1, w - 12, " (more: Dn) ", "dim")
        sep = h - nresp - 1
        n = self.pending
        pending = f" ({n} pending)" if n else ""
        self._put(win, sep, 0, f"-- responses{pending} " + "-" * w, "dim")
        wrapped: list[tuple[str, str]] = []
        for style, text in list(self.responses)[-nresp:]:
            for chunk in textwrap.wrap(text, w - 1) or [""]:
                wrapped.append((style, chunk))
        for i, (style, text) in enumerate(wrapped[-nresp:]):
            self._put(win, sep + 1 + i, 0, text, style)
        win.noutrefresh()
        curses.doupdate()

    @staticmethod
    def _follow_terminal_size(stdscr: Any) -> None:
        # ncurses can miss a SIGWINCH (it may land on another thread): ask the tty itself
        try:
            cols, rows = os.get_terminal_size(sys.__stdout__.fileno())
        except (OSError, AttributeError, ValueError):
            return
        if (rows, cols) != stdscr.getmaxyx() and rows > 0 and cols > 0:
            curses.resizeterm(rows, cols)
            stdscr.erase()

    def run(self, stdscr: Any) -> int:
        """The main loop under ``curses.wrapper``; returns the exit code."""
        self._init_colors()
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        stdscr.keypad(True)
        stdscr.timeout(int(self.refresh * 1000))
        while self.running:
            self._follow_terminal_size(stdscr)
            self.draw(stdscr)
            ch = stdscr.getch()
            if ch == -1:
                continue
            if ch == curses.KEY_RESIZE:
                curses.update_lines_cols()
                stdscr.erase()
            self.key(ch)
        return 0
