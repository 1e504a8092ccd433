"""The curses client's menu: one action per control message a user sends.

Each action builds a :class:`~client._tui.form.Form`; submitting it checks the
values and queues ``(targets, msg_val, params)`` on the app's request worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from .._monitor import DaemonLink, Monitor
from .form import Field, Form

__all__ = ["ACTIONS", "Sender"]


class Sender(Protocol):
    monitor: Monitor

    def send(self, targets: list[DaemonLink], msg_val: str, params: dict[str, Any]) -> None: ...


def _names(app: Sender, kind: str | None, extra: tuple[str, ...] = ()) -> list[str]:
    names = [n for n, link in app.monitor.links.items() if kind is None or link.kind == kind]
    return names + list(extra)


def _daemon_field(app: Sender, kind: str | None, extra: tuple[str, ...] = ()) -> Field:
    names = _names(app, kind, extra) or _names(app, None)
    return Field("daemon", "daemon", names[0] if names else "", "choice", names)


def _targets(app: Sender, name: str) -> list[DaemonLink]:
    if name == "all":
        return list(app.monitor.links.values())
    if name not in app.monitor.links:
        raise ValueError(f"unknown daemon {name!r}; known: {', '.join(app.monitor.links)}")
    return [app.monitor.links[name]]


def _plugins(app: Sender, daemon: str) -> list[str]:
    link = app.monitor.links.get(daemon)
    if link is None:
        return []
    names = (link.snapshot().status.get("plugins") or {}).get("names") or []
    return list(names)


def _index_field(app: Sender, default: str = "") -> Field:
    procs = _names(app, "processor")
    names = _plugins(app, procs[0]) if procs else []
    value = default if default else (names[0] if names else "")
    return Field("index", "plugin index", value)


def _plugin_config(app: Sender, daemon: str, index: str) -> str:
    link = app.monitor.links.get(daemon)
    cfg = link.snapshot().config.get(index) if link is not None else None
    return json.dumps(cfg) if isinstance(cfg, dict) else "{}"


def _object(value: Any, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{label} must be a JSON object like {{\"key\": 1}}, not {type(value).__name__}; not sent")
    return value


def load_plugin(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "configure",
                 {"plugin": {"load": {"index": v["index"], "name": v["name"], "library": v["library"]}}})
    return Form("Load plugin", [_daemon_field(app, "processor"), Field("index", "index", "sum"),
                                Field("name", "class name", "SumPlugin"),
                                Field("library", "plugin name, module path or .py file", "sum")], submit)


def connect_plugin(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "configure",
                 {"plugin": {"connect": {"index": v["index"], "connection": v["connection"],
                                         "blocking": v["blocking"] == "true"}}})
    return Form("Connect plugin", [_daemon_field(app, "processor"), _index_field(app),
                                   Field("connection", "upstream (frame_receiver or a plugin index)", "frame_receiver"),
                                   Field("blocking", "blocking", "true", "choice", ["true", "false"])], submit)


def disconnect_plugin(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "configure",
                 {"plugin": {"disconnect": {"index": v["index"], "connection": v["connection"]}}})
    return Form("Disconnect plugin", [_daemon_field(app, "processor"), _index_field(app),
                                      Field("connection", "upstream", "frame_receiver")], submit)


def configure_plugin(app: Sender) -> Form:
    daemon = _daemon_field(app, "processor")
    index = _index_field(app)
    params = Field("params", "params (JSON object)", _plugin_config(app, daemon.value, index.value), "json")
    touched = {"params": False}

    def on_change(form: Form, f: Field) -> None:
        if f.name == "params":
            touched["params"] = True
        elif not touched["params"]:
            form.field("params").value = _plugin_config(app, form.field("daemon").value, form.field("index").value)

    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "configure", {v["index"]: _object(v["params"], "params")})
    return Form("Configure plugin", [daemon, index, params], submit, on_change,
                help="params are checked as JSON before sending; the daemon validates the keys")


def raw_configure(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "configure", _object(v["params"], "params"))
    return Form("Configure (raw params)", [_daemon_field(app, None),
                                           Field("params", "params (JSON object)", "{}", "json")], submit)


def _writing(command: str) -> Callable[[Sender], Form]:
    def build(app: Sender) -> Form:
        def submit(v: dict[str, Any]) -> None:
            app.send(_targets(app, v["daemon"]), "execute", {v["index"]: {"command": command}})
        return Form(command.replace("_", " ").capitalize(),
                    [_daemon_field(app, "processor", ("all",) if len(_names(app, "processor")) > 1 else ()),
                     Field("index", "writer index", "hdf")], submit)
    return build


def _source(command: str) -> Callable[[Sender], Form]:
    def build(app: Sender) -> Form:
        def submit(v: dict[str, Any]) -> None:
            app.send(_targets(app, v["daemon"]), "execute", {"source": {"command": command}})
        return Form(f"{command.capitalize()} source", [_daemon_field(app, "receiver")], submit)
    return build


def execute_command(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        extra = _object(v["params"], "extra params")
        app.send(_targets(app, v["daemon"]), "execute", {v["index"]: {"command": v["command"], **extra}})
    return Form("Execute command", [_daemon_field(app, None), _index_field(app), Field("command", "command", ""),
                                    Field("params", "extra params (JSON object)", "{}", "json")], submit)


def reset_statistics(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "reset_statistics", {})
    return Form("Reset statistics", [_daemon_field(app, None, ("all",))], submit)


def shutdown(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        if v["confirm"] != "yes":
            raise ValueError("type yes to confirm the shutdown")
        app.send(_targets(app, v["daemon"]), "shutdown", {})
    return Form("Shutdown daemon", [_daemon_field(app, None), Field("confirm", "type yes to confirm", "")], submit)


def request_configuration(app: Sender) -> Form:
    def submit(v: dict[str, Any]) -> None:
        app.send(_targets(app, v["daemon"]), "request_configuration", {})
    return Form("Request configuration", [_daemon_field(app, None)], submit)


#: (label, form builder) in menu order
ACTIONS: list[tuple[str, Callable[[Sender], Form]]] = [
    ("Load plugin", load_plugin),
    ("Connect plugin", connect_plugin),
    ("Disconnect plugin", disconnect_plugin),
    ("Configure plugin (JSON)", configure_plugin),
    ("Start writing", _writing("start_writing")),
    ("Stop writing", _writing("stop_writing")),
    ("Start source (receiver)", _source("start")),
    ("Stop source (receiver)", _source("stop")),
    ("Execute plugin command", execute_command),
    ("Configure (raw params)", raw_configure),
    ("Request configuration", request_configuration),
    ("Reset statistics", reset_statistics),
    ("Shutdown daemon", shutdown),
]
