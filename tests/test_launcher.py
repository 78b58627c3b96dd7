"""The one backend launcher (`rerender.bridge.launcher`), the typed hello and the bridge's own errors for ZeroMQ's.

Real processes and sockets: a `rerender serve` that dies at start must report the end of its log; one that
never answers must be reported (with its log) after the timeout; one that ignores SIGTERM is SIGKILLed.
"""

from __future__ import annotations

import signal
import sys
import time

import pytest
import zmq

from rerender.bridge import Client, InvalidAddress, ProtocolError, ServerHello, TransportError, protocol
from rerender.bridge.launcher import BackendLauncher, BackendStartError, serve_command
from support_backend import free_tcp_address


def test_the_command_line_is_written_in_one_place():
    assert serve_command("tcp://127.0.0.1:1") == [sys.executable, "-m", "rerender", "serve", "--transport-only",
                                                  "--address", "tcp://127.0.0.1:1"]
    assert serve_command("ipc:///tmp/x", bundle="/b b", device="cpu", python="/py", verbose=2,
                         extra_args=("--max-batch", "4")) == [
        "/py", "-m", "rerender", "-vv", "serve", "--bundle", "/b b", "--device", "cpu", "--address", "ipc:///tmp/x",
        "--max-batch", "4"]


def test_a_backend_that_dies_at_start_reports_the_end_of_its_log(tmp_path):
    launcher = BackendLauncher(serve_command(free_tcp_address(), bundle=tmp_path / "missing"), "tcp://127.0.0.1:1",
                               log_path=tmp_path / "serve.log", start_timeout=60)
    with pytest.raises(BackendStartError) as info:
        launcher.start()
    message = str(info.value)
    assert "exited with code 2" in message and str(tmp_path / "serve.log") in message
    assert "no model bundle at" in message and "bundle init" in message, "the log's reason must be in the error"
    assert isinstance(info.value, RuntimeError)


def test_a_backend_that_never_answers_is_reported_with_its_log(tmp_path):
    silent = [sys.executable, "-c", "import time; print('loading a huge model...', flush=True); time.sleep(60)"]
    launcher = BackendLauncher(silent, free_tcp_address(), log_path=tmp_path / "serve.log", start_timeout=1.5)
    with pytest.raises(BackendStartError, match=r"did not answer .* within 1.5 s[\s\S]*loading a huge model"):
        launcher.start()
    assert not launcher.running, "a launch that failed leaves no process behind"


def test_stop_is_sigterm_then_sigkill_for_a_child_that_ignores_it(tmp_path):
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)"]
    launcher = BackendLauncher(stubborn, free_tcp_address(), log_path=tmp_path / "serve.log").spawn()
    deadline = time.monotonic() + 30
    while "up" not in launcher.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert launcher.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10 and not launcher.running


def test_a_transport_only_backend_says_hello_typed_and_stops_cleanly(tmp_path):
    address = free_tcp_address()
    with BackendLauncher(serve_command(address), address, log_path=tmp_path / "serve.log",
                         start_timeout=60) as launched:
        hello = launched.hello
        assert isinstance(hello, ServerHello) and hello.protocol == protocol.PROTOCOL_VERSION
        assert hello.model is None and hello.latent_size is None and not hello.has_model
        assert "echo" in hello.ops and hello.limits["max_arrays"] >= 1 and hello.healthy
    assert launched.returncode == 0, launched.log_tail()


def test_hello_fields_are_checked_once_and_unknown_ones_kept():
    base = {"protocol": 1, "server": "rerender x", "ops": ["hello", "rerender"], "model": "m", "latent_size": 8,
            "device": "cuda:0", "precision": "bf16", "max_batch": 4, "limits": {}, "model_info": {}, "stats": {}}
    hello = ServerHello.from_params({**base, "new_field": [1, 2]})
    assert hello.has_model and hello.latent_size == 8 and hello.extra == {"new_field": [1, 2]}
    assert hello.summary() == "cuda:0 · m · latent 8"
    for broken in ({**base, "latent_size": "8"}, {**base, "ops": "rerender"}, {**base, "latent_size": True},
                   {k: v for k, v in base.items() if k != "protocol"}):
        with pytest.raises(ProtocolError, match="hello"):
            ServerHello.from_params(broken)


def test_zmq_failures_reach_callers_as_bridge_errors():
    with pytest.raises(InvalidAddress, match="tcp://HOST:PORT"):
        Client("localhost:5555")
    with pytest.raises(InvalidAddress):
        Client("tcp://no port here")
    context = zmq.Context()
    client = Client(free_tcp_address(), timeout=1, context=context)
    context.destroy(linger=0)  # e.g. Blender shutting down under a render
    with pytest.raises(TransportError) as info:
        client.hello()
    assert isinstance(info.value.__cause__, zmq.ZMQError)
    client.close()


def test_the_demo_starts_its_backend_through_the_same_launcher(tmp_path):
    from rerender.training.demo.backend_process import ServeProcess

    serve = ServeProcess(tmp_path / "no-bundle", log_path=tmp_path / "logs" / "serve.log", start_timeout=60)
    assert isinstance(serve, BackendLauncher) and serve.command[1:4] == ["-m", "rerender", "serve"]
    with pytest.raises(BackendStartError, match="no model bundle at"):
        serve.start()
    assert (tmp_path / "logs" / "serve.log").is_file() and not serve.running
