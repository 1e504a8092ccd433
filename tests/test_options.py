"""Declared options: types, bounds, choices, nested sections and required command parameters."""

import logging
import math

import pytest

from framechain.ipc.channel import endpoint_problem
from framechain.ipc.control import ThrottledLog, load_config_file
from framechain.ipc.errors import ConfigError
from framechain.ipc.message import IpcMessage, dumps_finite
from framechain.ipc.options import Option, Section, defaults, validate_options

TABLE = {
    "threads": Option(int, 2, "threads", low=1, high=64),
    "timeout": Option(float, 5.0, "seconds", low=0, low_open=True),
    "mode": Option(str, "a", "mode", choices=("a", "b")),
    "file": Section({"path": Option(str, "", "where"), "first": Option(int, 1, "first number", low=0)}, "file"),
}


@pytest.mark.parametrize("params, words", [
    ({"threads": 0}, ["'threads'", "in [1, 64]", "not 0"]),
    ({"threads": 65}, ["in [1, 64]"]),
    ({"threads": True}, ["expected an integer", "bool"]),
    ({"timeout": 0}, ["'timeout'", "> 0"]),
    ({"timeout": math.inf}, ["finite"]),
    ({"mode": "c"}, ["one of ['a', 'b']"]),
    ({"file": {"first": -1}}, ["'file/first'", ">= 0"]),
    ({"file": {"colour": 1}}, ["unknown key 'file/colour'", "known keys: first, path"]),
    ({"file": "x"}, ["'file'", "JSON object with keys ['first', 'path']"]),
    ({"nope": 1}, ["unknown key 'nope'", "known keys: file, mode, threads, timeout"]),
])
def test_bad_values_name_the_path_the_value_and_the_limit(params, words):
    with pytest.raises(ConfigError) as err:
        validate_options("Thing 't'", TABLE, params)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "Thing 't'" in str(err.value)


def test_good_values_are_coerced_and_partial():
    assert validate_options("t", TABLE, {"timeout": 3, "file": {"path": "/x"}}) == \
        {"timeout": 3.0, "file": {"path": "/x"}}
    assert defaults(TABLE) == {"threads": 2, "timeout": 5.0, "mode": "a", "file": {"path": "", "first": 1}}


def test_complete_checks_required_keys_and_fills_defaults():
    cmd = {"frames": Option(int, 0, "frames to take", low=1, required=True), "file": Option(str, "d.h5", "out")}
    with pytest.raises(ConfigError, match="needs 'frames' \\(frames to take\\)"):
        validate_options("collect", cmd, {"file": "x.h5"}, complete=True)
    assert validate_options("collect", cmd, {"frames": 3}, complete=True) == {"frames": 3, "file": "d.h5"}


@pytest.mark.parametrize("endpoint, ok", [
    ("tcp://127.0.0.1:5000", True), ("tcp://*:0", True), ("tcp://host:*", True), ("ipc:///tmp/x", True),
    ("inproc://a", True), ("tcp://127.0.0.1", False), ("tcp://:5000", False), ("tcp://h:70000", False),
    ("udp://h:1", False), ("nowhere", False), (5000, False),
])
def test_one_endpoint_check(endpoint, ok):
    assert (endpoint_problem(endpoint) is None) == ok


def test_one_nan_sanitiser():
    assert dumps_finite({"g2": [1.0, math.nan, math.inf], "n": 2}) == b'{"g2": [1.0, null, null], "n": 2}'
    msg = IpcMessage("ack", "status", {"mean": math.nan})
    assert IpcMessage.decode(msg.encode()).params == {"mean": None}


def test_throttled_log_logs_the_first_few_then_says_so_once(caplog):
    warn = ThrottledLog(logging.getLogger("framechain.test"), limit=2, counted_in="status frames/bad")
    with caplog.at_level(logging.WARNING, logger="framechain.test"):
        for i in range(5):
            warn.warning("bad %d", i)
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0", "bad 1", "further warnings of this kind suppressed; see status frames/bad"]
    assert warn.count == 5


@pytest.mark.parametrize("text, words", [
    ("not json", ["is not valid JSON"]), ('[{"mode": "block"}, 3]', ["item 1", "JSON object"]),
])
def test_config_files_are_checked_before_use(tmp_path, text, words):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config_file(str(path))
    assert all(w in str(err.value) for w in words)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "missing.json"))


def test_a_config_file_holds_one_object_or_a_list(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"mode": "drop"}')
    assert load_config_file(str(path)) == [{"mode": "drop"}]
