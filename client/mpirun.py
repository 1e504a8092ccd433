"""``mpiexec -n N framechain run --mpi CONFIG``: one receiver/processor pair per MPI rank.

Every rank runs the :class:`~framechain.client.launcher.Launcher` of the same
run config, changed for its rank (:func:`rank_config`):

- writers (``hdf5_writer``) get ``process {number: N, rank: r, frames_per_block}``;
  rank 0's writer adds the master VDS that reads every frame in order;
- XPCS plugins get ``partition {number: N, rank: r, spool}``: each correlates a
  pixel shard; at every live update and at the end the shards' sums are summed
  with an MPI reduce (:func:`reduce_partials`) and rank 0 writes the one result;
- a DECTRIS stream source reaches the ranks through ``framechain fan``, run by
  rank 0 (blocks of ``frames_per_block`` frames round-robin, or every frame to
  every rank with ``distribution: broadcast``); a simulated or HDF5 source is
  read by every rank (broadcast: each writer keeps its blocks);
- constants (``.npy`` pedestal, gain, mask, qmap files of the processor
  config) are read once by rank 0 and broadcast to one rank per node, which
  puts them in node-local shared memory (``/dev/shm``) for the others.

Every 0.2 s the ranks exchange a small status (``allgather``); rank 0 shows
the combined progress bar. A rank whose daemon dies or stops answering is
reported by rank and reason, and every rank then stops its pair cleanly (files
closed). The daemons die with their rank (``PR_SET_PDEATHSIG``), so a rank
killed outright does not leave them behind when ``mpiexec`` ends the job.

Run-config key ``mpi`` (all optional)::

    {"distribution": "auto" | "blocks" | "broadcast", "frames_per_block": 1,
     "address": "10.0.0.1",            # rank 0's address on the data network (fan endpoints)
     "broadcast_constants": true}
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from framechain.ipc.channel import free_tcp_endpoint
from framechain.ipc.errors import FramechainError
from framechain.plugins._xpcs import partition as _part

from .launcher import Launcher, LaunchError, _Signals, load_config, load_specs
from .summary import COUNTS, pair_counts, rollup_totals, summarise

__all__ = ["rank_config", "main", "reduce_partials", "MPI_KEYS", "plugin_indices"]

log = logging.getLogger(__name__)
MPI_KEYS = {"distribution", "frames_per_block", "address", "broadcast_constants"}
STREAM_SOURCES = ("dectris_v1", "dectris_v2")
CONSTANT_KEYS = ("pedestal", "gain", "mask", "qmap", "flatfield")
XPCS = ("xpcs", "XpcsCorrelatorPlugin")          # library or class names that plugin_indices looks for
WRITERS = ("hdf5_writer", "FileWriterPlugin")
_STEP = 0.2


def plugin_indices(cfg: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """Indices of the processor plugins loaded from a library or class in ``names``."""
    return [spec["index"] for spec in load_specs(cfg)
            if str(spec.get("library", "")).rsplit(".", 1)[-1] in names or spec.get("name") in names]


def mpi_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run config's ``mpi`` section, checked, with defaults; :class:`LaunchError` says what is wrong."""
    opts = cfg.get("mpi", {})
    if not isinstance(opts, dict) or set(opts) - MPI_KEYS:
        raise LaunchError(f"'mpi' must be an object with some of {sorted(MPI_KEYS)}")
    src = cfg["receiver"].get("source", {}).get("type", "simulated")
    dist = opts.get("distribution", "auto")
    if dist not in ("auto", "blocks", "broadcast"):
        raise LaunchError(f"mpi.distribution must be auto, blocks or broadcast, not {dist!r}")
    if dist == "auto":
        dist = "blocks" if src in STREAM_SOURCES and not plugin_indices(cfg, XPCS) \
            else "broadcast"
    if src == "udp":
        raise LaunchError("a udp source cannot be shared by --mpi ranks (each rank would bind the same ports); "
                          "run one framechain run per detector module instead")
    if dist == "blocks" and src not in STREAM_SOURCES:
        raise LaunchError(f"mpi.distribution blocks deals frames out through framechain fan, which needs a "
                          f"DECTRIS stream source; a {src} source is read by every rank (use broadcast)")
    if dist == "blocks" and plugin_indices(cfg, XPCS):
        raise LaunchError("the xpcs plugin needs every frame of its pixels: with mpi.distribution blocks each "
                          "rank sees only some frames; use broadcast (each rank then correlates a pixel shard)")
    fpb = opts.get("frames_per_block", 1)
    if not isinstance(fpb, int) or isinstance(fpb, bool) or fpb < 1:
        raise LaunchError(f"mpi.frames_per_block must be an integer >= 1, not {fpb!r}")
    return {"distribution": dist, "frames_per_block": fpb, "address": str(opts.get("address", "")),
            "broadcast_constants": bool(opts.get("broadcast_constants", True)), "source": src}


def rank_config(cfg: dict[str, Any], rank: int, size: int, opts: dict[str, Any], spool: str | None,
                stream_endpoint: str | None) -> dict[str, Any]:
    """The run config of rank ``rank`` of ``size``: writers' ``process``, XPCS ``partition``, the fan's
    endpoint for a stream source, no ``prepare`` (rank 0 ran it for everyone)."""
    out = copy.deepcopy(cfg)
    for key in ("mpi", "prepare", "endpoints"):  # fixed endpoints would collide between ranks on one host
        out.pop(key, None)
    items = out.setdefault("processor", [])
    for index in plugin_indices(cfg, WRITERS):
        items.append({index: {"process": {"number": size, "rank": rank,
                                          "frames_per_block": opts["frames_per_block"]}}})
    if size > 1:
        for index in plugin_indices(cfg, XPCS):
            d = os.path.join(spool or ".", index)
            os.makedirs(d, exist_ok=True)
            items.append({index: {"partition": {"number": size, "rank": rank, "spool": d}}})
    if stream_endpoint is not None:
        out["receiver"]["source"]["endpoint"] = stream_endpoint
    return out


def _die_with_parent() -> None:
    """In the daemon child: SIGTERM when the rank process that started it dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -- constants ------------------------------------------------------------------------------------
def constant_files(cfg: dict[str, Any]) -> list[tuple[int, str, str]]:
    """``(item, index, key)`` of every ``.npy`` constant the processor items name (pedestal, gain, ...)."""
    found = []
    for i, item in enumerate(cfg.get("processor", [])):
        if not isinstance(item, dict):
            continue
        for index, params in item.items():
            if index == "plugin" or not isinstance(params, dict):
                continue
            for key in CONSTANT_KEYS:
                v = params.get(key)
                if isinstance(v, str) and v.endswith(".npy"):
                    found.append((i, index, key))
    return found


def broadcast_constants(comm: Any, cfg: dict[str, Any], job: str) -> tuple[dict[str, Any], str | None, float]:
    """Rank 0 reads every ``.npy`` constant once; it is broadcast to one rank per node, which writes it to
    node-local shared memory; the others wait for it. Returns the config naming the node-local copies, the
    directory to remove at the end (node leaders) and the seconds it took."""
    from mpi4py import MPI
    t0 = time.perf_counter()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    leaders = comm.Split(0 if node.Get_rank() == 0 else MPI.UNDEFINED, comm.Get_rank())
    found = constant_files(cfg)
    arrays: list[np.ndarray] | None = None
    error = ""
    if comm.Get_rank() == 0:
        try:
            arrays = [np.load(cfg["processor"][i][index][key], allow_pickle=False) for i, index, key in found]
        except (OSError, ValueError) as err:
            error = f"cannot read a constant for broadcast: {err}"
    error = comm.bcast(error, root=0)
    if error:
        raise LaunchError(error)
    d = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                     f"framechain_{job}_n{comm.Get_rank()}")  # this node leader's; shared by its node's ranks
    d = node.bcast(d, root=0)
    if leaders != MPI.COMM_NULL:
        arrays = leaders.bcast(arrays, root=0)  # pickled ndarrays: one message per node leader
        os.makedirs(d, exist_ok=True)
        for (i, index, key), a in zip(found, arrays):
            np.save(os.path.join(d, f"{i}_{index}_{key}.npy"), a)
        leaders.Free()
    node.Barrier()                              # the node's copies are in place
    out = copy.deepcopy(cfg)
    for i, index, key in found:
        out["processor"][i][index][key] = os.path.join(d, f"{i}_{index}_{key}.npy")
    mine = d if node.Get_rank() == 0 else None
    node.Free()
    return out, mine, time.perf_counter() - t0


def _record_constants(cfg: dict[str, Any], log_dir: Path) -> None:
    """``constants.json`` in the rank's log folder: each constant it gave its processor, with its sha256."""
    rows = []
    for i, index, key in constant_files(cfg):
        path = cfg["processor"][i][index][key]
        with open(path, "rb") as fh:
            rows.append({"plugin": index, "key": key, "path": path, "sha256": hashlib.sha256(fh.read()).hexdigest()})
    (log_dir / "constants.json").write_text(json.dumps(rows, indent=1))


# -- XPCS shards ----------------------------------------------------------------------------------
def _partials(spool: str, rank: int) -> set[str]:
    """Keys of the partial sums this rank's plugin has put in ``spool``."""
    try:
        names = os.listdir(spool)
    except OSError:
        return set()
    return {m.group(1) for m in map(_part.PARTIAL_RE.match, names) if m and int(m.group(2)) == rank}


def reduce_partials(comm: Any, spool: str, key: str, rank: int) -> float:
    """Sum every rank's partial ``key`` into rank 0's merged file (an MPI reduce); returns the seconds."""
    from mpi4py import MPI
    t0 = time.perf_counter()
    path = os.path.join(spool, _part.partial_name(key, rank))
    partial = _part.read_npz(path)
    vec = _part.place(partial)
    total = np.zeros_like(vec) if comm.Get_rank() == 0 else None
    comm.Reduce(vec, total, op=MPI.SUM, root=0)
    n_t = partial["delays"].size
    lo = np.empty(n_t) if comm.Get_rank() == 0 else None
    comm.Reduce(np.ascontiguousarray(vec[-(n_t + 3):-3]), lo, op=MPI.MIN, root=0)
    os.remove(path)
    if comm.Get_rank() == 0:
        merged = _part.unplace(total, comm.Get_size(), partial["delays"], int(partial["num_chunks"]),
                               partial["tt_G"].shape)
        merged["mismatch"] = int(not np.array_equal(lo, merged["pairs"]))
        _part.write_npz(os.path.join(spool, _part.merged_name(key)), **merged)
        if not key.endswith("_final"):
            _prune(spool, key)
    return time.perf_counter() - t0


def _prune(spool: str, newest: str) -> None:
    """Keep the newest few live merges (rank 0's plugin publishes the newest)."""
    run = newest.split("_", 1)[0]
    live = sorted((n for n in os.listdir(spool) if n.startswith(run + "_u") and n.endswith(".merged.npz")),
                  key=lambda n: int(n[len(run) + 2:].split(".", 1)[0]))
    for n in live[:-4]:
        try:
            os.remove(os.path.join(spool, n))
        except OSError:
            pass


# -- the rank's view ------------------------------------------------------------------------------
def _local_state(launcher: Launcher) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """This rank's pair: ``(summary for the allgather, receiver status, processor status)``."""
    def exited() -> str:
        for kind, proc in launcher.procs.items():
            if proc.poll() is not None:
                code = proc.returncode
                why = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"
                return f"the {kind} exited ({why}); see {launcher.log_dir / (kind + '.log')}"
        return ""
    if why := exited():
        return {"failed": why}, {}, {}
    try:
        rx, fp = launcher.snapshot(timeout=10)
    except FramechainError as err:
        return {"failed": exited() or f"status request failed: {err}"}, {}, {}
    return {"failed": "", **pair_counts(rx, fp), "finished": launcher.finished(rx, fp)}, rx, fp


def _rollup(states: list[dict[str, Any]], elapsed: float) -> str:
    rows = [{"rank": r, **{k: s.get(k, 0) for k in COUNTS}} for r, s in enumerate(states)]
    lines = ["", f"framechain run --mpi: {len(states)} ranks", "rank  received  processed  written  lost"]
    for row, s in zip(rows, states):
        lines.append(f"{row['rank']:>4}  {row['received']:>8}  {row['processed']:>9}  {row['written']:>7}"
                     f"  {row['lost']:>4}" + (f"  FAILED: {s['failed']}" if s.get("failed") else ""))
    t = rollup_totals([row for row, s in zip(rows, states) if not s.get("failed")])
    lines.append(f"total {t['received']:>8}  {t['processed']:>9}  {t['written']:>7}  {t['lost']:>4}"
                 f"   ({t['received'] / elapsed if elapsed > 0 else 0:,.0f} frames/s received in all)")
    if t["slowest_rank"] is not None:
        lines.append(f"slowest rank    {t['slowest_rank']} ({rows[t['slowest_rank']]['processed']} frames processed)")
    return "\n".join(lines)


def _one_node(comm: Any) -> bool:
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    one = node.Get_size() == comm.Get_size()
    node.Free()
    return one


def own_address(one_node: bool) -> str:
    """This rank's address for endpoints other ranks and clients reach: loopback when every rank is on one
    node, else the host mpiexec started it on (MPICH's PMI_HOSTNAME, as given to -hosts), else the address
    this host's name resolves to."""
    if one_node:
        return "127.0.0.1"
    return socket.gethostbyname(os.environ.get("PMI_HOSTNAME") or socket.gethostname())


def _start_fan(opts: dict[str, Any], upstream: str, consumers: list[str], log_dir: Path) -> subprocess.Popen:
    version = "1" if opts["source"] == "dectris_v1" else "2"
    args = [sys.executable, "-m", "framechain.client.cli", "fan", "--upstream", upstream, "--consumers",
            *consumers, "--version", version, "--series", "1"]
    args += ["--broadcast"] if opts["distribution"] == "broadcast" else ["--block", str(opts["frames_per_block"])]
    logf = open(log_dir / "fan.log", "w")
    try:
        return subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
    finally:
        logf.close()


def _together(comm: Any, step: Any, what: str) -> None:
    """Run ``step`` on every rank; if it fails anywhere, every rank raises, naming the rank and why."""
    try:
        step()
        why = ""
    except FramechainError as e:
        why = str(e)
    whys = comm.allgather(why)
    bad = [(r, w) for r, w in enumerate(whys) if w]
    if bad:
        raise LaunchError("; ".join(f"rank {r} {what}: {w}" for r, w in bad))


def main(args: argparse.Namespace) -> int:
    """One rank of ``framechain run --mpi``; every rank returns the job's exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from mpi4py import MPI
    except ImportError:
        print("framechain run --mpi: mpi4py is not installed (pip install 'framechain[mpi]')", file=sys.stderr)
        return 2
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    err = ""
    cfg: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    if rank == 0:
        try:
            cfg = load_config(args.config)
            opts = mpi_options(cfg)
        except LaunchError as e:
            err = str(e)
        if not err and cfg.get("output_dir"):
            Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
        if not err and cfg.get("prepare"):
            script = Path(cfg["prepare"])
            if not script.exists():
                script = Path(args.config).parent / cfg["prepare"]
            done = subprocess.run([sys.executable, str(script), args.config])
            if done.returncode != 0:
                err = f"prepare script {script} failed (exit {done.returncode})"
    err, cfg, opts = comm.bcast((err, cfg, opts), root=0)
    if err:
        if rank == 0:
            print(f"framechain run --mpi: {err}", file=sys.stderr)
        return 2
    job = comm.bcast(f"{os.getpid()}_{int(time.time())}", root=0)
    root = Path(args.log_dir or tempfile.gettempdir()) / f"framechain_mpi_{job}"
    log_dir = root / f"rank{rank}"
    log_dir.mkdir(parents=True, exist_ok=True)
    shm_dir = None
    load_s = 0.0
    try:
        if opts["broadcast_constants"] and constant_files(cfg):
            cfg, shm_dir, load_s = broadcast_constants(comm, cfg, job)
            _record_constants(cfg, log_dir)
    except LaunchError as e:
        if rank == 0:
            print(f"framechain run --mpi: {e}", file=sys.stderr)
        return 2
    load_s = comm.reduce(load_s, op=MPI.MAX, root=0)
    # a stream source: rank 0 binds one fan endpoint per rank; each rank's receiver connects to its own
    consumers = None
    upstream = cfg["receiver"].get("source", {}).get("endpoint")
    one_node = _one_node(comm)
    address = own_address(one_node)
    if opts["source"] in STREAM_SOURCES and size > 1:
        if rank == 0:
            consumers = [free_tcp_endpoint(opts["address"] or address) for _ in range(size)]
        consumers = comm.bcast(consumers, root=0)

    spool = str(root / f"rank{rank}" / "spool")
    mine = rank_config(cfg, rank, size, opts, spool, consumers[rank] if consumers else None)
    if not one_node:  # control endpoints the TUI and REST adapter can reach from another host
        mine["endpoints"] = {"receiver": free_tcp_endpoint(address), "processor": free_tcp_endpoint(address)}
    launcher = Launcher(mine, log_dir, preexec=_die_with_parent)
    launcher.segment = f"framechain_mpi_{job}_r{rank}"
    signals = _Signals(launcher)
    total = cfg["receiver"].get("source", {}).get("frames", 0) or None
    code, failed, elapsed = 0, "", 0.0
    fan = None
    states: list[dict[str, Any]] = []
    rx: dict[str, Any] = {}
    fp: dict[str, Any] = {}
    timeout = args.timeout or cfg.get("timeout", 0)
    spools = [os.path.join(spool, i) for i in plugin_indices(cfg, XPCS)] \
        if size > 1 else []
    merges: list[float] = []
    try:
        _together(comm, launcher.setup, "could not start its pair")
        if rank == 0 and consumers:
            fan = _start_fan(opts, upstream, consumers, root)
        _together(comm, launcher.start_source, "could not start its source")
        t0, flowing = time.monotonic(), False
        bar = None
        if rank == 0:
            if load_s:
                print(f"constants broadcast to every rank in {load_s * 1e3:.1f} ms", file=sys.stderr)
            eps = comm.gather(launcher.endpoints_option(), root=0)
            print(f"watch it live: framechain tui --endpoints {','.join(eps)}", file=sys.stderr)
            if not args.no_progress:
                from tqdm import tqdm
                bar = tqdm(total=total, unit="frame", desc=f"processed ({size} ranks)", dynamic_ncols=True,
                           file=sys.stderr)
        else:
            comm.gather(launcher.endpoints_option(), root=0)
        while True:
            state, rx_now, fp_now = _local_state(launcher)
            if rx_now:
                rx, fp = rx_now, fp_now
            state["partials"] = [sorted(_partials(s, rank)) for s in spools]  # per XPCS plugin
            if timeout and time.monotonic() - t0 > timeout:
                state["failed"] = state["failed"] or f"gave up after {timeout} s"
            states = comm.allgather(state)
            if not flowing and any(s.get("received", 0) for s in states):
                flowing, t0 = True, time.monotonic() - _STEP / 2  # timed from the first frame (a stream may wait)
            elapsed = time.monotonic() - t0
            for k, s in enumerate(spools):  # keys every rank has shared, in order: one reduce each, on all
                common = set.intersection(*(set(x["partials"][k]) for x in states))
                for key in sorted(common, key=lambda k: (k.endswith("_final"), len(k), k)):
                    merges.append(reduce_partials(comm, s, key, rank))
            bad = [(r, s["failed"]) for r, s in enumerate(states) if s.get("failed")]
            if bar is not None:
                done = [s.get("processed", 0) for s in states if not s.get("failed")]
                bar.n = sum(done) if opts["distribution"] == "blocks" else min(done, default=0)
                bar.set_postfix(lost=sum(s.get("lost", 0) for s in states), refresh=False)
                bar.refresh()
            if bad:
                failed = "; ".join(f"rank {r}: {why}" for r, why in bad)
                break
            if all(s.get("finished") for s in states):
                break
            time.sleep(_STEP)
        if bar is not None:
            bar.close()
        if failed:
            code = 1
            for s in spools:  # rank 0's XPCS plugin must not wait for a merge that will not come
                _part.abort(s, failed)
            if rank == 0:
                print(f"\nframechain run --mpi: {failed}; stopping every rank", file=sys.stderr)
            launcher.stop_source()
    except KeyboardInterrupt:
        signals.shutting_down()
        for s in spools:
            _part.abort(s, "interrupted")
        launcher.stop_source()
        code = 128 + signals.received
    except FramechainError as e:
        for s in spools:
            _part.abort(s, str(e))
        if rank == 0:
            print(f"framechain run --mpi: {e}", file=sys.stderr)
        code = 1
    finally:
        signals.shutting_down()
        if code == 0:
            try:
                rx, fp = launcher.snapshot(timeout=10)
            except FramechainError:
                pass
        launcher.shutdown()
        if fan is not None:
            if fan.poll() is None:
                fan.terminate()
            fan.wait(10)
        if shm_dir:
            shutil.rmtree(shm_dir, ignore_errors=True)
        signals.restore()
    if rank == 0 and rx and fp:
        print(summarise(cfg, rx, fp, elapsed, log_dir))
    if rank == 0 and states:
        print(_rollup(states, elapsed))
        if merges:
            print(f"xpcs merges      {len(merges)}, mean {np.mean(merges) * 1e3:.2f} ms per merge")
    return code
