"""UDP ingest side by side with odin-data: odin's C++ frameReceiver + frameProcessor, then framechain's receiver
+ processor (dummy plugin), each fed by odin's own frameSimulator (DummyUDP) with the same settings and rates.

    ODIN_DATA_PREFIX=/path/to/odin-data/build .venv/bin/python interop/udp_rate.py --rates 55,80,110,160

Prints, per rate, frames received complete / timed out and packets lost for both. Needs an odin-data build
with bin/frameReceiver, bin/frameProcessor, bin/frameSimulator and the DummyUDP decoder and simulator plugins.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Pipeline, free_tcp_endpoint, unique_shm_name, wait_for  # noqa: E402

from framechain.ipc import IpcClient  # noqa: E402

WIDTH, HEIGHT, PACKET = 1400, 1024, 8000
PACKETS = -(-WIDTH * HEIGHT * 2 // PACKET)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _simulate(prefix: Path, port: int, frames: int, rate: float) -> float:
    """Run odin's frameSimulator; the rate it achieved (frames/s)."""
    t0 = time.perf_counter()
    sim = subprocess.run([str(prefix / "bin" / "frameSimulator"), "DummyUDP", "--lib-path", str(prefix / "lib"),
                          "--frames", str(frames), "--dest-ip", "127.0.0.1", "--ports", str(port),
                          "--width", str(WIDTH), "--height", str(HEIGHT), "--packet-len", str(PACKET),
                          "--interval", str(1 / rate)], capture_output=True, text=True, timeout=600)
    if sim.returncode:
        raise RuntimeError(sim.stdout[-2000:] + sim.stderr[-2000:])
    return frames / (time.perf_counter() - t0)


def _settled(status, quiet: float = 2.0) -> dict:
    """The receiver's status once its frame counts have stopped changing for ``quiet`` seconds."""
    last, since = None, time.monotonic()
    while True:
        st = status()
        counts = (st["frames"]["received"], st["frames"]["timedout"])
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since > quiet:
            return st
        time.sleep(0.2)


def _odin(prefix: Path, frames: int, rate: float, rcvbuf: int, work: Path) -> dict:
    port, ready, release = _free_udp_port(), free_tcp_endpoint(), free_tcp_endpoint()
    fr_ctrl, fp_ctrl = free_tcp_endpoint(), free_tcp_endpoint()
    (work / "fr.json").write_text(json.dumps([{
        "frame_ready_endpoint": ready, "frame_release_endpoint": release, "decoder_type": "DummyUDP",
        "decoder_path": str(prefix / "lib"), "rx_ports": str(port), "rx_recv_buffer_size": rcvbuf,
        "shared_buffer_name": unique_shm_name(), "max_buffer_mem": 400_000_000,
        "decoder_config": {"frame_timeout_ms": 1000, "udp_packets_per_frame": PACKETS, "udp_packet_size": PACKET}}]))
    (work / "fp.json").write_text(json.dumps([{"fr_setup": {"fr_ready_cnxn": ready, "fr_release_cnxn": release}}]))
    env = dict(os.environ, LD_LIBRARY_PATH=str(prefix / "lib"))
    logs = open(work / "odin.log", "w")
    fr = subprocess.Popen([str(prefix / "bin" / "frameReceiver"), "--ctrl", fr_ctrl, "-c", str(work / "fr.json")],
                          env=env, stdout=logs, stderr=subprocess.STDOUT)
    fp = subprocess.Popen([str(prefix / "bin" / "frameProcessor"), "--ctrl", fp_ctrl, "-c", str(work / "fp.json")],
                          env=env, stdout=logs, stderr=subprocess.STDOUT)
    client = IpcClient(fr_ctrl, timeout=5)
    try:
        wait_for(lambda: client.request("status").params.get("frames") is not None, what="odin's frameReceiver")
        time.sleep(1.0)
        sent = _simulate(prefix, port, frames, rate)
        st = _settled(lambda: client.request("status").params)
        return {"sent_rate": sent, "received": st["frames"]["received"] - st["frames"]["timedout"],
                "timedout": st["frames"]["timedout"], "packets_lost": st["decoder"]["packets_lost"]}
    finally:
        client.close()
        for p in (fp, fr):
            p.terminate()
            p.wait(10)


def _framechain(prefix: Path, frames: int, rate: float, rcvbuf: int, work: Path, switch_ms: float = 5.0) -> dict:
    port = _free_udp_port()
    with Pipeline(work, receiver_args=["--switch-interval-ms", str(switch_ms)]) as pipe:
        pipe.configure_receiver({"type": "udp", "rx_ports": [port], "shape": [HEIGHT, WIDTH], "packet_size": PACKET,
                                 "frame_timeout_ms": 1000, "rcvbuf": rcvbuf}, max_buffer_mem=400_000_000)
        pipe.setup_processor([("d", "DummyPlugin", "dummy", "frame_receiver")], copy=False)  # as odin's: in place
        pipe.start()
        sent = _simulate(prefix, port, frames, rate)
        st = _settled(pipe.receiver.status)
        return {"sent_rate": sent, "received": st["frames"]["received"], "timedout": st["frames"]["timedout"],
                "packets_lost": st["frames"]["packets_lost"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="55,80,110,160", help="frames/s asked of frameSimulator (comma-separated)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rcvbuf", type=int, default=4 << 20, help="socket receive buffer for both receivers")
    ap.add_argument("--rx-switch-ms", default="5", help="framechain receiver GIL switch intervals to try (ms, "
                                                        "comma-separated)")
    ap.add_argument("--skip-odin", action="store_true", help="framechain only")
    ap.add_argument("--repeat", type=int, default=1, help="runs per rate and daemon (alternating)")
    args = ap.parse_args()
    prefix = Path(os.environ["ODIN_DATA_PREFIX"])
    print("| rate asked | daemon | rate sent | frames complete | timed out | packets lost |")
    print("|---|---|---|---|---|---|")
    results: dict[str, list[tuple[float, bool]]] = {}
    for rate in (float(r) for r in args.rates.split(",")):
        runs = [] if args.skip_odin else [("odin-data", _odin)]
        runs += [(f"framechain (switch {ms} ms)", lambda *a, ms=float(ms): _framechain(*a, switch_ms=ms))
                 for ms in args.rx_switch_ms.split(",")]
        for _ in range(args.repeat):
            for name, fn in runs:
                with tempfile.TemporaryDirectory() as d:
                    r = fn(prefix, args.frames, rate, args.rcvbuf, Path(d))
                results.setdefault(name, []).append((r["sent_rate"], r["received"] == args.frames))
                print(f"| {rate:g} | {name} | {r['sent_rate']:.1f} | {r['received']}/{args.frames} | "
                      f"{r['timedout']} | {r['packets_lost']} |", flush=True)
    print()
    for name, runs in results.items():  # the highest rate sent below which no run lost a frame
        first_loss = min((sent for sent, ok in runs if not ok), default=float("inf"))
        clean = [sent for sent, ok in runs if ok and sent < first_loss]
        ceiling = f"lossless in every run up to {max(clean):.1f} frames/s sent" if clean else "no lossless run"
        print(f"{name}: {ceiling}" + (f", first loss at {first_loss:.1f}" if first_loss < float("inf") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
