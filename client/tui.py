"""``framechain tui``: curses control client for receivers and processors.

The successor of odin-data's ``file_writer_client.py``: live status of every
daemon and plugin, the plugin chain as a tree, and a menu that sends load,
connect, configure, start/stop writing, reset and shutdown messages, with
every ack/nack shown in a response pane. See docs/clients.md for the keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._monitor import EndpointSpec, Monitor, parse_endpoints

__all__ = ["add_parser", "main", "specs_from_args", "run_config_items"]


def add_parser(sub: Any) -> None:
    """Add the ``tui`` subcommand to ``framechain``'s subparsers."""
    p = sub.add_parser("tui", help="curses control client (status, plugin chain, menus)",
                       description="Watch and control receivers and processors in a terminal "
                                   "(80x24 or larger). Without endpoint flags or --config it connects to the "
                                   "default receiver tcp://127.0.0.1:5000 and processor tcp://127.0.0.1:5004.")
    p.add_argument("--receiver", action="append", default=[], metavar="ENDPOINT",
                   help="receiver control endpoint (repeatable)")
    p.add_argument("--processor", action="append", default=[], metavar="ENDPOINT",
                   help="processor control endpoint (repeatable)")
    p.add_argument("--endpoints", help="'fr:ENDPOINT,fp:ENDPOINT,...' (as in the REST adapter's option)")
    p.add_argument("--config", metavar="RUN.json",
                   help="a 'framechain run' config with fixed \"endpoints\": attach to its receiver and processor")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between status polls (default %(default)s)")
    p.add_argument("--curve-dir", help="CURVE key directory, for daemons started with --curve-dir")
    p.add_argument("--timeout", type=float, default=0.5,
                   help="seconds before a silent daemon is shown disconnected (default %(default)s)")
    p.set_defaults(func=main)


def run_config_items(path: str) -> list[str]:
    """``fr:``/``fp:`` items for the fixed control endpoints of a ``framechain run`` config.

    Raises
    ------
    ValueError
        The file is not a valid run config (see ``client.launcher.load_config``), or does not fix both the
        receiver's and the processor's control endpoint (then the user is told
        to use the ``--endpoints`` line ``framechain run`` prints).
    """
    from .launcher import LaunchError, control_endpoints, load_config

    try:
        cfg = load_config(path)
    except LaunchError as err:
        raise ValueError(str(err)) from err
    eps = control_endpoints(cfg)
    missing = [k for k in ("receiver", "processor") if not isinstance(eps.get(k), str)]
    if missing:
        raise ValueError(f"run config {path!r} fixes no {' or '.join(missing)} control endpoint "
                         f"(its \"endpoints\" lacks {', '.join(repr(k) for k in missing)}), so 'framechain run' "
                         "picks free ports each time; attach with the line it prints: "
                         "'watch it live: framechain tui --endpoints fr:...,fp:...'")
    return [f"fr:{eps['receiver']}", f"fp:{eps['processor']}"]


def specs_from_args(args: argparse.Namespace) -> list[EndpointSpec]:
    """Endpoints from ``--config``/``--receiver``/``--processor``/``--endpoints`` (defaults when none)."""
    items = run_config_items(args.config) if getattr(args, "config", None) else []
    items += [f"fr:{e}" for e in args.receiver] + [f"fp:{e}" for e in args.processor]
    if args.endpoints:
        items += args.endpoints.replace(",", " ").split()
    if not items:
        items = ["fr:tcp://127.0.0.1:5000", "fp:tcp://127.0.0.1:5004"]
    return parse_endpoints(items)


def main(args: argparse.Namespace) -> int:
    """Run the client until 'q'; 2 on bad endpoints or when stdout is not a terminal."""
    try:
        specs = specs_from_args(args)
    except ValueError as err:
        print(f"framechain tui: {err}", file=sys.stderr)
        return 2
    if args.interval <= 0 or args.timeout <= 0:
        print("framechain tui: --interval and --timeout must be > 0", file=sys.stderr)
        return 2
    if not sys.stdout.isatty():
        print("framechain tui: needs a terminal (use 'framechain ctl' in scripts)", file=sys.stderr)
        return 2
    os.environ.setdefault("ESCDELAY", "25")
    import curses

    from ._tui.app import App

    curses.use_env(False)     # size from the terminal, not stale LINES/COLUMNS, so resizes work

    with Monitor(specs, interval=args.interval, poll_timeout=args.timeout, curve_dir=args.curve_dir) as monitor:
        app = App(monitor)
        try:
            return curses.wrapper(app.run)
        except KeyboardInterrupt:
            return 130
        finally:
            app.close()


if __name__ == "__main__":
    from framechain.client.cli import main as cli_main

    sys.exit(cli_main(["tui", *sys.argv[1:]]))
