"""The EEVEE deep-buffer rasterizer on the real Blender: geometry within 1 px of pycolmap, exact colors, empty
pixels, labels from points and from classed objects, animated cameras, and the call from inside a RenderEngine."""

from __future__ import annotations

import numpy as np
import pytest

from support_colmap import TINY_CAMERAS, write_tiny_workspace

bpy = pytest.importorskip("bpy")
pytest.importorskip("pycolmap")

from rerender.addon import colmap_import as ci  # noqa: E402
from rerender.addon import deep_buffer as db  # noqa: E402
from rerender.addon import points as pts  # noqa: E402
from rerender.addon.cameras import ColmapCamera  # noqa: E402
from rerender.bridge.colors import linear_to_srgb8, srgb8_to_linear  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.lane]

N = 300
MARKER_LABEL = 11


def assert_same_color(drawn: np.ndarray, want: np.ndarray) -> None:
    """No tone mapping: equal to within one half-float step (EEVEE's float16 buffers round the last bit toward
    zero, measured), which is lossless for 8-bit photo colors after linear_to_srgb8."""
    drawn = np.asarray(drawn, np.float32)
    want = np.asarray(want, np.float32)
    ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(drawn - want) <= ulp + 1e-7), (drawn, want)


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """One imported tiny workspace and the deep buffer of each photo camera (rendered once: EEVEE is the cost)."""
    labels = np.r_[np.arange(N) % 3 + 1, MARKER_LABEL].astype(np.uint8)
    ws = write_tiny_workspace(tmp_path_factory.mktemp("db") / "ws", n_points=N, labels=labels)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    imported = ci.import_reconstruction(ws.workspace, scene)
    buffers = {}
    for name, _, _, w, h, _, _ in TINY_CAMERAS:
        buffers[name] = db.render_deep_buffer(scene, imported.cameras[name], resolution=(w, h), splat_px=1.0)
    return ws, scene, imported, buffers


@pytest.mark.parametrize("name", [c[0] for c in TINY_CAMERAS])
def test_marker_lands_within_one_pixel_of_pycolmap(shot, name):
    ws, _, _, buffers = shot
    buf = buffers[name]
    w, h = next((c[3], c[4]) for c in TINY_CAMERAS if c[0] == name)
    assert buf.shape == (h, w)
    marker = buf.mask & np.all(buf.color == np.float16(1.0) * np.array([1, 0, 1], np.float16), axis=-1)
    assert marker.sum() >= 1, "the magenta marker point is not in the albedo pass"
    ys, xs = np.nonzero(marker)
    drawn = np.array([xs.mean() + 0.5, ys.mean() + 0.5])  # pixel centers, COLMAP's convention
    expected = ws.project(name, ws.marker_xyz)
    assert np.abs(drawn - expected).max() < 1.0, f"{name}: drawn at {drawn}, pycolmap says {expected}"
    assert set(np.unique(buf.label[marker])) == {MARKER_LABEL}


def test_colors_exact_empty_pixels_empty_and_depth_planar(shot):
    ws, _, imported, buffers = shot
    cloud = srgb8_to_linear(ws.rgb8)
    allowed = {tuple(c) for c in ws.rgb8}
    for name, buf in buffers.items():
        drawn = buf.color[buf.mask]
        as_srgb8 = linear_to_srgb8(drawn.astype(np.float32))
        assert {tuple(c) for c in as_srgb8} <= allowed, f"{name}: colors that are not in the cloud (tone mapping?)"
        nearest = np.array([np.abs(cloud - c).max(1).argmin() for c in drawn.astype(np.float32)])
        assert_same_color(drawn, cloud[nearest])
        assert 0.02 < buf.coverage() < 0.9
        empty = ~buf.mask
        assert np.all(buf.color[empty] == 0) and np.all(np.isinf(buf.depth[empty]))
        assert np.all(buf.label[empty] == 255)
        assert set(np.unique(buf.label[buf.mask])) <= {1, 2, 3, MARKER_LABEL}
        # Depth of the marker = its planar camera z in scene units (COLMAP z times the root's scale).
        marker = buf.mask & (buf.label == MARKER_LABEL)
        im = ws.image(name)
        z = (im.cam_from_world() * ws.marker_xyz)[2]
        scale = np.cbrt(np.linalg.det(np.array(imported.root.matrix_world)[:3, :3]))
        np.testing.assert_allclose(buf.depth[marker], z * scale, rtol=0.02)


def test_classed_object_exact_color_and_animated_camera(shot):
    """Any object with a `rerender_class` property is drawn with its class and color; frames follow animation."""
    _, scene, imported, _ = shot
    bpy.ops.mesh.primitive_plane_add(size=1.0)
    proxy = bpy.context.active_object
    proxy[pts.OBJECT_CLASS_PROP] = 13
    proxy[pts.OBJECT_COLOR_PROP] = (0.2, 0.5, 0.8)
    cam_obj = imported.cameras["a.jpg"]
    m = np.array(cam_obj.matrix_world)
    forward = -m[:3, 2] / np.linalg.norm(m[:3, 2])
    proxy.location = m[:3, 3] + forward * 3.0  # in front of the camera, between it and the cloud
    proxy.rotation_euler = cam_obj.matrix_world.to_euler()
    mover = bpy.data.objects.new("mover", cam_obj.data)
    scene.collection.objects.link(mover)
    mover.matrix_world = cam_obj.matrix_world
    mover.keyframe_insert("location", frame=1)
    mover.location = mover.location + __import__("mathutils").Vector(m[:3, 0] * 50.0)  # far sideways: proxy gone
    mover.keyframe_insert("location", frame=10)
    try:
        at1 = db.render_deep_buffer(scene, mover, frame=1, resolution=(96, 72), splat_px=1.0)
        at10 = db.render_deep_buffer(scene, mover, frame=10, resolution=(96, 72), splat_px=1.0)
    finally:
        bpy.data.objects.remove(proxy)
        bpy.data.objects.remove(mover)
    plane = at1.mask & (at1.label == 13)
    assert plane.sum() > 50
    assert_same_color(at1.color[plane], np.broadcast_to(np.float32([0.2, 0.5, 0.8]), (plane.sum(), 3)))
    np.testing.assert_allclose(at1.depth[plane], 3.0, rtol=0.01)
    assert not np.any(at10.label == 13)


def test_callable_from_inside_a_render_engine(shot):
    """The render engine calls render_deep_buffer from RenderEngine.render() (nested EEVEE render)."""
    _, scene, imported, buffers = shot
    got = {}

    class NestedEngine(bpy.types.RenderEngine):
        bl_idname = "RERENDER_TEST_NESTED"
        bl_label = "nested deep buffer test"
        bl_use_gpu_context = False

        def render(self, depsgraph):
            s = depsgraph.scene
            got["buffer"] = db.render_deep_buffer(s, s.camera, resolution=(96, 72), splat_px=1.0)
            result = self.begin_result(0, 0, s.render.resolution_x, s.render.resolution_y)
            self.end_result(result)

    bpy.utils.register_class(NestedEngine)
    old = scene.render.engine, scene.camera
    try:
        scene.render.engine = NestedEngine.bl_idname
        scene.camera = imported.cameras["a.jpg"]
        bpy.ops.render.render(scene=scene.name)
    finally:
        scene.render.engine, scene.camera = old
        bpy.utils.unregister_class(NestedEngine)
    buf = got["buffer"]
    np.testing.assert_array_equal(buf.mask, buffers["a.jpg"].mask)
    np.testing.assert_array_equal(buf.label, buffers["a.jpg"].label)


def test_bad_arguments_are_refused_clearly(shot):
    _, scene, imported, _ = shot
    with pytest.raises(db.DeepBufferError, match="needs a camera"):
        db.render_deep_buffer(scene, imported.points)
    with pytest.raises(ValueError, match="out of range"):
        db.render_deep_buffer(scene, imported.cameras["a.jpg"], resolution=(0, 10))
    with pytest.raises(db.DeepBufferError, match="not the deep-buffer helper"):
        db.render_deep_buffer(bpy.data.scenes[db.HELPER_SCENE], imported.cameras["a.jpg"])


def test_auto_splat_size_is_one_pixel_for_dense_and_larger_for_sparse():
    cam = ColmapCamera(R=np.eye(3), t=np.zeros(3), fx=500, fy=500, cx=256, cy=256, width=512, height=512)
    rng = np.random.default_rng(0)

    def wall(n):  # a wall filling the view at depth 10
        return np.stack([rng.uniform(-5, 5, n), rng.uniform(-5, 5, n), np.full(n, 10.0)], 1)

    dense = db.estimate_splat_px(wall(20_000), cam, total_points=2_000_000)
    sparse = db.estimate_splat_px(wall(3_000), cam)
    assert dense == db.MIN_SPLAT_PX
    assert db.MIN_SPLAT_PX < sparse <= db.MAX_SPLAT_PX
    assert db.estimate_splat_px(wall(100) * [1, 1, -1], cam) == db.MIN_SPLAT_PX  # all behind the camera


def test_auto_splat_size_uses_the_cameras_current_placement(tmp_path):
    """Right after an import the objects' matrix_world is stale until the depsgraph runs; the automatic splat size
    must still be estimated with the real camera (it once came out ~1 px on sparse SfM clouds: 3 % coverage)."""
    ws = write_tiny_workspace(tmp_path / "ws", n_points=N)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    imported = ci.import_reconstruction(ws.workspace, scene)
    name, _, _, w, h, _, _ = TINY_CAMERAS[0]
    camera = imported.cameras[name]
    auto = db.render_deep_buffer(scene, camera, resolution=(w, h))  # estimated before anything else evaluated
    bpy.context.view_layer.update()
    aspect = db.camera_pixel_aspect(camera, scene)
    expected = db._auto_splat_px([imported.points], db._world_camera(camera, w, h, aspect))
    assert expected > db.MIN_SPLAT_PX, "300 points in view must need splats larger than the minimum"
    fixed = db.render_deep_buffer(scene, camera, resolution=(w, h), splat_px=expected)
    assert auto.coverage() == pytest.approx(fixed.coverage(), abs=0.01)
