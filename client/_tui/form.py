"""Editable forms for the curses client (key handling and validation, no curses).

A :class:`Form` is a list of :class:`Field` objects. Text fields take typed
characters, Backspace and Ctrl-U (clear); choice fields cycle with Left/Right
or Space; JSON fields are text that must parse as JSON before the form may be
submitted. Tab/Down and Shift-Tab/Up move between fields, Enter submits,
Esc cancels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Field", "Form", "KEY_UP", "KEY_DOWN", "KEY_LEFT", "KEY_RIGHT", "KEY_BACKSPACE", "KEY_BTAB"]

# curses key codes (kept here so the logic is testable without a terminal)
KEY_DOWN, KEY_UP, KEY_LEFT, KEY_RIGHT, KEY_BACKSPACE, KEY_BTAB = 258, 259, 260, 261, 263, 353
_ENTER = (10, 13, 343)
_ESC = 27
_TAB = 9


@dataclass
class Field:
    """One form field: ``kind`` is ``text``, ``json`` or ``choice``."""

    name: str
    label: str
    value: str = ""
    kind: str = "text"
    choices: list[str] = field(default_factory=list)

    def parsed(self) -> Any:
        """The value as the request needs it (JSON fields parsed)."""
        if self.kind == "json":
            return json.loads(self.value)
        return self.value.strip()


class Form:
    """A titled set of fields with a submit callback and an error line.

    Parameters
    ----------
    title
        Shown above the fields.
    fields
        The fields, in order.
    submit
        Called with ``{name: parsed value}`` when the form validates; it may
        raise ``ValueError`` to refuse (the message is shown in the form).
    on_change
        Called with ``(form, field)`` after a field's value changes.
    """

    def __init__(self, title: str, fields: list[Field], submit: Callable[[dict[str, Any]], None],
                 on_change: Callable[[Form, Field], None] | None = None, help: str = "") -> None:
        self.title, self.fields, self.submit = title, fields, submit
        self.on_change = on_change
        self.help = help
        self.focus = 0
        self.error = ""
        self.done = False

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def values(self) -> dict[str, Any]:
        """Parse every field; ValueError naming the field on bad input."""
        out = {}
        for f in self.fields:
            if not f.value.strip():
                raise ValueError(f"{f.label} is empty")
            try:
                out[f.name] = f.parsed()
            except json.JSONDecodeError as err:
                raise ValueError(f"invalid JSON in {f.label}: {err.msg} at column {err.colno}; not sent") from err
        return out

    def key(self, ch: int) -> None:
        """Handle one key code; sets ``done`` on submit or cancel."""
        cur = self.fields[self.focus]
        if ch == _ESC:
            self.done = True
            return
        if ch in _ENTER:
            try:
                values = self.values()
                self.submit(values)
            except ValueError as err:
                self.error = str(err)
                return
            self.done = True
            return
        if ch in (_TAB, KEY_DOWN):
            self.focus = (self.focus + 1) % len(self.fields)
            return
        if ch in (KEY_BTAB, KEY_UP):
            self.focus = (self.focus - 1) % len(self.fields)
            return
        old = cur.value
        if cur.kind == "choice":
            if ch in (KEY_LEFT, KEY_RIGHT, 32) and cur.choices:
                step = -1 if ch == KEY_LEFT else 1
                i = cur.choices.index(cur.value) if cur.value in cur.choices else -1
                cur.value = cur.choices[(i + step) % len(cur.choices)]
        elif ch in (KEY_BACKSPACE, 127, 8):
            cur.value = cur.value[:-1]
        elif ch == 21:      # Ctrl-U
            cur.value = ""
        elif 32 <= ch < 127:
            cur.value += chr(ch)
        if cur.value != old:
            self.error = ""
            if self.on_change is not None:
                self.on_change(self, cur)
