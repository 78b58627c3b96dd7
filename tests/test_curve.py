"""CURVE security of a remote backend, on real sockets: a real `rerender serve` with keys, real clients with an
allowed key, an unknown key and none; the `rerender serve` address rule; `rerender keys`.

What must hold: an allowed client renders; any other peer gets nothing at all (not even `hello`: the ZAP handler
refuses it inside the handshake), and the bridge client says so with AuthenticationFailed instead of a hang;
a non-loopback address without keys is refused unless `--insecure`, which warns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from rerender.bridge import AuthenticationFailed, BackendUnavailable, Client, DeepBuffer, protocol, security
from rerender.bridge.launcher import BackendLauncher, serve_command
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """server + two allowed clients (alice, bob) + one stranger (eve), as `rerender keys create` makes them."""
    from rerender.commands import main

    folder = tmp_path_factory.mktemp("keys")
    for name, where in (("server", folder), ("alice", folder), ("bob", folder), ("eve", folder / "elsewhere")):
        assert main(["keys", "create", name, "--out", str(where)]) == 0
    (folder / "clients").mkdir()
    shutil.copy(folder / "alice.key", folder / "clients")  # the allow-list holds public keys only
    return folder


def curve_for(keys: Path, name: str) -> security.ClientCurve:
    secret = keys / f"{name}.key_secret"
    if not secret.exists():
        secret = keys / "elsewhere" / f"{name}.key_secret"
    return security.ClientCurve.from_files(keys / "server.key", secret)


@pytest.fixture(scope="module")
def backend(keys, tmp_path_factory):
    """A CURVE-secured backend with a tiny model on loopback; alice is allowed."""
    bundle = make_small_bundle(tmp_path_factory.mktemp("bundle") / "small")
    args = ("--server-key", str(keys / "server.key_secret"), "--client-keys", str(keys / "clients"))
    with BackendProcess(bundle, free_tcp_address(), extra_args=args, security=curve_for(keys, "alice"),
                        log_path=tmp_path_factory.mktemp("log") / "serve.log") as proc:
        yield proc


def _frame(h: int = 16, w: int = 16) -> DeepBuffer:
    buffer = DeepBuffer.empty(h, w)
    buffer.depth[2:12, 3:13] = 4.0
    buffer.mask[2:12, 3:13] = True
    buffer.color[2:12, 3:13] = 0.5
    return buffer


def _replies(backend, keys) -> int:
    with Client(backend.address, timeout=10, security=curve_for(keys, "alice")) as client:
        return int(client.hello().stats["replies"])


def test_an_allowed_client_renders(backend, keys):
    with Client(backend.address, timeout=20, security=curve_for(keys, "alice")) as client:
        hello = client.hello()
        image = client.rerender(_frame(), np.zeros(8, np.float32))
    assert hello.model == "test-small" and hello.latent_size == 8
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    assert "CURVE on" in backend.log() and str(keys / "clients") in backend.log()


@pytest.mark.parametrize("who", ["no key", "unknown key", "wrong server key"])
def test_any_other_client_is_refused_with_a_clear_error(backend, keys, who, tmp_path):
    if who == "no key":
        curve = None
    elif who == "unknown key":
        curve = curve_for(keys, "eve")
    else:  # alice's own pair, but the public key of another server: the handshake cannot complete
        curve = security.ClientCurve.from_files(keys / "bob.key", keys / "alice.key_secret")
    started = time.monotonic()
    with Client(backend.address, timeout=5, security=curve) as client:
        with pytest.raises(AuthenticationFailed) as info:
            client.hello()
    assert isinstance(info.value, BackendUnavailable), "callers that catch 'unreachable' still catch it"
    expected = {"no key": "requires CURVE keys", "unknown key": "refused this client's public key",
                "wrong server key": "the server public key is wrong"}[who]
    assert expected in str(info.value), info.value
    assert time.monotonic() - started < 5, "a refusal is reported at once, not after the timeout"


def test_a_peer_without_an_allowed_key_gets_no_byte_back_not_even_hello(backend, keys):
    """Raw DEALER sockets (no bridge client logic): a hello sent without keys, or with eve's, is never answered,
    and the server's own reply count shows it sent nothing."""
    before = _replies(backend, keys)
    context = zmq.Context.instance()
    for curve in (None, curve_for(keys, "eve")):
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        if curve is not None:
            curve.apply(sock)
        sock.connect(backend.address)
        sock.send_multipart(protocol.encode_request("hello", 1, {}, {}))
        assert sock.poll(1500) == 0, "an unauthenticated peer received a reply"
        sock.close()
    after = _replies(backend, keys)
    assert after == before + 1, "only alice's own first stats hello may have been answered in between"


def test_a_key_dropped_into_the_allow_list_works_without_a_restart(backend, keys):
    bob = curve_for(keys, "bob")
    with Client(backend.address, timeout=3, security=bob) as client:
        with pytest.raises(AuthenticationFailed):
            client.hello()
    shutil.copy(keys / "bob.key", keys / "clients")
    try:
        with Client(backend.address, timeout=10, security=bob) as client:
            assert client.hello().protocol == protocol.PROTOCOL_VERSION
    finally:
        (keys / "clients" / "bob.key").unlink()


def test_two_keyed_servers_in_one_process_keep_their_own_allow_lists(keys, tmp_path):
    """One ZAP handler per ZeroMQ context: in-process servers share it, each under its own domain."""
    from rerender.backend.server import Server

    (tmp_path / "bob_only").mkdir()
    shutil.copy(keys / "bob.key", tmp_path / "bob_only")
    context = zmq.Context()  # its own: in-process servers must not share state with the other tests' clients
    servers = [Server(None, "tcp://127.0.0.1:*", context=context,
                      curve=security.ServerCurve.from_files(keys / "server.key_secret", folder))
               for folder in (keys / "clients", tmp_path / "bob_only")]
    threads = [server.start_in_thread() for server in servers]
    try:
        for server, allowed, refused in zip(servers, ("alice", "bob"), ("bob", "alice")):
            with Client(server.bound_address, timeout=10, security=curve_for(keys, allowed),
                        context=context) as client:
                assert client.hello().protocol == protocol.PROTOCOL_VERSION
            with Client(server.bound_address, timeout=5, security=curve_for(keys, refused),
                        context=context) as client:
                with pytest.raises(AuthenticationFailed):
                    client.hello()
    finally:
        for server, thread in zip(servers, threads):
            server.stop()
            thread.join(10)
        context.destroy(linger=0)
    assert not security.ServerAuthenticator._shared, "the shared ZAP handler stops with the last server"


# --- the address rule of `rerender serve` ---------------------------------------------------------------------

def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(serve_command(args[0], extra_args=args[1:]), capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_non_loopback_address_without_keys(keys):
    port = free_tcp_address().rsplit(":", 1)[1]
    refused = _serve(f"tcp://0.0.0.0:{port}")
    assert refused.returncode == 2
    assert f"refusing to listen on tcp://0.0.0.0:{port} without CURVE keys" in refused.stderr
    assert "--insecure" in refused.stderr and "rerender keys create" in refused.stderr
    half = _serve(free_tcp_address(), "--server-key", str(keys / "server.key_secret"))
    assert half.returncode == 2 and "--server-key and --client-keys go together" in half.stderr
    public = _serve(free_tcp_address(), "--server-key", str(keys / "server.key"), "--client-keys",
                    str(keys / "clients"))
    assert public.returncode == 2 and "is a public key file" in public.stderr


def test_serve_insecure_on_all_interfaces_starts_and_warns(tmp_path):
    port = free_tcp_address().rsplit(":", 1)[1]
    command = serve_command(f"tcp://0.0.0.0:{port}", extra_args=("--insecure",))
    with BackendLauncher(command, f"tcp://127.0.0.1:{port}", log_path=tmp_path / "serve.log",
                         start_timeout=60) as launched:
        assert launched.hello.protocol == protocol.PROTOCOL_VERSION
    assert "INSECURE" in launched.log() and f"tcp://0.0.0.0:{port}" in launched.log()


def test_which_addresses_count_as_loopback_and_keys_lift_the_rule(keys):
    from rerender.backend.remote_access import server_curve

    for address in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/rr.sock",
                    "tcp://127.0.0.2:1"):
        assert security.is_loopback(address), address
    for address in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://10.0.0.7:5555",
                    "tcp://eth0:5555", "tcp://no-such-host.invalid:5555"):
        assert not security.is_loopback(address), address
    args = argparse.Namespace(address="tcp://0.0.0.0:5555", server_key=keys / "server.key_secret",
                              client_keys=keys / "clients", insecure=False)
    curve = server_curve(args)
    assert curve is not None and curve.public_key == security.load_public_key(keys / "server.key")


# --- rerender keys ------------------------------------------------------------------------------------------------

def test_keys_are_zmq_certificates_with_a_private_secret_file(keys, tmp_path, capsys):
    from rerender.commands import main

    secret = keys / "server.key_secret"
    if os.name == "posix":
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public_z85, secret_z85 = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(keys / "server.key") == (public_z85, None)
    assert zmq.curve_public(secret_z85) == public_z85, "the pair belongs together"
    assert main(["keys", "show", str(keys / "server.key")]) == 0
    assert capsys.readouterr().out.strip() == public_z85.decode()
    assert main(["keys", "create", "server", "--out", str(keys)]) == 2  # never replaced silently
    assert "exists already" in capsys.readouterr().err
    assert security.load_public_key(public_z85.decode()) == public_z85  # the 40 characters work as well
    with pytest.raises(security.KeyFileError, match="neither a 40-character public key nor a key file"):
        security.load_public_key("not a key")
    (tmp_path / "garbage.key_secret").write_text("metadata\ncurve\n    public-key = \"short\"\n")
    with pytest.raises(security.KeyFileError, match="no valid CURVE key"):
        security.load_secret_key_file(tmp_path / "garbage.key_secret")


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_private_key_others_can_read_is_used_with_a_warning(keys, tmp_path, caplog):
    shared = tmp_path / "shared.key_secret"
    shutil.copy(keys / "alice.key_secret", shared)
    shared.chmod(0o644)
    with caplog.at_level("WARNING", logger="rerender.bridge.security"):
        assert security.load_secret_key_file(shared) == zmq.auth.load_certificate(shared)
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text


# --- the add-on with keys ---------------------------------------------------------------------------------------

@pytest.mark.blender
def test_the_addon_renders_with_keys_from_its_preferences_and_explains_a_refusal(backend, keys, tmp_path):
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from rerender.addon import connection
    from rerender.addon.preferences import backend_settings
    from support_addon import one_point_shot, remove_shot

    module = addon_utils.enable("rerender.addon", default_set=True)
    assert module is not None
    prefs = bpy.context.preferences.addons["rerender.addon"].preferences
    scene, objects = one_point_shot("curve shot", tmp_path / "curve.png")
    try:
        prefs.address, prefs.timeout = backend.address, 20.0
        prefs.server_key = security.load_public_key(keys / "server.key").decode()  # pasted as text
        prefs.client_key_file = str(keys / "alice.key_secret")
        bpy.ops.render.render(scene=scene.name, write_still=True)
        assert (tmp_path / "curve.png").is_file()
        assert connection.monitor.status.connected and connection.monitor.status.model == "test-small"

        prefs.client_key_file = str(keys / "elsewhere" / "eve.key_secret")
        status = connection.check(backend_settings(), timeout=5)
        assert status.state == "error" and "refused this connection" in status.message
        assert "Client Key File" in status.message
        prefs.server_key = ""
        status = connection.check(backend_settings(), timeout=5)
        assert "CURVE needs both keys" in status.message and "Server Public Key" in status.message
    finally:
        connection.engine_link.invalidate()
        prefs.server_key = prefs.client_key_file = ""
        remove_shot(scene, objects)
        addon_utils.disable("rerender.addon", default_set=True)


def test_layers_outside_the_bridge_never_import_zmq_to_handle_errors():
    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for p in (root / "addon").rglob("*.py")
                 if "vendor" not in p.parts and any(line.lstrip().startswith(("import zmq", "from zmq"))
                                                    for line in p.read_text().splitlines())]
    assert offenders == [], f"the add-on must catch bridge errors, not zmq's: {offenders}"
