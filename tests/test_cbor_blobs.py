"""elide_blobs: large byte strings cut out of a CBOR message, the rest decoded by cbor2, same values back."""

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framechain.framereceiver.cbor_blobs import BLOB_TAG, elide_blobs

leaves = st.one_of(st.integers(-2**64 + 1, 2**64 - 1), st.text(max_size=20), st.binary(max_size=40),
                   st.binary(min_size=4096, max_size=9000), st.floats(allow_nan=False), st.booleans(), st.none())
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4),
    st.builds(lambda v: cbor2.CBORTag(56500, ["bslz4", 2, v]), inner)), max_leaves=12)


def _restore(blobs):
    def hook(*args):  # cbor2 6.x calls (tag, immutable), the documented form is (decoder, tag)
        tag = args[0] if isinstance(args[0], cbor2.CBORTag) else args[1]
        return bytes(blobs[tag.value]) if tag.tag == BLOB_TAG else tag
    return hook


@settings(max_examples=300, deadline=None)
@given(values)
def test_elided_message_decodes_to_the_same_value(value):
    raw = cbor2.dumps(value)
    small, blobs = elide_blobs(raw)
    assert all(len(b) >= 4096 for b in blobs)
    assert len(small) <= len(raw) - sum(len(b) for b in blobs) + 8 * len(blobs)
    assert cbor2.loads(small, tag_hook=_restore(blobs)) == cbor2.loads(raw)


def test_blobs_are_views_of_the_message_not_copies():
    raw = bytearray(cbor2.dumps({"data": b"\x01" * 10000}))
    _small, (blob,) = elide_blobs(raw)
    raw[-1] = 7
    assert blob[-1] == 7


def test_indefinite_length_items_are_walked():
    raw = b"\x9f\x01\x5f\x42ab\x41c\xff\xbf\x61k\x02\xff\xff"  # [_ 1, (_ h'6162', h'63'), {_ "k": 2}]
    small, blobs = elide_blobs(raw)
    assert not blobs and cbor2.loads(small) == [1, b"abc", {"k": 2}]


@pytest.mark.parametrize("raw, why", [
    (cbor2.dumps({"d": b"x" * 5000})[:-1], "runs past"),
    (b"\x9a\xff\xff\xff\xff", "longer than the message"),
    (b"\x1c", "reserved"),
    (b"\xff", "break outside"),
    (b"\x01\x02", "after the CBOR message"),
    (b"\xc1" * 100 + b"\x01", "nesting"),
    (b"\x82\x01\x18", "ends inside"),
])
def test_broken_messages_raise_value_error(raw, why):
    with pytest.raises(ValueError, match=why):
        elide_blobs(raw)


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_truncated_or_mutated_messages_raise_only_value_error(value, data):
    raw = bytearray(cbor2.dumps(value))
    if data.draw(st.booleans()) and len(raw) > 1:
        del raw[data.draw(st.integers(1, len(raw) - 1)):]
    else:
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        elide_blobs(bytes(raw))
    except ValueError:
        pass
