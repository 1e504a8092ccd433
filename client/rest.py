"""``framechain rest``: run odin-control with the framechain adapter and the web page.

The INI file is odin-control's own (``[server]``, ``[tornado]``,
``[adapter.<name>]`` sections; see ``examples/rest.cfg``). Two defaults differ
from odin-control's so the server is safe and useful out of the box:
``http_addr`` is loopback (``127.0.0.1``) unless the file or ``--addr`` says
otherwise, and ``static_path`` is framechain's web page (``client/static``)
unless the file sets it.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "serve", "STATIC_DIR", "odin_argv"]

TOKEN_ENV = "FRAMECHAIN_REST_TOKEN"  # as rest_adapter.TOKEN_ENV (not imported: this module loads without odin)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def add_parser(sub: Any) -> None:
    """Add the ``rest`` subcommand to ``framechain``'s subparsers."""
    p = sub.add_parser("rest", help="serve the REST API and web page (odin-control)",
                       description="Start odin-control with the framechain adapter from an INI file "
                                   "(see examples/rest.cfg). Serves /api/<adapter>/... and the web page at /.")
    p.add_argument("--config", required=True, help="odin-control INI file (e.g. examples/rest.cfg)")
    p.add_argument("--port", type=int, help="HTTP port (overrides [server] http_port)")
    p.add_argument("--addr", help="HTTP address (overrides [server] http_addr; default 127.0.0.1)")
    p.add_argument("--endpoints", help="override the adapter's endpoints option "
                                       "('fr:tcp://127.0.0.1:5000,fp:tcp://127.0.0.1:5004')")
    p.set_defaults(func=main)


def odin_argv(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """Build odin-control's command line from ours.

    Returns
    -------
    argv, temporary
        odin-control's options, and the temporary copy of the INI written for
        ``--endpoints`` (None without it); the caller deletes it once read.

    Raises
    ------
    ValueError
        The config file is missing, unreadable or has no ``[server]`` adapters.
    """
    path = Path(args.config)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    ini = configparser.ConfigParser()
    try:
        ini.read(path)
    except configparser.Error as err:
        raise ValueError(f"config file {str(path)!r} is not a valid INI file: {err}") from err
    if not ini.has_option("server", "adapters"):
        raise ValueError(f"config file {str(path)!r} has no 'adapters' key in a [server] section")
    temporary = None
    if getattr(args, "endpoints", None):
        path = temporary = _with_endpoints(ini, path, args.endpoints)
    argv = ["framechain-rest", "--config", str(path)]
    addr = args.addr or ini.get("server", "http_addr", fallback="127.0.0.1")
    _check_token(ini, addr)
    if args.addr or not ini.has_option("server", "http_addr"):
        argv += ["--http_addr", args.addr or "127.0.0.1"]
    if args.port is not None:
        argv += ["--http_port", str(args.port)]
    if not ini.has_option("server", "static_path"):
        argv += ["--static_path", str(STATIC_DIR)]
    return argv, temporary


def _check_token(ini: configparser.ConfigParser, addr: str) -> None:
    """Refuse to listen beyond loopback unless every framechain adapter has a PUT token."""
    if addr.strip() in ("127.0.0.1", "localhost", "::1") or addr.startswith("127."):
        return
    for section in ini.sections():
        if section.startswith("adapter.") and "FramechainAdapter" in ini.get(section, "module", fallback=""):
            if not ini.get(section, "token_file", fallback="") and not os.environ.get(TOKEN_ENV):
                raise ValueError(f"refusing to listen on {addr} without a token: anyone who reaches it could "
                                 f"configure the daemons. Set token_file in [{section}] (or ${TOKEN_ENV}); "
                                 "clients then send 'Authorization: Bearer <token>' with every PUT")


def _with_endpoints(ini: configparser.ConfigParser, path: Path, endpoints: str) -> Path:
    """Write a copy of the INI whose framechain adapter sections use ``endpoints``."""
    sections = [s for s in ini.sections()
                if s.startswith("adapter.") and ini.get(s, "module", fallback="").startswith("framechain.client.rest_adapter.")]
    if not sections:
        raise ValueError(f"--endpoints given but {str(path)!r} loads no framechain.client.rest_adapter adapter")
    for section in sections:
        ini.set(section, "endpoints", endpoints)
    fd, name = tempfile.mkstemp(prefix="framechain-rest-", suffix=".cfg")
    with os.fdopen(fd, "w") as fh:
        ini.write(fh)
    return Path(name)


def main(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; 2 on a config error."""
    try:
        argv, temporary = odin_argv(args)
    except ValueError as err:
        print(f"framechain rest: {err}", file=sys.stderr)
        return 2
    try:
        return serve(argv, remove_after_parse=temporary)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _define_options(config: Any) -> None:
    # odin-control's own server options (odin_control.main), with its defaults
    config.define("http_addr", default="0.0.0.0", option_help="Set HTTP/S server address")
    config.define("http_port", default=8888, option_help="Set HTTP server port")
    config.define("enable_http", default=True, option_help="Enable HTTP")
    config.define("https_port", default=8443, option_help="Set HTTPS server port")
    config.define("enable_https", default=False, option_help="Enable HTTPS")
    config.define("ssl_cert_file", default="cert.pem", option_help="Set SSL certificate file for HTTPS")
    config.define("ssl_key_file", default="key.pem", option_help="Set SSL key file for HTTPS")
    config.define("debug_mode", default=False, option_help="Enable tornado debug mode")
    config.define("access_logging", default=None, option_help="Set the tornado access log level",
                  metavar="debug|info|warning|error|none")
    config.define("static_path", default="./static", option_help="Set path for static file content")
    config.define("enable_cors", default=False, option_help="Enable cross-origin resource sharing (CORS)")
    config.define("cors_origin", default="*", option_help="Specify allowed CORS origin")
    config.define("api_version", default=None, option_help="Set the API version string in URLs")


def serve(argv: list[str], remove_after_parse: Path | None = None) -> int:
    """Run odin-control's HTTP server with ``argv`` (odin-control's options) until a signal.

    ``remove_after_parse`` (a temporary config file) is deleted as soon as
    odin-control has read it, so it is not left behind even if the server is
    killed. This replaces ``odin_control.main.main``, which in odin-control 2.1 runs the
    IOLoop it took *before* loading adapters while async adapters (like ours)
    make the server listen on a newer loop, so nothing is ever served. Here the
    loop is taken after the server is built.
    """
    import signal

    import tornado.ioloop
    from odin_control.config.parser import ConfigError, ConfigParser
    from odin_control.http.server import HttpServer

    config = ConfigParser()
    _define_options(config)
    try:
        config.parse(argv)
    except ConfigError as err:
        log.error("failed to parse configuration: %s", err)
        return 2
    finally:
        if remove_after_parse is not None:
            remove_after_parse.unlink(missing_ok=True)
    try:
        http_server = HttpServer(config)
    except ValueError as err:       # our adapter's option errors
        log.error("%s", err)
        return 2
    if not http_server.api_route.adapters:
        log.error("no API adapter could be loaded from %s; see the errors above", argv)
        return 2
    loop = tornado.ioloop.IOLoop.current()
    stopping = []

    def stop(signame: str) -> None:
        if not stopping:
            stopping.append(signame)
            log.info("%s received, shutting down", signame)
            http_server.stop()
            loop.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.asyncio_loop.add_signal_handler(sig, stop, sig.name)
    loop.start()
    http_server.cleanup_adapters()
    log.info("framechain rest server stopped")
    return 0


if __name__ == "__main__":
    from framechain.client.cli import main as cli_main

    sys.exit(cli_main(["rest", *sys.argv[1:]]))
