"""framechain run --mpi under a real mpiexec (MPICH from PyPI), 3 ranks oversubscribed on this machine.

Every rank starts a real receiver/processor pair; writers, the fan, the XPCS shards and the MPI reduce are
the real ones. The single-process ``framechain run`` of the same config is the reference.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from framechain.client.simulate import ramp_frame
from framechain.ipc.channel import free_tcp_endpoint
from framechain.plugins._xpcs import partition as part
from framechain.plugins._xpcs.layout import PixelLayout
from framechain.plugins._xpcs.multitau import MultitauCorrelator, result_from_sums
from framechain.plugins._xpcs.sparse import SparseMultitauCorrelator

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")
CLI = [sys.executable, "-m", "framechain.client.cli"]


def _demo_config(tmp: Path, frames: int = 600, shape: tuple[int, int] = (64, 64), twotime: int = 0) -> Path:
    cfg = json.loads((REPO / "examples" / "xpcs_demo.json").read_text())
    cfg["prepare"] = str(REPO / "examples" / "prepare_demo.py")
    src = cfg["receiver"]["source"]
    src.update(frames=frames, shape=list(shape))
    for item in cfg["processor"]:
        if "hdf" in item:
            item["hdf"]["dataset"]["data"]["dims"] = list(shape)
            item["hdf"]["frames"] = frames
        if "xpcs" in item:
            item["xpcs"].update(expected_frames=frames, update_every=100)
            if twotime:
                item["xpcs"].update(twotime=True, twotime_frames=twotime)
    path = tmp / "run.json"
    path.write_text(json.dumps(cfg))
    return path


def _mpirun(n: int, config: Path, cwd: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(MPIEXEC), "-n", str(n), *CLI, "run", "--mpi", "--no-progress", "--log-dir",
                           str(cwd / "logs"), *extra, str(config)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _g2(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        mt = f["xpcs/multitau"]
        return mt["delay_list"][...], mt["normalized_g2"][...], mt["normalized_g2_err"][...]


# -- the shard arithmetic, in one process -----------------------------------------------------------------
@pytest.mark.parametrize("ranks", [2, 3, 5])
@pytest.mark.parametrize("sparse", [False, True])
def test_shards_merge_to_the_single_process_g2_and_errors(ranks, sparse):
    """Bins cut between shards at chunk edges: summed per-chunk sums give the one-process g2 and g2_err."""
    rng = np.random.default_rng(ranks)
    labels = rng.integers(0, 7, (48, 40))
    full = PixelLayout(labels, chunk=16)
    frames = rng.poisson(0.05 if sparse else 3.0, (300, 48, 40)).astype(np.float64)
    kind = SparseMultitauCorrelator if sparse else MultitauCorrelator
    one = kind(full, 8, 6)
    shards = []
    for r in range(ranks):
        c0, c1 = part.shard_range(full.num_chunks, ranks, r)
        shards.append((c0, c1, kind(part.shard_layout(full, c0, c1), 8, 6)))
    assert sum(c1 - c0 for c0, c1, _ in shards) == full.num_chunks
    for x in frames:
        one.add(x)
        for _, _, c in shards:
            c.add(x)
    for _, _, c in shards:
        c.drain()                                   # G, P, F complete: the sparse dense levels' thread is done
    total = sum(part.place({"c0": c0, "c1": c1, "num_chunks": full.num_chunks, "G": c.G, "P": c.P, "F": c.F,
                            "pairs": c.pairs, "frames": c.frames, "frames_used": c.frames, "frames_bad": 0,
                            "delays": c.delays}) for c0, c1, c in shards)
    m = part.unplace(total, ranks, one.delays, full.num_chunks)
    got = result_from_sums(full, m["delays"], m["pairs"], m["G"], m["P"], m["F"])
    want = one.result()
    ok = np.isfinite(want.g2)
    assert ok.sum() > 100 and np.array_equal(np.isfinite(got.g2), ok)
    np.testing.assert_allclose(got.g2[ok], want.g2[ok], rtol=1e-12)
    ok_err = np.isfinite(want.g2_err)
    np.testing.assert_allclose(got.g2_err[ok_err], want.g2_err[ok_err], rtol=1e-12)
    assert np.array_equal(m["pairs"], want.pairs)


def test_shards_two_time_sums_merge_to_the_single_process_matrices():
    """Each shard's per-bin two-time sums, summed, normalise to the one-process C of every bin."""
    from framechain.plugins._xpcs.twotime import TwoTimeAccumulator
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, (32, 30))
    full = PixelLayout(labels, chunk=8)
    frames = rng.poisson(2.0, (60, 32, 30)).astype(np.float64)
    one = TwoTimeAccumulator(full, 50)
    shards = [TwoTimeAccumulator(part.shard_layout(full, *part.shard_range(full.num_chunks, 3, r)), 50)
              for r in range(3)]
    for x in frames:
        for acc in (one, *shards):
            acc.add(x, True)
    G = sum(acc.partial()[0] for acc in shards)
    S = sum(acc.partial()[1] for acc in shards)
    bins, want = one.compute()
    got = np.stack([TwoTimeAccumulator.normalise(G[b - 1].copy(), S[b - 1], int(full.npix[b - 1])) for b in bins])
    assert want.shape == (4, 50, 50)
    np.testing.assert_allclose(got, want, rtol=2e-7)  # float32 results of float64 sums


def test_partition_option_refuses_what_it_cannot_merge(tmp_path):
    from framechain.ipc.errors import ConfigError
    from framechain.plugins.xpcs import XpcsCorrelatorPlugin
    p = XpcsCorrelatorPlugin("xpcs")
    spool = str(tmp_path)
    for bad, why in [({"number": 0, "rank": 0, "spool": spool}, "number must be"),
                     ({"number": 2, "rank": 2, "spool": spool}, "rank must be"),
                     ({"number": 2, "rank": 0}, "spool must"),
                     ({"number": 2, "rank": 0, "spool": str(tmp_path / "nope")}, "not a directory"),
                     ({"number": 2, "rank": 0, "spool": spool, "colour": 1}, "must be")]:
        with pytest.raises(ConfigError, match=why):
            p.prepare({"partition": bad})
    with pytest.raises(ConfigError, match="aps normalization"):
        p.prepare({"partition": {"number": 2, "rank": 0, "spool": spool}, "normalization": "aps"})


# -- whole runs under mpiexec -----------------------------------------------------------------------------
def test_three_ranks_equal_one_process_g2_files_and_constants(tmp_path):
    """The make run pipeline on 3 ranks: the merged g2 equals the single-process run's to 1e-12, the VDS
    reads every frame as the single run wrote it, and every rank got the constants rank 0 read."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    for d in (single, multi):
        d.mkdir()
    cfg1, cfg3 = _demo_config(single, twotime=150), _demo_config(multi, twotime=150)
    one = subprocess.run([*CLI, "run", "--no-progress", str(cfg1)], cwd=single, capture_output=True, text=True,
                         timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    three = _mpirun(3, cfg3, multi)
    assert three.returncode == 0, three.stderr[-3000:] + three.stdout[-3000:]
    assert "framechain run --mpi: 3 ranks" in three.stdout and "lost frames     0 (none)" in three.stdout
    d1, g1, e1 = _g2(single / "output" / "xpcs_demo_results.hdf")
    d3, g3, e3 = _g2(multi / "output" / "xpcs_demo_results.hdf")
    assert np.array_equal(d1, d3) and g1.shape == g3.shape and np.isfinite(g1).sum() > 50
    np.testing.assert_allclose(g3, g1, rtol=1e-12)
    np.testing.assert_allclose(e3, e1, rtol=1e-12, equal_nan=True)
    with h5py.File(single / "output" / "xpcs_demo_results.hdf", "r") as f1, \
            h5py.File(multi / "output" / "xpcs_demo_results.hdf", "r") as f3:
        c1, c3 = f1["xpcs/twotime/correlation_map"], f3["xpcs/twotime/correlation_map"]
        assert sorted(c1) == sorted(c3) and len(c1) >= 5
        for name in c1:  # two-time of every bin from the shards' merged sums (float32 matrices)
            assert c1[name].shape == (150, 150)
            np.testing.assert_allclose(c3[name][...], c1[name][...], rtol=1e-6)
    (vds,) = (multi / "output").glob("*_vds.h5")
    with h5py.File(single / "output" / "xpcs_demo_demo_000001.h5", "r") as f:
        want = f["/entry/data/data"][...]
    with h5py.File(vds, "r") as f:
        got = f["/entry/data/data"][...]
    assert got.shape == (600, 64, 64)
    np.testing.assert_array_equal(got, want)
    rank_files = sorted((multi / "output").glob("xpcs_demo_demo_00000?.h5"))
    assert len(rank_files) == 3
    for k, f in enumerate(rank_files):
        with h5py.File(f, "r") as h:
            assert h["/entry/data/data"].shape[0] == 200, f  # frames_per_block 1: every third frame
    records = sorted((multi / "logs").glob("framechain_mpi_*/rank*/constants.json"))
    assert len(records) == 3
    import hashlib
    originals = {n: hashlib.sha256((multi / "output" / f"{n}.npy").read_bytes()).hexdigest()
                 for n in ("pedestal", "gain", "mask", "qmap")}
    for rec in records:
        rows = json.loads(rec.read_text())
        assert {(r["plugin"], r["key"]) for r in rows} == {("calib", "pedestal"), ("calib", "gain"),
                                                           ("mask", "mask"), ("xpcs", "qmap")}
        for r in rows:
            assert r["path"].startswith(("/dev/shm/", "/tmp/")) and r["sha256"] == originals[r["key"]], r
            assert not os.path.exists(r["path"])  # the node's copies are removed at the end


def _player(endpoint: str, n: int, shape: tuple[int, int]) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "simulate", "dectris", "--endpoint", endpoint, "--frames", str(n),
                             "--shape", *map(str, shape), "--compression", "bslz4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stream_config(tmp: Path, upstream: str, n: int, shape: tuple[int, int], block: int) -> Path:
    out = tmp / "out"
    out.mkdir()
    cfg = {"receiver": {"source": {"type": "dectris_v2", "endpoint": upstream, "shape": list(shape)}},
           "processor": [{"plugin": {"load": [{"index": "hdf", "name": "FileWriterPlugin", "library": "hdf5_writer"}],
                                     "connect": [{"index": "hdf", "connection": "frame_receiver"}]}},
                         {"hdf": {"file": {"path": str(out), "prefix": "stream"}, "frames": n,
                                  "master": "threshold_1",
                                  "dataset": {"threshold_1": {"datatype": "uint16", "dims": list(shape),
                                                              "compression": "BSLZ4"}}}}],
           "start": [{"hdf": {"command": "start_writing"}}],
           "mpi": {"frames_per_block": block}}
    path = tmp / "stream.json"
    path.write_text(json.dumps(cfg))
    return path


def _stream_job(tmp: Path, hosts_args: list[str], cfg: Path, upstream: str, n: int, shape: tuple[int, int],
                before_player=None) -> str:
    """``mpiexec [hosts_args] -n 3 framechain run --mpi cfg`` fed by a stream player; its stdout once it
    succeeded (``before_player(job)`` runs first, e.g. to read rank 0's endpoints)."""
    job = subprocess.Popen([str(MPIEXEC), *hosts_args, "-n", "3", *CLI, "run", "--mpi", "--no-progress",
                            "--log-dir", str(tmp / "logs"), str(cfg)], cwd=tmp, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    player = None
    try:
        if before_player is not None:
            before_player(job)
        player = _player(upstream, n, shape)
        out, err = job.communicate(timeout=180)
        assert job.returncode == 0, err[-3000:] + out[-2000:]
        assert player.wait(30) == 0, player.stderr.read()
    finally:
        for p in (job, player):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_stream_through_the_fan_to_three_ranks_reads_back_in_order(tmp_path):
    """A DECTRIS v2 stream -> rank 0's fan (blocks of 4) -> 3 ranks' writers; the VDS reads every frame."""
    shape, n, block = (16, 24), 101, 4
    upstream = free_tcp_endpoint()
    cfg = _stream_config(tmp_path, upstream, n, shape, block)
    out = _stream_job(tmp_path, [], cfg, upstream, n, shape)
    want = [sum(1 for i in range(n) if (i // block) % 3 == r) for r in range(3)]
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
    assert [(int(r[0]), int(r[1]), int(r[3]), int(r[4])) for r in rows] == [(r, want[r], want[r], 0)
                                                                            for r in range(3)], out
    (vds,) = (tmp_path / "out").glob("*_vds.h5")
    with h5py.File(vds, "r") as f:
        got = f["/entry/data/data"][...]
    np.testing.assert_array_equal(got, np.stack([ramp_frame(i, shape, np.dtype("u2")) for i in range(n)]))


@dataclass
class Hosts:
    gateway: str            # the root namespace's address on the test network
    addresses: list[str]    # one per test host (network namespace)
    launcher: Path          # hydra's -launcher-exec: runs a command "on" a test host


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()} (these tests make network namespaces: "
                           f"run them as root, with iproute2 installed)")


@pytest.fixture
def hosts(tmp_path):
    """Three test hosts: network namespaces joined by veth pairs to a bridge of their own, on a /24 of their
    own; mpiexec reaches them through a launcher that runs its proxy with ``ip netns exec``."""
    tag = uuid.uuid4().hex[:5]
    net = f"10.{100 + int(tag[:2], 16) % 150}.{int(tag[2:4], 16)}"
    bridge, made = f"fcb{tag}", []
    addresses = [f"{net}.{i}" for i in (2, 3, 4)]
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, addr in enumerate(addresses):
            ns, veth, peer = f"fcn{tag}{i}", f"fcv{tag}{i}", f"fcp{tag}{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", veth, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        cases = "\n".join(f"  {a}) ns=fcn{tag}{i} ;;" for i, a in enumerate(addresses))
        launcher = tmp_path / "netns-launcher"
        launcher.write_text("#!/bin/sh\n# hydra's ssh launcher runs: <this> [options] HOST COMMAND\n"
                            'while [ "${1#-}" != "$1" ]; do shift; done\n'
                            f'case "$1" in\n{cases}\n  *) echo "no test host $1" >&2; exit 1 ;;\nesac\n'
                            'shift\nexec ip netns exec "$ns" sh -c "$*"\n')
        launcher.chmod(0o755)
        yield Hosts(f"{net}.1", addresses, launcher)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_ranks_on_three_hosts_of_their_own_network(tmp_path, hosts):
    """Each rank in its own network namespace (no shared loopback): MPI, the fan's endpoints on rank 0's
    address and the detector stream from the root namespace all cross veth links; every frame reads back."""
    shape, n, block = (16, 24), 61, 2
    upstream = free_tcp_endpoint(hosts.gateway)
    cfg = _stream_config(tmp_path, upstream, n, shape, block)
    def on_their_own_addresses(job: subprocess.Popen) -> None:
        eps = _watch_endpoints(job)
        assert sorted({e.split("//")[1].split(":")[0] for e in eps}) == hosts.addresses, eps

    _stream_job(tmp_path, ["-localhost", hosts.gateway, "-hosts", ",".join(hosts.addresses), "-launcher", "ssh",
                           "-launcher-exec", str(hosts.launcher)], cfg, upstream, n, shape, on_their_own_addresses)
    fan_log = next((tmp_path / "logs").glob("framechain_mpi_*/fan.log")).read_text()
    assert all(f"tcp://{hosts.addresses[0]}:" in line for line in fan_log.splitlines() if "connected on" in line)
    (vds,) = (tmp_path / "out").glob("*_vds.h5")
    with h5py.File(vds, "r") as f:
        got = f["/entry/data/data"][...]
    np.testing.assert_array_equal(got, np.stack([ramp_frame(i, shape, np.dtype("u2")) for i in range(n)]))


def _daemon_pids(endpoints: list[str]) -> dict[str, int]:
    """pid of every live process whose command line names one of ``endpoints`` as its --ctrl."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for ep in endpoints:
            if b"--ctrl" in args and ep.encode() in args:
                found[ep] = int(d.name)
    return found


def _watch_endpoints(proc: subprocess.Popen, timeout: float = 60) -> list[str]:
    """The control endpoints of every rank, from the 'watch it live' line rank 0 prints."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "watch it live" in line:
            return re.findall(r"(?:fr|fp):(tcp://[\d.]+:\d+)", line)
        if not line and proc.poll() is not None:
            break
    raise AssertionError("rank 0 never printed its endpoints")


@pytest.mark.parametrize("victim", ["processor", "rank"])
def test_a_rank_killed_mid_run_is_reported_and_the_job_ends(tmp_path, victim):
    """Kill rank 1's processor (the ranks report it and stop cleanly) or rank 1 itself (mpiexec ends the job;
    every daemon dies with its rank): nothing hangs, no daemon is left, the surviving files are readable."""
    cfg = json.loads(_demo_config(tmp_path, frames=200000).read_text())
    cfg["receiver"]["source"]["rate"] = 2000
    path = tmp_path / "long.json"
    path.write_text(json.dumps(cfg))
    job = subprocess.Popen([str(MPIEXEC), "-n", "3", *CLI, "run", "--mpi", "--no-progress", "--log-dir",
                            str(tmp_path / "logs"), str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        eps = _watch_endpoints(job)
        assert len(eps) == 6
        pids = _daemon_pids(eps)
        assert len(pids) == 6, pids
        time.sleep(2)  # frames flowing on every rank
        if victim == "processor":
            os.kill(pids[eps[3]], signal.SIGKILL)          # fr0, fp0, fr1, fp1, ...: rank 1's processor
        else:
            rank1 = int(Path(f"/proc/{pids[eps[3]]}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
            os.kill(rank1, signal.SIGKILL)
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    if victim == "processor":
        assert re.search(r"rank 1: the processor exited \(signal 9 \(SIGKILL\)\)", err), err[-3000:]
        assert "stopping every rank" in err
        log0 = next((tmp_path / "logs").glob("framechain_mpi_*/rank0/processor.log")).read_text()
        # rank 0's XPCS gave up at once: the merge was called off, or the stop reached it first
        assert re.search(r"the merge was called off \(rank 1: the processor exited|processor stopped "
                         r"mid-acquisition; the other shards' sums are not awaited", log0), log0[-2000:]
        assert "abandoning" not in log0
    deadline = time.monotonic() + 30
    while _daemon_pids(eps) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _daemon_pids(eps), "daemons outlived the job"
    for f in (tmp_path / "output").glob("xpcs_demo_demo_00000?.h5"):
        if f.name.endswith("2.h5"):
            continue  # rank 1's writer was killed (processor) or terminated with its rank
        with h5py.File(f, "r") as h:
            assert h["/entry/data/data"].shape[0] > 0, f
