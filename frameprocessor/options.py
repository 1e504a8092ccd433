"""Declared, validated configuration for plugins: every key has a type, a default and help."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from framechain.ipc.errors import ConfigError

__all__ = ["Option", "validate_options"]

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
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"The '{key}' option of {owner} must be one of {list(self.choices)}, not {value!r}", key)
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(f"The '{key}' option of {owner}: {problem} (got {value!r})", key)
        return value


def validate_options(owner: str, options: Mapping[str, Option], params: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key of ``params``; return the coerced values. Raises ConfigError on the first problem."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"configuration of {owner} must be a JSON object, not {type(params).__name__}")
    out = {}
    for key, value in params.items():
        opt = options.get(key)
        if opt is None:
            known = ", ".join(sorted(options)) or "none"
            raise ConfigError(f"unknown key '{key}' for {owner}; known keys: {known}", key)
        out[key] = opt.coerce(owner, key, value)
    return out
