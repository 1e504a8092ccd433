"""Optional CURVE on the control sockets (pyzmq's zmq.auth): with --curve-dir, only clients holding an
authorized key get replies; a client without keys, or with keys the daemon does not list, gets none and is
counted in process/auth_failures."""

import json
import subprocess
import sys

import pytest
import zmq
from harness import wait_for

from framechain.ipc import IpcClient, free_tcp_endpoint
from framechain.ipc.curve import make_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return make_keys(str(base / "good")), make_keys(str(base / "other"))


@pytest.mark.parametrize("kind", ["processor", "receiver"])
def test_only_authorized_clients_are_answered(tmp_path, keys, kind):
    good, other = keys
    ctrl = free_tcp_endpoint()
    args = ["--curve-dir", str(good)] + (["--ready", free_tcp_endpoint(), "--release", free_tcp_endpoint()]
                                        if kind == "receiver" else [])
    proc = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", kind, "--ctrl", ctrl, *args],
                            stdout=open(tmp_path / "d.log", "w"), stderr=subprocess.STDOUT)
    try:
        with IpcClient(ctrl, timeout=10, curve_dir=str(good)) as client:

            def up():
                try:
                    return client.request("status", timeout=1).msg_type == "ack"
                except TimeoutError:
                    return False
            wait_for(up, what=f"the {kind} over CURVE")
        for curve_dir in (None, str(other)):  # plain, and keys the daemon does not list
            with IpcClient(ctrl, timeout=1, curve_dir=curve_dir) as stranger:
                with pytest.raises(TimeoutError):
                    stranger.request("status", timeout=1.0)
        # a plain pyzmq DEALER as an attacker would use
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ctrl)
        s.send(json.dumps({"msg_type": "cmd", "msg_val": "shutdown", "id": 1,
                           "timestamp": "2026-12-03T00:00:00"}).encode())
        assert not s.poll(1000)
        s.close()
        with IpcClient(ctrl, timeout=10, curve_dir=str(good)) as client:
            st = client.request("status").params
            assert st["process"]["auth_failures"] >= 2, st["process"]
            assert client.request("shutdown").msg_type == "ack"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_keys_command_and_bad_key_directories(tmp_path, keys, capsys):
    from framechain.client.cli import main
    assert main(["keys", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "authorized" / "client.key").is_file()
    assert oct((tmp_path / "k" / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    assert main(["keys", str(tmp_path / "k")]) == 2 and "already holds keys" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "framechain.client.cli", "processor", "--ctrl", free_tcp_endpoint(),
                        "--curve-dir", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stdout + r.stderr


def test_rest_adapter_reaches_a_curve_daemon_with_its_keys(tmp_path, keys):
    from _clients import RestServer
    good, _ = keys
    ctrl = free_tcp_endpoint()
    proc = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "processor", "--ctrl", ctrl,
                             "--curve-dir", str(good)], stdout=open(tmp_path / "d.log", "w"), stderr=subprocess.STDOUT)
    server = RestServer(tmp_path, f"fp:{ctrl}", "none", "none", adapter_options={"curve_dir": good})
    try:
        wait_for(lambda: server.get("status/fp0/connected")[1]["value"] is True, what="the adapter over CURVE")
    finally:
        server.close()
        proc.terminate()
        proc.wait(30)


def test_a_bind_beyond_loopback_is_logged(tmp_path):
    """Loopback is the default; a daemon told to listen on every interface says so in its log."""
    port = free_tcp_endpoint().rsplit(":", 1)[1]
    ctrl = free_tcp_endpoint()
    log = tmp_path / "rx.log"
    proc = subprocess.Popen([sys.executable, "-m", "framechain.client.cli", "receiver", "--ctrl", ctrl,
                             "--ready", f"tcp://0.0.0.0:{port}", "--release", free_tcp_endpoint()],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        with IpcClient(ctrl, timeout=10) as client:
            assert client.request("status").msg_type == "ack"
            text = log.read_text()
            assert f"tcp://0.0.0.0:{port} listens beyond this machine" in text
            assert ctrl not in text.split("listens beyond")[0].rsplit("\n", 1)[-1]  # loopback ones are not
            client.request("shutdown")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
