"""IpcMessage: odin-data wire format, strict parsing with precise reasons."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framechain.ipc import IpcMessage, ProtocolError
from framechain.ipc.message import MSG_VALS, nack_for_garbage

GOOD = {"msg_type": "cmd", "msg_val": "configure", "id": 263, "timestamp": "2026-11-23T08:53:06.340914",
        "params": {"a": 1}}


def test_round_trip_keeps_every_field():
    msg = IpcMessage.decode(json.dumps(GOOD))
    assert (msg.msg_type, msg.msg_val, msg.id, msg.timestamp, msg.params) == (
        "cmd", "configure", 263, "2026-11-23T08:53:06.340914", {"a": 1})
    assert json.loads(msg.encode()) == GOOD


def test_reply_copies_id_and_msg_val():
    req = IpcMessage("cmd", "status")
    ack, nack = req.ack({"x": 1}), req.nack("bad thing")
    assert (ack.msg_type, ack.msg_val, ack.id) == ("ack", "status", req.id)
    assert (nack.msg_type, nack.id, nack.error) == ("nack", req.id, "bad thing")


def test_params_may_be_omitted():
    obj = dict(GOOD)
    del obj["params"]
    assert IpcMessage.decode(json.dumps(obj)).params == {}


@pytest.mark.parametrize("change, reason", [
    ({"msg_type": "command"}, "bad msg_type 'command'"),
    ({"msg_val": "explode"}, "unknown msg_val 'explode'"),
    ({"msg_val": 5}, "bad msg_val 5"),
    ({"id": -1}, "bad id -1"),
    ({"id": "7"}, "bad id '7'"),
    ({"id": True}, "bad id True"),
    ({"timestamp": "yesterday"}, "bad timestamp 'yesterday'"),
    ({"timestamp": 12}, "bad timestamp 12"),
    ({"params": [1, 2]}, "bad params: must be a JSON object, not list"),
    ({"extra": 1}, "unknown field(s) ['extra']"),
])
def test_bad_fields_are_named(change, reason):
    obj = {**GOOD, **change}
    with pytest.raises(ProtocolError) as err:
        IpcMessage.decode(json.dumps(obj))
    assert reason in str(err.value)


@pytest.mark.parametrize("field", ["msg_type", "msg_val", "id", "timestamp"])
def test_missing_field_is_named(field):
    obj = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(ProtocolError, match=f"missing field '{field}'"):
        IpcMessage.decode(json.dumps(obj))


def test_not_json_and_not_object():
    with pytest.raises(ProtocolError, match="not valid JSON"):
        IpcMessage.decode(b"{nope")
    with pytest.raises(ProtocolError, match="must be a JSON object, not list"):
        IpcMessage.decode(b"[1, 2]")
    with pytest.raises(ProtocolError, match="not UTF-8"):
        IpcMessage.decode(b"\xff\xfe")


def test_every_msg_val_accepted():
    for val in MSG_VALS:
        assert IpcMessage.decode(IpcMessage("cmd", val).encode()).msg_val == val


def test_nack_for_garbage_echoes_what_it_can():
    reply = nack_for_garbage(json.dumps({**GOOD, "msg_val": "explode", "id": 9}).encode(), "why")
    assert (reply.msg_type, reply.msg_val, reply.id, reply.error) == ("nack", "explode", 9, "why")
    reply = nack_for_garbage(b"\x00garbage", "why")
    assert (reply.msg_type, reply.id) == ("nack", 0)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
                           max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["msg_type", "msg_val", "id", "timestamp", "params", "x"]), json_values))
def test_fuzz_decode_only_raises_protocol_error(obj):
    try:
        msg = IpcMessage.decode(json.dumps(obj))
    except ProtocolError as err:
        assert str(err)
    else:
        assert IpcMessage.decode(msg.encode()) == msg


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes(raw):
    try:
        IpcMessage.decode(raw)
    except ProtocolError:
        pass


def test_fast_frame_notification_is_a_valid_identical_message():
    from framechain.ipc.message import frame_notification
    raw = frame_notification("frame_release", 12345, 7)
    msg = IpcMessage.decode(raw)
    assert (msg.msg_type, msg.msg_val, msg.params) == ("notify", "frame_release", {"frame": 12345, "buffer_id": 7})
    assert raw == IpcMessage("notify", "frame_release", msg.params, id=msg.id, timestamp=msg.timestamp).encode()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_refused(constant):
    raw = json.dumps({**GOOD, "params": {"hdf": {"close_file_timeout": 0}}}).replace("0}}", constant + "}}")
    assert constant in raw
    with pytest.raises(ProtocolError, match=f"contains {constant}, which is not standard JSON"):
        IpcMessage.decode(raw)


def test_non_finite_params_are_sent_as_null():
    import numpy as np
    msg = IpcMessage("ack", "status", {"g2": float("nan"), "arr": np.array([1.0, np.inf]), "ok": [1, 2.5]})
    raw = msg.encode()
    assert b"NaN" not in raw and b"Infinity" not in raw
    assert IpcMessage.decode(raw).params == {"g2": None, "arr": [1.0, None], "ok": [1, 2.5]}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 10 ** 400],
                         ids=["nan", "inf", "-inf", "1e400"])
def test_option_refuses_non_finite_numbers(value):
    # a plugin's float option is the last guard for numbers that reach it from a JSON file read by Python
    from framechain.ipc.options import Option
    from framechain.ipc.errors import ConfigError
    with pytest.raises(ConfigError, match="'close_file_timeout' option of hdf must be a finite number") as err:
        Option(float, 1.0, "seconds").coerce("hdf", "close_file_timeout", value)
    assert err.value.key == "close_file_timeout"
    assert Option(float, 1.0, "seconds").coerce("hdf", "close_file_timeout", 3) == 3.0
