"""``framechain ctl``: send one control message to a daemon and print the reply as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from framechain.ipc.client import IpcClient
from framechain.ipc.errors import FramechainError, IpcTimeout

__all__ = ["add_parser", "run_ctl"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ctl", help="send a control message to a receiver or processor",
                       description="Send one control message and print the reply as JSON. "
                                   "Exit 1 on nack or timeout (error on stderr).")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5004",
                   help="daemon control endpoint (default %(default)s, the processor)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    p.add_argument("--curve-dir", help="CURVE key directory, for daemons started with --curve-dir")
    cmds = p.add_subparsers(dest="ctl_command", required=True)
    cmds.add_parser("status", help="daemon status")
    c = cmds.add_parser("configure", help="send configure params (JSON text or -f FILE)")
    c.add_argument("json", nargs="?", help="configure params as a JSON object")
    c.add_argument("-f", "--file", help="file holding the JSON params")
    cmds.add_parser("request-configuration", help="current configuration")
    e = cmds.add_parser("execute", help="run a command on a plugin (or 'source' on a receiver)")
    e.add_argument("index")
    e.add_argument("command")
    e.add_argument("--params", default="{}", help="extra JSON params for the command")
    cmds.add_parser("version", help="versions of the daemon and its plugins")
    cmds.add_parser("reset-statistics", help="zero the counters")
    cmds.add_parser("shutdown", help="stop the daemon (after draining queued frames)")
    p.set_defaults(func=run_ctl)


def _params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    c = args.ctl_command
    if c == "configure":
        text = open(args.file).read() if args.file else args.json
        if text is None:
            raise ValueError("configure needs JSON params or -f FILE")
        params = json.loads(text)
        if not isinstance(params, dict):
            raise ValueError("configure params must be a JSON object")
        return "configure", params
    if c == "execute":
        extra = json.loads(args.params)
        if not isinstance(extra, dict):
            raise ValueError("--params must be a JSON object")
        return "execute", {args.index: {"command": args.command, **extra}}
    return {"status": "status", "request-configuration": "request_configuration", "version": "request_version",
            "reset-statistics": "reset_statistics", "shutdown": "shutdown"}[c], {}


def run_ctl(args: argparse.Namespace) -> int:
    try:
        msg_val, params = _params(args)
    except (OSError, ValueError) as err:
        print(f"framechain ctl: {err}", file=sys.stderr)
        return 2
    try:
        client = IpcClient(args.endpoint, timeout=args.timeout, curve_dir=args.curve_dir)
    except FramechainError as err:
        print(f"framechain ctl: {err}", file=sys.stderr)
        return 2
    with client:
        try:
            reply = client.request(msg_val, params, timeout=args.timeout)
        except IpcTimeout as err:
            print(f"framechain ctl: {err}", file=sys.stderr)
            return 1
    print(json.dumps({"msg_type": reply.msg_type, "msg_val": reply.msg_val, "id": reply.id,
                      "timestamp": reply.timestamp, "params": reply.params}, indent=2))
    if reply.msg_type == "nack":
        print(f"framechain ctl: nack: {reply.error}", file=sys.stderr)
        return 1
    return 0
