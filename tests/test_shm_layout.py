"""Shared-memory layout: segment header, frame header, live-owner and stale detection, views and unmapping."""

import struct
import subprocess
import sys
import weakref

import numpy as np
import posix_ipc
import pytest
from harness import unique_shm_name

from framechain.framereceiver.controller import ReceiverController
from framechain.ipc import FRAME_HEADER, FrameHeader, IpcMessage, SharedBuffer, ShmError, buffer_size_for


@pytest.fixture
def name():
    n = unique_shm_name()
    yield n
    try:
        posix_ipc.unlink_shared_memory("/" + n)
    except posix_ipc.ExistentialError:
        pass


def test_segment_header_and_buffer_offsets(name):
    size = buffer_size_for(64 * 64 * 2)
    buf, note = SharedBuffer.create(name, 4, size)
    assert note is None
    user = SharedBuffer.open(name)
    assert (user.num_buffers, user.buffer_size) == (4, size)
    with open(f"/dev/shm/{name}", "rb") as fh:
        raw = fh.read(24)
    assert struct.unpack("QQQ", raw)[1:] == (4, size)
    for i in range(4):
        assert user.offset(i) == 24 + i * size
    hdr = FrameHeader(7, "<u2", (64, 64), 64 * 64 * 2, 1.5, "acq1", "data")
    buf.write_header(2, hdr)
    buf.data(2, "<u2", (64, 64))[:] = np.arange(4096, dtype="u2").reshape(64, 64)
    back = FrameHeader.from_fields(user.header_fields(2))
    assert (back.frame_number, back.dtype, back.shape, back.acquisition_id, back.timestamp) == (
        7, "<u2", (64, 64), "acq1", 1.5)
    assert back.problem(size) is None
    np.testing.assert_array_equal(user.data(2, "<u2", (64, 64)).ravel(), np.arange(4096))
    user.close()
    buf.close()
    buf.unlink()


def test_frame_header_is_128_bytes_and_problems_are_named():
    assert FRAME_HEADER.size == 128
    ok = FrameHeader(0, "<u2", (8, 8), 128)
    assert ok.problem(4096) is None
    assert "does not match shape" in FrameHeader(0, "<u2", (8, 8), 100).problem(4096)
    assert "unknown dtype" in FrameHeader(0, "zz", (8, 8), 128).problem(4096)
    assert "bad shape" in FrameHeader(0, "<u2", (0, 8), 0).problem(4096)
    assert "exceeds the buffer size" in FrameHeader(0, "<u2", (64, 64), 8192).problem(4096)
    assert "bad magic" in FrameHeader(0, "<u2", (8, 8), 128, magic=b"XXXX").problem(4096)


def test_live_owner_is_refused_and_stale_segment_replaced(name):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ipc import SharedBuffer; "
        f"b, _ = SharedBuffer.create({name!r}, 2, 4096); print('ready', flush=True); sys.stdin.readline()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    with pytest.raises(ShmError, match=f"in use by a live receiver \\(pid {holder.pid}\\)"):
        SharedBuffer.create(name, 2, 4096)
    holder.stdin.close()
    holder.wait(10)  # exits without unlinking: the segment is now stale
    buf, note = SharedBuffer.create(name, 3, 4096)
    assert note and "stale" in note and str(holder.pid) in note
    assert buf.num_buffers == 3
    buf.close()
    buf.unlink()


def _mapped(buf):
    """Whether this process still maps ``buf``'s segment (found by inode in /proc/self/maps, unlinked or not)."""
    with open("/proc/self/maps") as fh:
        return any(len(f) >= 6 and int(f[4]) == buf.inode and buf.name in f[5] for f in map(str.split, fh))


def test_close_drops_the_cached_views_and_unmaps(name):
    buf, _ = SharedBuffer.create(name, 4, buffer_size_for(64))
    views = buf.views("<u2", (4, 8))
    assert buf.views(np.dtype("<u2"), [4, 8]) is views  # cached per layout
    views[3][:] = 7
    ro = buf.views("<u2", (4, 8), writeable=False)  # another layout replaces the cache
    assert not ro[3].flags.writeable and ro[3][0, 0] == 7
    gone = weakref.ref(ro[0])
    del views, ro
    assert _mapped(buf)
    buf.close()
    buf.unlink()
    assert gone() is None and buf.closed
    assert not _mapped(buf)  # the memory is given back, not kept alive by a view
    with pytest.raises(ShmError, match="closed"):
        buf.views("<u2", (4, 8))


def test_receiver_unmaps_a_segment_it_rebuilds(name):
    ctl = ReceiverController(lambda msg: None, lambda raw: None, name)

    def configure(shape):
        reply = ctl.handle(IpcMessage("cmd", "configure", {"max_buffer_mem": 4 * buffer_size_for(2 * shape[0] ** 2),
                                                           "source": {"type": "simulated", "shape": shape,
                                                                      "frames": 3}}))
        assert reply.msg_type == "ack", reply.error

    try:
        configure([16, 16])
        ctl.start()
        while ctl.state == "running":
            ctl.produce()
        old = ctl.buffer
        assert ctl.frames_received == 3 and _mapped(old)
        configure([64, 64])  # a bigger frame: the segment is rebuilt under the same name
        assert ctl.buffer is not old and old.closed
        assert not _mapped(old)
    finally:
        ctl.close()
