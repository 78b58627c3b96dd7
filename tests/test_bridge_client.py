"""The client against real sockets: a transport-only `rerender serve` (no model, starts fast) and hand-made peers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from rerender.bridge import (
    BackendUnavailable, Client, DeepBuffer, InvalidRequest, ModelUnavailable, ProtocolMismatch, protocol,
)
from support_backend import BackendProcess, free_tcp_address, ipc_address


@pytest.fixture(scope="module")
def echo_backends(tmp_path_factory):
    """Two transport-only servers: tcp and ipc."""
    folder = tmp_path_factory.mktemp("echo")
    tcp = BackendProcess(None, free_tcp_address(), log_path=folder / "tcp.log").start()
    try:
        ipc = BackendProcess(None, ipc_address(folder), log_path=folder / "ipc.log").start()
    except Exception:
        tcp.stop()
        raise
    yield {"tcp": tcp, "ipc": ipc}
    tcp.stop()
    ipc.stop()


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_echo_returns_arrays_and_params_untouched(echo_backends, transport):
    backend = echo_backends[transport]
    buffer = DeepBuffer.empty(24, 40)
    buffer.depth[3:9, 5:20] = 2.5
    arrays = {**protocol.buffer_to_wire(buffer), "extra": np.linspace(-1, 1, 7, dtype=np.float32)}
    with Client(backend.address, timeout=10) as client:
        assert client.hello().protocol == protocol.PROTOCOL_VERSION
        params, back = client.echo(arrays, {"frame": 12, "note": "hi"})
    assert params == {"frame": 12, "note": "hi"}
    assert back.keys() == arrays.keys()
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and np.array_equal(back[name], a)


def test_transport_only_server_refuses_model_ops_with_a_typed_error(echo_backends):
    with Client(echo_backends["tcp"].address, timeout=10) as client:
        info = client.hello()
        assert info.model is None and info.latent_size is None
        with pytest.raises(ModelUnavailable, match="--bundle"):
            client.rerender(DeepBuffer.empty(8, 8), np.zeros(8, np.float32))


def test_pipelined_echo_from_three_clients_matches_every_reply(echo_backends):
    address = echo_backends["ipc"].address
    results: dict[int, list] = {}

    def run(client_no: int) -> None:
        with Client(address, timeout=20) as client:
            requests = ({"op": "echo", "params": {"c": client_no, "i": i},
                         "arrays": {"x": np.full(1000 + i, client_no * 1000 + i, np.float32)}} for i in range(40))
            results[client_no] = [(r.params, r.arrays["x"]) for r in client.pipeline(requests, in_flight=8)]

    threads = [threading.Thread(target=run, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2]
    for c, replies in results.items():
        assert len(replies) == 40
        for i, (params, x) in enumerate(replies):
            assert params == {"c": c, "i": i}
            assert x.shape == (1000 + i,) and np.all(x == c * 1000 + i)


def test_no_backend_gives_backend_unavailable_within_the_timeout():
    address = free_tcp_address()
    with Client(address, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            client.hello()
    assert time.monotonic() - started < 3
    assert address in str(info.value) and "rerender serve" in str(info.value)
    assert info.value.pending == (0,)


def test_bad_addresses_and_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        Client("localhost:5555")
    with pytest.raises(ValueError, match="cannot connect"):
        Client("tcp://no such host:abc")
    with pytest.raises(ValueError, match="timeout"):
        Client(free_tcp_address(), timeout=0)


def _fake_peer(reply_for):
    """A ROUTER that answers each request with ``reply_for(header) -> frames`` (a real socket, not a mock)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, header, *_ = router.recv_multipart()
                router.send_multipart([identity, *reply_for(msgpack.unpackb(header))])
        router.close(linger=0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{port}", stop


def test_a_backend_of_another_protocol_version_raises_protocol_mismatch():
    def reply(header):
        return [msgpack.packb({"op": "hello", "v": 2, "id": header["id"], "ok": True, "params": {}, "arrays": []})]

    address, stop = _fake_peer(reply)
    try:
        with Client(address, timeout=5) as client, pytest.raises(ProtocolMismatch, match="v2"):
            client.hello()
    finally:
        stop.set()


def test_error_replies_become_typed_exceptions_and_stale_replies_are_ignored():
    def reply(header):
        stale = protocol.encode_reply("echo", 999_999, {"stale": True})  # an id nobody is waiting for
        error = protocol.encode_error(header["op"], header["id"], "bad_params", "latent has length 3")
        return [*stale[:1]] if header["op"] == "stale" else error

    address, stop = _fake_peer(reply)
    try:
        with Client(address, timeout=5) as client:
            with pytest.raises(InvalidRequest) as info:
                client.echo({"x": np.zeros(2, np.uint8)})
            assert info.value.code == "bad_params" and "length 3" in str(info.value)
            client.timeout = 0.5
            with pytest.raises(BackendUnavailable):  # the only reply carries a foreign id: never mistaken for ours
                next(client.pipeline([{"op": "stale"}]))
    finally:
        stop.set()


def test_clean_shutdown_on_sigterm(tmp_path):
    backend = BackendProcess(None, ipc_address(tmp_path), log_path=tmp_path / "serve.log").start()
    assert backend.stop() == 0
    log = backend.log()
    assert "listening on ipc://" in log and "transport only" in log and "stopped" in log


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    from rerender.bridge.launcher import ENTRY

    return subprocess.run([sys.executable, *ENTRY, "serve", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_an_address_in_use_and_a_missing_bundle_with_clear_messages(echo_backends, tmp_path):
    busy = _serve("--transport-only", "--address", echo_backends["tcp"].address)
    assert busy.returncode == 2 and "another backend" in busy.stderr and echo_backends["tcp"].address in busy.stderr
    missing = _serve("--bundle", str(tmp_path / "nope"), "--address", free_tcp_address())
    assert missing.returncode == 2 and "no model bundle" in missing.stderr and "bundle init" in missing.stderr


def test_a_reply_declaring_an_impossible_shape_is_a_protocol_error_not_a_crash():
    def reply(header):
        bad = {"op": header["op"], "v": protocol.PROTOCOL_VERSION, "id": header["id"], "ok": True, "params": {},
               "arrays": [{"name": "image", "dtype": "uint8", "shape": [2**31, 2**31, 2**31, 0]}]}
        return [msgpack.packb(bad), b""]

    address, stop = _fake_peer(reply)
    try:
        with Client(address, timeout=5) as client, pytest.raises(protocol.ProtocolError, match="too_large"):
            client.echo({"x": np.zeros(2, np.uint8)})
    finally:
        stop.set()


def test_a_reply_without_the_image_is_a_protocol_error():
    def reply(header):
        return protocol.encode_reply(header["op"], header["id"], {}, {"not_image": np.zeros(3, np.uint8)})

    address, stop = _fake_peer(reply)
    try:
        with Client(address, timeout=5) as client, pytest.raises(protocol.ProtocolError, match="no 'image'"):
            client.rerender(DeepBuffer.empty(4, 4), np.zeros(8, np.float32))
    finally:
        stop.set()


def test_a_compressed_echo_comes_back_decompressed_and_readable(echo_backends):
    payload = np.arange(100_000, dtype=np.float32)
    frames = protocol.encode_request("echo", 5, {}, {"x": payload}, codec="zlib")
    assert msgpack.unpackb(bytes(memoryview(frames[0])))["arrays"][0]["codec"] == "zlib"
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(echo_backends["tcp"].address)
    try:
        sock.send_multipart(frames, copy=False)
        reply = protocol.decode(sock.recv_multipart(), protocol.REPLY_LIMITS, reply=True)
    finally:
        sock.close(linger=0)
    assert reply.ok and np.array_equal(reply.arrays["x"], payload)
