"""odin-data's C++ tools as the interop tests drive them."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

__all__ = ["free_udp_port", "frame_simulator"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_simulator(prefix: Path, port: int, frames: int, width: int, height: int, packet: int,
                    interval: float = 0.02) -> None:
    """odin's frameSimulator (DummyUDP plugin) sends ``frames`` frames to 127.0.0.1:``port``; fails the test if
    it does not exit 0."""
    sim = subprocess.run([str(prefix / "bin" / "frameSimulator"), "DummyUDP", "--lib-path", str(prefix / "lib"),
                          "--frames", str(frames), "--dest-ip", "127.0.0.1", "--ports", str(port),
                          "--width", str(width), "--height", str(height), "--packet-len", str(packet),
                          "--interval", str(interval)], capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stdout[-2000:] + sim.stderr[-2000:]
