"""Module-scoped fixtures for add-on tests against a real backend (registered for every test module through
conftest's ``pytest_plugins``; a module may define its own ``backend`` or ``addon`` to override them), and
``one_point_shot`` for tests that only need something to render."""

from __future__ import annotations

import pytest

from support_backend import BackendProcess, free_tcp_address, make_small_bundle


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A real `rerender serve` on a small freshly initialised bundle, for the whole test module."""
    bundle = make_small_bundle(tmp_path_factory.mktemp("bundle"))
    with BackendProcess(bundle, free_tcp_address()) as proc:
        yield proc


@pytest.fixture(scope="module")
def addon(backend):
    """The add-on enabled exactly as docs/addon.md says, pointed at the served bundle."""
    import addon_utils
    import bpy

    module = addon_utils.enable("rerender.addon", default_set=True)
    assert module is not None, "addon_utils.enable('rerender.addon') failed (see the log above)"
    prefs = bpy.context.preferences.addons["rerender.addon"].preferences
    prefs.address = backend.address
    prefs.timeout = 20.0
    yield module
    addon_utils.disable("rerender.addon", default_set=True)


def one_point_shot(name: str, filepath: str):
    """A minimal Rerender shot: one grey point 5 m in front of a camera, 32×32, writing to ``filepath``.

    Returns ``(scene, objects)``; give both to :func:`remove_shot` afterwards."""
    import math

    import bpy
    import numpy as np

    from rerender.addon import points

    scene = bpy.data.scenes.new(name)
    scene.render.engine = "RERENDER"
    scene.render.resolution_x = scene.render.resolution_y = 32
    scene.render.resolution_percentage = 100
    scene.render.filepath = str(filepath)
    cloud = points.create_point_cloud(f"{name} cloud", np.array([[0.0, 5.0, 0.0]]), np.full((1, 3), 0.5), None,
                                      scene.collection)
    cam = bpy.data.objects.new(f"{name} cam", bpy.data.cameras.new(f"{name} cam"))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return scene, [cloud, cam]


def point_wall_shot(name: str, width: int, height: int, points_count: int = 6000):
    """A closed wall of random-coloured points 4-6 m ahead of a camera looking down +y; engine RERENDER, fixed
    2-px splats, ``width`` x ``height``. Returns ``(scene, objects)`` (cloud, camera) for :func:`remove_shot`."""
    import math

    import bpy
    import numpy as np

    from rerender.addon import points

    scene = bpy.data.scenes.new(name)
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    rng = np.random.default_rng(0)
    n = points_count
    xyz = np.stack([rng.uniform(-3, 3, n), rng.uniform(4, 6, n), rng.uniform(-2, 2, n)], axis=1)
    colors = rng.uniform(0.1, 0.9, (n, 3)).astype(np.float32)
    cloud = points.create_point_cloud(f"{name} cloud", xyz, colors, np.full(n, 2), scene.collection)
    cam = bpy.data.objects.new(f"{name} cam", bpy.data.cameras.new(f"{name} cam"))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.rerender.point_size_auto = False
    scene.rerender.point_size = 2.0
    return scene, [cloud, cam]


def remove_shot(scene, objects) -> None:
    import bpy

    bpy.data.scenes.remove(scene)
    for obj in objects:
        bpy.data.objects.remove(obj)
