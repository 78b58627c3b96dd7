"""Viewport preview pieces (docs/addon.md, "Viewport preview"). Headless Blender cannot draw a viewport, so the
parts are tested:

* the latest-wins requester against a real `rerender serve` with a 300 ms simulated latency: offers never block,
  stale offers are dropped (not queued), and the image that lands is the backend's answer for the NEWEST offer;
* the ``gpu`` point rasterizer against EEVEE's deep buffer (the network was trained on EEVEE's), run inside a
  render engine with ``bl_use_gpu_context = True`` — the only place the ``gpu`` module draws in background mode.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from support_backend import BackendProcess, free_tcp_address, make_small_bundle

from rerender.bridge import Client, DeepBuffer

W, H = 32, 24


def tiny_buffer(seed: int) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((H, W)) > 0.3
    return DeepBuffer(color=np.where(mask[..., None], rng.random((H, W, 3)), 0).astype(np.float16),
                      depth=np.where(mask, rng.uniform(2, 8, (H, W)), np.inf).astype(np.float32),
                      label=np.where(mask, 2, 255).astype(np.uint8), mask=mask)


@pytest.fixture(scope="module")
def slow_backend(tmp_path_factory):
    bundle = make_small_bundle(tmp_path_factory.mktemp("bundle"))
    with BackendProcess(bundle, free_tcp_address(), extra_args=("--simulate-latency-ms", "300")) as proc:
        yield proc


def test_latest_wins_drops_stale_offers_and_shows_the_newest(slow_backend):
    pytest.importorskip("bpy")  # rerender.addon imports bpy
    from rerender.addon.viewport import LatestWinsRequester

    landed = []
    requester = LatestWinsRequester(slow_backend.address, timeout=20, on_frame=landed.append)
    try:
        buffers = [tiny_buffer(i) for i in range(10)]
        latent = np.linspace(-1, 1, 8).astype(np.float32)
        started = time.perf_counter()
        generations = []
        for buffer in buffers:  # a camera drag: a new view every 20 ms, much faster than the backend's 300 ms
            generations.append(requester.offer(buffer, latent))
            time.sleep(0.02)
        assert time.perf_counter() - started < 0.2 + 10 * 0.02 + 0.2, "offer() must never wait for the backend"
        frame = requester.wait_for(generations[-1], timeout=20)
        assert frame is not None and frame.generation == generations[-1], requester.error
        assert requester.offered == 10
        assert requester.sent <= 3, f"stale views must be dropped, not queued: {requester.sent} were sent"
        assert requester.dropped >= 7 and requester.sent + requester.dropped == 10
        assert [f.generation for f in landed] == sorted(f.generation for f in landed), "never an older frame later"
        with Client(slow_backend.address, timeout=20) as client:
            np.testing.assert_array_equal(frame.image, client.rerender(buffers[-1], latent))
    finally:
        requester.stop()


def test_preview_size_is_reduced_and_network_friendly():
    pytest.importorskip("bpy")
    from rerender.addon.viewport import preview_size

    assert preview_size(1920, 1080) == (960, 544)
    assert preview_size(100, 20) == (48, 16)
    assert all(v % 16 == 0 for v in preview_size(1234, 777))


# --- gpu rasterizer vs EEVEE ----------------------------------------------------------------------------------------

GPU_W, GPU_H = 64, 48
_captured: dict = {}


@pytest.mark.blender
@pytest.mark.slow  # one EEVEE reference render and one gpu draw (shader compile on llvmpipe): 10-20 s
def test_gpu_rasterizer_matches_eevee_within_tolerance():
    bpy = pytest.importorskip("bpy")
    import addon_utils
    from rerender.addon import gpu_raster, points
    from rerender.addon.deep_buffer import render_deep_buffer

    addon_utils.enable("rerender.addon", default_set=True)

    class GpuRasterProbe(bpy.types.RenderEngine):
        """Runs gpu_raster.rasterize where background Blender has a GPU context: a render with the GPU context."""

        bl_idname = "RERENDER_GPU_PROBE"
        bl_label = "gpu raster probe"
        bl_use_gpu_context = True

        def render(self, depsgraph):
            scene = depsgraph.scene
            cam = scene.camera.evaluated_get(depsgraph)
            projection = cam.calc_matrix_camera(depsgraph, x=GPU_W, y=GPU_H)
            xyz, colors, labels = gpu_raster.scene_points(scene)
            try:
                _captured["buffer"] = gpu_raster.rasterize(xyz, colors, labels, np.array(cam.matrix_world.inverted()),
                                                           np.array(projection), (GPU_W, GPU_H), 1.5)
            except Exception as exc:  # noqa: BLE001 - reported by the test below
                _captured["error"] = f"{type(exc).__name__}: {exc}"
            result = self.begin_result(0, 0, GPU_W, GPU_H)
            self.end_result(result)

    bpy.utils.register_class(GpuRasterProbe)
    scene = bpy.data.scenes.new("gpu raster shot")
    try:
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = GPU_W, GPU_H, 100
        rng = np.random.default_rng(3)
        n = 1500
        xyz = np.stack([rng.uniform(-3, 3, n), rng.uniform(4, 7, n), rng.uniform(-2, 2, n)], axis=1)
        labels = rng.choice([2, 8, 11], n)
        cloud = points.create_point_cloud("gpu cloud", xyz, rng.random((n, 3)).astype(np.float32), labels,
                                          scene.collection)
        cam = bpy.data.objects.new("gpu cam", bpy.data.cameras.new("gpu cam"))
        cam.rotation_euler = (math.pi / 2, 0.0, 0.2)
        scene.collection.objects.link(cam)
        scene.camera = cam
        with bpy.context.temp_override(scene=scene):
            scene.frame_set(1)
            eevee = render_deep_buffer(scene, cam, resolution=(GPU_W, GPU_H), splat_px=1.5)
        scene.render.engine = "RERENDER_GPU_PROBE"
        bpy.ops.render.render(scene=scene.name)
    finally:
        bpy.utils.unregister_class(GpuRasterProbe)
    assert "error" not in _captured, _captured.get("error")
    ours = _captured["buffer"]

    both = ours.mask & eevee.mask
    union = ours.mask | eevee.mask
    iou = both.sum() / union.sum()
    # Tolerance (stated in docs/addon.md): coverage IoU >= 0.75 (squares vs diamonds of the same area); where both
    # drew, median planar depth error < 2 %, and the same point (its color and its label; neighbouring points have
    # random colors and one of 3 labels here) on >= 80 % / 85 % of pixels: the two splat shapes differ at edges.
    assert 0.2 < eevee.mask.mean() < 0.95 and iou >= 0.75, f"mask IoU {iou:.3f}"
    rel = np.abs(ours.depth[both] - eevee.depth[both]) / eevee.depth[both]
    assert np.median(rel) < 0.02, f"median relative depth error {np.median(rel):.4f}"
    assert (ours.label[both] == eevee.label[both]).mean() >= 0.85
    same_color = np.all(np.abs(ours.color[both].astype(np.float32) - eevee.color[both].astype(np.float32)) < 2e-3,
                        axis=1)
    assert same_color.mean() >= 0.8, f"same point color on {same_color.mean():.2%} of shared pixels"
    print(f"gpu vs EEVEE: IoU {iou:.3f}, median depth err {np.median(rel):.4f}, "
          f"labels {(ours.label[both] == eevee.label[both]).mean():.3f}, colors {same_color.mean():.3f}")
    bpy.data.scenes.remove(scene)
    bpy.data.objects.remove(cloud)
    bpy.data.objects.remove(cam)
