"""Batch renders (docs/addon.md, "Animation renders"): the client's submit/collect, pipelined animation renders,
resume, ETA.

Real parts only: `rerender serve` subprocesses (one with a simulated fixed latency, one whose runtime notes the
latents it is given), real Blender (bpy) rendering EEVEE deep buffers inside the Neural Rerender engine.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from support_backend import SMALL_BUNDLE_SIZES, BackendProcess, free_tcp_address, make_small_bundle

from rerender.bridge import BackendUnavailable, Client, DeepBuffer

W, H = 32, 24  # multiples of the small bundle's U-Net multiple (4)


def tiny_buffer(seed: int) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((H, W)) > 0.3
    color = np.where(mask[..., None], rng.random((H, W, 3)), 0).astype(np.float16)
    depth = np.where(mask, rng.uniform(2, 8, (H, W)), np.inf).astype(np.float32)
    label = np.where(mask, 2, 255).astype(np.uint8)
    return DeepBuffer(color=color, depth=depth, label=label, mask=mask)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_small_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def slow_backend(bundle):
    """A backend whose every forward pass takes 300 ms (`--simulate-latency-ms`)."""
    with BackendProcess(bundle, free_tcp_address(), extra_args=("--simulate-latency-ms", "300")) as proc:
        yield proc


# --- bridge: submit / collect ------------------------------------------------------------------------------------

def test_submit_returns_at_once_and_collect_gives_each_request_its_own_image(slow_backend):
    buffers = [tiny_buffer(i) for i in range(3)]
    latents = [np.full(8, v, np.float32) for v in (-1.0, 0.0, 1.0)]
    with Client(slow_backend.address, timeout=20) as client:
        expected = [client.rerender(b, z) for b, z in zip(buffers, latents)]
        started = time.perf_counter()
        ids = [client.submit_rerender(b, z) for b, z in zip(buffers, latents)]
        assert time.perf_counter() - started < 0.25, "submit must not wait for the 300 ms backend"
        assert client.collect_image(ids[0], wait=0.01) is None, "nothing can be back after 10 ms"
        assert set(client.submitted) == set(ids)
        # collected in reverse order: replies are matched by id, not by arrival
        got = {i: client.collect_image(i) for i in reversed(ids)}
        assert client.submitted == ()
        assert client.hello().latent_size == 8, "nothing left submitted: a blocking call works again"
    for i, image in zip(ids, expected):
        np.testing.assert_array_equal(got[i], image)
    assert not np.array_equal(expected[0], expected[2]), "different buffers and latents must give different images"


def test_blocking_calls_refuse_while_submitted_requests_wait_and_cancel_frees_them(slow_backend):
    with Client(slow_backend.address, timeout=20) as client:
        rid = client.submit_rerender(tiny_buffer(0), np.zeros(8, np.float32))
        with pytest.raises(RuntimeError, match="collect\\(\\) or cancel\\(\\)"):
            client.hello()
        client.cancel(rid)
        assert client.hello().protocol >= 1
        with pytest.raises(KeyError, match="never submitted"):
            client.collect(rid)


def test_collect_resends_after_a_backend_restart_and_reports_a_dead_one(bundle):
    with BackendProcess(bundle, free_tcp_address(), extra_args=("--simulate-latency-ms", "1500")) as backend:
        client = Client(backend.address, timeout=60)
        rid = client.submit_rerender(tiny_buffer(1), np.ones(8, np.float32))
        time.sleep(0.3)  # the request is inside the backend now
        backend.kill()
        backend.start()  # same address: the client must notice the drop and send the request again
        image = client.collect_image(rid)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        client.close()

        client = Client(backend.address, timeout=2)
        rid = client.submit_rerender(tiny_buffer(2), np.ones(8, np.float32))
        time.sleep(0.3)
        backend.kill()
        started = time.perf_counter()
        with pytest.raises(BackendUnavailable) as info:
            while client.collect(rid, wait=0.1) is None:  # polled in slices, as the engine does between Esc checks
                pass
        assert time.perf_counter() - started < 6, "a dead backend is reported after the timeout, not later"
        assert rid in info.value.pending and client.submitted == ()
        client.close()


# --- pure helpers ------------------------------------------------------------------------------------------------

def test_frame_clock_gives_the_remaining_time_from_measured_frames():
    pytest.importorskip("bpy")
    from rerender.addon import batch

    clock = batch.FrameClock()
    clock.start_job()
    assert clock.remaining_s(10) is None, "no ETA before a frame is measured"
    clock.frame_times += [5.0, 1.0, 1.2, 0.8, 1.0]  # a slow first frame (warm-up) must not dominate
    assert clock.seconds_per_frame() == pytest.approx(1.0)
    assert clock.remaining_s(30) == pytest.approx(30.0)
    assert batch.format_duration(75) == "1:15" and batch.format_duration(3725) == "1:02:05"


# --- Blender: pipelined animation renders -------------------------------------------------------------------------

# A `rerender serve` whose runtime appends the latents its requests hand it (the server's path, rerender_wire, so the
# start-up warm-up is not counted) to the float32 file named by RERENDER_TEST_LATENTS. A subprocess, not a Server
# thread in this process: on the Python 3.11 Blenders, a Python thread that runs beside an operator called under a
# context override (the engine's nested deep-buffer render) can crash Blender (addon/jobs.py).
RECORDING_SERVER = """
import os, sys
import numpy as np
from rerender.backend import runtime

def recording(method):
    def wrapper(self, frames, latents, **kwargs):
        with open(os.environ["RERENDER_TEST_LATENTS"], "ab") as f:
            f.write(np.asarray(latents, np.float32).tobytes())
        return method(self, frames, latents, **kwargs)
    return wrapper

runtime.ModelRuntime.rerender_wire = recording(runtime.ModelRuntime.rerender_wire)
from rerender import main
sys.exit(main())
"""


@pytest.fixture()
def recording_backend(bundle, tmp_path, monkeypatch):
    """A real `rerender serve` of the small bundle; ``read()`` gives the latents it was handed so far."""
    latents = tmp_path / "latents.f32"
    monkeypatch.setenv("RERENDER_TEST_LATENTS", str(latents))  # inherited by the server process
    with BackendProcess(bundle, free_tcp_address(), entry=("-c", RECORDING_SERVER)) as proc:
        def read() -> np.ndarray:
            size = SMALL_BUNDLE_SIZES["latent_size"]
            return np.fromfile(latents, np.float32).reshape(-1, size) if latents.exists() else np.zeros((0, size))
        yield proc, read


@pytest.fixture(scope="module")
def addon():
    bpy = pytest.importorskip("bpy")
    import addon_utils

    module = addon_utils.enable("rerender.addon", default_set=True)
    assert module is not None, "addon_utils.enable('rerender.addon') failed (see the log above)"
    yield bpy.context.preferences.addons["rerender.addon"].preferences
    addon_utils.disable("rerender.addon", default_set=True)


@pytest.fixture()
def shot(addon, tmp_path):
    """A wall of points in front of a camera that moves along x over frames 1-5, with two keyed looks."""
    import bpy
    from rerender.addon import points, properties

    scene = bpy.data.scenes.new("batch test shot")
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.use_compositing = False
    scene.render.image_settings.file_format = "PNG"
    scene.frame_start, scene.frame_end = 1, 5
    rng = np.random.default_rng(0)
    n = 3000
    xyz = np.stack([rng.uniform(-3, 3, n), rng.uniform(4, 6, n), rng.uniform(-2, 2, n)], axis=1)
    cloud = points.create_point_cloud("batch cloud", xyz, rng.random((n, 3)).astype(np.float32), np.full(n, 2),
                                      scene.collection)
    cam = bpy.data.objects.new("batch cam", bpy.data.cameras.new("batch cam"))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)  # look down +y
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.rerender.point_size_auto = False
    scene.rerender.point_size = 1.5
    edit = bpy.context.preferences.edit
    previous = edit.keyframe_new_interpolation_type
    edit.keyframe_new_interpolation_type = "BEZIER"  # curved F-curves: frames ahead must evaluate them, not lerp
    try:
        for frame, x, look in ((1, 0.0, -1.0), (5, 2.0, 1.5)):
            cam.location.x = x
            cam.keyframe_insert("location", index=0, frame=frame)
            properties.set_latent(scene, np.linspace(look, -look, 8))
            properties.key_latent(scene, frame)
    finally:
        edit.keyframe_new_interpolation_type = previous
    scene.render.filepath = str(tmp_path / "frame_")
    yield scene
    bpy.data.scenes.remove(scene)
    bpy.data.objects.remove(cloud)
    bpy.data.objects.remove(cam)


def _fcurve_latent(scene, frame: int) -> np.ndarray:
    from rerender.addon.properties import latent_fcurves

    curves = latent_fcurves(scene)
    assert sorted(curves) == list(range(8)), "every latent component is keyed"
    return np.array([curves[i].evaluate(frame) for i in range(8)], np.float32)


@pytest.mark.blender
@pytest.mark.slow  # 5 nested EEVEE renders (+ the warm-up): 10-25 s on 2 busy cores
def test_pipelined_animation_sends_each_frame_the_fcurve_latent(shot, addon, recording_backend, tmp_path):
    import bpy
    from rerender.addon import batch, engine

    server, read_latents = recording_backend
    addon.address, addon.timeout = server.address, 20.0
    batch.pipeline.hits = batch.pipeline.misses = 0
    engine.last_latents.clear()
    bpy.ops.render.render(scene=shot.name, animation=True)

    assert sorted(p.name for p in tmp_path.glob("frame_*.png")) == [f"frame_{f:04d}.png" for f in range(1, 6)]
    assert batch.pipeline.hits == 4 and batch.pipeline.misses == 0, "frames 2-5 come from the frame before"
    assert not batch.pipeline.frames, "nothing is left at the backend after the last frame"
    assert len(batch.clock.frame_times) == 5, "one measured time per frame (nested renders are not job starts)"
    assert "s/frame" in batch.progress_line(shot, 3) and "left" in batch.progress_line(shot, 3)
    expected = [_fcurve_latent(shot, f) for f in range(1, 6)]
    assert not np.allclose(expected[1], (expected[0] + expected[2]) / 2, atol=1e-3), "Bezier, not linear"
    received = sorted(read_latents(), key=lambda z: z[0])  # the backend may see them in any batch order
    assert len(received) == 5, "one request per frame: no frame rasterized twice, none lost"
    np.testing.assert_allclose(received, sorted(expected, key=lambda z: z[0]), rtol=0, atol=1e-6)
    for f in range(1, 6):
        np.testing.assert_allclose(engine.last_latents[f], expected[f - 1], rtol=0, atol=1e-6)


@pytest.mark.blender
@pytest.mark.slow  # two animation renders of 5 tiny frames and a backend restart: 20-40 s
@pytest.mark.lane
def test_killing_the_backend_stops_with_a_clear_message_and_a_rerender_resumes(shot, addon, bundle, tmp_path):
    import bpy

    rendered: list[int] = []

    with BackendProcess(bundle, free_tcp_address()) as backend:
        addon.address, addon.timeout = backend.address, 8.0  # the first frame must not time out on a busy CPU

        def kill_after_frame_2(scene, *_):
            rendered.append(scene.frame_current)
            if scene.frame_current == 2:
                backend.kill()

        bpy.app.handlers.render_write.append(kill_after_frame_2)
        try:
            with pytest.raises(RuntimeError) as info:
                bpy.ops.render.render(scene=shot.name, animation=True)
        finally:
            bpy.app.handlers.render_write.remove(kill_after_frame_2)
        message = str(info.value)
        assert "frame 3" in message and "not reachable" in message and backend.address in message, message
        assert "Overwrite" in message and "resume" in message, message
        assert sorted(p.name for p in tmp_path.glob("frame_*.png")) == ["frame_0001.png", "frame_0002.png"]
        first_frame_2 = (tmp_path / "frame_0002.png").stat().st_mtime_ns

        backend.start()
        shot.render.use_overwrite = False  # Blender's own resume: existing frames are not rendered again
        rendered.clear()
        frames_seen: list[int] = []

        def note(scene, *_):
            if scene.name == shot.name:  # the nested deep-buffer renders fire render_pre too
                frames_seen.append(scene.frame_current)

        bpy.app.handlers.render_pre.append(note)
        try:
            bpy.ops.render.render(scene=shot.name, animation=True)
        finally:
            bpy.app.handlers.render_pre.remove(note)
    assert frames_seen == [3, 4, 5], f"the engine must render only the missing frames, rendered {frames_seen}"
    assert sorted(p.name for p in tmp_path.glob("frame_*.png")) == [f"frame_{f:04d}.png" for f in range(1, 6)]
    assert (tmp_path / "frame_0002.png").stat().st_mtime_ns == first_frame_2, "frame 2 was not rendered again"
