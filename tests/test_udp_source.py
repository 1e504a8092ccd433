"""UDP packet frames in odin-data's DummyUDP layout: ``framechain simulate udp`` (a real sender subprocess)
-> receiver -> processor, with packet loss and reordering: every complete frame bit-exact, every
incomplete one counted in frames/timedout with its lost packets, nothing else lost."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from harness import wait_for

from framechain.framereceiver.udp import DUMMY_UDP
from framechain.framereceiver.udp_assembler import PacketAssembler, parse_header

CHECKER = textwrap.dedent("""
    import numpy as np
    from framechain.frameprocessor import FrameProcessorPlugin

    class RampChecker(FrameProcessorPlugin):
        def __init__(self, name):
            super().__init__(name)
            self.good = self.bad = 0
            self.numbers = []

        def process_frame(self, frame):
            d = frame.data
            want = ((np.arange(d.size, dtype=np.uint64) + frame.frame_number) % 65536).astype(np.uint16)
            ok = d.dtype == np.uint16 and np.array_equal(d.reshape(-1), want)
            self.good += ok
            self.bad += not ok
            self.numbers.append(frame.frame_number)

        def status(self):
            return {"good": self.good, "bad": self.bad, "numbers": self.numbers}
""")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ports,batch_receive", [(1, True), (2, True), (1, False)])
def test_lossy_reordered_udp_frames_are_exact_and_every_loss_counted(pipeline, tmp_path, ports, batch_receive):
    n, shape, payload = 300, (64, 64), 1024  # 8 packets a frame
    rx_ports = [free_udp_port() for _ in range(ports)]
    plugin = tmp_path / "checker.py"
    plugin.write_text(CHECKER)
    # incomplete frames hold their buffers for frame_timeout_ms (~20 at once here) and a loaded processor holds
    # more: 8 MB of buffers (~1000) keeps "no free buffer" (counted dropped, not timed out) out of this test
    pipeline.configure_receiver({"type": "udp", "rx_ports": rx_ports, "shape": list(shape), "packet_size": payload,
                                 "frame_timeout_ms": 200, "batch_receive": batch_receive}, max_buffer_mem=8 << 20)
    pipeline.setup_processor([("check", "RampChecker", str(plugin), "frame_receiver")])
    pipeline.start()
    sender = subprocess.run([sys.executable, "-m", "framechain.client.cli", "simulate", "udp", "--ports",
                             *map(str, rx_ports), "--frames", str(n), "--shape", *map(str, shape), "--packet-size",
                             str(payload), "--drop", "0.01", "--reorder", "0.05", "--rate", "1000", "--seed", "3"],
                            capture_output=True, text=True, timeout=60)
    assert sender.returncode == 0, sender.stderr
    sent = json.loads(sender.stdout)
    incomplete = set(sent["incomplete"])
    assert 0 < len(incomplete) < n // 4  # the seed gives some loss, not too much
    wait_for(lambda: (f := pipeline.receiver.status()["frames"])["received"] + f["timedout"] == n,
             what="every frame to be complete or timed out")
    rx = pipeline.receiver.status()
    assert rx["source"]["receive"] == ("recvmmsg" if batch_receive else "recv")
    assert rx["shared_memory"]["num_buffers"] > 500
    want = {"timedout": len(incomplete), "packets_lost": sent["dropped_packets"], "received": n - len(incomplete),
            "dropped": 0}
    assert {k: rx["frames"][k] for k in want} == want, rx["frames"]
    assert rx["source"]["packets"]["bad"] == 0 and rx["source"]["packets"]["duplicate"] == 0
    wait_for(lambda: pipeline.plugin_status("check")["frames_processed"] == n - len(incomplete),
             what="the complete frames to reach the checker")
    st = pipeline.plugin_status("check")
    assert st["good"] == n - len(incomplete) and st["bad"] == 0
    assert sorted(st["numbers"]) == sorted(set(range(n)) - incomplete)
    pipeline.receiver.ok("execute", {"source": {"command": "stop"}})
    wait_for(lambda: pipeline.plugin_status("check")["acquisitions"] == 1, what="the end of acquisition")
    rx = pipeline.receiver.status()
    assert rx["buffers"]["consistent"] and rx["buffers"]["mapped"] == 0


def test_bad_packets_are_counted_and_the_port_in_use_is_a_clear_nack(pipeline):
    port = free_udp_port()
    pipeline.configure_receiver({"type": "udp", "rx_ports": [port], "shape": [8, 8], "packet_size": 64,
                                 "frame_timeout_ms": 100})
    pipeline.setup_processor([("d", "DummyPlugin", "dummy", "frame_receiver")])
    pipeline.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good = np.arange(64, dtype=np.uint16).tobytes()
    for packet in (b"abc", struct.pack("<II", 0, 7) + good[:64],            # too short; packet 7 of 2
                   struct.pack("<II", 0, 0) + good[:10],                    # a short packet that is not the last
                   struct.pack("<II", 1, 0 | 1 << 31) + good[:64], struct.pack("<II", 1, 1 | 1 << 30) + good[64:],
                   struct.pack("<II", 1, 1 | 1 << 30) + good[64:]):          # frame 1, then a late duplicate
        tx.sendto(packet, ("127.0.0.1", port))
    tx.close()
    wait_for(lambda: pipeline.plugin_status("d")["frames_processed"] == 1, what="frame 1")
    wait_for(lambda: pipeline.receiver.status()["source"]["packets"]["late"] == 1, what="the late packet")
    assert pipeline.receiver.status()["source"]["packets"]["bad"] == 3
    other = pipeline.receiver.request("configure", {"source": {"type": "udp", "rx_ports": [port]}})
    assert other.msg_type == "nack" and "running" in other.error
    pipeline.receiver.ok("execute", {"source": {"command": "stop"}})
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port))
    try:
        r = pipeline.receiver.request("execute", {"source": {"command": "start"}})
        assert r.msg_type == "nack" and "udp source cannot start" in r.error and "in use" in r.error
    finally:
        blocker.close()


def test_the_dummy_udp_layout_reads_odin_flags_in_python_and_compiled():
    first, last = struct.pack("<II", 5, 0 | 1 << 31), struct.pack("<II", 70000, 359 | 1 << 30)
    assert DUMMY_UDP.parse(memoryview(first)) == (5, 0, True, False)
    assert DUMMY_UDP.parse(memoryview(last)) == (70000, 359, False, True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        asm = PacketAssembler(DUMMY_UDP, 64, 128, np.zeros(256, np.uint8), np.array([0]), [s], 1.0)
    for packet in (first, last):
        frame, pkt, _, _ = DUMMY_UDP.parse(packet)
        assert parse_header(np.frombuffer(packet, np.uint8), asm.lay) == (frame, pkt)


def test_the_compiled_receive_loop_lends_finishes_and_stops_with_every_buffer_accounted():
    """PacketAssembler on a real socket, in process: frames land in the lent buffers, a frame that finds no
    buffer is counted, a stop hands back the open frame as incomplete and the unused buffer."""
    payload, frame_bytes, slot = 64, 192, 256  # 3 packets a frame
    mem = np.zeros(16 + 3 * slot, np.uint8)
    bases = 16 + slot * np.arange(3)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    asm = PacketAssembler(DUMMY_UDP, payload, frame_bytes, mem, bases, [rx], timeout=30.0)
    thread = threading.Thread(target=asm.run)
    thread.start()
    try:
        asm.lend(2)
        asm.lend(0)
        pixels = {f: bytes([f + 1]) * frame_bytes for f in range(4)}

        def send(frame: int, packets: range) -> None:
            for p in packets:
                tx.sendto(struct.pack("<II", frame, p) + pixels[frame][p * payload:(p + 1) * payload],
                          rx.getsockname())

        send(0, range(3))
        send(1, range(2))       # incomplete: open until the stop
        wait_for(lambda: asm.counters()["received"] == 5, what="five packets")
        send(2, range(3))       # both lent buffers are in use: no buffer
        wait_for(lambda: asm.counters()["no_buffer"] == 1 and asm.counters()["late"] == 2,
                 what="frame 2 counted as finding no buffer")
        finished = []
        wait_for(lambda: finished.extend(asm.take_finished()) or finished, what="frame 0")
        assert finished == [(0, 0, 3)]  # the last buffer lent is used first
        assert bytes(mem[bases[0]:bases[0] + frame_bytes]) == pixels[0]
        asm.lend(1)
        asm.stop()
        thread.join(10)
        assert not thread.is_alive()
        assert asm.take_finished() == [(1, 2, 2)]  # handed back incomplete, 2 of 3 packets
        assert bytes(mem[bases[2]:bases[2] + 2 * payload]) == pixels[1][:2 * payload]
        assert asm.unused() == [1]
        assert asm.counters() == {"received": 8, "bad": 0, "duplicate": 0, "late": 2, "no_buffer": 1}
    finally:
        asm.stop()
        thread.join(10)
        rx.close()
        tx.close()
