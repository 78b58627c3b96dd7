"""COLMAP camera <-> Blender camera, exactly (docs/design.md §3; docs/addon-rasterizer.md, "Cameras").

COLMAP: world->camera (R, t), camera frame x right, y down, z forward, PINHOLE (fx, fy, cx, cy) in pixels with
pixel centers at +0.5. Blender: camera looks down -z with y up; intrinsics become lens / sensor width, shift (the
principal point) and the render pixel aspect (fx != fy). Mapping (checked by tests to < 1 px):

    sensor_fit = HORIZONTAL, sensor_width = 36 mm, lens = fx * 36 / W
    ycor = fx / fy -> pixel aspect (1, ycor) if ycor >= 1 else (1 / ycor, 1)
    shift_x = (W / 2 - cx) / W,  shift_y = (cy - H / 2) * ycor / W      (Blender shifts in units of W for HORIZONTAL)
    pose = inverse([R | t]) @ diag(1, -1, -1, 1)

The pose is in COLMAP world coordinates. Imported cameras are children of the reconstruction's root empty, which
carries the up-axis rotation and scale, so the pose is written relative to the parent when there is one: raw COLMAP
(R, t) from a manifest can be applied to an imported camera unchanged.

The calibrated size and intrinsics are also stored on the camera data (``rerender_size``, ``rerender_intrinsics``,
``rerender_pixel_aspect``) because the pixel aspect is a scene setting in Blender but a camera property in COLMAP;
the deep-buffer renderer reads it back from there.
"""

from __future__ import annotations

import numpy as np

from ._bridge import PinholeCamera

SENSOR_WIDTH_MM = 36.0
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])

PROP_SIZE = "rerender_size"
PROP_INTRINSICS = "rerender_intrinsics"
PROP_PIXEL_ASPECT = "rerender_pixel_aspect"


# The add-on's name for the shared PINHOLE camera type (``bridge/cameras.py``): one type across add-on and training.
ColmapCamera = PinholeCamera


def pixel_aspect_for(fx: float, fy: float) -> tuple[float, float]:
    """Blender's (pixel_aspect_x, pixel_aspect_y) for focal lengths fx, fy (both >= 1, as Blender wants)."""
    ycor = fx / fy
    return (1.0, ycor) if ycor >= 1.0 else (1.0 / ycor, 1.0)


def _check_intrinsics(fx: float, fy: float, width: int, height: int) -> None:
    if not (fx > 0 and fy > 0):
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    ratio = fx / fy
    if not 0.01 <= ratio <= 100:  # Blender's pixel aspect range is 1..200 per axis
        raise ValueError(f"fx / fy = {ratio:.4g} is outside what Blender's pixel aspect can express (0.01..100)")


def set_camera_from_colmap(cam_obj, R, t, fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                           scene=None) -> None:
    """Make a Blender camera object reproduce a COLMAP PINHOLE camera (pose + intrinsics).

    ``scene``: when given, its render resolution (100 %) and pixel aspect are set to the camera's, so F12 renders
    exactly the photo's frame. Without it only the camera changes (the deep-buffer renderer still uses the stored
    pixel aspect).
    """
    import mathutils

    _check_intrinsics(fx, fy, width, height)
    R = np.asarray(R, np.float64).reshape(3, 3)
    t = np.asarray(t, np.float64).reshape(3)
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        raise ValueError("R must be a proper rotation matrix (orthonormal, det +1); got\n" + np.array2string(R))
    cam = cam_obj.data
    if getattr(cam, "type", None) is None or cam_obj.type != "CAMERA":
        raise TypeError(f"{cam_obj.name!r} is a {cam_obj.type} object, not a camera")
    w, h = int(width), int(height)
    ycor = fx / fy
    cam.type = "PERSP"
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = SENSOR_WIDTH_MM
    cam.lens = fx * SENSOR_WIDTH_MM / w
    cam.shift_x = (w / 2.0 - cx) / w
    cam.shift_y = (cy - h / 2.0) * ycor / w
    cam[PROP_SIZE] = [w, h]
    cam[PROP_INTRINSICS] = [float(fx), float(fy), float(cx), float(cy)]
    cam[PROP_PIXEL_ASPECT] = list(pixel_aspect_for(fx, fy))

    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = R
    cam_from_world[:3, 3] = t
    pose = mathutils.Matrix((np.linalg.inv(cam_from_world) @ _FLIP_YZ).tolist())
    if cam_obj.parent is not None:
        cam_obj.matrix_parent_inverse = mathutils.Matrix.Identity(4)
        cam_obj.matrix_basis = pose
    else:
        cam_obj.matrix_world = pose
    if scene is not None:
        apply_camera_resolution(scene, cam_obj)


def apply_camera_resolution(scene, cam_obj) -> None:
    """Set the scene's render size (100 %) and pixel aspect to a calibrated camera's (the operator's 'look through')."""
    cam = cam_obj.data
    if PROP_SIZE not in cam:
        raise ValueError(f"camera {cam_obj.name!r} carries no COLMAP calibration (set it with set_camera_from_colmap)")
    w, h = (int(v) for v in cam[PROP_SIZE])
    ax, ay = (float(v) for v in cam[PROP_PIXEL_ASPECT])
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
    r.pixel_aspect_x, r.pixel_aspect_y = ax, ay


def camera_pixel_aspect(cam_obj, scene) -> tuple[float, float]:
    """The pixel aspect a camera must be rendered with: its calibrated one, else the scene's."""
    stored = cam_obj.data.get(PROP_PIXEL_ASPECT)
    if stored is not None:
        return float(stored[0]), float(stored[1])
    return float(scene.render.pixel_aspect_x), float(scene.render.pixel_aspect_y)


def colmap_from_camera(cam_obj, width: int, height: int, pixel_aspect: tuple[float, float] = (1.0, 1.0)
                       ) -> ColmapCamera:
    """The inverse mapping: a Blender perspective camera (sensor fit HORIZONTAL or AUTO with W >= H) -> COLMAP.

    The pose is read relative to the camera's parent when it has one (the same frame ``set_camera_from_colmap``
    writes), so a round trip returns the (R, t) it was given.
    """
    cam = cam_obj.data
    if cam.type != "PERSP":
        raise ValueError(f"camera {cam_obj.name!r} is {cam.type}; only perspective cameras map to COLMAP PINHOLE")
    w, h = int(width), int(height)
    ax, ay = pixel_aspect
    ycor = ay / ax
    fit = cam.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if w * ax >= h * ay else "VERTICAL"
    if fit == "HORIZONTAL":
        fx = cam.lens / cam.sensor_width * w
    else:  # VERTICAL: the sensor height spans the image height in ycor-scaled pixels
        fx = cam.lens / cam.sensor_height * h * ycor
    fy = fx / ycor
    view = w if fit == "HORIZONTAL" else h * ycor
    cx = w / 2.0 - cam.shift_x * view
    cy = h / 2.0 + cam.shift_y * view / ycor
    if cam_obj.parent is not None:
        pose = np.array(cam_obj.matrix_parent_inverse) @ np.array(cam_obj.matrix_basis)
    else:
        pose = np.array(cam_obj.matrix_world)
    cam_from_world = np.linalg.inv(pose @ _FLIP_YZ)
    return ColmapCamera(R=cam_from_world[:3, :3], t=cam_from_world[:3, 3], fx=fx, fy=fy, cx=cx, cy=cy,
                        width=w, height=h)
