"""The Neural Rerender engine end to end: real Blender (bpy), real EEVEE deep buffers, a real `rerender serve`.

What must hold (docs/addon.md, "The render engine"): F12 writes a multilayer EXR with Combined, Depth, Albedo, Label
and Mask of the render size, and Combined is exactly the backend's answer for that deep buffer and latent (in
linear); an animation of a moving camera with a keyed look gives one output per frame, each with that frame's camera
and latent; the compositor runs on the passes; the panel status reaches "connected" without blocking.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from support_backend import free_tcp_address  # noqa: E402

from rerender.addon import compat  # noqa: E402
from rerender.bridge import Client, srgb8_to_linear  # noqa: E402

pytestmark = pytest.mark.blender

W, H = 64, 48  # multiples of the small bundle's U-Net multiple (4)
POINT_LABEL = 2  # "building"
POINT_COLOR = (0.2, 0.5, 0.8)  # linear


def read_layers(path: Path) -> dict[str, np.ndarray]:
    """All channels of a (multi-part) EXR by channel name, rows top-down (Blender's OpenImageIO, or the add-on's
    numpy reader where the Blender build has none)."""
    from rerender.addon.compat import openimageio
    from rerender.addon.exr_read import read_exr_parts

    oiio = openimageio()
    if oiio is None:
        return {name: part.pixels[..., c] for part in read_exr_parts(path) for c, name in enumerate(part.channels)}
    inp = oiio.ImageInput.open(str(path))
    assert inp is not None, f"cannot open {path}: {oiio.geterror()}"
    out, i = {}, 0
    try:
        while inp.seek_subimage(i, 0):
            spec = inp.spec()
            pixels = inp.read_image(i, 0, 0, spec.nchannels, oiio.FLOAT)
            for c, name in enumerate(spec.channelnames):
                out[name] = np.asarray(pixels)[..., c]
            i += 1
    finally:
        inp.close()
    return out


def channel(layers: dict[str, np.ndarray], suffix: str) -> np.ndarray:
    match = [k for k in layers if k.endswith(suffix)]
    assert len(match) == 1, f"expected one channel ending in {suffix!r}, got {sorted(layers)}"
    return layers[match[0]]


@pytest.fixture()
def shot(addon, tmp_path):
    """A shot scene: a wall of labelled points 4-6 units in front of a camera, engine RERENDER, 64x48."""
    from rerender.addon import points, properties

    scene = bpy.data.scenes.new("rerender test shot")
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.use_compositing = False
    scene.frame_start, scene.frame_end = 1, 1
    rng = np.random.default_rng(0)
    n = 4000
    xyz = np.stack([rng.uniform(-3, 3, n), rng.uniform(4, 6, n), rng.uniform(-2, 2, n)], axis=1)
    colors = np.tile(np.array(POINT_COLOR, np.float32), (n, 1))
    cloud = points.create_point_cloud("test cloud", xyz, colors, np.full(n, POINT_LABEL), scene.collection)
    cam_data = bpy.data.cameras.new("test cam")
    cam = bpy.data.objects.new("test cam", cam_data)
    cam.location = (0.0, 0.0, 0.0)
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)  # look down +y
    scene.collection.objects.link(cam)
    scene.camera = cam
    properties.set_latent(scene, np.linspace(-1, 1, 8))
    # A fixed splat size: the automatic estimate reads the camera's matrix_world, stale in a scene that is not
    # the context scene (reported to deep_buffer.py's owner); the engine's own job is tested here.
    scene.rerender.point_size_auto = False
    scene.rerender.point_size = 1.5
    yield scene
    bpy.data.scenes.remove(scene)
    bpy.data.objects.remove(cloud)
    bpy.data.objects.remove(cam)


def direct_frame(scene, backend, latent, frame: int | None = None) -> np.ndarray:
    """What Combined must be: the backend's answer for the same EEVEE deep buffer, converted to linear."""
    from rerender.addon.deep_buffer import render_deep_buffer

    with bpy.context.temp_override(scene=scene):  # as the engine does: animation is evaluated for the context scene
        scene.frame_set(scene.frame_current if frame is None else frame)  # evaluates camera and matrix_world
        buffer = render_deep_buffer(scene, scene.camera, resolution=(W, H), splat_px=1.5)
    with Client(backend.address, timeout=20) as client:
        return srgb8_to_linear(client.rerender(buffer, np.asarray(latent, np.float32))), buffer


@pytest.mark.lane
def test_f12_writes_multilayer_exr_with_every_pass(shot, backend, tmp_path):
    compat.set_multilayer_exr(shot.render.image_settings)
    shot.render.image_settings.color_depth = "32"
    shot.render.filepath = str(tmp_path / "still.exr")
    bpy.ops.render.render(scene=shot.name, write_still=True)

    layers = read_layers(tmp_path / "still.exr")
    for suffix in ("Combined.R", "Combined.A", "Depth.Z", "Albedo.R", "Albedo.B", "Label.X", "Mask.X"):
        assert channel(layers, suffix).shape == (H, W), suffix
    expected, buffer = direct_frame(shot, backend, np.linspace(-1, 1, 8))
    combined = np.stack([channel(layers, f"Combined.{c}") for c in "RGB"], axis=-1)
    np.testing.assert_allclose(combined, expected, atol=1e-5)  # row 0 = top in both: orientation is right too
    assert np.all(channel(layers, "Combined.A") == 1.0)

    mask = channel(layers, "Mask.X") > 0.5
    np.testing.assert_array_equal(mask, buffer.mask)
    assert 0.2 < mask.mean() < 1.0, "the wall of points should cover part of the frame"
    depth = channel(layers, "Depth.Z")
    assert np.all((depth[mask] > 3.5) & (depth[mask] < 6.5)), "planar depth of points 4-6 units away"
    assert np.all(depth[~mask] == pytest.approx(1e10))
    label = channel(layers, "Label.X")
    assert set(np.unique(label[mask])) == {POINT_LABEL} and np.all(label[~mask] == 255)
    albedo = np.stack([channel(layers, f"Albedo.{c}") for c in "RGB"], axis=-1)
    np.testing.assert_allclose(albedo[mask], np.tile(POINT_COLOR, (mask.sum(), 1)), atol=1e-3)


@pytest.mark.slow  # 3 nested EEVEE renders + 1 reference: 10-20 s on 2 busy cores
@pytest.mark.lane
def test_animation_renders_each_frame_with_its_camera_and_look(shot, backend, tmp_path):
    from rerender.addon import properties

    edit = bpy.context.preferences.edit
    previous = edit.keyframe_new_interpolation_type
    edit.keyframe_new_interpolation_type = "LINEAR"
    try:
        a, b = np.full(8, -1.0), np.full(8, 1.0)
        properties.set_latent(shot, a)
        properties.key_latent(shot, 1)
        properties.set_latent(shot, b)
        properties.key_latent(shot, 3)
        cam = shot.camera
        cam.location.x = 0.0
        cam.keyframe_insert("location", index=0, frame=1)
        cam.location.x = 1.0
        cam.keyframe_insert("location", index=0, frame=3)
    finally:
        edit.keyframe_new_interpolation_type = previous
    shot.frame_start, shot.frame_end = 1, 3
    compat.set_multilayer_exr(shot.render.image_settings)
    shot.render.filepath = str(tmp_path / "anim_")
    started = time.perf_counter()
    bpy.ops.render.render(scene=shot.name, animation=True)
    elapsed = time.perf_counter() - started

    files = sorted(p.name for p in tmp_path.glob("anim_*.exr"))
    assert files == ["anim_0001.exr", "anim_0002.exr", "anim_0003.exr"]
    layers = [read_layers(tmp_path / f) for f in files]
    frames = [np.stack([channel(lay, f"Combined.{c}") for c in "RGB"], -1) for lay in layers]
    assert not np.allclose(frames[0], frames[2], atol=1e-3), "camera and look changed: frames must differ"
    masks = [channel(lay, "Mask.X") for lay in layers]
    assert not np.array_equal(masks[0], masks[2]), "the camera moved: the points must land elsewhere"
    # frame 2 = the camera half-way (x = 0.5) and the look half-way ((a + b) / 2 = 0): exactly what the backend
    # gives for that buffer and latent
    expected, _ = direct_frame(shot, backend, (a + b) / 2, frame=2)
    np.testing.assert_allclose(frames[1], expected, atol=1e-5)
    print(f"3-frame animation at {W}x{H}: {elapsed:.2f} s")


def test_compositor_runs_on_the_engine_passes(shot, tmp_path):
    """Exposure +1 on Combined doubles it; a File Output node writes the Label pass as it came from the engine."""
    shot.render.image_settings.media_type = "IMAGE"
    shot.render.image_settings.file_format = "OPEN_EXR"
    shot.render.image_settings.color_depth = "32"
    shot.render.filepath = str(tmp_path / "plain.exr")
    bpy.ops.render.render(scene=shot.name, write_still=True)
    plain = read_layers(tmp_path / "plain.exr")

    tree = bpy.data.node_groups.new("test compositing", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene = shot
    exposure = tree.nodes.new("CompositorNodeExposure")
    output = tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Image"], exposure.inputs["Image"])
    exposure.inputs["Exposure"].default_value = 1.0
    tree.links.new(exposure.outputs["Image"], output.inputs["Image"])
    files = tree.nodes.new("CompositorNodeOutputFile")
    files.directory = str(tmp_path) + "/"
    files.file_name = "label_"
    files.format.media_type = "IMAGE"
    files.format.file_format = "OPEN_EXR"
    files.format.color_depth = "32"
    files.file_output_items.new("FLOAT", "label")
    tree.links.new(layers.outputs["Label"], files.inputs["label"])
    shot.compositing_node_group = tree
    shot.render.use_compositing = True
    shot.render.filepath = str(tmp_path / "graded.exr")
    try:
        bpy.ops.render.render(scene=shot.name, write_still=True)
    finally:
        shot.compositing_node_group = None
        bpy.data.node_groups.remove(tree)
    graded = read_layers(tmp_path / "graded.exr")
    for c in "RGB":
        np.testing.assert_allclose(channel(graded, c), 2.0 * channel(plain, c), rtol=1e-5, atol=1e-6)
    written = sorted(tmp_path.glob("label_*.exr"))
    assert written, f"the File Output node wrote nothing into {tmp_path}: {sorted(p.name for p in tmp_path.iterdir())}"
    label = next(iter(read_layers(written[0]).values()))
    assert set(np.unique(label)) <= {float(POINT_LABEL), 255.0} and (label == POINT_LABEL).any()


def test_status_check_runs_off_the_ui_thread_and_reports_the_model(addon, backend):
    from rerender.addon import connection
    from rerender.addon.preferences import backend_settings

    monitor = connection.StatusMonitor()
    started = time.perf_counter()
    assert monitor.request(backend_settings())
    assert time.perf_counter() - started < 0.1, "request() must return at once (the check runs in a thread)"
    status = monitor.wait(10)
    assert status.connected, status.message
    assert status.latent_size == 8 and status.model == "test-small" and status.device == "cpu"
    line = status.line()
    assert backend.address in line and "test-small" in line and "latent 8" in line


def test_latent_of_the_wrong_size_stops_with_what_to_do(shot, tmp_path):
    from rerender.addon import properties

    properties.set_latent(shot, np.zeros(5))
    shot.render.filepath = str(tmp_path / "wrong.png")
    with pytest.raises(RuntimeError, match=r"5 values .* expects 8.*Match Model"):
        bpy.ops.render.render(scene=shot.name, write_still=True)
    assert not (tmp_path / "wrong.png").exists()


def test_match_model_and_key_buttons_resize_and_key_the_latent(addon):
    scene = bpy.context.scene
    try:
        assert bpy.ops.rerender.match_latent(size=12) == {"FINISHED"}
        assert len(scene.rerender.appearance) == 12
        scene.rerender.appearance[3].value = 0.25
        scene.frame_current = 7
        assert bpy.ops.rerender.key_appearance() == {"FINISHED"}
        paths = {(fc.data_path, int(fc.evaluate(7) * 100)) for fc in _fcurves(scene)}
        assert ("rerender.appearance[3].value", 25) in paths and len(paths) == 12
    finally:
        scene.animation_data_clear()
        scene.rerender.appearance.clear()


def _fcurves(idblock):
    """The F-curves of an ID in Blender 5.0's layered actions (action.fcurves is gone for slotted actions)."""
    anim = idblock.animation_data
    channelbag = anim.action.layers[0].strips[0].channelbag(anim.action_slot)
    return list(channelbag.fcurves)


@pytest.mark.slow
def test_launch_on_render_starts_the_local_backend(addon, shot, tmp_path, backend):
    """Preferences with a Python and a bundle: F12 with nobody at the address starts `rerender serve` and renders."""
    from rerender.addon import connection

    prefs = bpy.context.preferences.addons["rerender.addon"].preferences
    prefs.address = free_tcp_address()
    prefs.python_executable = sys.executable
    prefs.bundle_path = str(backend.bundle)
    prefs.device = "cpu"
    prefs.launch_on_render = True
    shot.render.filepath = str(tmp_path / "launched.png")
    try:
        bpy.ops.render.render(scene=shot.name, write_still=True)
        assert connection.local_backend.running and connection.local_backend.address == prefs.address
        assert (tmp_path / "launched.png").is_file()
        assert connection.monitor.status.connected and connection.monitor.status.model == "test-small"
    finally:
        connection.local_backend.stop()
        connection.engine_link.invalidate()
        prefs.address = backend.address
        prefs.launch_on_render = False
        prefs.python_executable = prefs.bundle_path = ""
    assert not connection.local_backend.running
