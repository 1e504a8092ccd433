"""IpcChannel helpers on real ZeroMQ sockets over loopback: pending() and subscription_events()."""

import time

import pytest
import zmq

from framechain.ipc import IpcChannel, free_tcp_endpoint


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def pair():
    """A bound SUB and a connected XPUB it has joined (a PUB drops what it sends before then)."""
    endpoint = free_tcp_endpoint()
    sub, pub = IpcChannel(zmq.SUB), IpcChannel(zmq.XPUB)
    sub.bind(endpoint)
    pub.connect(endpoint)

    def joined():
        sub.poll(0)  # a bound SUB sends its subscription to a new peer only once its thread uses the socket
        return any(pub.subscription_events())

    try:
        _wait(joined)
        yield pub, sub
    finally:
        pub.close()
        sub.close()


def test_pending_reads_what_is_waiting_without_blocking(pair):
    pub, sub = pair
    assert list(sub.pending()) == []  # nothing waiting: returns at once
    for i in range(5):
        pub.socket.send(b"m%d" % i)
    assert sub.poll(5000)
    time.sleep(0.2)  # let all five arrive
    assert list(sub.pending(limit=2)) == [b"m0", b"m1"]
    got = []
    for raw in sub.pending():
        got.append(raw)
        break  # leaving the loop leaves the rest on the socket
    assert got == [b"m2"]
    assert list(sub.pending()) == [b"m3", b"m4"]
    assert list(sub.pending()) == []


def test_subscription_events_report_joins_and_leaves():
    endpoint = free_tcp_endpoint()
    xpub = IpcChannel(zmq.XPUB)
    xpub.socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # as the receiver: every (un)subscribe, duplicates too
    xpub.bind(endpoint)
    subs = [IpcChannel(zmq.SUB), IpcChannel(zmq.SUB)]
    events = []
    try:
        for s in subs:
            s.connect(endpoint)
        _wait(lambda: events.extend(xpub.subscription_events()) or len(events) >= 2)
        assert events == [True, True]
        subs[0].socket.setsockopt(zmq.UNSUBSCRIBE, b"")
        _wait(lambda: events.extend(xpub.subscription_events()) or len(events) >= 3)
        assert events == [True, True, False]
        assert list(xpub.subscription_events()) == []
    finally:
        for s in subs:
            s.close()
        xpub.close()


def test_subscription_events_skip_other_messages_and_honour_limit():
    endpoint = free_tcp_endpoint()
    xpub, xsub = IpcChannel(zmq.XPUB), IpcChannel(zmq.XSUB)  # an XSUB can send the XPUB anything
    try:
        xpub.bind(endpoint)
        xsub.connect(endpoint)
        for raw in (b"\x01a", b"not an event", b"\x01b", b"\x00a"):
            xsub.socket.send(raw)
        assert xpub.poll(5000)
        time.sleep(0.2)  # let all four arrive
        assert list(xpub.subscription_events(limit=2)) == [True]  # two messages read, one an event
        assert list(xpub.subscription_events()) == [True, False]
    finally:
        xsub.close()
        xpub.close()
