"""IpcMessage: odin-data's JSON control and notification message.

Wire form (one UTF-8 JSON object per ZeroMQ frame)::

    {"msg_type": "cmd", "msg_val": "configure", "id": 263,
     "timestamp": "2026-11-23T08:53:06.340914", "params": {...}}

Parsing is strict: a bad ``msg_type``, ``msg_val``, ``id``, ``timestamp`` or
``params`` raises :class:`~framechain.ipc.errors.ProtocolError` with a reason a
person can act on. A reply (``ack``/``nack``) copies the request's ``id`` and
``msg_val``.

Limits, checked before and while parsing, so no message however broken costs
more than a nack: ``MAX_MESSAGE_BYTES`` per message, ``MAX_DEPTH`` nested
arrays/objects, ``MAX_INT_DIGITS`` digits per integer, ``MAX_STRING_BYTES``
per string, finite numbers only.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import datetime
from typing import Any

import numpy as np

from .errors import ProtocolError

__all__ = ["IpcMessage", "MSG_TYPES", "MSG_VALS", "next_id", "nack_for_garbage", "frame_notification",
           "dumps_finite", "loads_limited", "MAX_MESSAGE_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS", "MAX_STRING_BYTES"]

MAX_MESSAGE_BYTES = 4 << 20   #: a configure of a whole chain is a few kB
MAX_DEPTH = 32                #: nested arrays/objects (a writer configure needs 4)
MAX_INT_DIGITS = 20           #: every 64-bit integer fits
MAX_STRING_BYTES = 64 << 10   #: paths, names, endpoints

MSG_TYPES = frozenset({"cmd", "ack", "nack", "notify"})
MSG_VALS = frozenset({
    "reset", "status", "configure", "request_configuration", "execute",
    "request_commands", "request_version", "reset_statistics", "shutdown",
    "request_buffer_config", "request_buffer_precharge", "identity",
    "frame_ready", "frame_release", "buffer_config", "buffer_precharge",
    "notify_status",
})
_FIELDS = ("msg_type", "msg_val", "id", "timestamp", "params")
_FIELD_SET = frozenset(_FIELDS)
_ids = itertools.count(1)


def next_id() -> int:
    """Return a process-wide increasing message id."""
    return next(_ids)


def _now() -> str:
    return datetime.now().isoformat(timespec="microseconds")


class IpcMessage:
    """One control or notification message.

    Examples
    --------
    >>> msg = IpcMessage("cmd", "status")
    >>> IpcMessage.decode(msg.encode()).msg_val
    'status'
    """

    __slots__ = ("msg_type", "msg_val", "id", "timestamp", "params")

    def __init__(self, msg_type: str, msg_val: str, params: dict[str, Any] | None = None,
                 id: int | None = None, timestamp: str | None = None) -> None:
        self.msg_type = msg_type
        self.msg_val = msg_val
        self.id = next_id() if id is None else id
        self.timestamp = timestamp or _now()
        self.params = {} if params is None else params

    # -- encoding -------------------------------------------------------
    def encode(self) -> bytes:
        """Serialise to the wire form (standard JSON: a NaN or infinite number in params is sent as null)."""
        obj = {"msg_type": self.msg_type, "msg_val": self.msg_val, "id": self.id,
               "timestamp": self.timestamp, "params": self.params}
        return dumps_finite(obj)

    @classmethod
    def decode(cls, raw: bytes | str) -> IpcMessage:
        """Parse and validate the wire form; raise ProtocolError naming the problem."""
        return cls.from_dict(loads_limited(raw))

    @classmethod
    def from_dict(cls, obj: Any) -> IpcMessage:
        """Validate a decoded JSON value and build the message."""
        if not isinstance(obj, dict):
            raise ProtocolError(f"message must be a JSON object, not {type(obj).__name__}")
        if len(obj) > 5 or not _FIELD_SET.issuperset(obj):
            unknown = set(obj) - _FIELD_SET
            raise ProtocolError(f"unknown field(s) {sorted(unknown)}; an IpcMessage has only {list(_FIELDS)}")
        for field in ("msg_type", "msg_val", "id", "timestamp"):
            if field not in obj:
                raise ProtocolError(f"missing field '{field}'")
        msg_type, msg_val, msg_id, ts = obj["msg_type"], obj["msg_val"], obj["id"], obj["timestamp"]
        if not isinstance(msg_type, str) or msg_type not in MSG_TYPES:
            raise ProtocolError(f"bad msg_type {msg_type!r}; expected one of {sorted(MSG_TYPES)}")
        if not isinstance(msg_val, str):
            raise ProtocolError(f"bad msg_val {msg_val!r}; it must be a string")
        # Replies echo the request's msg_val, even one that was rejected.
        if msg_type in ("cmd", "notify") and msg_val not in MSG_VALS:
            raise ProtocolError(f"unknown msg_val {msg_val!r}; expected one of {sorted(MSG_VALS)}")
        if isinstance(msg_id, bool) or not isinstance(msg_id, int) or msg_id < 0:
            raise ProtocolError(f"bad id {msg_id!r}; it must be a non-negative integer")
        if not isinstance(ts, str):
            raise ProtocolError(f"bad timestamp {ts!r}; expected an ISO 8601 string like 2026-11-23T08:53:06.340914")
        try:
            datetime.fromisoformat(ts)
        except ValueError as err:
            raise ProtocolError(f"bad timestamp {ts!r}; expected ISO 8601 like 2026-11-23T08:53:06.340914") from err
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolError(f"bad params: must be a JSON object, not {type(params).__name__}")
        return cls(msg_type, msg_val, params, id=msg_id, timestamp=ts)

    # -- replies --------------------------------------------------------
    def ack(self, params: dict[str, Any] | None = None) -> IpcMessage:
        """An ``ack`` reply to this message."""
        return IpcMessage("ack", self.msg_val, params, id=self.id)

    def nack(self, error: str, params: dict[str, Any] | None = None) -> IpcMessage:
        """A ``nack`` reply carrying ``params.error``."""
        p = dict(params or {})
        p["error"] = error
        return IpcMessage("nack", self.msg_val, p, id=self.id)

    @property
    def error(self) -> str | None:
        """The nack's error text, if any."""
        return self.params.get("error")

    def __repr__(self) -> str:
        return f"IpcMessage({self.msg_type}/{self.msg_val} id={self.id} params={self.params!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IpcMessage):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS)


def frame_notification(msg_val: str, frame: int, buffer_id: int) -> bytes:
    """Encode ``notify/frame_ready`` or ``notify/frame_release`` ``{frame, buffer_id}`` without json.

    The data path sends one of these per frame each way; this is the same bytes
    ``IpcMessage("notify", msg_val, {"frame": f, "buffer_id": b}).encode()`` gives, at a fraction of the cost.
    """
    return (b'{"msg_type": "notify", "msg_val": "%s", "id": %d, "timestamp": "%s", '
            b'"params": {"frame": %d, "buffer_id": %d}}'
            % (msg_val.encode(), next(_ids), _now().encode(), frame, buffer_id))


def nack_for_garbage(raw: bytes, error: str) -> IpcMessage:
    """A nack for a message that failed to parse, echoing its id and msg_val when readable."""
    msg_id, msg_val = 0, "status"
    try:
        obj = loads_limited(raw, finite=False)  # a NaN somewhere still lets us echo the id
    except ProtocolError:
        obj = None
    if isinstance(obj, dict):
        if isinstance(obj.get("id"), int) and not isinstance(obj.get("id"), bool) and obj["id"] >= 0:
            msg_id = obj["id"]
        if isinstance(obj.get("msg_val"), str) and len(obj["msg_val"]) <= 64:
            msg_val = obj["msg_val"]
    return IpcMessage("nack", msg_val, {"error": error}, id=msg_id)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def _depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in JSON text (string contents ignored)."""
    b = np.frombuffer(_STRING.sub(b'""', raw), np.uint8)
    step = np.isin(b, _OPEN).astype(np.int32) - np.isin(b, _CLOSE)
    return int(np.cumsum(step).max(initial=0))


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1 and len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError(f"message has an integer of {len(text.lstrip('-'))} digits; at most "
                            f"{MAX_INT_DIGITS} are allowed")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"message has the number {text[:40]}, which is out of range; numbers must be finite")
    return value


def _long_string(obj: Any) -> bool:
    if isinstance(obj, str):
        return len(obj) > MAX_STRING_BYTES
    if isinstance(obj, dict):
        return any(_long_string(k) or _long_string(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_long_string(v) for v in obj)
    return False


def loads_limited(raw: bytes | str, finite: bool = True) -> Any:
    """``json.loads`` within the module's limits; ProtocolError naming the first one broken.

    ``finite=False`` lets NaN, Infinity and overflowing numbers through (only to read a broken
    message's id for its nack).

    Cheap for the small messages of the data path: the depth is measured only when a message
    holds more brackets than ``MAX_DEPTH``, strings only when it is longer than one may be, and
    integers and floats by json's own hooks as they are parsed.
    """
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is larger than the {MAX_MESSAGE_BYTES} bytes allowed")
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise ProtocolError(f"message nests arrays/objects more than {MAX_DEPTH} deep")
    hooks: dict[str, Any] = {"parse_int": _parse_int}  # a Python call per integer: cheaper than scanning first
    if finite:
        hooks["parse_constant"] = _no_constant
        hooks["parse_float"] = _parse_float
    try:
        obj = json.loads(data.decode("utf-8"), **hooks)
    except UnicodeDecodeError as err:
        raise ProtocolError(f"message is not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise ProtocolError(f"message is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    except RecursionError as err:  # cannot happen below MAX_DEPTH; never let it out of a run loop
        raise ProtocolError(f"message nests arrays/objects more than {MAX_DEPTH} deep") from err
    if len(data) > MAX_STRING_BYTES and _long_string(obj):
        raise ProtocolError(f"message has a string longer than the {MAX_STRING_BYTES} allowed")
    return obj


def dumps_finite(obj: Any) -> bytes:
    """Standard JSON bytes of ``obj``: numpy values as lists, NaN and infinities as null.

    The one place framechain turns a non-finite number into JSON (IpcMessages, live g2 updates).
    """
    try:
        return _ENCODER.encode(obj).encode()
    except ValueError:  # a non-finite float somewhere (e.g. a NaN statistic): rare, so sanitise only then
        return _ENCODER.encode(_finite(obj)).encode()


def _no_constant(name: str) -> Any:
    """``json.loads`` hook for the non-standard constants Python would otherwise accept."""
    raise ProtocolError(f"message contains {name}, which is not standard JSON; numbers must be finite")


def _finite(obj: Any) -> Any:
    """A copy of a params tree with non-finite floats replaced by None (numpy values turned into lists first)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (str, int)) or obj is None:
        return obj
    tolist = getattr(obj, "tolist", None)
    return _finite(tolist()) if tolist is not None else obj


def _json_default(obj: Any) -> Any:
    """Let numpy scalars and arrays travel in params."""
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(default=_json_default, allow_nan=False)
