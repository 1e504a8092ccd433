"""The ``framechain`` command: one entry point, one subcommand per tool."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from framechain import __version__

from . import ctl, fan, rest, simulate, tui

__all__ = ["main"]


def _daemon(module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        if module == "receiver":
            from framechain.framereceiver.daemon import main as daemon_main
        else:
            from framechain.frameprocessor.daemon import main as daemon_main
        return daemon_main(args.rest)
    return run


def _run(args: argparse.Namespace) -> int:
    if args.mpi:
        from .mpirun import main as mpi_main
        return mpi_main(args)
    from .launcher import main as launcher_main
    return launcher_main(args)


def _bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main
    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framechain", description="Detector frame receiver/processor toolkit.")
    parser.add_argument("--version", action="version", version=f"framechain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("receiver", "run the frame receiver daemon"),
                           ("processor", "run the frame processor daemon")):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_daemon(name))
    ctl.add_parser(sub)
    tui.add_parser(sub)
    rest.add_parser(sub)
    simulate.add_parser(sub)
    fan.add_parser(sub)
    r = sub.add_parser("run", help="run a whole acquisition from one JSON config")
    r.add_argument("config", help="launcher JSON file (see examples/)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log-dir", help="directory for daemon logs (default: a temporary directory)")
    r.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    r.add_argument("--mpi", action="store_true", help="under mpiexec: one receiver/processor pair per rank "
                                                      "(docs/scaling.md)")
    r.set_defaults(func=_run)
    k = sub.add_parser("keys", help="make a CURVE key directory for --curve-dir (daemons and clients)")
    k.add_argument("directory", help="new directory: server and client key pairs, the client authorized")
    k.set_defaults(func=_keys)
    b = sub.add_parser("bench", help="measure throughput against same-run baselines")
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    b.add_argument("--quick", action="store_true", help="fewer frames (a smoke test, not a measurement)")
    b.add_argument("--only", help="comma-separated benchmark suites to run")
    b.add_argument("--plot", metavar="PNG", help="also plot how the costs grow with frame size, pixels, "
                                                 "occupancy and bins (make bench-plot: docs/performance.png)")
    b.add_argument("--peers", action="store_true", help="also the peers suite: scikit-beam's correlator on the "
                                                        "same frames, photon finding at 2M ePix size")
    b.set_defaults(func=_bench)
    return parser


def _keys(args: argparse.Namespace) -> int:
    from framechain.ipc.curve import make_keys
    from framechain.ipc.errors import FramechainError
    try:
        d = make_keys(args.directory)
    except (FramechainError, OSError) as err:
        print(f"framechain keys: {err}", file=sys.stderr)
        return 2
    print(f"{d}: server.key(_secret) for the daemons (--curve-dir {d}), client.key(_secret) for clients "
          f"(ctl/tui/rest --curve-dir), authorized/ lists the client public keys the daemons accept")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("receiver", "processor"):
        # the daemons own their argument parsing (their --help lists every flag)
        return _daemon(argv[0])(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
