"""Camera geometry in COLMAP's convention, its Blender equivalent, projection and smooth camera paths.

Why here and in numpy: ground truth must be checkable without Blender (a test projects a known landmark point with
the saved camera and finds it on the building in the saved segmentation), and the demo's animated camera is
computed from the saved photo cameras.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rerender.bridge.cameras import similarity_residuals  # noqa: F401  (the project's one Umeyama; re-exported)

from .spec import PhotoCamera

SENSOR_WIDTH_MM = 36.0
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def look_at_rotation(center: Sequence[float], target: Sequence[float], roll_deg: float = 0.0,
                     up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """World->camera rotation (rows = camera x right, y down, z forward in world) looking from center at target.

    ``up`` is the world's up direction (+Z in the generator's scene; an SfM frame has its own).
    ``roll_deg`` turns the camera about its viewing axis (positive = clockwise in the image).
    """
    center = np.asarray(center, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - center
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        raise ValueError("camera center and target coincide; cannot aim the camera")
    forward /= norm
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("camera looks straight up or down; the roll is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward])


def make_camera(name: str, center: Sequence[float], target: Sequence[float], *, focal_mm: float, width: int,
                height: int, roll_deg: float = 0.0, up: Sequence[float] = (0.0, 0.0, 1.0)) -> PhotoCamera:
    """A PINHOLE camera (fx = fy, centered principal point) from a position, an aim point and a 36 mm-sensor lens."""
    R = look_at_rotation(center, target, roll_deg, up)
    t = -R @ np.asarray(center, dtype=np.float64)
    f = focal_mm * width / SENSOR_WIDTH_MM
    return PhotoCamera(name, int(width), int(height), f, f, width / 2.0, height / 2.0, R.tolist(), t.tolist())


def blender_matrix_world(camera: PhotoCamera) -> np.ndarray:
    """Blender camera object matrix_world (4x4): inverse([R|t]) with the camera's y and z axes negated."""
    Rt = np.eye(4)
    Rt[:3, :3] = np.asarray(camera.R)
    Rt[:3, 3] = camera.t
    return np.linalg.inv(Rt) @ _FLIP_YZ


def blender_camera_settings(camera: PhotoCamera) -> dict[str, float | str | tuple[float, float]]:
    """Blender camera data and render settings reproducing the PINHOLE intrinsics (blender-facts.md formula)."""
    W, H = camera.width, camera.height
    ycor = camera.fx / camera.fy
    aspect = (1.0, ycor) if ycor >= 1 else (1.0 / ycor, 1.0)
    return {"sensor_fit": "HORIZONTAL", "sensor_width": SENSOR_WIDTH_MM, "lens": camera.fx * SENSOR_WIDTH_MM / W,
            "shift_x": (W / 2 - camera.cx) / W, "shift_y": (camera.cy - H / 2) * ycor / W, "pixel_aspect": aspect}


def project(camera: PhotoCamera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N×3) -> (uv N×2 in COLMAP pixel coordinates, depth N). Pixel (i, j) of a top-down
    image covers u in [j, j+1), v in [i, i+1), so the pixel holding a point is (floor(v), floor(u))."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    cam = pts @ np.asarray(camera.R).T + np.asarray(camera.t)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = camera.fx * cam[:, 0] / z + camera.cx
        v = camera.fy * cam[:, 1] / z + camera.cy
    return np.stack([u, v], axis=1), z


def nearest_point_to_axes(centers: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The point closest (least squares) to all optical axes: what a set of photos looks at."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centers, directions):
        d = d / np.linalg.norm(d)
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _catmull_rom(points: np.ndarray, samples: int, closed: bool) -> np.ndarray:
    """Centripetal-free (uniform) Catmull-Rom through all points; passes through every key exactly."""
    n = len(points)
    if closed:
        padded = np.concatenate([points[-1:], points, points[:2]])
        segments = n
    else:
        padded = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
        segments = n - 1
    s = np.linspace(0.0, segments, samples, endpoint=not closed)
    idx = np.minimum(s.astype(int), segments - 1)
    u = (s - idx)[:, None]
    p0, p1, p2, p3 = padded[idx], padded[idx + 1], padded[idx + 2], padded[idx + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)


def camera_path(cameras: Sequence[PhotoCamera], frames: int, *, keys: int = 6, look_at: Sequence[float] | None = None,
                width: int | None = None, height: int | None = None, closed: bool = False) -> list[PhotoCamera]:
    """A smooth animated camera among the photo viewpoints, one ``PhotoCamera`` per frame.

    Why: the demo flies a camera through the place the photos saw, so every frame stays inside the region the
    reconstruction covers. Key viewpoints are ``keys`` photo cameras spread evenly by azimuth around ``look_at``
    (default: the point closest to all their optical axes); positions, aim point and focal length follow Catmull-Rom
    splines through them; there is no roll, like a stabilised drone shot. Works in any similarity frame (an SfM
    reconstruction's too): "up" is the photos' mean image-up direction (people hold cameras upright) and the
    azimuth is measured around it.
    """
    if len(cameras) < 2:
        raise ValueError(f"a camera path needs at least 2 photo cameras, got {len(cameras)}")
    if frames < 2:
        raise ValueError(f"a camera path needs at least 2 frames, got {frames}")
    centers = np.array([c.center for c in cameras])
    forwards = np.array([np.asarray(c.R)[2] for c in cameras])
    if look_at is None:
        look_at = nearest_point_to_axes(centers, forwards)
    pivot = np.asarray(look_at, dtype=np.float64)
    up = -np.array([np.asarray(c.R)[1] for c in cameras]).mean(axis=0)  # COLMAP's camera y points down
    up /= np.linalg.norm(up)
    e1 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    offsets = centers - pivot
    azimuth = np.arctan2(offsets @ e2, offsets @ e1)
    order = np.argsort(azimuth)
    # Open the circle of viewpoints at its widest empty gap: the path runs from one end of the photos' arc to the
    # other, whatever direction the frame's azimuth 0 happens to point to.
    sorted_az = azimuth[order]
    gaps = np.diff(np.concatenate([sorted_az, sorted_az[:1] + 2 * np.pi]))
    order = np.roll(order, -(int(np.argmax(gaps)) + 1))
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(keys, len(order))).round().astype(int))]
    key_centers = centers[picks]
    key_targets = np.array([centers[i] + forwards[i] * np.linalg.norm(pivot - centers[i]) for i in picks])
    key_focal = np.array([[cameras[i].fx / cameras[i].width] for i in picks])
    if len(picks) < 2:
        raise ValueError("the photo cameras all sit at one azimuth; cannot build a path among them")
    pos = _catmull_rom(key_centers, frames, closed)
    aim = _catmull_rom(key_targets, frames, closed)
    focal = _catmull_rom(key_focal, frames, closed)[:, 0]
    W = int(width or cameras[0].width)
    H = int(height or cameras[0].height)
    path = []
    for k in range(frames):
        f_mm = float(focal[k]) * SENSOR_WIDTH_MM
        path.append(make_camera(f"path_{k:04d}", pos[k], aim[k], focal_mm=f_mm, width=W, height=H, up=up))
    return path
