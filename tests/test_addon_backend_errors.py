"""When the backend is down, wrong or incompatible, a render stops at once with a message that says what to do.

Real parts only: the add-on enabled in the bpy module, real sockets, real `rerender serve` processes (a
transport-only one for "no model", one that speaks a newer protocol version for "version mismatch"). Every case is
bounded in time: nothing may wait longer than the timeout set in the preferences.
"""

from __future__ import annotations

import time

import pytest

bpy = pytest.importorskip("bpy")

from support_addon import one_point_shot, remove_shot  # noqa: E402
from support_backend import BackendProcess, free_tcp_address  # noqa: E402

pytestmark = pytest.mark.blender

TIMEOUT = 1.0  # the preference under test: every failure must come back within about this


@pytest.fixture(scope="module")
def addon():
    import addon_utils

    module = addon_utils.enable("rerender.addon", default_set=True)
    assert module is not None, "addon_utils.enable('rerender.addon') failed (see the log above)"
    yield bpy.context.preferences.addons["rerender.addon"].preferences
    addon_utils.disable("rerender.addon", default_set=True)


@pytest.fixture()
def prefs(addon):
    from rerender.addon import connection

    addon.timeout = TIMEOUT
    yield addon
    connection.engine_link.invalidate()


@pytest.fixture()
def shot(addon, tmp_path):
    """A minimal shot (one point in front of a camera, 32x32) that writes PNGs into tmp_path."""
    scene, objects = one_point_shot("rerender error shot", tmp_path / "frame_")
    yield scene
    remove_shot(scene, objects)


def render_error(scene, *, animation: bool = False) -> tuple[str, float]:
    """Render; return the error message Blender raised and how long it took (fails if the render succeeds)."""
    started = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        if animation:
            bpy.ops.render.render(scene=scene.name, animation=True)
        else:
            bpy.ops.render.render(scene=scene.name, write_still=True)
    return str(info.value), time.perf_counter() - started


def test_backend_not_running_stops_the_animation_at_the_first_frame(prefs, shot, tmp_path):
    prefs.address = free_tcp_address()  # nothing listens there
    shot.frame_start, shot.frame_end = 1, 3
    message, elapsed = render_error(shot, animation=True)
    assert "not reachable" in message and prefs.address in message
    assert "rerender serve" in message, "the message must say how to start a backend"
    assert "frame 1" in message
    assert elapsed < TIMEOUT + 6.0, f"the render waited {elapsed:.1f} s with a {TIMEOUT} s timeout"
    assert not list(tmp_path.glob("frame_*")), "no frame may be written when the backend is down"


def test_malformed_address_says_what_an_address_looks_like(prefs, shot):
    prefs.address = "localhost:5555"
    message, elapsed = render_error(shot)
    assert "not a valid backend address" in message and "tcp://HOST:PORT" in message
    assert elapsed < 5.0


def test_environment_variable_overrides_the_preference(prefs, monkeypatch):
    from rerender.addon.preferences import ADDRESS_ENV, backend_settings

    prefs.address = "tcp://127.0.0.1:1"
    assert backend_settings().address == "tcp://127.0.0.1:1"
    monkeypatch.setenv(ADDRESS_ENV, "ipc:///tmp/farm-worker.sock")
    assert backend_settings().address == "ipc:///tmp/farm-worker.sock"
    assert backend_settings().timeout == pytest.approx(TIMEOUT)


def test_environment_variables_override_the_key_preferences(prefs, monkeypatch):
    from rerender.addon.preferences import CLIENT_KEY_ENV, SERVER_KEY_ENV, backend_settings

    prefs.server_key, prefs.client_key_file = "", ""
    assert not backend_settings().uses_keys and backend_settings().curve() is None
    monkeypatch.setenv(SERVER_KEY_ENV, "/shared/server.key")
    monkeypatch.setenv(CLIENT_KEY_ENV, "/home/render/worker.key_secret")
    settings = backend_settings()
    assert (settings.server_key, settings.client_key_file) == ("/shared/server.key", "/home/render/worker.key_secret")


def test_backend_without_a_model_says_to_start_it_with_a_bundle(prefs, shot):
    with BackendProcess(None, free_tcp_address()) as backend:  # --transport-only: hello and echo, no model
        prefs.address = backend.address
        message, elapsed = render_error(shot)
    assert "without a model" in message and "--bundle" in message
    assert elapsed < TIMEOUT + 5.0


NEWER_PROTOCOL_SERVER = (
    "import sys; import rerender.bridge.protocol as p; import rerender.backend.server as s; "
    "p.PROTOCOL_VERSION = s.PROTOCOL_VERSION = p.PROTOCOL_VERSION + 1; "
    "from rerender import main; sys.exit(main())"
)


def test_protocol_version_mismatch_says_to_install_matching_releases(prefs, shot):
    from rerender.bridge import ProtocolMismatch

    backend = BackendProcess(None, free_tcp_address(), entry=("-c", NEWER_PROTOCOL_SERVER))
    process_started = time.perf_counter()
    with pytest.raises(ProtocolMismatch):
        backend.start()  # it is up (it answered), in a protocol the test client does not speak either
    assert backend.process.poll() is None, backend.log()
    try:
        prefs.address = backend.address
        message, elapsed = render_error(shot)
    finally:
        backend.stop()
    assert "protocol" in message and "same Rerender release" in message, message
    assert elapsed < TIMEOUT + 5.0
    assert time.perf_counter() - process_started < 120


def test_no_camera_is_reported_before_any_network_call(prefs, shot):
    prefs.address = free_tcp_address()
    shot.camera = None
    message, elapsed = render_error(shot)
    assert "no camera" in message
    assert elapsed < 2.0, "the camera is checked before the backend is asked"


def test_status_check_returns_at_once_and_explains_the_failure(prefs):
    from rerender.addon import connection
    from rerender.addon.preferences import backend_settings

    prefs.address = free_tcp_address()
    monitor = connection.StatusMonitor()
    started = time.perf_counter()
    assert monitor.request(backend_settings())
    assert not monitor.request(backend_settings()), "a second check must not start while one runs"
    assert time.perf_counter() - started < 0.1, "the UI thread must not wait on the socket"
    assert monitor.status.state == "checking"
    status = monitor.wait(connection.STATUS_TIMEOUT + 5)
    assert status.state == "error" and "not reachable" in status.line()
    assert time.perf_counter() - started < connection.STATUS_TIMEOUT + 3
