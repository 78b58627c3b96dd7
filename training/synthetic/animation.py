"""Key a Blender camera along a ``camera_path`` (the demo's animated shot among the photo viewpoints)."""

from __future__ import annotations

from typing import Sequence

import bpy
from mathutils import Matrix

from .geometry import blender_camera_settings, blender_matrix_world
from .spec import PhotoCamera


def animate_camera(camera_object: bpy.types.Object, path: Sequence[PhotoCamera], *, frame_start: int = 1,
                   scene: bpy.types.Scene | None = None) -> tuple[int, int]:
    """Insert location/rotation and lens keys for every frame of ``path`` -> (first frame, last frame).

    Why one key per frame: the path is already smooth (Catmull-Rom), so keying each frame reproduces it exactly
    instead of letting Blender's own F-curve interpolation re-smooth it differently. The scene's frame range and
    resolution follow the path when ``scene`` is given.
    """
    if camera_object is None or camera_object.type != "CAMERA":
        raise ValueError("animate_camera needs a camera object (object.type == 'CAMERA')")
    if not path:
        raise ValueError("the camera path is empty")
    camera_object.rotation_mode = "QUATERNION"
    data = camera_object.data
    for k, cam in enumerate(path):
        frame = frame_start + k
        camera_object.matrix_world = Matrix(blender_matrix_world(cam).tolist())
        settings = blender_camera_settings(cam)
        data.sensor_fit = settings["sensor_fit"]
        data.sensor_width = settings["sensor_width"]
        data.lens = settings["lens"]
        camera_object.keyframe_insert("location", frame=frame)
        camera_object.keyframe_insert("rotation_quaternion", frame=frame)
        data.keyframe_insert("lens", frame=frame)
    last = frame_start + len(path) - 1
    if scene is not None:
        scene.frame_start, scene.frame_end = frame_start, last
        scene.render.resolution_x, scene.render.resolution_y = path[0].width, path[0].height
    return frame_start, last
