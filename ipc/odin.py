"""Reply shapes odin-data's own clients read: version blocks, change stamps, parameter metadata.

odin-data's Python adapters (``odin_data.control``, 1.12.0 and main) and its C++
daemons agree on a few shapes beside the parameters themselves:

- ``version/<component>/{major, minor, patch, short, full}`` in a ``request_version`` reply;
- ``status_ts`` / ``config_ts``: integers (microseconds) that change when the *layout* of
  status or configuration changes (a plugin loaded or removed, a parameter set), so a
  client knows when to ask again for the metadata;
- ``metadata/<index>/<param>/{type, access_mode, min, max, allowed_values}`` when a
  ``status`` or ``request_configuration`` request carries ``"metadata": true``;
- ``request_commands``: ``{<index>: {"supported": [<command>, ...]}}``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from .options import Option, Section

__all__ = ["version_block", "ChangeStamp", "value_metadata", "commands_reply"]

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def version_block(version: str) -> dict[str, Any]:
    """``{major, minor, patch, short, full}`` for a version string such as ``"0.1.0"`` or ``"1.26.4"``."""
    m = _VERSION.match(version)
    major, minor, patch = (int(g) if g else 0 for g in m.groups()) if m else (0, 0, 0)
    return {"major": major, "minor": minor, "patch": patch, "short": f"{major}.{minor}.{patch}", "full": version}


class ChangeStamp:
    """A monotonic microsecond stamp, moved on by ``touch()`` (odin's ``update_config_ts``)."""

    def __init__(self) -> None:
        self.value = 0
        self.touch()

    def touch(self) -> int:
        now = time.monotonic_ns() // 1000
        self.value = now if now > self.value else self.value + 1  # strictly increasing
        return self.value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if value < 0 else "uint"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        kinds = {_type_name(v) for v in value}
        if kinds <= {"int", "uint"} and kinds:
            return "int[]" if "int" in kinds else "uint[]"
        if len(kinds) == 1 and next(iter(kinds)) in ("bool", "float", "string"):
            return next(iter(kinds)) + "[]"
        return "custom"
    return "custom" if value is not None else "string"


def _declared(option: Option) -> dict[str, Any]:
    out: dict[str, Any] = {"description": option.help}
    if option.low is not None:
        out["min"] = option.low
    if option.high is not None:
        out["max"] = option.high
    if option.choices is not None:
        out["allowed_values"] = list(option.choices)
    return out


def value_metadata(values: Any, options: Mapping[str, Option | Section] | None = None,
                   writable: bool = False) -> Any:
    """Metadata mirroring ``values``: each leaf becomes ``{type, access_mode, ...}``.

    ``options`` (a declared table) marks its keys ``rw`` with their help, bounds and
    choices; without it (or for keys it does not declare) leaves are ``rw`` only when
    ``writable``, else ``r``.
    """
    if isinstance(values, Mapping):
        out = {}
        for key, value in values.items():
            opt = options.get(key) if options is not None else None
            if isinstance(opt, Section):
                out[key] = value_metadata(value, opt.options, True)
            elif isinstance(value, Mapping) and value:
                out[key] = value_metadata(value, None, writable or opt is not None)
            else:
                leaf: dict[str, Any] = {"type": _type_name(value),
                                        "access_mode": "rw" if (opt is not None or writable) else "r"}
                if isinstance(opt, Option):
                    leaf.update(_declared(opt))
                out[key] = leaf
        return out
    return {"type": _type_name(values), "access_mode": "rw" if writable else "r"}


def commands_reply(commands: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """odin's ``request_commands`` params: ``{<index>: {"supported": [...]}}`` (indices with commands only)."""
    return {index: {"supported": list(names)} for index, names in commands.items() if names}
