"""Semantic edits on the real Blender and a real `rerender serve` (docs/artist-workflow.md).

What must hold: an object tagged "person" in its panel appears in the label pass with the person id (and leaves it
again when untagged); the "Hide Transient Points" toggle removes the point cloud's people from the deep buffer —
uncovering the building behind them — while an artist's tagged proxy stays; with "Fill Labels with S" the engine's
Label pass is exactly the labels the network received: the points' labels where points are, the backend's
predicted segmentation everywhere else.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from rerender.addon import compat  # noqa: E402


pytestmark = [pytest.mark.blender, pytest.mark.lane]

W, H = 64, 48  # multiples of the small bundle's U-Net multiple (4)
BUILDING, PERSON = 2, 11


@pytest.fixture()
def shot(addon):
    """A wall of building points 5 units ahead, a crowd of person points at 3 units in the middle third of the
    frame, a cube (not yet tagged) on the left, and a camera looking down +y."""
    from rerender.addon import points, properties

    scene = bpy.data.scenes.new("semantics shot")
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.use_compositing = False
    wall = grid(-2.0, 2.0, -1.5, 1.5, 0.04, depth=5.0)  # closed: one point per 0.7 px of the frame
    crowd = grid(-0.4, 0.4, -0.8, 0.8, 0.025, depth=3.0)
    xyz = np.concatenate([wall, crowd])
    labels = np.r_[np.full(len(wall), BUILDING), np.full(len(crowd), PERSON)]
    colors = np.full((len(xyz), 3), 0.5, np.float32)
    cloud = points.create_point_cloud("semantics cloud", xyz, colors, labels, scene.collection)
    corners = [(x, y, z) for x in (-0.3, 0.3) for y in (-0.3, 0.3) for z in (-0.3, 0.3)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh = bpy.data.meshes.new("semantics cube")
    mesh.from_pydata(corners, [], faces)
    cube = bpy.data.objects.new("semantics cube", mesh)
    cube.location = (-0.8, 3.0, 0.0)
    scene.collection.objects.link(cube)
    cam = bpy.data.objects.new("semantics cam", bpy.data.cameras.new("semantics cam"))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    properties.set_latent(scene, np.zeros(8))
    scene.rerender.point_size_auto = False
    scene.rerender.point_size = 1.5
    yield scene
    bpy.data.scenes.remove(scene)
    for obj in (cloud, cube, cam):
        bpy.data.objects.remove(obj)


def grid(x0: float, x1: float, z0: float, z1: float, step: float, depth: float) -> np.ndarray:
    """Points on a regular grid in the plane y = depth (gap-free at 1.5 px splats when step < 1 px)."""
    x, z = np.meshgrid(np.arange(x0, x1, step), np.arange(z0, z1, step))
    return np.stack([x.ravel(), np.full(x.size, depth), z.ravel()], axis=1)


def deep_buffer(scene):
    from rerender.addon.deep_buffer import render_deep_buffer

    with bpy.context.temp_override(scene=scene):
        return render_deep_buffer(scene, scene.camera, resolution=(W, H), splat_px=1.5)


def region(scene, x0: float, x1: float, half_height: float, depth: float = 3.0) -> np.ndarray:
    """Pixels whose ray crosses the plane y = depth inside x0..x1, |z| < half_height (computed, not rendered)."""
    cam = scene.camera.data
    focal_px = cam.lens / cam.sensor_width * W
    u = ((np.arange(W) + 0.5 - W / 2) * depth / focal_px)[None, :]
    v = ((np.arange(H) + 0.5 - H / 2) * depth / focal_px)[:, None]
    return np.broadcast_to((u > x0) & (u < x1) & (np.abs(v) < half_height), (H, W))


def cube_region(scene) -> np.ndarray:
    """Inside the cube's front face (x -1.1..-0.5, z -0.3..0.3 at depth 2.7), with a margin."""
    return region(scene, -1.05, -0.55, 0.25)


def test_tagging_an_object_person_puts_it_in_the_label_pass(shot):
    from rerender.addon import semantics

    cube = shot.objects["semantics cube"]
    region = cube_region(shot)
    assert region.sum() >= 4, "the cube must cover a few pixels for the test to mean anything"
    before = deep_buffer(shot)
    assert np.all(before.label[region] == BUILDING), "untagged, the cube is not drawn: the wall shows through"

    semantics.set_object_class(cube, "person")
    assert cube.rerender.semantic_class == "PERSON" and cube["rerender_class"] == PERSON
    tagged = deep_buffer(shot)
    assert np.all(tagged.label[region] == PERSON)
    assert np.all(tagged.mask[region]) and np.all(tagged.depth[region] < 3.5), "the cube stands in front"

    semantics.set_object_class(cube, None)
    assert "rerender_class" not in cube.keys()
    np.testing.assert_array_equal(deep_buffer(shot).label, before.label)
    with pytest.raises(KeyError, match="unknown semantic class 'persn'"):
        semantics.set_object_class(cube, "persn")


def test_hide_transient_removes_crowd_points_but_keeps_tagged_proxies(shot):
    from rerender.addon import semantics

    cube = shot.objects["semantics cube"]
    semantics.set_object_class(cube, "person")
    shown = deep_buffer(shot)
    crowd = (shown.label == PERSON) & region(shot, -0.35, 0.35, 0.75)  # inside the crowd, away from the cube
    assert crowd.sum() > 50, "the crowd of person points covers the middle of the frame"

    shot.rerender.hide_transient = True
    hidden = deep_buffer(shot)
    assert np.all(hidden.label[crowd] == BUILDING), "the wall behind the crowd is uncovered"
    assert np.all(hidden.depth[crowd] > 4.5)
    assert np.all(hidden.label[cube_region(shot)] == PERSON), "the artist's tagged proxy stays"
    untouched = shown.label != PERSON  # hiding transient points changes only what they covered
    np.testing.assert_array_equal(hidden.label[untouched], shown.label[untouched])
    cube_outline = region(shot, -1.2, -0.4, 0.4)
    assert not np.any((hidden.label == PERSON) & ~cube_outline), "no person point is left anywhere"

    shot.rerender.hide_transient = False
    np.testing.assert_array_equal(deep_buffer(shot).label, shown.label)


def test_fill_labels_label_pass_is_what_the_network_received(shot, backend, tmp_path):
    """F12 with "Fill Labels with S": Label = point labels under points, S's prediction elsewhere (no 255), and
    Combined = the backend's image for that filled buffer."""
    from rerender.bridge import Client, srgb8_to_linear
    from rerender.bridge.buffers import DeepBuffer
    from test_engine import channel, read_layers

    shot.camera.location.z = 1.2  # the top of the frame looks over the wall: "sky" no point covers
    shot.rerender.fill_labels = True
    compat.set_multilayer_exr(shot.render.image_settings)
    shot.render.image_settings.color_depth = "32"
    shot.render.filepath = str(tmp_path / "filled.exr")
    bpy.ops.render.render(scene=shot.name, write_still=True)
    layers = read_layers(tmp_path / "filled.exr")
    label = channel(layers, "Label.X")

    buffer = deep_buffer(shot)
    with Client(backend.address, timeout=20) as client:
        predicted = client.segment(buffer)
        filled = DeepBuffer(buffer.color, buffer.depth, np.where(buffer.mask, buffer.label, predicted)
                            .astype(np.uint8), buffer.mask)
        expected = srgb8_to_linear(client.rerender(filled, np.zeros(8, np.float32)))
        unfilled = srgb8_to_linear(client.rerender(buffer, np.zeros(8, np.float32)))
    assert 0.05 < (~buffer.mask).mean(), "part of the frame must be empty for the fill to show"
    assert not np.any(label == 255), "S filled every pixel no point covers"
    np.testing.assert_array_equal(label[buffer.mask], buffer.label[buffer.mask])
    np.testing.assert_array_equal(label[~buffer.mask], predicted[~buffer.mask])
    combined = np.stack([channel(layers, f"Combined.{c}") for c in "RGB"], axis=-1)
    np.testing.assert_allclose(combined, expected, atol=1e-5)
    assert not np.allclose(expected, unfilled, atol=1e-3), "the filled labels changed the network's input"
