"""What the curses client shows, as styled text lines (no curses here).

Each screen is a list of :data:`Line` objects: lists of ``(text, style)``
segments, where style is one of ``normal, bold, ok, bad, warn, dim, head``.
The app maps styles to curses attributes and clips lines to the window.
"""

from __future__ import annotations

from typing import Any

from .._monitor import DaemonLink, Snapshot, lookup, rollup

__all__ = ["Line", "status_lines", "chain_lines", "fmt_count", "fmt_rate", "drop_counters"]

Line = list[tuple[str, str]]


def fmt_count(value: Any) -> str:
    """A counter, or '-' when the daemon did not report it."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10000:
        return f"{value / 1000:.0f}k/s"
    if value >= 100:
        return f"{value:.0f}/s"
    return f"{value:.1f}/s"


def _header(link: DaemonLink, snap: Snapshot) -> Line:
    if not snap.updated:
        state = ("CONNECTING", "warn")
    else:
        state = ("CONNECTED", "ok") if snap.connected else ("DISCONNECTED", "bad")
    line: Line = [(f"{link.name} ", "head"), (f"{link.kind} {link.endpoint}  ", "bold"), state]
    if snap.updated and snap.error:
        line.append((f"  {snap.error}", "bad"))
    return line


def _frames_received(frames: dict, rates: dict) -> Line:
    """The 'frames received (rate) released' start both daemons' first line share."""
    return [("  frames received ", "normal"), (fmt_count(frames.get("received")), "bold"),
            (f" ({fmt_rate(rates.get('frames/received'))})", "normal"),
            ("  released ", "normal"), (fmt_count(frames.get("released")), "normal")]


def _receiver(st: dict, rates: dict) -> list[Line]:
    if not st:
        return []
    frames = st.get("frames", {})
    dropped = frames.get("dropped", 0) or 0
    out: list[Line] = [_frames_received(frames, rates) + [
        ("  dropped ", "normal"), (fmt_count(dropped), "bad" if dropped else "normal"),
        ("  timedout ", "normal"), (fmt_count(frames.get("timedout")), "bad" if frames.get("timedout") else "normal"),
    ]]
    buffers, source = st.get("buffers", {}), st.get("source", {})
    consistent = buffers.get("consistent", True)
    line: Line = [("  buffers empty ", "normal"),
                  (f"{fmt_count(buffers.get('empty'))}/{fmt_count(buffers.get('total'))}", "bold"),
                  ("  mapped ", "normal"), (fmt_count(buffers.get("mapped")), "normal")]
    if not consistent:
        line.append(("  INCONSISTENT", "bad"))
    if source:
        state = source.get("state", "-")
        line += [("  source ", "normal"), (str(state), "ok" if state == "running" else "normal"),
                 (f" {fmt_count(source.get('frame'))}/{fmt_count(source.get('frames'))}", "normal")]
        if source.get("error"):
            line.append((f"  {source['error']}", "bad"))
    out.append(line)
    return out


_PLUGIN_HEAD = f"  {'plugin':<10}{'queue':>8}{'processed':>10}{'rate':>8}{'drops':>6}{'err':>4}{'mean us':>8}  notes"


def _is_drop_counter(key: str) -> bool:
    return key.startswith(("frames_dropped", "frames_wrong_")) or key == "frames_rejected"


def drop_counters(st: dict) -> dict[str, int]:
    """Every frame a plugin did not pass on, by status key.

    ``frames_dropped`` (the worker's full-queue drops, or the plugin's own when
    it reports one), ``frames_dropped_*`` (e.g. ``frames_dropped_pool``),
    ``frames_wrong_*`` (shape, dtype) and ``frames_rejected``; integer values only.
    """
    return {k: v for k, v in st.items()
            if _is_drop_counter(k) and isinstance(v, int) and not isinstance(v, bool)}


def _plugin_line(index: str, st: dict, rates: dict) -> Line:
    queue = st.get("queue", {}) or {}
    qsize, qmax = queue.get("size"), queue.get("max")
    errors = st.get("errors", 0) or 0
    drops = drop_counters(st)
    total = sum(drops.values())
    mean = lookup(st, "timing/mean_process")
    qfull = isinstance(qsize, int) and isinstance(qmax, int) and qmax and qsize >= 0.8 * qmax
    line: Line = [
        (f"  {index[:9]:<10}", "bold"),
        (f"{fmt_count(qsize) + '/' + fmt_count(qmax):>8}", "warn" if qfull else "normal"),
        (f"{fmt_count(st.get('frames_processed')):>10}", "normal"),
        (f"{fmt_rate(rates.get(index + '/frames_processed')):>8}", "normal"),
        (f"{total:>6}", "bad" if total else "normal"),
        (f"{fmt_count(errors):>4}", "bad" if errors else "normal"),
        (f"{(f'{mean:.1f}' if isinstance(mean, (int, float)) else '-'):>8}", "normal"),
    ]
    if "writing" in st:
        line.append(("  WRITING" if st["writing"] else "  not writing", "ok" if st["writing"] else "dim"))
        line.append((f" {fmt_count(st.get('frames_written'))} written", "normal"))
    reasons = [f"{k.removeprefix('frames_')}={v}" for k, v in drops.items() if v]
    if reasons:     # which counters make up the drops column
        line.append((f"  {' '.join(reasons)}", "bad"))
    if st.get("last_error"):
        line.append((f"  {st['last_error']}", "bad"))
    elif st.get("error"):
        line.append((f"  {st['error']}", "bad"))
    return line


def _processor(st: dict, rates: dict) -> list[Line]:
    if not st:
        return []
    frames, pool, shm = st.get("frames", {}), st.get("pool", {}), st.get("shared_memory", {})
    bad = frames.get("bad", 0) or 0
    out: list[Line] = [_frames_received(frames, rates) + [
        ("  bad ", "normal"), (fmt_count(bad), "bad" if bad else "normal"),
        ("  pool ", "normal"), (f"{fmt_count(pool.get('blocks_in_use'))}/{fmt_count(pool.get('blocks_total'))}", "normal"),
        ("  shm ", "normal"), ("mapped" if shm.get("configured") else "not mapped",
                               "ok" if shm.get("configured") else "warn"),
    ]]
    if frames.get("last_bad"):
        out.append([(f"  last bad frame: {frames['last_bad']}", "bad")])
    names = lookup(st, "plugins/names") or []
    if names:
        out.append([(_PLUGIN_HEAD, "dim")])
        for index in names:
            out.append(_plugin_line(index, st.get(index, {}) or {}, rates))
    else:
        out.append([("  no plugins loaded (m: menu -> Load plugin)", "dim")])
    return out


def status_lines(links: list[DaemonLink]) -> list[Line]:
    """The live status screen: every daemon, its counters and rates, every plugin."""
    out: list[Line] = []
    receivers = [lk for lk in links if lk.kind == "receiver"]
    processors = [lk for lk in links if lk.kind == "processor"]
    if min(len(receivers), len(processors)) > 1:  # several pairs (framechain run --mpi): one line for all
        r = rollup(receivers, processors)
        out.append([("all ranks ", "bold"), (f"received {fmt_count(r['received'])}  processed "
                                             f"{fmt_count(r['processed'])}  written {fmt_count(r['written'])}  ",
                                             "normal"),
                    (f"lost {fmt_count(r['lost'])}", "bad" if r["lost"] else "normal"),
                    (f"  slowest rank {r['slowest_rank']}", "normal"),
                    *([(f"  ranks down {r['ranks_down']}", "bad")] if r["ranks_down"] else [])])
    for link in links:
        snap = link.snapshot()
        out.append(_header(link, snap))
        out += (_receiver if link.kind == "receiver" else _processor)(snap.status, snap.rates)
    return out


def chain_lines(links: list[DaemonLink]) -> list[Line]:
    """Each processor's plugin chain as a tree rooted at ``frame_receiver``."""
    out: list[Line] = []
    for link in links:
        if link.kind != "processor":
            continue
        snap = link.snapshot()
        out.append(_header(link, snap))
        plugin = snap.config.get("plugin", {}) if isinstance(snap.config, dict) else {}
        loads = {d.get("index"): d for d in plugin.get("load", []) if isinstance(d, dict)}
        children: dict[str, list[str]] = {}
        for conn in plugin.get("connect", []):
            if isinstance(conn, dict):
                children.setdefault(conn.get("connection", "?"), []).append(conn.get("index", "?"))
        names = lookup(snap.status, "plugins/names") or list(loads)
        connected = {c for kids in children.values() for c in kids}
        roots = ["frame_receiver"] + [n for n in names if n not in connected and n != "frame_receiver"]

        def walk(node: str, prefix: str, last: bool, depth: int, seen: set[str]) -> None:
            branch = "`- " if last else "|- "
            info = loads.get(node)
            st = snap.status.get(node, {}) if isinstance(snap.status, dict) else {}
            label: Line = [(f"  {prefix}{branch if depth else ''}", "dim"), (node, "bold")]
            if info:
                label.append((f"  {info.get('name', '')} ({info.get('library', '')})", "dim"))
            if isinstance(st, dict) and st.get("errors"):
                label.append((f"  errors {st['errors']}", "bad"))
            if node not in connected and node != "frame_receiver":
                label.append(("  (not connected)", "warn"))
            out.append(label)
            if node in seen:
                return
            kids = children.get(node, [])
            for i, kid in enumerate(kids):
                ext = ("   " if last else "|  ") if depth else ""
                walk(kid, prefix + ext, i == len(kids) - 1, depth + 1, seen | {node})

        for root in roots:
            walk(root, "", True, 0, set())
    if not out:
        out.append([("no processor endpoints given", "dim")])
    return out
