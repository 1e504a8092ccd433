"""Declared, validated configuration: every key has a type, a default and help.

``Option`` declares one key (type, default, help, choices, bounds, a check);
``Section`` declares a nested object of options (the writer's ``file`` and
``process``, a receiver ``source``, a command's parameters). ``validate_options``
checks a (partial) set of values against a table of them and names the key by
its path (``file/path``) in every error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Option", "Section", "validate_options", "defaults"]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "an object", list: "a list"}


@dataclass(frozen=True)
class Option:
    """One configuration key.

    ``check`` returns a problem sentence (or None) for a value of the right type.
    """

    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    low: float | None = None    #: smallest number allowed (exclusive when ``low_open``)
    high: float | None = None   #: largest number allowed
    low_open: bool = False
    required: bool = False      #: must be given where a complete set is checked (a command's parameters)

    def types(self) -> tuple[type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def coerce(self, owner: str, key: str, value: Any) -> Any:
        types = self.types()
        ok = False
        for t in types:
            if t is bool:
                ok = isinstance(value, bool)
            elif t in (int, float):
                ok = isinstance(value, (int, float) if t is float else int) and not isinstance(value, bool)
                if ok and t is float:
                    if isinstance(value, float) and not math.isfinite(value) or abs(value) > 1e308:
                        raise ConfigError(f"The '{key}' option of {owner} must be a finite number, not "
                                          f"{value if isinstance(value, float) else 'an integer that large'}", key)
                    value = float(value)
            else:
                ok = isinstance(value, t)
            if ok:
                break
        if not ok:
            want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise ConfigError(f"The '{key}' option of {owner} expected {want}, not "
                              f"{type(value).__name__} {value!r}", key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = self._range_problem(value)
            if problem:
                raise ConfigError(f"The '{key}' option of {owner} must be {problem}, not {value!r}", key)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"The '{key}' option of {owner} must be one of {list(self.choices)}, not {value!r}", key)
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(f"The '{key}' option of {owner}: {problem} (got {value!r})", key)
        return value


    def _range_problem(self, value: float) -> str | None:
        lo, hi = self.low, self.high
        if lo is None and hi is None:
            return None
        below = lo is not None and (value <= lo if self.low_open else value < lo)
        above = hi is not None and value > hi
        if not (below or above):
            return None
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}]"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {lo:g}"
        return f"<= {hi:g}"


@dataclass(frozen=True)
class Section:
    """A nested object of declared options; a configure may give any subset of its keys."""

    options: Mapping[str, Option | Section]
    help: str

    @property
    def default(self) -> dict[str, Any]:
        return defaults(self.options)

    def coerce(self, owner: str, key: str, value: Any) -> dict[str, Any]:
        return validate_options(owner, self.options, value, f"{key}/")


def defaults(options: Mapping[str, Option | Section]) -> dict[str, Any]:
    """Every declared key with its default (sections as nested objects)."""
    return {k: o.default for k, o in options.items()}


def validate_options(owner: str, options: Mapping[str, Option | Section], params: Any,
                     prefix: str = "", complete: bool = False) -> dict[str, Any]:
    """Check every key of ``params``; return the coerced values. Raises ConfigError on the first problem.

    ``prefix`` is the path of a nested section (``"file/"``), used in error messages. With
    ``complete``, required keys must be given and the result holds every key (defaults filled in).
    """
    if not isinstance(params, Mapping):
        where = f"'{prefix.rstrip('/')}' of {owner}" if prefix else f"configuration of {owner}"
        keys = f" with keys {sorted(options)}" if prefix else ""
        raise ConfigError(f"{where} must be a JSON object{keys}, not {type(params).__name__}",
                          prefix.rstrip("/") or None)
    out = {}
    for key, value in params.items():
        opt = options.get(key)
        if opt is None:
            known = ", ".join(sorted(options)) or "none"
            raise ConfigError(f"unknown key '{prefix}{key}' for {owner}; known keys: {known}", key)
        out[key] = opt.coerce(owner, prefix + key, value)
    if complete:
        for key, opt in options.items():
            if key not in out:
                if getattr(opt, "required", False):
                    raise ConfigError(f"{owner} needs '{prefix}{key}' ({opt.help})", key)
                out[key] = opt.default
    return out
