"""The server's life under stress: SIGTERM with a queue, a compute thread that dies, memory running out on a valid
frame, idle and dead connections. Each ends with every request answered and the server serving."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from rerender.bridge import BackendFailure, Client, DeepBuffer, protocol
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

LATENT = 8


def _rerender(rid: int, side: int = 8) -> list:
    arrays = {**protocol.buffer_to_wire(DeepBuffer.empty(side, side)), "latent": np.zeros(LATENT, np.float32)}
    return protocol.encode_request("rerender", rid, {}, arrays)


def _dealer(address: str, timeout_ms: int = 30000) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(address)
    return sock


def _header(sock: zmq.Socket) -> dict:
    return msgpack.unpackb(sock.recv_multipart()[0], raw=False)


@pytest.mark.slow
def test_sigterm_answers_every_queued_and_arriving_request(tmp_path):
    args = ("--max-queue", "200", "--max-batch", "1", "--simulate-latency-ms", "200")
    backend = BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(), extra_args=args,
                             log_path=tmp_path / "serve.log").start()
    sock = _dealer(backend.address)
    try:
        for i in range(60):
            sock.send_multipart(_rerender(i))
        first = _header(sock)
        assert first["ok"]
        backend.process.send_signal(signal.SIGTERM)
        for i in range(60, 70):  # arriving while the server stops
            sock.send_multipart(_rerender(i))
        replies = [first] + [_header(sock) for _ in range(69)]
        assert not sock.poll(500)  # and nothing twice
        code = backend.process.wait(60)  # it exits by itself, cleanly
    finally:
        sock.close(linger=0)
        backend.stop()
    ids = [r["id"] for r in replies]
    codes = [("ok" if r["ok"] else r["error"]["code"]) for r in replies]
    assert sorted(ids) == list(range(70))
    assert set(codes) <= {"ok", "shutting_down"} and codes.count("shutting_down") >= 50, codes
    assert code == 0


def test_a_dead_compute_thread_is_restarted_and_hello_says_so_meanwhile(tmp_path):
    """A bug that escapes every per-request guard (injected into the real worker of an in-process server) ends
    the compute thread: the request it held is answered `internal`, hello reports the worker unhealthy, and the
    supervisor restarts it, after which frames render again."""
    from rerender.backend.runtime import ModelRuntime
    from rerender.backend.server import Server
    from rerender.backend import server_worker

    server = Server(ModelRuntime(make_small_bundle(tmp_path / "bundle"), "cpu"), free_tcp_address())
    worker = server._worker
    real_run = worker._run
    calls = []

    def broken_once(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise SystemError("injected: a bug in the worker loop")
        return real_run(batch)

    worker._run = broken_once
    backoff = server_worker.RESTART_BACKOFF_S
    server_worker.RESTART_BACKOFF_S = (1.0,)  # a restart window wide enough to see `restarting` in hello
    thread = server.start_in_thread()
    try:
        with Client(server.bound_address, timeout=20) as client:
            with pytest.raises(BackendFailure, match="compute worker failed"):
                client.rerender(DeepBuffer.empty(8, 8), np.zeros(LATENT, np.float32))
            during = client.hello().health
            deadline = time.monotonic() + 10
            while not client.hello().health["ok"] and time.monotonic() < deadline:
                time.sleep(0.05)
            image = client.rerender(DeepBuffer.empty(8, 8), np.zeros(LATENT, np.float32))
            after = client.hello().health
    finally:
        server_worker.RESTART_BACKOFF_S = backoff
        server.stop()
        thread.join(10)
    assert during["ok"] is False and during["worker"] == "restarting" and "SystemError" in during["last_crash"]
    assert after["ok"] is True and after["restarts"] == 1
    assert image.shape == (8, 8, 3)


@pytest.mark.slow
def test_running_out_of_memory_on_a_valid_frame_is_an_error_reply_not_a_dead_worker(tmp_path):
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(),
                        log_path=tmp_path / "serve.log") as backend:
        with open(f"/proc/{backend.process.pid}/status") as f:
            vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = vm_size + 300 * 2**20  # room for small frames, not for a 2048 x 2048 forward pass
        resource.prlimit(backend.process.pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        sock = _dealer(backend.address, 120000)
        try:
            sock.send_multipart(_rerender(1, 2048))
            big = _header(sock)
            sock.send_multipart(_rerender(2, 8))
            small = _header(sock)
        finally:
            sock.close(linger=0)
        with Client(backend.address, timeout=20) as client:
            health = client.hello().health
        assert backend.process.poll() is None
    assert not big["ok"] and big["error"]["code"] == "internal", big
    assert "memory" in big["error"]["message"]
    assert small["ok"]
    assert health["ok"] and health["restarts"] == 0


def test_connections_beyond_the_budget_and_silent_sockets_are_closed_and_new_clients_get_in(tmp_path):
    args = ("--max-connections", "8", "--idle-timeout-s", "3", "--heartbeat-s", "0.5")
    with BackendProcess(None, free_tcp_address(), extra_args=args, log_path=tmp_path / "serve.log") as backend:
        host, port = backend.address.removeprefix("tcp://").split(":")
        raw = [socket.create_connection((host, int(port)), timeout=10) for _ in range(40)]
        try:
            with Client(backend.address, timeout=10) as client:  # a newcomer is never locked out
                assert client.hello().protocol == protocol.PROTOCOL_VERSION
            deadline = time.monotonic() + 15
            closed = sum(_closed_by_server(s, deadline) for s in raw)  # over the budget, or never handshaken
            with Client(backend.address, timeout=10) as client:
                stats = next(client.pipeline([{"op": "stats"}])).params["connections"]
        finally:
            for s in raw:
                s.close()
    assert closed == 40
    assert stats["open"] <= 8 and stats["accepted"] >= 41


def _closed_by_server(s: socket.socket, deadline: float) -> bool:
    """Read what the server writes (its ZMTP greeting) until it closes the connection or the deadline passes."""
    try:
        while True:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            if not s.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


_FROZEN_PEER = """
import sys, zmq
sock = zmq.Context().socket(zmq.DEALER)
sock.connect(sys.argv[1])
sock.send_multipart([__import__("msgpack").packb({"op": "hello", "v": 1, "id": 1, "params": {}, "arrays": []})])
sock.recv_multipart()
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_peer_that_stops_answering_heartbeats_is_dropped(tmp_path):
    args = ("--heartbeat-s", "0.3", "--idle-timeout-s", "600")
    with BackendProcess(None, free_tcp_address(), extra_args=args, log_path=tmp_path / "serve.log") as backend:
        peer = subprocess.Popen([sys.executable, "-c", _FROZEN_PEER, backend.address], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert peer.stdout.readline().strip() == "ready"
            with Client(backend.address, timeout=10) as client:
                before = next(client.pipeline([{"op": "stats"}])).params["connections"]["open"]
                peer.send_signal(signal.SIGSTOP)  # alive for TCP, silent for ZeroMQ
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    time.sleep(0.3)
                    now = next(client.pipeline([{"op": "stats"}])).params["connections"]["open"]
                    if now < before:
                        break
        finally:
            peer.send_signal(signal.SIGKILL)
            peer.wait(10)
    assert before >= 2 and now == before - 1


def test_a_client_that_stops_reading_loses_no_reply(tmp_path):
    """3,000 requests sent before a single reply is read, through a socket that buffers one message: beyond
    ZeroMQ's default high-water marks (1,000 each side) a ROUTER drops replies silently; this one keeps them all."""
    with BackendProcess(None, free_tcp_address(), log_path=tmp_path / "serve.log") as backend:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)  # and the kernel cannot hold them either
        sock.setsockopt(zmq.RCVTIMEO, 20000)
        sock.connect(backend.address)
        payload = {"x": np.zeros(2048, np.uint8)}  # 6 MB of replies in all
        try:
            for i in range(3000):
                sock.send_multipart(protocol.encode_request("echo", i, {"i": i}, payload))
            time.sleep(1.0)  # the replies pile up in the server while nobody reads
            ids = [_header(sock)["id"] for _ in range(3000)]
        finally:
            sock.close(linger=0)
    assert sorted(ids) == list(range(3000))
