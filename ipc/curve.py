"""Optional ZeroMQ CURVE on the control sockets: encrypted, and only clients whose public key is listed get in.

A *key directory* (made by ``framechain keys DIR``, pyzmq's ``zmq.auth`` certificates)::

    DIR/server.key, DIR/server.key_secret     the daemons' key pair
    DIR/client.key, DIR/client.key_secret     one client's key pair (copy to each operator's machine)
    DIR/authorized/*.key                      public keys of the clients a daemon accepts

A daemon started with ``--curve-dir DIR`` serves its control socket as a CURVE
server and accepts only clients in ``authorized/``; a client (``framechain ctl
--curve-dir DIR``, ``IpcClient(..., curve_dir=DIR)``, the REST adapter's
``curve_dir``) uses ``client.key_secret`` and the daemons' ``server.key``.
A client without the right keys gets no reply: ZeroMQ drops it in the handshake,
and the daemon counts it in ``process/auth_failures``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

__all__ = ["make_keys", "secure_server", "secure_client", "AuthFailures"]

log = logging.getLogger(__name__)
_authenticators: dict[int, ThreadAuthenticator] = {}


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(f"CURVE key file {str(path)!r} does not exist (make a key directory with "
                          "'framechain keys DIR')")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as err:
        raise ConfigError(f"CURVE key file {str(path)!r} is not a ZeroMQ certificate: {err}") from err
    if secret and secret_key is None:
        raise ConfigError(f"CURVE key file {str(path)!r} holds no secret key")
    return public, secret_key


def make_keys(directory: str) -> Path:
    """Create a key directory: server and client key pairs, the client authorized. Refuses to overwrite."""
    d = Path(directory)
    if (d / "server.key_secret").exists():
        raise ConfigError(f"{d} already holds keys; remove them first or use another directory")
    (d / "authorized").mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    zmq.auth.create_certificates(str(d), "server")
    zmq.auth.create_certificates(str(d), "client")
    shutil.copy(d / "client.key", d / "authorized" / "client.key")
    for secret in d.glob("*.key_secret"):
        os.chmod(secret, 0o600)
    return d


def secure_server(socket: zmq.Socket, curve_dir: str) -> None:
    """Make ``socket`` (before it binds) a CURVE server accepting the keys in ``curve_dir/authorized``."""
    d = Path(curve_dir)
    public, secret = _load(d / "server.key_secret", secret=True)
    authorized = d / "authorized"
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise ConfigError(f"{authorized} holds no client public keys (*.key): no client could connect")
    ctx = socket.context
    auth = _authenticators.get(id(ctx))
    if auth is None:
        auth = _authenticators[id(ctx)] = ThreadAuthenticator(ctx, log=logging.getLogger("framechain.ipc.zap"))
        auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def secure_client(socket: zmq.Socket, curve_dir: str) -> None:
    """Make ``socket`` (before it connects) a CURVE client with ``curve_dir``'s client key and server key."""
    d = Path(curve_dir)
    public, secret = _load(d / "client.key_secret", secret=True)
    server_public, _ = _load(d / "server.key", secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


class AuthFailures:
    """Counts clients refused in the CURVE handshake, from the socket's monitor events."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.count = 0
        self._monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)

    @property
    def socket(self) -> zmq.Socket:
        return self._monitor

    def drain(self) -> int:
        from zmq.utils.monitor import recv_monitor_message
        while self._monitor.poll(0):
            recv_monitor_message(self._monitor)
            self.count += 1
        return self.count

    def close(self) -> None:
        self._monitor.close(linger=0)
