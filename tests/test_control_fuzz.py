"""Hostile input on both daemons' control channels: every message, however broken, gets exactly one reply,
no daemon dies, and a nacked message leaves the configuration as it was.

``FRAMECHAIN_FUZZ_EXAMPLES`` sets the number of generated messages per daemon: 500 in ``make test``,
10,000 in ``make soak``.
"""

from __future__ import annotations

import json
import os

import pytest
import zmq
from harness import Daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framechain.ipc import IpcMessage, free_tcp_endpoint
from framechain.ipc.message import MAX_DEPTH, MAX_MESSAGE_BYTES

EXAMPLES = int(os.environ.get("FRAMECHAIN_FUZZ_EXAMPLES", "500"))
TS = "2026-12-02T18:00:00.000000"
# shutdown is left out: a well-formed shutdown is obeyed, not fuzz
VALS = ["status", "configure", "execute", "request_configuration", "request_commands", "request_version",
        "reset_statistics", "reset", "frame_ready", "identity", "request_buffer_config", "notify_status"]
KEYS = {"receiver": ["source", "mode", "max_buffer_mem", "shared_buffer_name", "type", "shape", "frames"],
        "processor": ["plugin", "fr_setup", "shared_memory", "load", "connect", "index", "library", "fr_ready_cnxn"]}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)


def _envelope(msg_val: str = "status", params: object = None, **fields: object) -> dict:
    env = {"msg_type": "cmd", "msg_val": msg_val, "id": 7, "timestamp": TS, "params": {} if params is None else params}
    env.update(fields)
    return env


def _hostile(kind: str) -> st.SearchStrategy[list[bytes]]:
    """One message as its ZeroMQ frames."""
    keys = st.sampled_from(KEYS[kind])
    valid = st.builds(lambda v, p: json.dumps(_envelope(v, p)).encode(), st.sampled_from(VALS),
                      st.dictionaries(keys, _json, max_size=3))
    one = st.one_of(
        st.binary(max_size=300),                                                     # random bytes
        st.tuples(valid, st.integers(0, 400)).map(lambda t: t[0][:t[1]]),            # truncated JSON
        st.integers(MAX_DEPTH, 6000).map(lambda n: json.dumps(_envelope()).encode().replace(  # deep nesting
            b'"params": {}', b'"params": {"a": ' + b"[" * n + b"]" * n + b"}")),
        st.integers(MAX_DEPTH, 6000).map(lambda n: b"[" * n),                        # deep and unbalanced
        st.tuples(st.sampled_from(["id", "params"]), st.integers(21, 6000)).map(     # huge integers
            lambda t: json.dumps(_envelope(id=0 if t[0] == "id" else 7)).replace(
                '"id": 0' if t[0] == "id" else '"params": {}',
                ('"id": ' if t[0] == "id" else '"params": {"n": ') + "9" * t[1] + ("" if t[0] == "id" else "}")
            ).encode()),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]).map(   # non-finite numbers
            lambda c: json.dumps(_envelope("configure")).replace('"params": {}', '"params": {"x": %s}' % c).encode()),
        st.tuples(st.sampled_from(["msg_type", "msg_val", "id", "timestamp", "params"]), _json).map(  # wrong types
            lambda t: json.dumps(_envelope(**{t[0]: t[1]})).encode()),
        valid,
    )
    multipart = st.lists(st.binary(max_size=60) | valid, min_size=2, max_size=4)
    return st.one_of(one.map(lambda m: [m]), multipart)


@pytest.fixture(scope="module", params=["receiver", "processor"])
def daemon(request, tmp_path_factory):
    kind = request.param
    args = ["--ready", free_tcp_endpoint(), "--release", free_tcp_endpoint()] if kind == "receiver" else []
    d = Daemon(kind, args, free_tcp_endpoint(), tmp_path_factory.mktemp(kind) / "log")
    if kind == "processor":
        d.ok("configure", {"plugin": {"load": {"index": "sum", "library": "sum"}}})
    yield d
    assert d.proc.poll() is None, f"the {kind} died:\n{d.log()}"
    st_ = d.status()["process"]
    assert st_["internal_errors"] == 0 and st_["malformed_messages"] > 0
    d.stop()


@pytest.fixture(scope="module")
def dealer(daemon):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(daemon.ctrl)
    yield s
    s.close()


def _one_reply(sock: zmq.Socket, frames: list[bytes], daemon: Daemon) -> IpcMessage:
    sock.send_multipart(frames)
    assert sock.poll(20000), f"no reply to {frames[-1][:80]!r}"
    reply = IpcMessage.decode(sock.recv())
    daemon.ok("status")  # answered after the message was handled: a second reply would be waiting now
    assert not sock.poll(0), "more than one reply"
    return reply


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_every_hostile_message_gets_exactly_one_reply(daemon, dealer, data):
    frames = data.draw(_hostile(daemon.kind))
    before = daemon.ok("request_configuration")
    reply = _one_reply(dealer, frames, daemon)
    assert reply.msg_type in ("ack", "nack")
    if reply.msg_type == "nack":
        assert reply.error and "internal error" not in reply.error, reply.error
        assert daemon.ok("request_configuration") == before


@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES + 1, 10 << 20])
def test_oversized_messages_are_refused_before_parsing(daemon, dealer, size):
    body = json.dumps(_envelope("configure")).encode().replace(b'"params": {}', b'"params": {"x": "' +
                                                               b"a" * size + b'"}')
    reply = _one_reply(dealer, [body], daemon)
    assert reply.msg_type == "nack" and "larger than" in reply.error and reply.id == 0
